"""Degenerate outputs: the ``repetition`` analyzer (kind ``output.repetition``).

An output counts as a loop when it ends in a short cycle of IDs (period ≤ ``MAX_PERIOD``)
repeated ≥ ``MIN_REPEATS`` times. Each replica's loop rate is compared with the rest of the
fleet (``output_drift.compare_rates``: one-sided Fisher exact test, Holm-corrected), and a
deployment whose replicas all loop alike with the other deployments.

Severity: a replica that loops more than the rest of the fleet is a warning, an error past
20 %. A rate the whole fleet shares is put down to the model only while it is a rate a
healthy model reaches (``LOOP_WARNING`` / ``LOOP_ERROR`` below); past them it is at least a
warning whatever the fleet shares.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.output_drift import (
    EVIDENCE_IDS,
    MIN_LOOK,
    MIN_REQUESTS,
    RateTest,
    compare_rates,
    piece,
    units_of,
    whole_deployments,
)
from infdebug.schema import Finding
from infdebug.store import q_outputs as q
from infdebug.store.q_common import split_unit, unit_label

MAX_PERIOD = 8
MIN_REPEATS = 10
# The outputs the store hands over as candidates, so that only those that can end in a loop
# are read: a loop of period ≤ MAX_PERIOD repeated ≥ MIN_REPEATS times leaves at most
# MAX_PERIOD distinct IDs among the last MIN_REPEATS (or the MIN_REPEATS before a final token).
CANDIDATE_LOOK = MIN_REPEATS
CANDIDATE_MAX_DISTINCT = MAX_PERIOD
TAIL_IDS = 160  # the last IDs of each candidate read (room for the longest loop twice over)
CANDIDATE_CAP = 2000  # candidates examined per replica, the earliest; past it loops are estimated
# A replica (or deployment) above the rest of the fleet: an error once this share of its
# outputs loop.
DRIFT_ERROR = 0.20
# Loop rates shared by the whole fleet. A trained chat model that ends its turn seldom ends
# an output in an exact short loop: the clean fleets of tests/fleetlogs loop on 0.4 %, and
# the degeneration greedy decoding is known for (Holtzman et al. 2019, "The Curious Case of
# Neural Text Degeneration") is open-ended continuation by base models, not answers that end
# a turn — a few percent at most. Past LOOP_WARNING, one output in five is unusable, which no
# healthy model does, however many replicas share it (a build whose every output collapses
# into one repeated token — a known vLLM failure of kernels / quantization — is shared by the
# whole fleet by construction): at least a warning. Past LOOP_ERROR, most outputs are broken:
# an error. Below LOOP_WARNING a shared rate is the model's own behaviour: info.
LOOP_WARNING = 0.20
LOOP_ERROR = 0.50
# At least this many loops before a rate is judged in absolute terms (5 % or the levels above).
MIN_LOOPS = 3


@dataclass(frozen=True)
class Loop:
    ids: list[int]
    period: int
    repeats: int


def tail_loop(
    ids: list[int], max_period: int = MAX_PERIOD, min_repeats: int = MIN_REPEATS
) -> Loop | None:
    """The shortest loop (period ≤ max_period) the sequence ends in, repeated ≥ min_repeats
    times; a single trailing token (an EOS after the loop) is allowed."""
    for seq in (ids, ids[:-1]):
        for p in range(1, max_period + 1):
            if len(seq) < p * min_repeats:
                break
            unit = seq[-p:]
            if p > 1 and len(set(unit)) == 1:
                continue  # a shorter period already covers it
            r = 1
            while (r + 1) * p <= len(seq) and seq[-(r + 1) * p : -r * p] == unit:
                r += 1
            if r >= min_repeats:
                return Loop(list(unit), p, r)
    return None


def _count(rc: q.RepetitionCandidates, loops: int) -> int:
    """Loops among a replica's outputs: counted, or — where more candidates than the cap were
    left unexamined — estimated from the share of the examined ones that loop (a fleet whose
    every output loops must not read as 2,000 of 100,000)."""
    if not rc.capped or not rc.candidates:
        return loops
    return min(rc.requests, round(loops * rc.candidates_total / len(rc.candidates)))


def severity_of(rate: float, k: int, t: RateTest | None, alike: bool) -> str:
    """A replica's severity: above the rest of the fleet (tested, or descriptively where too
    few requests for the test) by its rate; shared by the fleet by the absolute levels."""
    absolute = rate >= 0.05 and k >= MIN_LOOPS
    if (t is not None and t.flagged) or (absolute and t is None and not alike):
        return "error" if rate >= DRIFT_ERROR else "warning"
    if k >= MIN_LOOPS and rate >= LOOP_ERROR:
        return "error"
    if k >= MIN_LOOPS and rate >= LOOP_WARNING:
        return "warning"
    return "info"


@analyzer("repetition")
def repetition_analyzer(ctx: AnalysisContext) -> list[Finding]:
    cands = q.repetition_candidates(
        ctx.store,
        ctx.window(),
        look=CANDIDATE_LOOK,
        max_distinct=CANDIDATE_MAX_DISTINCT,
        tail=TAIL_IDS,
        cap=CANDIDATE_CAP,
    )
    cases: dict[str, list[tuple[str, float, Loop]]] = {}
    for rc in cands:
        hits: list[tuple[str, float, Loop]] = []
        for rid, t_arr, tail in rc.candidates:
            loop = tail_loop(tail)
            if loop is not None:
                hits.append((rid, t_arr, loop))
        cases[rc.replica] = hits
    counts = {rc.replica: (_count(rc, len(cases[rc.replica])), rc.requests) for rc in cands}
    tests = {t.replica: t for t in compare_rates(counts, min_diff=0.02, min_ratio=2.0)}
    capped = {rc.replica: rc.capped for rc in cands}
    fleet_k, fleet_n = sum(k for k, _ in counts.values()), sum(n for _, n in counts.values())
    out: list[Finding] = []
    deps = whole_deployments(counts, min_diff=0.02, min_ratio=2.0)
    for dep, dt in sorted(deps.items()):
        mine = units_of(counts, dep)
        found_dep = sorted((x for u in mine for x in cases[u]), key=lambda x: (x[1], x[0]))
        loops = Counter((tuple(lp.ids), lp.period) for _, _, lp in found_dep)
        (top_ids, top_period), _ = min(loops.items(), key=lambda kv: (-kv[1], kv[0]))
        out.append(
            finding(
                "repetition",
                "output.repetition",
                "error" if dt.rate >= DRIFT_ERROR else "warning",
                f"deployment {dep or '(none)'} ({len(mine)} replicas alike): {dt.k} of {dt.n} "
                f"outputs ({dt.rate:.1%}) "
                f"end in a loop vs {dt.rest_rate:.1%} on the other deployments "
                f"(p={dt.p_holm:.2g}, Holm); "
                f"most common {list(top_ids)}",
                deployment=dep or None,
                t_start=found_dep[0][1] if found_dep else None,
                values={**dt.values(), "replicas": [unit_label(u) for u in mine]},
                evidence={
                    "request_ids": [rid for rid, _, _ in found_dep[:EVIDENCE_IDS]],
                    "first_seen": found_dep[0][1] if found_dep else None,
                    "loop_ids": list(top_ids),
                    "period": top_period,
                },
            )
        )
    for rep in sorted(cases):
        found = cases[rep]
        if not found or (split_unit(rep)[1] or "") in deps:
            continue
        k, n = counts[rep]
        rate = k / n if n else 0.0
        t = tests.get(rep)
        # Too few requests for the test: compared descriptively (alike = within 2× or 5 points
        # of the rest). With no fleet to compare with at all, a high rate cannot be put down to
        # the model, so it stays a warning.
        rest_k, rest_n = fleet_k - k, fleet_n - n
        alone = rest_n < MIN_LOOK
        rest_rate = rest_k / rest_n if rest_n else 0.0
        alike = not alone and rate <= max(2 * rest_rate, rest_rate + 0.05)
        severity = severity_of(rate, k, t, alike)
        vs_fleet = t is not None and t.flagged
        absolute = rate >= 0.05 and k >= MIN_LOOPS
        why = []
        if vs_fleet and t is not None:
            why.append(f"vs {t.rest_rate:.1%} on the rest of the fleet, p={t.p_holm:.2g} Holm")
        elif absolute and (t is not None or alike) and severity == "info":
            why.append(
                f"the rest of the fleet loops alike, {rest_rate:.1%}: the model's own behaviour, "
                "not this replica's"
            )
        elif absolute and (t is not None or alike):
            why.append(
                f"the rest of the fleet loops alike, {rest_rate:.1%}, but ≥ {LOOP_WARNING:.0%} "
                "of outputs "
                "looping is no healthy model's behaviour: the model or the serving stack is broken "
                "fleet-wide"
            )
        elif absolute and not alone:
            why.append(
                f"vs {rest_rate:.1%} on the rest; too few requests (< {MIN_REQUESTS}) for a test"
            )
        elif absolute:
            why.append("≥ 5 % of its outputs, no fleet to compare with")
        out.append(
            _replica_finding(
                ctx,
                rep,
                found,
                k,
                n,
                rate,
                severity,
                why,
                t,
                capped.get(rep, False),
                fleet_k / fleet_n if fleet_n else 0.0,
            )
        )
    return out


def _replica_finding(
    ctx: AnalysisContext,
    rep: str,
    found: list[tuple[str, float, Loop]],
    k: int,
    n: int,
    rate: float,
    severity: str,
    why: list[str],
    t: RateTest | None,
    capped: bool,
    fleet_rate: float,
) -> Finding:
    loops = Counter((tuple(lp.ids), lp.period) for _, _, lp in found)
    (top_ids, top_period), top_n = loops.most_common(1)[0]
    top_piece = [piece(ctx, i) for i in top_ids] if ctx.tokenizer is not None else None
    values: dict[str, Any] = {
        "count": k,
        "requests": n,
        "rate": round(rate, 6),
        "fleet_loop_rate": round(fleet_rate, 6),
        "max_period": MAX_PERIOD,
        "min_repeats": MIN_REPEATS,
        "candidates_capped": capped,
    }
    if t is not None:
        values.update(
            {f"fleet_{key}": v for key, v in t.values().items() if key not in ("count", "requests")}
        )
    return finding(
        "repetition",
        "output.repetition",
        severity,
        f"{unit_label(rep)}: {k} of {n} outputs ({rate:.1%}) end in a loop of period "
        f"≤ {MAX_PERIOD} "
        f"repeated ≥ {MIN_REPEATS}×; most common {list(top_ids)}"
        + (f" ({'; '.join(why)})" if why else ""),
        unit=rep,
        t_start=found[0][1],
        values=values,
        evidence={
            "request_ids": [rid for rid, _, _ in found[:EVIDENCE_IDS]],
            "first_seen": found[0][1],
            "loop_ids": list(top_ids),
            "loop_pieces": top_piece,
            "period": top_period,
            "loop_count": top_n,
            "examples": [
                {"request_id": rid, "loop_ids": lp.ids, "period": lp.period, "repeats": lp.repeats}
                for rid, _, lp in found[:5]
            ],
        },
    )
