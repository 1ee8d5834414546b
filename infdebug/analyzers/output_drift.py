"""Output analyzers: stop-token drift, and the rate statistics the output analyzers share.

``stop`` (kinds ``stop.end_of_turn_ignored``, ``stop.runaway_rate``) lives here;
``repetition`` (kind ``output.repetition``) in ``repetition.py``, on the statistics below.

Which IDs end a turn: the reference tokenizer's EOS IDs plus the well-known end-of-turn
tokens it has (``<|eot_id|>``, ``<|im_end|>``, …) when ``--tokenizer`` is given; without one,
the IDs found in the stop sets (``sampling.stop_ids``) of at least a quarter of the model's
requests that were sent with a stop set. The quorum keeps a user's own stop token (a newline
one client asks for) from turning every other request's newline into a finding.

Severities for ``stop.end_of_turn_ignored``: a single occurrence on a replica is ``info``
(one request may have been sent with a custom stop set we cannot see); two or more are a
``warning``; ``error`` once they are ≥ 1 % of the replica's requests.

Replica-vs-fleet comparisons (runaway rate, repetition rate) use a one-sided Fisher exact
test (this replica's rate above the rest of the fleet's), Holm-corrected over the replicas
compared, with a minimum sample (30 requests per replica and in the rest) and a minimum
effect, so that a large fleet does not turn tiny differences into findings.

A runaway rate the whole fleet shares escapes those comparisons (every replica is like the
rest); past ``RUNAWAY_WARNING`` among requests with room to end their turn it is a warning
on its own (see the constants).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.schema import Finding
from infdebug.store import q_outputs as q
from infdebug.store.q_common import split_unit, unit_label

MIN_REQUESTS = 30
MIN_LOOK = 10  # fewer requests in the rest of the fleet: nothing to compare with
ALPHA = 0.01
EOT_QUORUM = 0.25  # share of a model's stop sets an ID must be in to count as end-of-turn
WELL_KNOWN_EOT = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|end_of_text|>",
    "<|END_OF_TURN_TOKEN|>",
    "[/INST]",
)
EVIDENCE_IDS = 10
# A runaway rate the whole fleet shares (every replica like the rest: no comparison sees it).
# A model that ends its turn runs into a generous cap only on its longest answers, and chat
# answers mostly stay well under RUNAWAY_MIN_MAX_TOKENS tokens; a cap below that is a
# deliberate short-answer limit that healthy answers hit, so those requests are left out, as
# are ignore_eos ones (benchmarks: they run to the cap by design). More than RUNAWAY_WARNING
# of the rest running to the cap means the fleet does not end its turns — an end-of-turn ID
# missing from one stop-set config every replica shares, or a model that never learned to
# stop (a random-weight one) — at least a warning. Never an error on its own: a long-form
# workload (stories, long summaries) can fill a 512-token cap legitimately.
RUNAWAY_MIN_MAX_TOKENS = 512
RUNAWAY_WARNING = 0.5


# --- statistics ---------------------------------------------------------------------------


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided Fisher exact p-value that group 1's rate (k1/n1) exceeds group 2's:
    P(X ≥ k1) for X hypergeometric with the margins of the 2×2 table."""
    n, k = n1 + n2, k1 + k2
    hi = min(n1, k)
    if k1 <= 0:
        return 1.0
    log_denom = _log_comb(n, n1)
    total = 0.0
    for x in range(k1, hi + 1):
        term = math.exp(_log_comb(k, x) + _log_comb(n - k, n1 - x) - log_denom)
        total += term
        if x > k1 + 10 and term < total * 1e-16:
            break  # terms past the mode only shrink
    return min(1.0, total)


