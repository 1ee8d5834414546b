"""The replicas' side of a workload (see ``infdebug.workload`` for the definitions): start-up
times from lifecycle events, the per-replica capacity (given or derived from the logs), the
replicas the peak and the median minute need, and decode bandwidth utilisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PHASES = ("weights_loaded", "warmup_done", "ready")

# --- start-up -------------------------------------------------------------------------------

EventRow = tuple[str, str | None, int | None, str, float, float | None, float | None]


@dataclass(frozen=True)
class Startup:
    """One replica process's start: when, how long to ready (None: never ready in the
    window) and the phases' durations (weights_loaded, warmup_done, ready)."""

    replica: str
    deployment: str | None
    pid: int | None
    t_start: float
    total_s: float | None
    phases: dict[str, float] = field(default_factory=dict)


def startups(events: Sequence[EventRow]) -> list[Startup]:
    """Starts from lifecycle events ordered by replica, deployment, time: a start opens at
    ``process_start`` (or at the first phase event of another pid, or after a ready start)
    and ends at ``ready``; ``shutdown`` closes it."""
    out: list[Startup] = []
    cur: dict[str, Any] | None = None

    def close() -> None:
        nonlocal cur
        if cur is not None:
            out.append(Startup(**cur))
        cur = None

    key: tuple[str, str | None] | None = None
    for replica, deployment, pid, name, t, duration, since in events:
        if (replica, deployment) != key:
            close()
            key = (replica, deployment)
        if name == "shutdown":
            close()
            continue
        new = (
            cur is None
            or name == "process_start"
            or cur["total_s"] is not None
            or (pid is not None and cur["pid"] is not None and pid != cur["pid"])
        )
        if new:
            close()
            start = t if name == "process_start" else t - (since or duration or 0.0)
            cur = {
                "replica": replica,
                "deployment": deployment,
                "pid": pid,
                "t_start": start,
                "total_s": None,
                "phases": {},
            }
            if name == "process_start":
                continue
        assert cur is not None
        if cur["pid"] is None:
            cur["pid"] = pid
        if duration is not None:
            cur["phases"][name] = duration
        if name == "ready":
            cur["total_s"] = since if since is not None else t - cur["t_start"]
    close()
    return out


