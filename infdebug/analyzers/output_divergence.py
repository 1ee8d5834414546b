"""``replica.output_divergence``: the same prompt under the same deterministic decoding
(greedy: temperature 0; or the same seed with the same sampling parameters) answered
differently by different replicas or deployments.

Requests are grouped in SQL (``store/q_divergence.py``: model, prompt-ID hash, and the
sampling that decides the tokens); each unit (replica within deployment) serving a group
gives its earliest output, and outputs are compared on their common length (``max_tokens``
and stop sets only decide where an output ends). In a group, a unit *diverges* when it
disagrees with a strict majority of the other units there, *agrees* with a strict majority,
and is undecided otherwise; so with three or more units the odd one out is named, and with
two the pair is.

Real engines are not batch-invariant: another batch shape changes the order of a reduction,
and a near-tie between the two best tokens can flip, after which the outputs go separate
ways. So divergence alone is not a fault. A unit is flagged (warning) only when its share
of diverging groups is at least ``WARN_SHARE`` (10 %), with at least ``MIN_DIVERGENT`` (3)
of them, *and* above the rest's (one-sided Fisher exact test, Holm across the units, p <
``ALPHA``); an error from ``ERROR_SHARE`` (50 %) with at least ``ERROR_MIN``. The rest is
the units of the other deployments where there are any (a canary's replicas share its
configuration and diverge alike, so they are no control for each other), else every other
unit.
Otherwise divergences are one fleet-level finding: info while under ``WARN_SHARE`` of the
compared groups (the noise of batching, typically a late first divergence between tokens of
near-equal logprob), a warning above it with at least ``MIN_DIVERGENT`` (a fleet that is
not deterministic where it should be, or two units of which neither can be told right).

Evidence: the first diverging position, the token ID on both sides (and its piece, with the
reference tokenizer), the logprobs there when logged and their gap (a near-tie has a small
one), how many groups and pairs agree, request IDs on both sides. At most ``MAX_GROUPS``
prompts are compared (the lowest prompt-ID hashes: a choice independent of replica names and
order); past ``MAX_ROWS`` requests, a hash sample of the prompts (groups stay whole; the
findings say what share).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.output_drift import ALPHA, fisher_greater, holm, piece
from infdebug.schema import Finding
from infdebug.store import q_divergence as q
from infdebug.store.q_common import split_unit, unit_label

NAME = "replica.output_divergence"
MAX_GROUPS = 2000
MAX_ROWS = 1_000_000  # past this many requests, a hash sample of the prompts (groups whole)
WARN_SHARE = 0.10
MIN_DIVERGENT = 3
ERROR_SHARE = 0.5
ERROR_MIN = 10
MIN_GROUPS = 5  # groups a unit must be decided in before it is tested against the fleet
EXAMPLES = 5


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position (0-based) where ``a`` and ``b`` differ within their common length;
    None when one is a prefix of the other."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None


@dataclass(frozen=True)
class Divergence:
    mine: q.GroupOutput
    other: q.GroupOutput
    position: int

    @property
    def common(self) -> int:
        return min(len(self.mine.output_ids), len(self.other.output_ids))

    @property
    def late(self) -> bool:
        """In the second half of the common length."""
        return self.position >= self.common / 2

    def logprobs(self) -> tuple[float | None, float | None]:
        def at(o: q.GroupOutput) -> float | None:
            return o.output_logprobs[self.position] if o.output_logprobs else None

        return at(self.mine), at(self.other)


@dataclass
class UnitTally:
    decided: int = 0
    diverged: list[Divergence] = field(default_factory=list)
    pairs: int = 0
    pairs_agree: int = 0
    variants: int = 0  # groups in which the unit itself gave more than one output


def _tally(groups: dict[int, list[q.GroupOutput]]) -> tuple[dict[str, UnitTally], int, int]:
    tallies: dict[str, UnitTally] = defaultdict(UnitTally)
    divergent_groups = 0
    for outs in groups.values():
        pos = {
            (a.unit, b.unit): first_difference(a.output_ids, b.output_ids)
            for a in outs
            for b in outs
            if a.unit != b.unit
        }
        if any(p is not None for p in pos.values()):
            divergent_groups += 1
        for me in outs:
            t = tallies[me.unit]
            t.variants += me.variants > 1
            others = [o for o in outs if o.unit != me.unit]
            against = [o for o in others if pos[(me.unit, o.unit)] is not None]
            t.pairs += len(others)
            t.pairs_agree += len(others) - len(against)
            if 2 * len(against) > len(others):
                t.decided += 1
                other = min(against, key=lambda o: (o.t_arrival, o.request_id))
                t.diverged.append(Divergence(me, other, int(pos[(me.unit, other.unit)] or 0)))
            elif 2 * (len(others) - len(against)) > len(others):
                t.decided += 1
    return dict(tallies), divergent_groups, len(groups)


@analyzer(NAME)
def output_divergence(ctx: AnalysisContext) -> list[Finding]:
    model = str(ctx.options.get("model") or "")
    sample = q.group_outputs(ctx.store, ctx.window(), model, MAX_GROUPS, MAX_ROWS)
    by_key: dict[int, list[q.GroupOutput]] = defaultdict(list)
    for r in sample.outputs:
        by_key[r.group].append(r)
    groups = {g: outs for g, outs in by_key.items() if len(outs) >= 2}
    if not groups:
        return []
    tallies, divergent, compared = _tally(groups)
    if divergent == 0:
        return []
    units = sorted(tallies)
    tested = [u for u in units if tallies[u].decided >= MIN_GROUPS] if len(units) >= 3 else []
    rests = {u: _rest(u, tested) for u in tested}
    pvals = []
    for u in tested:
        k, n = len(tallies[u].diverged), tallies[u].decided
        rest_k = sum(len(tallies[v].diverged) for v in rests[u])
        rest_n = sum(tallies[v].decided for v in rests[u])
        pvals.append(fisher_greater(k, n, rest_k, rest_n) if rest_n else 1.0)
    out: list[Finding] = []
    flagged: set[str] = set()
    for u, p, p_holm in zip(tested, pvals, holm(pvals), strict=True):
        t = tallies[u]
        k, n = len(t.diverged), t.decided
        if p_holm < ALPHA and k >= MIN_DIVERGENT and k / n >= WARN_SHARE:
            flagged.add(u)
            rest_k = sum(len(tallies[v].diverged) for v in rests[u])
            rest_n = sum(tallies[v].decided for v in rests[u])
            severity = "error" if k / n >= ERROR_SHARE and k >= ERROR_MIN else "warning"
            out.append(_unit_finding(ctx, u, t, severity, p, p_holm, rest_k, rest_n, compared))
    if not flagged:
        out.append(_fleet_finding(ctx, tallies, divergent, compared))
    for f in out:
        if f.values is not None and sample.prompt_share < 1.0:
            f.values["prompt_share_sampled"] = round(sample.prompt_share, 6)
    return out


def _rest(unit: str, tested: list[str]) -> list[str]:
    """What ``unit`` is tested against: the units of the other deployments where there are
    any (a canary's replicas share its configuration, so its siblings are no control), else
    the other units."""
    dep = split_unit(unit)[1]
    others = [v for v in tested if split_unit(v)[1] != dep]
    return others or [v for v in tested if v != unit]


def _example(ctx: AnalysisContext, d: Divergence) -> dict[str, Any]:
    a, b = d.mine.output_ids[d.position], d.other.output_ids[d.position]
    la, lb = d.logprobs()
    return {
        "request_id": d.mine.request_id,
        "other_request_id": d.other.request_id,
        "other_replica": unit_label(d.other.unit),
        "position": d.position,
        "common_length": d.common,
        "id": a,
        "piece": piece(ctx, a),
        "other_id": b,
        "other_piece": piece(ctx, b),
        "logprob": la,
        "other_logprob": lb,
        "logprob_gap": None if la is None or lb is None else round(abs(la - lb), 6),
        "prompt_tokens": d.mine.prompt_len,
        "greedy": d.mine.greedy,
    }


def _positions(divs: list[Divergence]) -> dict[str, Any]:
    pos = [d.position for d in divs]
    gaps = [abs(a - b) for a, b in (d.logprobs() for d in divs) if a is not None and b is not None]
    return {
        "first_position_min": min(pos),
        "first_position_p50": statistics.median(pos),
        "late_share": round(sum(d.late for d in divs) / len(divs), 4),
        "logprob_gap_p50": round(statistics.median(gaps), 6) if gaps else None,
        "logged_logprobs": len(gaps),
    }


def _unit_finding(
    ctx: AnalysisContext,
    unit: str,
    t: UnitTally,
    severity: str,
    p: float,
    p_holm: float,
    rest_k: int,
    rest_n: int,
    compared: int,
) -> Finding:
    divs = sorted(t.diverged, key=lambda d: (d.mine.t_arrival, d.mine.request_id))
    k, n = len(divs), t.decided
    first = _example(ctx, divs[0])
    tok = f"{first['id']}" + (f" {first['piece']!r}" if first["piece"] else "")
    other = f"{first['other_id']}" + (f" {first['other_piece']!r}" if first["other_piece"] else "")
    rest = rest_k / rest_n if rest_n else 0.0
    return finding(
        NAME,
        NAME,
        severity,
        f"{unit_label(unit)}: {k} of {n} prompts decoded deterministically (greedy or one seed) "
        f"gave another output than the rest of the fleet ({k / n:.0%} vs {rest:.0%} elsewhere, "
        f"p={p_holm:.2g} Holm); first at position {first['position']}: {tok} vs {other} on "
        f"{first['other_replica']}",
        unit=unit,
        t_start=divs[0].mine.t_arrival,
        values={
            "diverging": k,
            "decided": n,
            "share": round(k / n, 4),
            "rest_diverging": rest_k,
            "rest_decided": rest_n,
            "rest_share": round(rest, 4),
            "pairs": t.pairs,
            "pairs_agree": t.pairs_agree,
            "groups_compared": compared,
            "self_inconsistent_groups": t.variants,
            "test": "fisher_exact_one_sided+holm",
            "p_value": p,
            "p_holm": p_holm,
            "thresholds": {"warn_share": WARN_SHARE, "min": MIN_DIVERGENT, "alpha": ALPHA},
            **_positions(divs),
        },
        evidence={
            "first_seen": divs[0].mine.t_arrival,
            "request_ids": [d.mine.request_id for d in divs[:10]],
            "first_divergence": first,
            "examples": [_example(ctx, d) for d in divs[1:EXAMPLES]],
            "hint": "a replica that decodes deterministically yet differs from the rest: "
            "other numerics (dtype, quantisation, kernels), weights, tokenizer or engine build; "
            "skew.logprobs with --model re-scores its outputs",
        },
    )


def _fleet_finding(
    ctx: AnalysisContext, tallies: dict[str, UnitTally], divergent: int, compared: int
) -> Finding:
    divs = sorted(
        (d for t in tallies.values() for d in t.diverged),
        key=lambda d: (d.mine.t_arrival, d.mine.request_id),
    )
    share = divergent / compared
    severity = "warning" if share >= WARN_SHARE and divergent >= MIN_DIVERGENT else "info"
    units = sorted(tallies)
    deps = {split_unit(u)[1] for u in units}
    pairs = sum(t.pairs for t in tallies.values()) // 2
    agree = sum(t.pairs_agree for t in tallies.values()) // 2
    who = (
        f"between {unit_label(units[0])} and {unit_label(units[1])} (two replicas: which one "
        "departs cannot be told)"
        if len(units) == 2
        else f"across {len(units)} replicas, none standing out"
    )
    per_unit = {
        unit_label(u): {"diverging": len(t.diverged), "decided": t.decided}
        for u, t in sorted(tallies.items())
    }
    ex = [_example(ctx, d) for d in divs[:EXAMPLES]]
    return finding(
        NAME,
        NAME,
        severity,
        f"{divergent} of {compared} prompts decoded deterministically on several replicas gave "
        f"different outputs ({share:.1%}) {who}"
        + (
            "; under the threshold for batch-shape noise in engines that are not batch-invariant"
            if severity == "info"
            else ""
        ),
        deployment=next(iter(deps)) if len(deps) == 1 else None,
        t_start=divs[0].mine.t_arrival if divs else None,
        values={
            "diverging_groups": divergent,
            "groups_compared": compared,
            "share": round(share, 4),
            "pairs": pairs,
            "pairs_agree": agree,
            "replicas": per_unit,
            "thresholds": {"warn_share": WARN_SHARE, "min": MIN_DIVERGENT},
            **(_positions(divs) if divs else {}),
        },
        evidence={
            "first_seen": divs[0].mine.t_arrival if divs else None,
            "request_ids": sorted({d.mine.request_id for d in divs})[:10],
            "examples": ex,
        },
    )
