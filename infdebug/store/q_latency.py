"""Queries behind ``replica.latency_regression`` (and the building blocks of ``q_change``,
behind ``replica.change_point``): per-request latencies with what drives them, in strata.

Four metrics (``METRICS``): queue time, TTFT, inter-token latency (the mean gap between output
tokens: from ``token_times_s`` when logged, else ``(e2e − TTFT) / (tokens − 1)``) and
end-to-end latency, over requests without an ``error``. Each request also gets its load on
its own unit (``q_common.UNIT``), derived from the overlap of request lifetimes
``[t_arrival, t_arrival + e2e_s]`` on that unit (a sweep over start/end events with window
functions, so O(n log n)): ``c_arr``, the requests already in flight when it arrived, and
``c_avg``, the time-averaged number in flight over its lifetime, itself included — the
batch it decoded in.

Strata (``stratum_label`` decodes them; all bucket edges are logarithmic, so a stratum is a
relative range) control for what drives each metric:

- queue time: time bucket × load at arrival;
- TTFT: time bucket × uncached prompt tokens (quarter octaves) × cached share (none, under
  half, half or more) × load at arrival;
- inter-token latency: time bucket × batch (``c_avg`` in steps of ×1.25) × context length
  (prompt + output tokens, octaves);
- e2e: time bucket × output tokens (quarter octaves) × uncached prompt tokens (octaves) ×
  batch (steps of ×1.5).

The time bucket (width ``tw`` from ``origin``) keeps comparisons to requests served at about
the same time; with ``tw`` huge it is one bucket (the change-point series, which is about
time). Values are binned on a log scale (``log(v + EPS)`` in steps of ``ratio``): the
rank statistics are those of the binned values (a monotone map with ties: a valid test,
ties corrected), so only per-bin counts are aggregated and only per-stratum aggregates
leave ClickHouse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import UNIT as _UNIT
from infdebug.store.q_common import WINDOW as _WINDOW
from infdebug.store.q_common import window_params

METRICS = ("queue_s", "ttft_s", "itl_s", "e2e_s")
EPS = 1e-6  # seconds added before the log: a zero queue time has a bin too
RANK_RATIO = 1.02  # value bins of the rank statistics (±1 %)
EVIDENCE_RATIO = 1.005  # value bins of the evidence histograms (quantile CIs)
REPS = 16  # quantile representatives per stratum and unit (the shift estimate)

_PLEN = "if(notEmpty(prompt_ids), length(prompt_ids), toUInt64(ifNull(prompt_tokens, 0)))"
_NOUT = (
    "if(notEmpty(output_ids), length(output_ids), "
    "if(isNotNull(output_tokens), toUInt64(assumeNotNull(output_tokens)), length(token_times_s)))"
)
_ITL = (
    "if(length(token_times_s) >= 2, "
    "toNullable((token_times_s[-1] - token_times_s[1]) / (length(token_times_s) - 1)), "
    "if(nout >= 2 AND e2e_s > ttft_s, (e2e_s - ttft_s) / (nout - 1), NULL))"
)
_VALUE = {"queue_s": "q_s", "ttft_s": "tt_s", "itl_s": "itl", "e2e_s": "e2e"}

# Sampling (``Sampling``): ``sel``, the request's arrival falls in a sampled time slice;
# ``rel``, its lifetime overlaps a sampled request's (its load counts in theirs).
_SLICE_KEPT = "cityHash64({x}) % 1000000 < {{keep:UInt32}}"
_SEL = (
    "({keep:UInt32} >= 1000000 OR "
    + _SLICE_KEPT.format(x="toUInt64(floor((t_arrival - {corigin:Float64}) / {slice:Float64}))")
    + ")"
)
_REL = (
    "({keep:UInt32} >= 1000000 OR arrayExists(x -> "
    + _SLICE_KEPT.format(x="x")
    + ", range(toUInt64(greatest(floor((t_arrival - {corigin:Float64} - {maxdur:Float64})"
    " / {slice:Float64}), 0)), toUInt64(floor((t_arrival - {corigin:Float64}"
    " + greatest(ifNull(e2e_s, 0.), 0.)) / {slice:Float64})) + 1)))"
)

# The requests of the window, with their covariates (``__EXTRA__``: a further condition).
# ``k`` identifies a request within its unit; ``t0`` is its arrival from ``{corigin}`` (small
# numbers keep the load integrals below exact).
REQ = f"""
    SELECT replica AS rep, deployment AS dep, model AS m0, request_id,
           cityHash64(request_id, t_arrival, replica, ifNull(deployment, '')) AS k,
           t_arrival AS t, t_arrival - {{corigin:Float64}} AS t0,
           toFloat64(greatest(ifNull(e2e_s, 0.), 0.)) AS dur, isNotNull(e2e_s) AS has_dur,
           isNull(error) AS ok, {_SEL} AS sel, {_REL} AS rel,
           toNullable(toFloat64(queue_s)) AS q_s, toNullable(toFloat64(ttft_s)) AS tt_s,
           toNullable(toFloat64(e2e_s)) AS e2e,
           toFloat64({_PLEN}) AS plen,
           toFloat64(least(toUInt64(ifNull(cached_prompt_tokens, 0)), {_PLEN})) AS cached,
           toFloat64({_NOUT}) AS nout,
           {_ITL} AS itl
    FROM requests
    WHERE {_WINDOW} __EXTRA__