def _q(values: Sequence[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if len(values) else None


def startup_summary(starts: Sequence[Startup]) -> dict[str, Any] | None:
    """Start-up times over all starts and per replica (within its deployment)."""
    if not starts:
        return None
    totals = [s.total_s for s in starts if s.total_s is not None]
    slowest = max(
        (s for s in starts if s.total_s is not None), key=lambda s: s.total_s or 0.0, default=None
    )
    per: dict[tuple[str, str | None], list[Startup]] = {}
    for s in starts:
        per.setdefault((s.replica, s.deployment), []).append(s)

    def phases(group: Sequence[Startup]) -> dict[str, float | None]:
        return {
            p: _q([s.phases[p] for s in group if p in s.phases], 0.5)
            for p in PHASES
            if any(p in s.phases for s in group)
        }

    replicas = []
    for (rep, dep), group in sorted(per.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        tot = [s.total_s for s in group if s.total_s is not None]
        replicas.append(
            {
                "replica": rep,
                "deployment": dep,
                "starts": len(group),
                "ready": len(tot),
                "median_s": _q(tot, 0.5),
                "max_s": max(tot) if tot else None,
                "phases_s": phases(group),
            }
        )
    return {
        "starts": len(starts),
        "ready": len(totals),
        "total_s": {
            "median": _q(totals, 0.5),
            "p90": _q(totals, 0.9),
            "max": max(totals) if totals else None,
        },
        "slowest": None
        if slowest is None
        else {
            "replica": slowest.replica,
            "deployment": slowest.deployment,
            "total_s": slowest.total_s,
        },
        "phases_s": phases(starts),
        "replicas": replicas,
    }


# --- capacity, replicas, bandwidth ----------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    rps: float
    source: str  # given | observed_slo (SLO-meeting minute) | observed (busiest minute)
    replica: str | None = None  # where it was observed
    minute: int | None = None  # which minute since the first arrival
    goal: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "rps": self.rps,
            "source": self.source,
            "replica": self.replica,
            "minute": self.minute,
            "slo_goal": self.goal,
        }


@dataclass(frozen=True)
class ReplicasNeeded:
    peak: int | None
    median: int | None

    @property
    def overprovision(self) -> float | None:
        """Peak replicas ÷ median replicas: what a fleet sized for its peak minute holds
        in a typical minute."""
        if self.peak is None or not self.median:
            return None
        return self.peak / self.median

    def to_json(self) -> dict[str, Any]:
        return {"peak": self.peak, "median": self.median, "overprovision": self.overprovision}


def replicas_needed(
    peak_rps: float | None, median_rps: float | None, capacity: Capacity | None
) -> ReplicasNeeded:
    """⌈rate ÷ capacity⌉ for the peak and the median minute (None without a capacity)."""
    if capacity is None or peak_rps is None or median_rps is None:
        return ReplicasNeeded(None, None)

    def need(rate: float) -> int:
        return max(0, math.ceil(rate / capacity.rps - 1e-9))

    return ReplicasNeeded(need(peak_rps), need(median_rps))


@dataclass(frozen=True)
class UnitLoad:
    """What capacity is derived from, per replica (within its deployment)."""

    replica: str
    requests: int
    judged: int
    met: int
    best_minute_requests: int  # the most arrivals in one whole minute that met the goal
    best_minute: int | None  # None: no whole minute met it


def derive_capacity(
    units: Sequence[UnitLoad],
    *,
    whole_minutes: int,
    span_s: float | None,
    slo_given: bool,
    goal: float,
) -> Capacity | None:
    """The highest sustained per-replica throughput observed: the most arrivals one
    replica had in a whole minute whose SLO attainment reached ``goal`` (any whole minute
    without budgets), ÷ 60. With no whole minute in the span, each replica's whole span
    counts as its one window (if its attainment over the span reached the goal). Ties go
    to the replica named first, so the result does not depend on the order of replicas."""
    best: tuple[float, str, int] | None = None
    for u in sorted(units, key=lambda u: u.replica):
        if whole_minutes >= 1:
            if u.best_minute is None or u.best_minute_requests == 0:
                continue
            cand = (u.best_minute_requests / 60.0, u.replica, u.best_minute)
        else:
            ok = not slo_given or (u.judged > 0 and u.met >= goal * u.judged)
            if not ok or not span_s:
                continue
            cand = (u.requests / span_s, u.replica, 0)
        if best is None or cand[0] > best[0]:
            best = cand
    if best is None:
        return None
    source = "observed_slo" if slo_given else "observed"
    return Capacity(best[0], source, best[1], best[2], goal if slo_given else None)


@dataclass(frozen=True)
class DecodeBandwidth:
    """One replica's decode steps and, with the model's size and the peak bandwidth, the
    share of that bandwidth reading the weights once per step takes."""

    replica: str
    decode_s: float  # Σ first-to-last output token time
    steps: int  # Σ (output tokens − 1)
    weights_gb: float
    peak_gbs: float

    @property
    def step_s(self) -> float | None:
        return self.decode_s / self.steps if self.steps and self.decode_s > 0 else None

    @property
    def achieved_gbs(self) -> float | None:
        s = self.step_s
        return self.weights_gb / s if s else None

    @property
    def utilisation(self) -> float | None:
        g = self.achieved_gbs
        return g / self.peak_gbs if g is not None else None

    def to_json(self) -> dict[str, Any]:
        s = self.step_s
        return {
            "replica": self.replica,
            "decode_steps": self.steps,
            "mean_step_s": s,
            "steps_per_s": 1.0 / s if s else None,
            "achieved_gbs": self.achieved_gbs,
            "utilisation": self.utilisation,
        }