def z_two_proportions(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-proportion z statistic with Yates' continuity correction (signed: + when group 1
    is higher)."""
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2)) if 0 < p < 1 else 0.0
    d = k1 / n1 - k2 / n2
    if se == 0:
        return 0.0
    cc = 0.5 * (1 / n1 + 1 / n2)
    return math.copysign(max(abs(d) - cc, 0.0) / se, d)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the input's order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adj = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj


@dataclass(frozen=True)
class RateTest:
    replica: str
    k: int
    n: int
    rest_k: int
    rest_n: int
    z: float
    p_value: float
    p_holm: float
    flagged: bool

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else 0.0

    @property
    def rest_rate(self) -> float:
        return self.rest_k / self.rest_n if self.rest_n else 0.0

    def values(self) -> dict[str, Any]:
        return {
            "rate": round(self.rate, 6),
            "rest_rate": round(self.rest_rate, 6),
            "count": self.k,
            "requests": self.n,
            "rest_count": self.rest_k,
            "rest_requests": self.rest_n,
            "test": "fisher_exact_one_sided+holm",
            "z": round(self.z, 4),
            "p_value": self.p_value,
            "p_holm": self.p_holm,
        }


def compare_rates(
    counts: dict[str, tuple[int, int]],
    *,
    min_diff: float,
    min_ratio: float,
    min_n: int = MIN_REQUESTS,
) -> list[RateTest]:
    """Each replica's rate (k, n) against the rest of the fleet pooled; flagged when Holm's
    p < ALPHA and the effect is at least ``min_diff`` (absolute) and ``min_ratio`` × the rest."""
    total_k = sum(k for k, _ in counts.values())
    total_n = sum(n for _, n in counts.values())
    tested: list[tuple[str, int, int, int, int, float, float]] = []
    for rep in sorted(counts):
        k, n = counts[rep]
        rk, rn = total_k - k, total_n - n
        if n < min_n or rn < min_n:
            continue
        tested.append(
            (rep, k, n, rk, rn, z_two_proportions(k, n, rk, rn), fisher_greater(k, n, rk, rn))
        )
    adj = holm([t[6] for t in tested])
    out = []
    for (rep, k, n, rk, rn, z, p), pa in zip(tested, adj, strict=True):
        rate, rest = k / n, rk / rn
        big = rate - rest >= min_diff and rate >= min_ratio * rest
        out.append(RateTest(rep, k, n, rk, rn, z, p, pa, pa < ALPHA and big))
    return out


def units_of(counts: dict[str, tuple[int, int]], dep: str) -> list[str]:
    """The units of deployment ``dep`` ("" for none) among ``counts``' keys."""
    return sorted(u for u in counts if (split_unit(u)[1] or "") == dep)


def whole_deployments(
    counts: dict[str, tuple[int, int]], *, min_diff: float, min_ratio: float
) -> dict[str, RateTest]:
    """Deployments (of two or more replicas) whose rate is above the other deployments' —
    tested deployment against the rest pooled, like ``compare_rates`` — and on every one of
    their replicas alike. A canary whose replicas all misbehave hides from the replica-level
    test (each replica's siblings raise the rest's rate); this one sees it. Keys: the
    deployment ("" for none)."""
    by_dep: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for unit, kn in counts.items():
        by_dep[split_unit(unit)[1] or ""].append(kn)
    if len(by_dep) < 2:
        return {}
    pooled = {d: (sum(k for k, _ in v), sum(n for _, n in v)) for d, v in by_dep.items()}
    out = {}
    for t in compare_rates(pooled, min_diff=min_diff, min_ratio=min_ratio):
        units = by_dep[t.replica]
        if not t.flagged or len(units) < 2:
            continue
        if all(
            n and k / n - t.rest_rate >= min_diff and k / n >= min_ratio * t.rest_rate
            for k, n in units
        ):
            out[t.replica] = t
    return out


# --- stop.* ---------------------------------------------------------------------------------


def piece(ctx: AnalysisContext, tid: int) -> str | None:
    if ctx.tokenizer is None:
        return None
    try:
        p: str | None = ctx.tokenizer.piece(tid)
        return p
    except Exception:
        return None


def tokenizer_eot_ids(tok: Any) -> set[int]:
    """EOS IDs of a TokenizerBundle plus the well-known end-of-turn tokens in its vocabulary."""
    ids = {int(i) for i in (getattr(tok, "eos_ids", None) or [])}
    inner = getattr(tok, "tok", None)
    if inner is not None:
        for name in WELL_KNOWN_EOT:
            tid = inner.token_to_id(name)
            if tid is not None:
                ids.add(int(tid))
    return ids