"""

# Load per request on its unit, in one sweep over its start (+1) and end (−1) events (ends
# first at equal times): ``c`` is the number in flight after an event, and the integral of
# that count up to an event at time te is c·te − S, S the running Σ d·te (summation by
# parts), so a request's time-averaged load is the difference of that integral between its
# end and its start over its duration.
CONC = """
    SELECT k,
           anyIf(c, d = 1) - 1 AS c_arr,
           anyIf(te, d = 1) AS ts, anyIf(te, d = -1) AS tend,
           if(tend > ts,
              (anyIf(c * te - S, d = -1) - anyIf(c * te - S, d = 1)) / (tend - ts),
              anyIf(c, d = 1)) AS c_avg
    FROM (
        SELECT k, te, d, sel, toFloat64(sum(d) OVER w) AS c, sum(d * te) OVER w AS S
        FROM (
            SELECT rep, dep, k, sel, if(d = 1, t0, t0 + dur) AS te, d
            FROM (_REQ__) ARRAY JOIN [toInt8(1), toInt8(-1)] AS d
            WHERE has_dur AND rel
        )
        WINDOW w AS (PARTITION BY rep, dep ORDER BY te, d, k
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    )
    WHERE sel
    GROUP BY k
"""


def _oct(x: str, per_octave: int) -> str:
    return f"toUInt64(floor({per_octave} * log2(1 + greatest({x}, 0.))))"


def _load_count(c: str) -> str:
    return f"toUInt64(if({c} < 4, greatest({c}, 0.), 4 + floor(2 * (log2({c}) - 2))))"


def _load_ratio(c: str, ratio: float) -> str:
    return f"toUInt64(floor(log(greatest({c}, 1.)) / {math.log(ratio)!r}))"


def _pack(a: str, b: str, c: str, d: str) -> str:
    """Four small non-negative integers in one UInt64 key (16 bits each)."""
    return (
        f"bitShiftLeft(least({a}, 65535), 48) + bitShiftLeft(least({b}, 65535), 32)"
        f" + bitShiftLeft(least({c}, 65535), 16) + least({d}, 65535)"
    )


def unpack(s: int) -> tuple[int, int, int, int]:
    """A stratum key as its four components."""
    s = int(s)
    return ((s >> 48) & 0xFFFF, (s >> 32) & 0xFFFF, (s >> 16) & 0xFFFF, s & 0xFFFF)


_TB = "toUInt64(greatest(floor((t - {origin:Float64}) / {tw:Float64}), 0))"
_UNCACHED = "(plen - cached)"
_CACHE_B = "toUInt64(multiIf(cached <= 0, 0, cached * 2 < plen, 1, 2))"
_ZERO = "toUInt64(0)"
_STRATA = {
    "queue_s": _pack(_TB, _load_count("c_arr"), _ZERO, _ZERO),
    "ttft_s": _pack(_TB, _oct(_UNCACHED, 4), _CACHE_B, _load_count("c_arr")),
    "itl_s": _pack(_TB, _load_ratio("c_avg", 1.25), _oct("plen + nout", 1), _ZERO),
    "e2e_s": _pack(_TB, _oct("nout", 4), _oct(_UNCACHED, 1), _load_ratio("c_avg", 1.25)),
}


def long_rows(
    extra: str = "", metrics: Sequence[str] = METRICS, *, ids: bool = True, req: str = ""
) -> str:
    """One row per (request, metric): model, replica, deployment, time, ID (unless not
    ``ids``), metric index, value and stratum key without its time bucket (``_TB`` is added
    by who reads them, ``with_time_bucket``); of the requests ``Sampling`` selects
    (``{keep}``, ``{slice}``, ``{maxdur}``), with their load from every request beside them.
    ``req``: a table holding ``REQ``'s rows (those with ``rel`` at least) to read instead."""
    req = f"SELECT * FROM {req}" if req else REQ.replace("__EXTRA__", extra)
    idx = [METRICS.index(name) for name in metrics]
    strata = {k: v.replace(_TB, "0") for k, v in _STRATA.items()}
    value = "multiIf(" + ", ".join(f"metric = {i}, {_VALUE[METRICS[i]]}" for i in idx[:-1])
    value += (", " if len(idx) > 1 else "") + f"{_VALUE[METRICS[idx[-1]]]})"
    stratum = "multiIf(" + ", ".join(f"metric = {i}, {strata[METRICS[i]]}" for i in idx[:-1])
    stratum += (", " if len(idx) > 1 else "") + f"{strata[METRICS[idx[-1]]]})"
    if len(idx) == 1:
        value, stratum = _VALUE[metrics[0]], strata[metrics[0]]
    metric_ids = ", ".join(f"toUInt8({i})" for i in idx)
    rid = "request_id, " if ids else ""
    return f"""
        SELECT m, rep, dep, t, {rid}metric, assumeNotNull({value}) AS v, {stratum} AS s
        FROM (
            SELECT ifNull(r.m0, '') AS m, r.rep AS rep, r.dep AS dep, r.t AS t,
                   r.request_id AS request_id, r.q_s AS q_s, r.tt_s AS tt_s, r.e2e AS e2e,
                   r.itl AS itl, r.plen AS plen, r.cached AS cached, r.nout AS nout,
                   greatest(c.c_arr, 0.) AS c_arr, greatest(c.c_avg, 1.) AS c_avg
            FROM (SELECT * FROM ({req}) WHERE ok AND sel) AS r
            LEFT JOIN ({CONC.replace("_REQ__", req)}) AS c ON r.k = c.k
        )
        ARRAY JOIN [{metric_ids}] AS metric
        WHERE isNotNull({value}) AND isFinite(assumeNotNull({value}))
          AND assumeNotNull({value}) >= 0
    """


def rep_levels() -> str:
    return ", ".join(repr((i + 0.5) / REPS) for i in range(REPS))


def _plain(metric: str) -> str:
    """One row per request with ``metric``: model, unit, replica, time, ID, value (no load,
    no strata: what the evidence needs)."""
    v = {
        "queue_s": "queue_s",
        "ttft_s": "ttft_s",
        "e2e_s": "e2e_s",
        "itl_s": _ITL.replace("nout", f"({_NOUT})"),
    }[metric]
    return f"""
        SELECT ifNull(model, '') AS m, {_UNIT} AS unit, replica AS rep, t_arrival AS t,
               request_id, assumeNotNull({v}) AS v
        FROM requests
        WHERE {_WINDOW} AND isNull(error) AND isNotNull({v}) AND isFinite(assumeNotNull({v}))
          AND assumeNotNull({v}) >= 0
    """


def value_bin(ratio: float) -> str:
    return f"toInt32(floor(log(v + {EPS!r}) / {math.log(ratio)!r}))"


def bin_log_center(vb: int | float, ratio: float = RANK_RATIO) -> float:
    """The log-seconds value a bin index stands for (its centre)."""
    return (float(vb) + 0.5) * math.log(ratio)


def bin_seconds(vb: int | float, ratio: float) -> float:
    """The seconds a bin index stands for (its geometric centre, EPS taken off)."""
    return max(math.exp(bin_log_center(vb, ratio)) - EPS, 0.0)


@dataclass(frozen=True)
class Span:
    """Requests in the window, the time they cover and the longest one's e2e."""

    t_min: float
    t_max: float
    requests: int
    max_e2e_s: float = 0.0


def span(store: Store, window: Mapping[str, Any]) -> Span | None:
    _, rows = store.query(
        f"""SELECT min(t_arrival), max(t_arrival), count(), max(greatest(ifNull(e2e_s, 0.), 0.))
        FROM requests WHERE {_WINDOW}""",
        window_params(window),
    )
    if not rows or not int(rows[0][2]):
        return None
    return Span(float(rows[0][0]), float(rows[0][1]), int(rows[0][2]), float(rows[0][3]))


SLICES = 400  # time slices a window is cut into for sampling (at least MIN_SLICE_S each)
MIN_SLICE_S = 30.0


@dataclass(frozen=True)
class Sampling:
    """Which requests the statistics count: those arriving in time slices (``slice_s`` wide
    from the window's first arrival) whose hash is among ``keep`` per million; every
    request whose lifetime overlaps theirs still counts in their load. ``ALL``: every one.

    Whole slices, not single requests, so that the load of a sampled request is computed
    from everything that ran beside it, at the cost of a sort of those requests only."""

    keep: int = 1_000_000
    slice_s: float = 1.0
    max_e2e_s: float = 0.0

    @classmethod
    def for_span(cls, sp: Span, cap: int) -> Sampling:
        """About ``cap`` of the span's requests (all of them up to ``cap``)."""
        if sp.requests <= cap:
            return cls()
        width = max(MIN_SLICE_S, (sp.t_max - sp.t_min) / SLICES, sp.max_e2e_s / 4)
        return cls(max(1, math.ceil(cap * 1_000_000 / sp.requests)), width, sp.max_e2e_s)

    def params(self) -> dict[str, Any]:
        return {"keep": self.keep, "slice": self.slice_s, "maxdur": self.max_e2e_s}


ALL = Sampling()


def request_loads(
    store: Store, window: Mapping[str, Any], sampling: Sampling = ALL
) -> dict[str, tuple[float, float]]:
    """Request ID → (in flight at arrival, time-averaged load over its lifetime) of the
    requests ``sampling`` counts: the covariates the strata are cut from."""
    req = REQ.replace("__EXTRA__", "")
    sql = f"""
        SELECT r.request_id, c.c_arr, c.c_avg
        FROM (SELECT * FROM ({req}) WHERE sel) AS r
        JOIN ({CONC.replace("_REQ__", req)}) AS c ON r.k = c.k
    """
    sp = span(store, window)
    params = window_params(window, corigin=sp.t_min if sp else 0.0, **sampling.params())
    _, rows = store.query(sql, params)
    return {str(r[0]): (float(r[1]), float(r[2])) for r in rows}


OUT_UNIT = _UNIT.replace("replica", "rep").replace("deployment", "dep")


@dataclass(frozen=True)
class Side:
    """One side of a comparison, unstratified: its count, exact p50/p90/p99 (seconds) and a
    histogram of its values (bin index → count, bins of ``EVIDENCE_RATIO``)."""

    n: int
    quantiles: tuple[float, float, float]
    hist: dict[int, int]


def side_pair(
    store: Store,
    window: Mapping[str, Any],
    model: str,
    metric: str,
    side: str,
    where: str,
    params: dict[str, Any],
) -> tuple[Side, Side]:
    sql = f"""
        SELECT {side} AS side, count(), quantilesExact(0.5, 0.9, 0.99)(v),
               sumMap([{value_bin(EVIDENCE_RATIO)}], [toUInt64(1)]) AS sm, sm.1, sm.2
        FROM ({_plain(metric)})
        WHERE m = {{model:String}} {where}
        GROUP BY side
    """
    _, rows = store.query(sql, window_params(window, model=model, **params))
    got: dict[bool, Side] = {}
    for side_v, n, q, _, keys, counts in rows:
        qs = [float(x) for x in q]
        got[bool(side_v)] = Side(
            int(n), (qs[0], qs[1], qs[2]), dict(zip(map(int, keys), map(int, counts), strict=True))
        )
    empty = Side(0, (math.nan, math.nan, math.nan), {})
    return got.get(True, empty), got.get(False, empty)


def sides(
    store: Store, window: Mapping[str, Any], model: str, metric: str, units: Sequence[str]
) -> tuple[Side, Side]:
    """(the units' side, the rest of the model's) for ``metric``, unstratified."""
    side = "has({units:Array(String)}, unit)"
    return side_pair(store, window, model, metric, side, "", {"units": list(units)})


def slowest(
    store: Store,
    window: Mapping[str, Any],
    model: str,
    metric: str,
    k: int,
    *,
    units: Sequence[str] = (),
    since: float | None = None,
) -> list[tuple[str, float]]:
    """The ``k`` slowest requests on ``metric`` (request ID, seconds) of ``units`` (from
    ``since`` on): ties by request ID, so the choice does not depend on read order."""
    who = "has({units:Array(String)}, unit)"
    sql = f"""
        SELECT request_id, v FROM ({_plain(metric)})
        WHERE m = {{model:String}} AND {who} AND t >= {{t_from:Float64}}
        ORDER BY v DESC, request_id
        LIMIT {{k:UInt32}}
    """
    params = window_params(
        window,
        model=model,
        units=list(units),
        k=k,
        t_from=since or 0.0,
    )
    _, rows = store.query(sql, params)
    return [(str(r[0]), float(r[1])) for r in rows]


# --- reading strata back ----------------------------------------------------------------------


def _oct_range(b: int, per_octave: int) -> list[int]:
    lo = 2 ** (b / per_octave) - 1
    hi = 2 ** ((b + 1) / per_octave) - 1
    return [math.ceil(lo - 1e-9), max(math.ceil(lo - 1e-9), math.ceil(hi - 1e-9) - 1)]


def _count_range(b: int) -> list[int]:
    if b < 4:
        return [b, b]
    lo = 2 ** ((b - 4) / 2 + 2)
    hi = 2 ** ((b - 3) / 2 + 2)
    return [math.ceil(lo - 1e-9), max(math.ceil(lo - 1e-9), math.ceil(hi - 1e-9) - 1)]


def _ratio_range(b: int, ratio: float) -> list[float]:
    return [round(ratio**b, 2), round(ratio ** (b + 1), 2)]


_CACHE = ("none", "under half", "half or more")


def stratum_label(
    metric: str, stratum: Sequence[int], origin: float | None = None, tw: float | None = None
) -> dict[str, Any]:
    """What a stratum of ``metric`` holds, in the covariates' own units (integer ranges are
    inclusive; a load range is [from, to) requests in flight)."""
    tb, a, b, c = (int(x) for x in stratum)
    out: dict[str, Any] = {}
    if origin is not None and tw is not None and tw < 1e11:
        out["time"] = [round(origin + tb * tw, 3), round(origin + (tb + 1) * tw, 3)]
    if metric == "queue_s":
        out["in_flight_at_arrival"] = _count_range(a)
    elif metric == "ttft_s":
        out["uncached_prompt_tokens"] = _oct_range(a, 4)
        out["cached_share"] = _CACHE[b] if 0 <= b < 3 else str(b)
        out["in_flight_at_arrival"] = _count_range(c)
    elif metric == "itl_s":
        out["batch"] = _ratio_range(a, 1.25)
        out["context_tokens"] = _oct_range(b, 1)
    else:
        out["output_tokens"] = _oct_range(a, 4)
        out["uncached_prompt_tokens"] = _oct_range(b, 1)
        out["batch"] = _ratio_range(c, 1.25)
    return out
