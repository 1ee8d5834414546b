"""Queries joining requests to the GPU samples of their replica while they ran (behind
``analyzers.gpu_health``): which requests decoded while a GPU throttled, and how fast.

A request's GPU state is that of the second its decode was half done (an ``ASOF JOIN`` of
its midpoint onto the replica's samples bucketed by second, any GPU throttled counting):
one lookup per request, not a range join over every sample of its lifetime. Only the
requests of the units asked about are read (the replica prefilter prunes by the primary
key); the fleet's p50 is a bfloat16 histogram quantile over every request (row-order free).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import UNIT as _UNIT
from infdebug.store.q_common import WINDOW as _RWINDOW
from infdebug.store.q_common import earliest_ids, split_unit, window_params
from infdebug.store.q_gpu import SLOWDOWN_REASONS


def _q(store: Store, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return store.query(sql, params)[1]


def _f(v: Any) -> float | None:
    if v is None:
        return None
    x = float(v)
    return None if x != x else x


# Time per output token of one request (its inter-token latency): the decode time (TTFT to
# the end) over the gaps between its output tokens. (Not from token_times_s: reading every
# request's per-token array would cost more than the rest of the analysis together.)
TPOT = """if(ifNull(output_tokens, length(output_ids)) >= 2,
    (e2e_s - ttft_s) / (ifNull(output_tokens, length(output_ids)) - 1), NULL)"""

# Each request of the bound units with the state of its replica's GPUs in the second its
# decode was half done (``st``: 1 throttled on any GPU, 0 not, 2 no sample near enough).
_JOINED = f"""(
    SELECT r.unit AS unit, r.request_id AS request_id, r.t_arrival AS t_arrival, r.tpot AS tpot,
           if(g.tb > 0 AND r.tm - g.tb <= {{near:Float64}}, g.thr, 2) AS st
    FROM (
        SELECT {_UNIT} AS unit, replica, request_id, t_arrival, {TPOT} AS tpot,
               t_arrival + (ifNull(ttft_s, 0) + ifNull(e2e_s, 0)) / 2 AS tm
        FROM requests
        WHERE {_RWINDOW} AND has({{reps:Array(String)}}, replica)
          AND has({{units:Array(String)}}, {_UNIT}) AND tpot IS NOT NULL
    ) AS r
    ASOF LEFT JOIN (
        SELECT replica, floor(t) AS tb,
               toUInt8(max(hasAny(throttle_reasons, {{slow:Array(String)}}))) AS thr
        FROM gpu_samples
        WHERE t >= {{since:Float64}} - 60 AND t < {{until:Float64}} + 60
          AND has({{reps:Array(String)}}, replica)
        GROUP BY replica, tb
    ) AS g ON r.replica = g.replica AND r.tm >= g.tb
)"""


@dataclass(frozen=True)
class ThrottleLatency:
    """One unit's requests split by the GPU state while they decoded."""

    unit: str
    n_thr: int
    n_ok: int
    n_unknown: int
    tpot_thr_s: float | None
    tpot_ok_s: float | None
    thr_request_ids: list[str]
    p_value: float | None = None  # Mann-Whitney U, two-sided, throttled vs not


