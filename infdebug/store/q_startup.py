"""Queries behind the start-up analyzer (``infdebug.analyzers.startup``): lifecycle events.

A replica process writes ``event`` records as it comes up (process_start, weights_loaded,
warmup_done, ready, …), each with the duration of the phase it ends and the seconds since
its process started. Only events are read here (they are few: a handful per start), XID
events excepted; a start is in the window when the process started in it (``t -
since_start_s``, or ``t`` where that is unknown).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import UNIT as _UNIT
from infdebug.store.q_common import window_params

XID_EVENT = "gpu_xid"
# Events after a replica is ready are not part of its start-up.
AFTER_READY = ("drain", "shutdown")
MAX_EVENTS = 200_000


@dataclass(frozen=True)
class LifecycleEvent:
    unit: str
    pid: int  # 0 where not logged
    t: float
    name: str
    duration_s: float | None
    since_start_s: float | None


def lifecycle_events(
    store: Store, window: Mapping[str, Any], limit: int = MAX_EVENTS
) -> tuple[list[LifecycleEvent], bool]:
    """Start-up events of processes that started in the window, by unit, pid and time;
    and whether ``limit`` cut them short."""
    _, rows = store.query(
        f"""
        SELECT {_UNIT} AS unit, ifNull(pid, 0) AS p, t, name, duration_s, since_start_s
        FROM events
        WHERE name != {{xid:String}} AND NOT has({{after:Array(String)}}, name)
          AND t - ifNull(since_start_s, 0) >= {{since:Float64}}
          AND t - ifNull(since_start_s, 0) < {{until:Float64}}
          AND (empty({{replicas:Array(String)}}) OR has({{replicas:Array(String)}}, replica))
        ORDER BY unit, p, t, name
        LIMIT {{limit:UInt64}}
        """,
        window_params(window, xid=XID_EVENT, after=list(AFTER_READY), limit=limit + 1),
    )
    out = [
        LifecycleEvent(
            str(r[0]),
            int(r[1]),
            float(r[2]),
            str(r[3]),
            None if r[4] is None else float(r[4]),
            None if r[5] is None else float(r[5]),
        )
        for r in rows[:limit]
    ]
    return out, len(rows) > limit