def _eot_ids(ctx: AnalysisContext, model: str, shares: dict[int, float]) -> tuple[set[int], str]:
    """The reference tokenizer's end-of-turn IDs for the model it belongs to (``--model-name``;
    every model when none is named), else the IDs the fleet's stop sets agree on."""
    given = str(ctx.options.get("model") or "")
    if ctx.tokenizer is not None and (not given or given == model):
        return tokenizer_eot_ids(ctx.tokenizer), "tokenizer"
    return {i for i, s in shares.items() if s >= EOT_QUORUM}, "fleet stop sets"


@analyzer("stop")
def stop_analyzer(ctx: AnalysisContext) -> list[Finding]:
    w = ctx.window()
    out: list[Finding] = []
    shares = q.stop_id_shares(ctx.store, w)
    finishes = q.finish_counts(ctx.store, w, room=RUNAWAY_MIN_MAX_TOKENS)
    models = sorted({f.model for f in finishes} | set(shares))
    for model in models:
        eot, source = _eot_ids(ctx, model, shares.get(model, {}))
        if eot:
            out.extend(_eot_ignored(ctx, w, model, eot, source))
        out.extend(_runaway(ctx, model, [f for f in finishes if f.model == model]))
    return out


def _eot_ignored(
    ctx: AnalysisContext, w: dict[str, Any], model: str, eot: set[int], source: str
) -> list[Finding]:
    counts = q.eot_counts(ctx.store, w, model, sorted(eot))
    hits = q.eot_hits(ctx.store, w, model, sorted(eot), per_replica=EVIDENCE_IDS)
    out: list[Finding] = []
    for c in counts:
        if c.hits == 0:
            continue
        mine = [h for h in hits if h.replica == c.replica]
        share = c.hits / c.requests
        severity = "info" if c.hits == 1 else ("error" if share >= 0.01 else "warning")
        ids = Counter(h.eot_id for h in mine)
        top_id = ids.most_common(1)[0][0] if ids else None
        first = mine[0] if mine else None
        stop_sets = Counter(tuple(h.stop_ids) for h in mine)
        stop_set = list(stop_sets.most_common(1)[0][0]) if stop_sets else []
        eot_piece = piece(ctx, top_id) if top_id is not None else None
        missing = top_id is not None and top_id not in stop_set
        tok_txt = f"{top_id}" + (f" {eot_piece!r}" if eot_piece else "")
        why = (
            "is not in the stop set in force"
            if missing
            else "is in the stop set yet generation went on"
        )
        summary = (
            f"{unit_label(c.replica)}: end-of-turn ID {tok_txt} inside {c.hits} of {c.requests} "
            "outputs "
            f"({share:.1%}) that did not stop there; it {why}"
        )
        out.append(
            finding(
                "stop",
                "stop.end_of_turn_ignored",
                severity,
                summary,
                unit=c.replica,
                t_start=c.first_seen,
                values={
                    "count": c.hits,
                    "requests": c.requests,
                    "share": round(share, 6),
                    "model": model,
                    "eot_ids": sorted(eot),
                    "eot_source": source,
                },
                evidence={
                    "request_ids": [h.request_id for h in mine],
                    "first_seen": c.first_seen,
                    "eot_id": top_id,
                    "eot_piece": eot_piece,
                    "first_eot_position": first.position if first else None,
                    "output_len": first.output_len if first else None,
                    "finish_reason": first.finish_reason if first else None,
                    "stop_ids_in_force": stop_set,
                    "eot_in_stop_set": not missing,
                    "examples": [
                        {
                            "request_id": h.request_id,
                            "position": h.position,
                            "eot_id": h.eot_id,
                            "finish_reason": h.finish_reason,
                            "output_len": h.output_len,
                        }
                        for h in mine[:5]
                    ],
                },
            )
        )
    return out