def throttle_latency(
    store: Store, window: Mapping[str, Any], units: Sequence[str], *, min_n: int, near_s: float
) -> dict[str, ThrottleLatency]:
    """Per unit (of ``units``): requests decoding while a GPU of the replica was throttled
    against those decoding while none was: counts, p50 time per output token, the earliest
    throttled request IDs, and a Mann-Whitney U p-value where both sides have ``min_n``."""
    if not units:
        return {}
    p = window_params(
        window,
        units=sorted(units),
        reps=sorted({split_unit(u)[0] for u in units}),
        slow=list(SLOWDOWN_REASONS),
        near=float(near_s) + 1.0,  # + the one-second bucket
    )
    rows = _q(
        store,
        f"""
        SELECT unit, countIf(st = 1), countIf(st = 0), countIf(st = 2),
               quantileExactIf(0.5)(tpot, st = 1), quantileExactIf(0.5)(tpot, st = 0),
               {earliest_ids(10, "st = 1")}
        FROM {_JOINED}
        GROUP BY unit
        ORDER BY unit
        """,
        p,
    )
    out = {
        str(r[0]): ThrottleLatency(
            str(r[0]),
            int(r[1]),
            int(r[2]),
            int(r[3]),
            _f(r[4]) if int(r[1]) else None,
            _f(r[5]) if int(r[2]) else None,
            [str(x) for x in r[6]],
        )
        for r in rows
    }
    both = sorted(u for u, t in out.items() if t.n_thr >= min_n and t.n_ok >= min_n)
    if both:
        for unit, pv in _q(
            store,
            f"""
            SELECT unit, tupleElement(mannWhitneyUTest('two-sided')(tpot, toUInt8(st = 1)), 2)
            FROM {_JOINED}
            WHERE st IN (0, 1) AND has({{both:Array(String)}}, unit)
            GROUP BY unit
            ORDER BY unit
            """,
            {**p, "both": both},
        ):
            t = out[str(unit)]
            out[str(unit)] = ThrottleLatency(
                t.unit,
                t.n_thr,
                t.n_ok,
                t.n_unknown,
                t.tpot_thr_s,
                t.tpot_ok_s,
                t.thr_request_ids,
                _f(pv),
            )
    return out


def tpot_p50(
    store: Store, window: Mapping[str, Any], exclude: Sequence[str]
) -> tuple[int, float | None]:
    """Requests and p50 time per output token in the window, the units ``exclude`` left out
    (the p50 on a bfloat16 histogram: within 0.4 %, and independent of row order)."""
    rows = _q(
        store,
        f"""
        SELECT count(), quantileBFloat16(0.5)(tpot) FROM (
            SELECT {TPOT} AS tpot FROM requests
            WHERE {_RWINDOW}
              AND NOT (has({{ex_rep:Array(String)}}, replica)
                       AND has({{units:Array(String)}}, {_UNIT}))
        ) WHERE tpot IS NOT NULL
        """,
        window_params(
            window, units=sorted(exclude), ex_rep=sorted({split_unit(u)[0] for u in exclude})
        ),
    )
    n = int(rows[0][0]) if rows else 0
    return n, (_f(rows[0][1]) if n else None)


def output_tokens_between(
    store: Store, window: Mapping[str, Any], spans: Mapping[str, tuple[float, float]]
) -> dict[str, tuple[int, int]]:
    """Per unit of ``spans``: (output tokens, requests) of its requests in the window that
    finished (arrival + e2e) inside its span ``(first, last)``. For the units of replicas
    that served several (``q_gpu.UnitSpan`` counts the others in its one pass): only their
    replicas' rows are read."""
    if not spans:
        return {}
    units = sorted(spans)
    rows = _q(
        store,
        f"""
        SELECT unit, sum(tok), count() FROM (
            SELECT {_UNIT} AS unit, t_arrival + ifNull(e2e_s, 0) AS tf,
                   ifNull(output_tokens, length(output_ids)) AS tok
            FROM requests
            WHERE {_RWINDOW} AND has({{reps:Array(String)}}, replica)
              AND has({{units:Array(String)}}, {_UNIT})
        )
        WHERE tf >= transform(unit, {{units:Array(String)}}, {{los:Array(Float64)}}, 0.)
          AND tf <= transform(unit, {{units:Array(String)}}, {{his:Array(Float64)}}, 0.)
        GROUP BY unit
        ORDER BY unit
        """,
        window_params(
            window,
            units=units,
            reps=sorted({split_unit(u)[0] for u in units}),
            los=[float(spans[u][0]) for u in units],
            his=[float(spans[u][1]) for u in units],
        ),
    )
    return {str(u): (int(t or 0), int(n)) for u, t, n in rows}
