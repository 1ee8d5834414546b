"""Start-up analyzer: a replica that takes much longer than its fleet to become ready.

``slow_start`` (kind ``replica.slow_start``) rebuilds each start from the lifecycle events
(``store.q_startup``): process start, then the phases that end in weights_loaded,
warmup_done and ready (and any other phase an engine names), each with its duration (the
event's ``duration_s``, else the time since the previous event). A start's time to ready is
compared with every other start in the window by a leave-one-out robust z
(``analyzers.robust``: the others' median and scaled MAD, the spread floored at 5 % of the
median and 0.1 s); it is an outlier when z ≥ 3.5 **and** it is at least 1 s and 25 % slower
than the median, so 2.1 s against 2.0 s is never a finding however tight the fleet. The
finding names the phase that carried the excess (the largest excess over the others'
median of the same phase) and its share of the whole. A start with no ready event is not
judged (it may still be starting, or it crashed: ``values.incomplete`` counts them).

Fleets scale out by starting replicas: a slow start is capacity lost when it is needed most.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.robust import leave_one_out, median
from infdebug.schema import Finding
from infdebug.store import q_startup as q
from infdebug.store.q_common import unit_label

Z = 3.5
MIN_STARTS = 3  # starts in the window before any is judged
MIN_EXCESS_S = 1.0
MIN_EXCESS_REL = 0.25
SPREAD_FLOOR_S = 0.1
SPREAD_FLOOR_REL = 0.05
SAME_START_S = 1.0  # events whose implied process start differs by more are another start
READY = "ready"
START = "process_start"


@dataclass
class Start:
    """One process start of one unit, up to its first ready."""

    unit: str
    pid: int
    t_start: float
    phases: list[tuple[str, float]] = field(default_factory=list)  # (name, seconds), in order
    ready_t: float | None = None
    total_s: float | None = None
    _last_t: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.unit}\x00{self.pid}\x00{self.t_start:.3f}"


def build_starts(events: list[q.LifecycleEvent]) -> list[Start]:
    """Starts from events sorted by (unit, pid, t): a new start at each process_start, or
    where an event's implied process start (t − since_start_s) is another one."""
    out: list[Start] = []
    cur: Start | None = None
    for e in events:
        implied = e.t - e.since_start_s if e.since_start_s is not None else None
        same = (
            cur is not None
            and cur.unit == e.unit
            and cur.pid == e.pid
            and e.name != START
            and (implied is None or abs(implied - cur.t_start) <= SAME_START_S)
        )
        if not same:
            if e.name != START and implied is None:
                cur = None  # a phase with no start to measure it from
                continue
            cur = Start(e.unit, e.pid, e.t if e.name == START else float(implied or e.t))
            cur._last_t = cur.t_start
            out.append(cur)
            if e.name == START:
                continue
        assert cur is not None
        if cur.ready_t is not None:
            continue  # after ready: not start-up
        d = e.duration_s if e.duration_s is not None else e.t - cur._last_t
        cur.phases.append((e.name, max(0.0, d)))
        cur._last_t = e.t
        if e.name == READY:
            cur.ready_t = e.t
            cur.total_s = e.since_start_s if e.since_start_s is not None else e.t - cur.t_start
    return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _phase_medians(starts: list[Start], exclude: str) -> dict[str, float]:
    by: dict[str, list[float]] = defaultdict(list)
    for s in starts:
        if s.key == exclude:
            continue
        per: dict[str, float] = defaultdict(float)
        for name, d in s.phases:
            per[name] += d
        for name, d in per.items():
            by[name].append(d)
    return {n: median(v) for n, v in by.items()}


@analyzer("slow_start")
def slow_start(ctx: AnalysisContext) -> list[Finding]:
    events, truncated = q.lifecycle_events(ctx.store, ctx.window())
    starts = build_starts(events)
    done = [s for s in starts if s.total_s is not None]
    if len(done) < MIN_STARTS:
        return []
    totals = {s.key: float(s.total_s or 0.0) for s in done}
    deps = leave_one_out(totals, floor=SPREAD_FLOOR_S, rel_floor=SPREAD_FLOOR_REL)
    flagged: dict[str, list[tuple[Start, Any]]] = defaultdict(list)
    for s in done:
        d = deps.get(s.key)
        if d is None:
            continue
        if d.z >= Z and d.diff >= max(MIN_EXCESS_S, MIN_EXCESS_REL * d.reference):
            flagged[s.unit].append((s, d))
    out = []
    for unit, items in sorted(flagged.items()):
        items.sort(key=lambda x: (-x[1].diff, x[0].t_start))
        s, d = items[0]
        meds = _phase_medians(done, s.key)
        mine: dict[str, float] = defaultdict(float)
        for name, dur in s.phases:
            mine[name] += dur
        phases = {
            name: {
                "duration_s": round(dur, 3),
                "fleet_median_s": round(meds[name], 3) if name in meds else None,
                "excess_s": round(dur - meds.get(name, 0.0), 3),
            }
            for name, dur in mine.items()
        }
        carried, info = max(phases.items(), key=lambda kv: (kv[1]["excess_s"] or 0.0, kv[0]))
        excess = float(info["excess_s"] or 0.0)
        share = excess / d.diff if d.diff > 0 else 0.0
        ref = info["fleet_median_s"]
        ref_text = f" vs {ref:.1f} s" if ref is not None else " (a phase the fleet does not have)"
        more = f"; {len(items)} slow starts of this replica" if len(items) > 1 else ""
        out.append(
            finding(
                "slow_start",
                "replica.slow_start",
                "warning",
                f"{unit_label(unit)} took {d.value:.1f} s from process start to ready, fleet "
                f"median {d.reference:.1f} s (+{d.diff:.1f} s, z={d.z:.1f}); {carried} "
                f"carried it: {info['duration_s']:.1f} s{ref_text} (+{excess:.1f} s, "
                f"{share * 100:.0f}% of the excess){more}",
                unit=unit,
                t_start=s.t_start,
                t_end=s.ready_t,
                values={
                    "time_to_ready_s": round(d.value, 3),
                    "fleet_median_s": round(d.reference, 3),
                    "excess_s": round(d.diff, 3),
                    "z": round(d.z, 3),
                    "spread_s": round(d.spread, 3),
                    "starts_compared": d.others + 1,
                    "carried_by": carried,
                    "carried_share": round(share, 4),
                    "phases": phases,
                    "slow_starts": len(items),
                    "incomplete": sum(1 for x in starts if x.total_s is None),
                    "truncated": truncated,
                    "test": "leave_one_out_robust_z (median/MAD) + absolute floor",
                },
                evidence={
                    "first_seen": s.t_start,
                    "pid": s.pid or None,
                    "process_start": _iso(s.t_start),
                    "slow_start_times": [_iso(x.t_start) for x, _ in items[:10]],
                },
            )
        )
    return out
