"""Speculative-decoding acceptance: a replica whose draft tokens are accepted at another rate
than on the rest of its fleet.

``spec_acceptance`` (kind ``replica.spec_acceptance``): per model, each unit's acceptance
rate (Σ spec_accepted_tokens / Σ spec_draft_tokens over its requests) against the rest of
the model's fleet pooled, by a two-proportion z test on the token counts. Tokens of one
request are not independent draws (a prompt that drafts well drafts well throughout), so
the binomial variance is inflated by the request-level dispersion φ (quasi-binomial:
Pearson χ² of the requests' accepted counts around their unit's rate, over its degrees of
freedom, floored at 1), estimated per model. p-values are Benjamini-Hochberg corrected
across every test of the run; a unit is flagged when q < 0.01, the rates differ by at
least 5 points, and both sides drafted ≥ 1000 tokens over ≥ 30 requests. A unit far off
drags the rest's rate the other way, so the tests are run again with the units found so
far left out of every other test's rest, until the set found settles. Lower acceptance
(a draft model that no longer matches, a target whose numerics changed: quantisation,
dtype) is a warning; higher, an info (the target may have changed the other way).

With two or more deployments, each deployment is also tested against the others pooled
and reported on its own when flagged and every one of its replicas lies on the same side.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.robust import two_sided_p
from infdebug.analyzers.stats import benjamini_hochberg
from infdebug.schema import Finding
from infdebug.store import q_spec as q
from infdebug.store.q_common import split_unit, unit_label

MIN_DRAFT = 1000
MIN_REQUESTS = 30
MIN_DIFF = 0.05
ALPHA = 0.01
MAX_ROUNDS = 5


@dataclass(frozen=True)
class Pool:
    requests: int
    draft: int
    accepted: int

    @property
    def rate(self) -> float:
        return self.accepted / self.draft if self.draft else 0.0


def _pool(rows: list[q.SpecCounts]) -> Pool:
    return Pool(
        sum(r.requests for r in rows), sum(r.draft for r in rows), sum(r.accepted for r in rows)
    )


def dispersion(rows: list[q.SpecCounts]) -> float:
    """Request-level dispersion of acceptance (Pearson χ² / df around each unit's own rate,
    at least 1)."""
    chi2, df = 0.0, 0
    for r in rows:
        if not r.draft or r.requests < 2:
            continue
        p = r.accepted / r.draft
        if not 0.0 < p < 1.0:
            continue
        chi2 += (r.sum_a2_over_d - 2 * p * r.accepted + p * p * r.draft) / (p * (1 - p))
        df += r.requests - 1
    return max(1.0, chi2 / df) if df > 0 else 1.0


@dataclass(frozen=True)
class SpecTest:
    model: str
    scope: str  # a unit, or a deployment ("dep:" + name)
    mine: Pool
    rest: Pool
    z: float
    p_value: float
    phi: float
    rows: tuple[q.SpecCounts, ...]

    @property
    def diff(self) -> float:
        return self.mine.rate - self.rest.rate


def _test(
    model: str, scope: str, mine: list[q.SpecCounts], rest: list[q.SpecCounts], phi: float
) -> SpecTest | None:
    a, b = _pool(mine), _pool(rest)
    if min(a.draft, b.draft) < MIN_DRAFT or min(a.requests, b.requests) < MIN_REQUESTS:
        return None
    pbar = (a.accepted + b.accepted) / (a.draft + b.draft)
    var = phi * pbar * (1 - pbar) * (1 / a.draft + 1 / b.draft)
    z = (a.rate - b.rate) / math.sqrt(var) if var > 0 else 0.0
    return SpecTest(model, scope, a, b, z, two_sided_p(z), phi, tuple(mine))


def _tests(by_model: dict[str, list[q.SpecCounts]], exclude: set[str]) -> list[SpecTest]:
    """Every unit against the rest of its model's fleet, and every deployment (of two or more
    units, where there are two or more deployments) against the others; units in
    ``exclude`` (already found to depart) are left out of every other test's rest."""
    tests: list[SpecTest] = []
    for model, rows in sorted(by_model.items()):
        phi = dispersion(rows)
        for r in rows:
            rest = [x for x in rows if x.unit != r.unit and x.unit not in exclude]
            t = _test(model, r.unit, [r], rest, phi)
            if t is not None:
                tests.append(t)
        deps: dict[str, list[q.SpecCounts]] = defaultdict(list)
        for r in rows:
            deps[split_unit(r.unit)[1] or ""].append(r)
        if len(deps) >= 2:
            for dep, mine in sorted(deps.items()):
                if len(mine) < 2:
                    continue
                rest = [
                    x for d, xs in deps.items() if d != dep for x in xs if x.unit not in exclude
                ]
                t = _test(model, "dep:" + dep, mine, rest, phi)
                if t is not None:
                    tests.append(t)
    return tests


