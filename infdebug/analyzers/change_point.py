"""Level shifts in time (analyzer ``change_point``, kind ``replica.change_point``): a replica
whose latency rose at some moment and stayed up, with when it started and what changed then.

The series: per model, unit (replica within deployment: ``q_common.UNIT``) and metric (queue
time, TTFT, inter-token and e2e latency), each request's mid-percentile among the model's requests
of the same covariate stratum (``store.q_latency``: prompt length, cached share and load
for TTFT, batch size and context for inter-token latency, …) pooled over the replicas and the
whole window. Percentiles within strata take out what merely follows the workload: a shift to
longer prompts at 14:00 moves TTFT, not these percentiles. Binned in ``BINS`` equal spans of
the window (the resolution of "when"). A replica name under another deployment label is
another pod (``q_common``), so a series never spans a relabel: the deployments are compared
with each other by ``replica.latency_regression``.

The test: CUSUM of the percentiles (a rank CUSUM, close kin of Pettitt's test): the split
is where the cumulative deviation from the series mean is largest; max |S| / (σ √N) against
the Kolmogorov distribution (the supremum of a Brownian bridge), at least ``MIN_SIDE``
requests each side, Benjamini-Hochberg over every replica × metric (``ALPHA``). The effect:
the replica's own requests after the split against before, within the same strata, as a
Hodges-Lehmann shift on the log scale with its 95 % interval (the stratified test
inverted, as for ``replica.latency_regression``); flagged beyond the tolerance
(``ctx.options["tolerance"]``, default 10 %) and the metric's absolute floor.

Past ``latency_regression.SAMPLE_CAP`` requests (``ctx.options["latency_sample"]``) the
series are of whole time slices sampled by hash (``q_latency.Sampling``), as for
``replica.latency_regression``.

What coincides: a change of engine, engine version, tokenizer or chat template fingerprint
on that unit, a (re)start of it (lifecycle events), or another deployment of the model
starting (or ceasing) to serve, within ``TIE_BINS`` bins of the split, is named in
the finding (``values.coincides``).

Severity: a slowdown is a ``warning`` (``error`` when the whole interval lies beyond twice
the tolerance); a speed-up is ``info``, and reported only when it coincides with a change
(a rollback or an upgrade that helped). Metrics of one replica whose splits fall within
``TIE_BINS`` bins of each other are one finding.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.latency_regression import (
    CI_LEVEL,
    FLOOR_S,
    NAMES,
    fmt_clock,
    fmt_rel,
    fmt_s,
    parse_tolerance,
    sample_cap,
)
from infdebug.analyzers.stats import (
    Sample,
    aligned_shift,
    benjamini_hochberg,
    cusum_shift,
)
from infdebug.schema import Finding
from infdebug.store import q_change as qc
from infdebug.store import q_latency as q
from infdebug.store.q_common import split_unit, unit_label
from infdebug.store.q_latency import ALL, Sampling

ANALYZER = "change_point"
KIND = "replica.change_point"
BINS = 64
MIN_SIDE = 30
ALPHA = 0.01
TIE_BINS = 2
EVIDENCE_IDS = 5
FIELDS = ("engine", "engine_version", "tokenizer_fp", "template_fp")


@dataclass
class Candidate:
    model: str
    unit: str
    metric: str
    split: int  # index of the first bin after the split
    t_split: float  # first arrival after the split
    t_before: float  # last arrival before it
    statistic: float
    p: float
    n_before: int
    n_after: int
    direction: int
    origin: float = 0.0
    q: float = 1.0
    sampling: Sampling = ALL  # the requests the series counted (the split reads them)
    extra: dict[str, Any] = field(default_factory=dict)


def _reps_sample(reps: tuple[int, ...], n: int) -> Sample:
    vals = (np.asarray(reps, dtype=np.float64) + 0.5) * math.log(q.RANK_RATIO)
    return Sample(vals, np.full(len(reps), n / max(len(reps), 1), dtype=np.float64))


def candidates(bins: list[qc.SeriesBin]) -> list[Candidate]:
    """One CUSUM test per (model, unit, metric) series with enough requests each side."""
    by: dict[tuple[str, str, str], list[qc.SeriesBin]] = defaultdict(list)
    for b in bins:
        by[(b.model, b.unit, b.metric)].append(b)
    out = []
    for (model, unit, metric), bs in sorted(by.items()):
        bs.sort(key=lambda b: b.tbin)
        ls = cusum_shift([b.n for b in bs], [b.u_sum for b in bs], [b.u_sq for b in bs])
        if ls.direction == 0:
            continue
        n_before = sum(b.n for b in bs[: ls.split])
        n_after = sum(b.n for b in bs[ls.split :])
        if n_before < MIN_SIDE or n_after < MIN_SIDE:
            continue
        out.append(
            Candidate(
                model,
                unit,
                metric,
                ls.split,
                bs[ls.split].t_first,
                bs[ls.split - 1].t_last,
                ls.statistic,
                ls.p_value,
                n_before,
                n_after,
                ls.direction,
            )
        )
    return out


@dataclass(frozen=True)
class Change:
    """Something that changed on a unit (or in its fleet) at ``t``."""

    t: float
    what: str  # a FIELDS name, "restart" or "deployment_started"
    before: str | None
    after: str | None

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "what": self.what, "from": self.before, "to": self.after}

    def text(self) -> str:
        if self.what == "restart":
            return "a restart of the replica"
        if self.what == "deployment_started":
            return f"deployment {self.after} starting to serve"
        if self.what == "deployment_stopped":
            return f"deployment {self.before} ceasing to serve"
        return f"{self.what} {self.before or '?'} → {self.after or '?'}"


def changes_of(
    unit: str, model: str, cfgs: list[qc.Config], events: list[tuple[str, str, float]]
) -> list[Change]:
    """What changed on ``unit`` over the window (its builds by first appearance, its
    lifecycle events) and when deployments of the model started or ceased to serve."""
    mine = sorted(
        (c for c in cfgs if c.model == model and c.unit == unit),
        key=lambda c: (c.t_first, c.engine, c.engine_version, c.tokenizer_fp, c.template_fp),
    )
    out: list[Change] = []
    for prev, cur in zip(mine, mine[1:], strict=False):
        a = _fields(prev)
        b = _fields(cur)
        for name in FIELDS:
            if a[name] != b[name]:
                out.append(Change(cur.t_first, name, a[name] or None, b[name] or None))
    for u, name, t in events:
        if u == unit:
            out.append(Change(t, "restart", None, name))
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for c in cfgs:
        if c.model == model:
            dep = split_unit(c.unit)[1] or "(none)"
            first[dep] = min(first.get(dep, math.inf), c.t_first)
            last[dep] = max(last.get(dep, -math.inf), c.t_last)
    t0, t1 = min(first.values(), default=math.inf), max(last.values(), default=-math.inf)
    for dep in first:
        if first[dep] > t0:
            out.append(Change(first[dep], "deployment_started", None, dep))
        if last[dep] < t1:
            out.append(Change(last[dep], "deployment_stopped", dep, None))
    return sorted(out, key=lambda c: (c.t, c.what, str(c.after), str(c.before)))


def _order(ch: Change) -> tuple[int, float]:
    """Build changes first, then deployments starting, then restarts."""
    rank = {
        "deployment_started": len(FIELDS),
        "deployment_stopped": len(FIELDS),
        "restart": len(FIELDS) + 1,
    }
    return (FIELDS.index(ch.what) if ch.what in FIELDS else rank[ch.what], ch.t)


def _fields(c: qc.Config) -> dict[str, str]:
    return {
        "engine": c.engine,
        "engine_version": c.engine_version,
        "tokenizer_fp": c.tokenizer_fp,
        "template_fp": c.template_fp,
    }


@analyzer(ANALYZER)
def change_point_analyzer(ctx: AnalysisContext) -> list[Finding]:
    tol = parse_tolerance(ctx.options.get("tolerance"))
    w = ctx.window()
    sp = ctx.shared(("latency span",), lambda: q.span(ctx.store, w))
    if sp is None or sp.t_max <= sp.t_min:
        return []
    width = (sp.t_max - sp.t_min) / BINS * (1 + 1e-9)
    sampling = q.Sampling.for_span(sp, sample_cap(ctx))
    series = qc.series(
        ctx.store, w, origin=sp.t_min, width=width, sampling=sampling, scratch=ctx.scratch
    )
    cands = candidates(series)
    for c, qv in zip(cands, benjamini_hochberg([c.p for c in cands]), strict=True):
        c.q, c.origin, c.sampling = qv, sp.t_min, sampling
    cfgs = ctx.shared(("configs",), lambda: qc.configs(ctx.store, w))
    events = qc.lifecycle(ctx.store, w, ["process_start", "ready"])
    kept: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for c in cands:
        if c.q >= ALPHA:
            continue
        if _measure(ctx, c, tol):
            kept[(c.model, c.unit)].append(c)
    out = []
    for (model, unit), cs in sorted(kept.items()):
        changes = changes_of(unit, model, cfgs, events)
        for group in _clusters(cs, width):
            f = _finding(ctx, model, unit, group, changes, width, tol)
            if f is not None:
                out.append(f)
    return out


def _measure(ctx: AnalysisContext, c: Candidate, tol: float) -> bool:
    """The shift after the split against before, within strata; True when beyond the
    tolerance either way (filled into ``c.extra``)."""
    w = ctx.window()
    cells = qc.split_cells(
        ctx.store,
        w,
        c.model,
        c.metric,
        c.unit,
        c.t_split,
        c.origin,
        sampling=c.sampling,
        scratch=ctx.scratch,
    )
    pairs = [
        (_reps_sample(s.reps_after, s.n_after), _reps_sample(s.reps_before, s.n_before))
        for s in cells
        if s.n_after and s.n_before
    ]
    sh = aligned_shift(pairs, CI_LEVEL)
    if sh is None:
        return False
    rel, lo, hi = math.expm1(sh.estimate), math.expm1(sh.lo), math.expm1(sh.hi)
    slower = rel > tol
    faster = rel < 1 / (1 + tol) - 1
    if not (slower or faster):
        return False
    after, before = qc.split_sides(ctx.store, w, c.model, c.metric, c.unit, c.t_split)
    shift_s = rel * before.quantiles[0]
    if not abs(shift_s) >= FLOOR_S[c.metric]:
        return False
    c.extra = {
        "metric": c.metric,
        "shift": round(rel, 4),
        "shift_ci": [round(lo, 4), round(hi, 4)],
        "shift_s": shift_s,
        "p50_before_s": before.quantiles[0],
        "p50_after_s": after.quantiles[0],
        "p90_before_s": before.quantiles[1],
        "p90_after_s": after.quantiles[1],
        "requests_before": c.n_before,
        "requests_after": c.n_after,
        "strata_compared": len(pairs),
        "t_split": c.t_split,
        "t_last_before": c.t_before,
        "statistic": round(c.statistic, 4),
        "p_value": c.p,
        "q_value": c.q,
        "severity": ("error" if lo > 2 * tol else "warning") if slower else "info",
    }
    return True


def _clusters(cs: list[Candidate], width: float) -> list[list[Candidate]]:
    """Candidates of one unit grouped by split time (within TIE_BINS bins)."""
    out: list[list[Candidate]] = []
    for c in sorted(cs, key=lambda c: (c.t_split, c.metric)):
        if out and c.t_split - out[-1][0].t_split <= TIE_BINS * width:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def _finding(
    ctx: AnalysisContext,
    model: str,
    unit: str,
    group: list[Candidate],
    changes: list[Change],
    width: float,
    tol: float,
) -> Finding | None:
    ms = [c.extra for c in group]
    slow = [m for m in ms if m["shift"] > 0]
    t_split = min(c.t_split for c in group)
    t_before = max(c.t_before for c in group if c.t_split == t_split)
    near = [
        ch for ch in changes if t_before - TIE_BINS * width <= ch.t <= t_split + TIE_BINS * width
    ]
    if not slow and not near:
        return None  # a speed-up with nothing to explain it: not a problem to report
    ms = sorted(ms, key=lambda m: (m["shift"] <= 0, -abs(m["shift_ci"][0]), m["metric"]))
    head = ms[0]
    severity = (
        "error" if any(m["severity"] == "error" for m in ms) else ("warning" if slow else "info")
    )
    label = unit_label(unit)
    head_c = next(c for c in group if c.metric == head["metric"])
    if head["shift"] > 0:
        ids = q.slowest(
            ctx.store,
            ctx.window(),
            model,
            head["metric"],
            EVIDENCE_IDS,
            units=[unit],
            since=head_c.t_split,
        )
    else:
        ids = []
    direction = "rose" if head["shift"] > 0 else "fell"
    texts = list(dict.fromkeys(ch.text() for ch in sorted(near, key=_order)))
    why = "; coincides with " + ", ".join(texts) if texts else ""
    others = ", ".join(f"{NAMES[m['metric']]} {fmt_rel(m['shift'])}" for m in ms[1:])
    summary = (
        f"{label}: {NAMES[head['metric']]} {direction} {fmt_rel(head['shift'])} "
        f"(95% CI {fmt_rel(head['shift_ci'][0])} to {fmt_rel(head['shift_ci'][1])}) from "
        f"{fmt_clock(t_split)} on, like for like (p50 {fmt_s(head['p50_before_s'])} → "
        f"{fmt_s(head['p50_after_s'])}; tolerance {tol:.0%})"
        + (f"; also {others}" if others else "")
        + why
    )
    values = {
        "model": model,
        "metric": head["metric"],
        "shift": head["shift"],
        "shift_ci": head["shift_ci"],
        "t_split": t_split,
        "t_last_before": t_before,
        "resolution_s": width,
        "tolerance": tol,
        "test": "cusum_of_stratum_percentiles+benjamini_hochberg",
        "p_value": head["p_value"],
        "q_value": head["q_value"],
        "metrics": {m["metric"]: {k: v for k, v in m.items() if k != "metric"} for m in ms},
        "coincides": [ch.to_json() for ch in near],
    }
    evidence = {
        "request_ids": [rid for rid, _ in ids],
        "slowest_after": [{"request_id": rid, "s": v} for rid, v in ids],
        "changes": [ch.to_json() for ch in changes],
    }
    return finding(
        ANALYZER,
        KIND,
        severity,
        summary,
        unit=unit,
        t_start=t_split,
        values=values,
        evidence=evidence,
    )