def _fleet_runaway(model: str, finishes: list[q.FinishCounts]) -> list[Finding]:
    """A runaway rate the whole fleet shares, among the requests with room to end their turn."""
    n = sum(f.roomy for f in finishes)
    k = sum(f.roomy_length for f in finishes)
    if n < MIN_REQUESTS or k < RUNAWAY_WARNING * n:
        return []
    rates = [(f.roomy_length / f.roomy, f) for f in finishes if f.roomy]
    first = min(f.roomy_first_length for f in finishes if f.roomy_first_length is not None)
    request_ids = sorted({i for f in finishes for i in f.roomy_length_request_ids})
    over = sorted(unit_label(f.replica) for r, f in rates if r >= RUNAWAY_WARNING)
    return [
        finding(
            "stop",
            "stop.runaway_rate",
            "warning",
            f"{k} of {n} requests ({k / n:.1%}) sent with max_tokens ≥ {RUNAWAY_MIN_MAX_TOKENS} "
            "ran to the length cap "
            f"across the fleet ({len(over)} of {len(rates)} replicas ≥ {RUNAWAY_WARNING:.0%}): "
            "a model that ends its "
            "turn does not; no replica stands out, so look at what they share",
            t_start=first,
            values={
                "rate": round(k / n, 6),
                "count": k,
                "requests": n,
                "model": model,
                "min_max_tokens": RUNAWAY_MIN_MAX_TOKENS,
                "threshold": RUNAWAY_WARNING,
                "replicas": len(rates),
                "min_replica_rate": round(min(r for r, _ in rates), 6),
                "max_replica_rate": round(max(r for r, _ in rates), 6),
            },
            evidence={
                "first_seen": first,
                "request_ids": request_ids[:EVIDENCE_IDS],
                "replicas_over_threshold": over,
                "hint": "an end-of-turn ID missing from the stop set every replica shares "
                "(stop.end_of_turn_ignored names it), or a model that does not end its turn",
            },
        )
    ]


def _runaway(ctx: AnalysisContext, model: str, finishes: list[q.FinishCounts]) -> list[Finding]:
    counts = {f.replica: (f.length, f.requests) for f in finishes}
    first = {f.replica: f.first_seen for f in finishes}
    ids = {f.replica: f.length_request_ids for f in finishes}
    out: list[Finding] = _fleet_runaway(model, finishes)
    deps = whole_deployments(counts, min_diff=0.10, min_ratio=2.0)
    for dep, t in sorted(deps.items()):
        mine = units_of(counts, dep)
        out.append(
            finding(
                "stop",
                "stop.runaway_rate",
                "error" if t.rate - t.rest_rate >= 0.30 else "warning",
                f"deployment {dep or '(none)'} ({len(mine)} replicas alike): {t.rate:.1%} of "
                "requests ran to the "
                f"length cap vs {t.rest_rate:.1%} on the other deployments "
                f"(p={t.p_holm:.2g}, Holm)",
                deployment=dep or None,
                t_start=min(first[u] for u in mine),
                values={**t.values(), "model": model, "replicas": [unit_label(u) for u in mine]},
                evidence={
                    "first_seen": min(first[u] for u in mine),
                    "request_ids": sorted({i for u in mine for i in ids.get(u, [])})[:EVIDENCE_IDS],
                    "hint": "look for a missing end-of-turn ID in this deployment's stop set "
                    "(stop.end_of_turn_ignored) or a max_tokens change",
                },
            )
        )
    for t in compare_rates(counts, min_diff=0.10, min_ratio=2.0):
        if not t.flagged or (split_unit(t.replica)[1] or "") in deps:
            continue
        severity = "error" if t.rate - t.rest_rate >= 0.30 else "warning"
        out.append(
            finding(
                "stop",
                "stop.runaway_rate",
                severity,
                f"{unit_label(t.replica)}: {t.rate:.1%} of requests ran to the length cap vs "
                f"{t.rest_rate:.1%} on the rest of the fleet (p={t.p_holm:.2g}, Holm)",
                unit=t.replica,
                t_start=first.get(t.replica),
                values={**t.values(), "model": model},
                evidence={
                    "first_seen": first.get(t.replica),
                    "request_ids": ids.get(t.replica, []),
                    "hint": "look for a missing end-of-turn ID "
                    "in this replica's stop set (stop.end_of_turn_ignored) or a max_tokens change",
                },
            )
        )
    return out