def _flagged(tests: list[SpecTest]) -> list[tuple[SpecTest, float]]:
    qv = benjamini_hochberg([t.p_value for t in tests])
    return [
        (t, qval)
        for t, qval in zip(tests, qv, strict=True)
        if qval < ALPHA and abs(t.diff) >= MIN_DIFF
    ]


@analyzer("spec_acceptance")
def spec_acceptance(ctx: AnalysisContext) -> list[Finding]:
    by_model: dict[str, list[q.SpecCounts]] = defaultdict(list)
    for r in q.spec_counts(ctx.store, ctx.window()):
        if r.requests:
            by_model[r.model].append(r)
    # A unit far off the fleet drags the rest's rate and makes its siblings look off the
    # other way: test again with the units found so far out of the rest, until it settles.
    exclude: set[str] = set()
    for _ in range(MAX_ROUNDS):
        tests = _tests(by_model, exclude)
        found = _flagged(tests)
        now = {t.scope for t, _ in found if not t.scope.startswith("dep:")}
        if now == exclude:
            break
        exclude = now
    keep = [
        (t, qval)
        for t, qval in found
        if not t.scope.startswith("dep:")
        or all((r.accepted / r.draft - t.rest.rate) * t.diff > 0 for r in t.rows)
    ]  # a deployment one replica carries is left to that replica's own test
    ids = q.lowest_acceptance_ids(
        ctx.store, ctx.window(), sorted({r.unit for t, _ in keep for r in t.rows})
    )
    return [_finding(t, qval, len(tests), ids) for t, qval in keep]


def _finding(t: SpecTest, qval: float, n_tests: int, ids: dict[str, list[str]]) -> Finding:
    low = t.diff < 0
    is_dep = t.scope.startswith("dep:")
    name = f"deployment {t.scope[4:] or '(none)'}" if is_dep else unit_label(t.scope)
    rest = "the other deployments" if is_dep else "the rest of the fleet"
    model = f" ({t.model})" if t.model else ""
    first = min(r.first for r in t.rows)
    lowest = sorted(i for r in t.rows for i in ids.get(r.unit, []))[:10]
    values: dict[str, Any] = {
        "rate": round(t.mine.rate, 6),
        "rest_rate": round(t.rest.rate, 6),
        "diff": round(t.diff, 6),
        "draft_tokens": t.mine.draft,
        "accepted_tokens": t.mine.accepted,
        "requests": t.mine.requests,
        "rest_draft_tokens": t.rest.draft,
        "rest_accepted_tokens": t.rest.accepted,
        "rest_requests": t.rest.requests,
        "z": round(t.z, 4),
        "p_value": t.p_value,
        "q_bh": qval,
        "tests": n_tests,
        "dispersion": round(t.phi, 4),
        "test": "two_proportion_z_quasi_binomial+benjamini_hochberg",
        "model": t.model or None,
    }
    if is_dep:
        values["replicas"] = sorted(unit_label(r.unit) for r in t.rows)
    q_text = f"q={qval:.2g}" if qval > 1e-16 else "q<1e-16"
    kw: dict[str, Any] = {"deployment": t.scope[4:] or None} if is_dep else {"unit": t.scope}
    return finding(
        "spec_acceptance",
        "replica.spec_acceptance",
        "warning" if low else "info",
        f"{name}{model}: speculative acceptance {t.mine.rate * 100:.1f}% ({t.mine.accepted} of "
        f"{t.mine.draft} draft tokens, {t.mine.requests} requests) vs {t.rest.rate * 100:.1f}% "
        f"on {rest} ({t.diff * 100:+.1f} points, z={t.z:.1f}, BH {q_text}, request-level "
        f"dispersion {t.phi:.2f})",
        t_start=first,
        t_end=max(r.last for r in t.rows),
        values=values,
        evidence={
            "first_seen": first,
            "request_ids": lowest if is_dep else ids.get(t.scope, []),
        },
        **kw,
    )
