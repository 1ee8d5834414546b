"""Queries behind the GPU analyzers (throttling, XID errors, energy per output token).

GPU samples carry a replica name but no deployment, and replica names are reused across
deployments (``r2`` of ``baseline`` and ``r2`` of ``canary``). A sample is given the unit
(``q_common.UNIT``) whose life on that replica it falls in: ``unit_spans`` measures each
unit's span from its requests (arrival to end) and lifecycle events, ``unit_starts`` turns
them into start times (the first unit of a replica from the beginning of time, a later one
from the middle of the gap before it), and every query here attributes a sample with an
``ASOF JOIN`` on those starts (``_GU``). XID events written without a deployment are
attributed the same way.

Every function takes the window of ``AnalysisContext.window()`` (``since``/``until`` on the
sample's ``t``, a replica list); parameters are bound, nothing is formatted into SQL but
fixed fragments. Only aggregates come back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import UNIT as _UNIT
from infdebug.store.q_common import make_unit, split_unit, window_params
from infdebug.store.q_units import by_unit

# NVML / DCGM clock-event reasons that slow the SM clock down (gpu_idle, app clocks and
# sync boost are settings, not slowdowns); the hardware ones are the GPU protecting itself.
SLOWDOWN_REASONS = ("power_cap", "sw_thermal", "hw_thermal", "hw_slowdown", "hw_power_brake")
HW_REASONS = ("hw_thermal", "hw_slowdown", "hw_power_brake")
XID_EVENT = "gpu_xid"

_GWINDOW = """t >= {since:Float64} AND t < {until:Float64}
  AND (empty({replicas:Array(String)}) OR has({replicas:Array(String)}, replica))"""

# A unit's starts on each replica, from bound arrays (see ``unit_starts``).
_STARTS = """(
    SELECT tupleElement(x, 1) AS replica, tupleElement(x, 2) AS start, tupleElement(x, 3) AS unit,
           tupleElement(x, 4) AS uid
    FROM (SELECT arrayJoin(arrayZip({sp_rep:Array(String)}, {sp_start:Array(Float64)},
                                    {sp_unit:Array(String)}, {sp_uid:Array(UInt32)})) AS x)
)"""

_GCOLS = (
    "t, replica, gpu_index, uuid, power_w, power_limit_w, temp_c, sm_clock_mhz, util_pct, "
    "throttle_reasons, energy_j, simulated"
)

# GPU samples in the window with their unit: by name where the replica had one unit, by
# time (ASOF on the starts) where it had several; ``busy``: working (util at or above the
# bound threshold; without a utilisation reading, not idle); ``thr``: a slowdown reason.
_GU = f"""(
    SELECT *,
           if(util_pct IS NULL, NOT has(throttle_reasons, 'gpu_idle'),
              util_pct >= {{busy:Float64}}) AS busy,
           hasAny(throttle_reasons, {{slow:Array(String)}}) AS thr,
           hasAny(throttle_reasons, {{hw:Array(String)}}) AS hw
    FROM (
        SELECT {_GCOLS},
               transform(replica, {{one_rep:Array(String)}}, {{one_uid:Array(UInt32)}},
                         toUInt32(0)) AS uid
        FROM gpu_samples
        WHERE {_GWINDOW} AND NOT has({{multi:Array(String)}}, replica)
        UNION ALL
        SELECT g.t, g.replica, g.gpu_index, g.uuid, g.power_w, g.power_limit_w, g.temp_c,
               g.sm_clock_mhz, g.util_pct, g.throttle_reasons, g.energy_j, g.simulated,
               s.uid AS uid
        FROM (SELECT {_GCOLS} FROM gpu_samples
              WHERE {_GWINDOW} AND has({{multi:Array(String)}}, replica)) AS g
        ASOF LEFT JOIN {_STARTS} AS s ON g.replica = s.replica AND g.t >= s.start
    )
)"""
GPU_UNITS = _GU  # the same attributed samples, for the dashboard's GPU charts


def _q(store: Store, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return store.query(sql, params)[1]


def _f(v: Any) -> float | None:
    """A float, or None for NULL / NaN (an aggregate over nothing)."""
    if v is None:
        return None
    x = float(v)
    return None if x != x else x


# --- units ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitStarts:
    """Bound-parameter arrays: from ``start`` on, samples of ``replica`` belong to ``unit``.
    In the GPU queries a unit is a number (``uid``: its index in ``unit_list`` plus one), so
    that 2M samples are grouped by an integer, not a string."""

    replicas: tuple[str, ...] = ()
    starts: tuple[float, ...] = ()
    units: tuple[str, ...] = ()

    @property
    def unit_list(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.units)))

    def unit_of(self, uid: int) -> str:
        ul = self.unit_list
        return ul[uid - 1] if 0 < uid <= len(ul) else "(unattributed)\x1f"

    def params(self) -> dict[str, Any]:
        """Replicas with one unit are mapped by name (``one_*``), the others by time (``sp_*``
        for the ASOF join, ``multi``: their names)."""
        uid = {u: i + 1 for i, u in enumerate(self.unit_list)}
        n: dict[str, int] = defaultdict(int)
        for r in self.replicas:
            n[r] += 1
        one = [(r, u) for r, u in zip(self.replicas, self.units, strict=True) if n[r] == 1]
        many = [
            (r, st, u)
            for r, st, u in zip(self.replicas, self.starts, self.units, strict=True)
            if n[r] > 1
        ]
        return {
            "one_rep": [r for r, _ in one],
            "one_unit": [u for _, u in one],
            "one_uid": [uid[u] for _, u in one],
            "multi": sorted({r for r, _, _ in many}),
            "sp_rep": [r for r, _, _ in many],
            "sp_start": [st for _, st, _ in many],
            "sp_unit": [u for _, _, u in many],
            "sp_uid": [uid[u] for _, _, u in many],
        }


@dataclass(frozen=True)
class UnitSpan:
    """A unit's life on its replica (``lo``–``hi``: its first and last request or lifecycle
    event, over all time) and the output tokens of its requests in the window that finished
    while its replica's GPUs were sampled."""

    replica: str
    unit: str
    lo: float
    hi: float
    gpu_tokens: int = 0
    gpu_requests: int = 0


def unit_spans(
    store: Store,
    window: Mapping[str, Any],
    gpu_spans: Mapping[str, tuple[float, float]] | None = None,
) -> list[UnitSpan]:
    """Every unit's span, from its requests (arrival to end) and its lifecycle events (XID
    events excepted: they may lack the deployment), with its requests' output tokens in the
    window, and those that finished inside ``gpu_spans`` (replica → first and last GPU
    sample). Events without a deployment name a unit of their own only where the replica
    has no other."""
    g = dict(gpu_spans or {})
    g_rep = sorted(g)
    p = window_params(
        window,
        xid=XID_EVENT,
        g_rep=g_rep,
        g_lo=[float(g[r][0]) for r in g_rep],
        g_hi=[float(g[r][1]) for r in g_rep],
    )
    t_end = "(t_arrival + ifNull(e2e_s, 0))"
    in_w = "(t_arrival >= {since:Float64} AND t_arrival < {until:Float64})"
    in_g = (
        f"({t_end} >= transform(replica, {{g_rep:Array(String)}}, {{g_lo:Array(Float64)}}, inf)"
        f" AND {t_end} <= transform(replica, {{g_rep:Array(String)}}, {{g_hi:Array(Float64)}},"
        " -inf))"
    )
    tok = "ifNull(output_tokens, length(output_ids))"
    acc: dict[tuple[str, str], list[float]] = {}
    for rep, unit, _, (lo, hi, g_tok, g_n) in by_unit(
        store,
        f"min(t_arrival), max({t_end}), sumIf({tok}, {in_w} AND {in_g}), "
        f"countIf({in_w} AND {in_g})",
        "empty({replicas:Array(String)}) OR has({replicas:Array(String)}, replica)",
        p,
    ):
        a = acc.setdefault((rep, unit), [float(lo), float(hi), 0, 0, 1])
        a[0], a[1] = min(a[0], float(lo)), max(a[1], float(hi))
        a[2] += int(g_tok or 0)
        a[3] += int(g_n or 0)
    for rep, unit, lo, hi, src in _q(
        store,
        f"""
        SELECT replica, {_UNIT} AS unit, min(t), max(t), if(deployment IS NULL, 0, 1) AS src
        FROM events
        WHERE name != {{xid:String}}
          AND (empty({{replicas:Array(String)}}) OR has({{replicas:Array(String)}}, replica))
        GROUP BY replica, unit, src
        """,
        p,
    ):
        key = (str(rep), str(unit))
        if key in acc:
            a = acc[key]
            a[0], a[1], a[4] = min(a[0], float(lo)), max(a[1], float(hi)), max(a[4], int(src))
        else:
            acc[key] = [float(lo), float(hi), 0, 0, int(src)]
    by_rep: dict[str, list[tuple[int, UnitSpan]]] = defaultdict(list)
    for (rep, unit), a in sorted(acc.items()):
        sp = UnitSpan(rep, unit, a[0], a[1], int(a[2]), int(a[3]))
        by_rep[rep].append((int(a[4]), sp))
    out: list[UnitSpan] = []
    for spans in by_rep.values():
        named = [sp for src, sp in spans if src == 1]
        out.extend(named if named else [sp for _, sp in spans])
    return out


def unit_starts(spans: Sequence[UnitSpan], also: Sequence[str] = ()) -> UnitStarts:
    """Start times for the ASOF attribution: per replica, units in order of their first
    record; the first owns everything before it, a later one starts at the middle of the gap
    after the previous one's last record (or at its own first record where they overlap).
    Replicas in ``also`` with no span (GPU samples, no request or event) are units of their
    own, without a deployment."""
    by_rep: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for sp in spans:
        by_rep[sp.replica].append((sp.lo, sp.hi, sp.unit))
    for r in also:
        if r not in by_rep:
            by_rep[r].append((0.0, 0.0, make_unit(r, None)))
    reps: list[str] = []
    starts: list[float] = []
    units: list[str] = []
    for rep in sorted(by_rep):
        prev_hi: float | None = None
        for i, (lo, hi, unit) in enumerate(sorted(by_rep[rep])):
            start = -1e18 if i == 0 else lo
            if prev_hi is not None and prev_hi < lo:
                start = (prev_hi + lo) / 2
            reps.append(rep)
            starts.append(start)
            units.append(unit)
            prev_hi = hi if prev_hi is None else max(prev_hi, hi)
    return UnitStarts(tuple(reps), tuple(starts), tuple(units))


@dataclass(frozen=True)
class GpuQuery:
    """What every ``_GU`` query takes: its bound parameters, and the units they number."""

    params: dict[str, Any]
    starts: UnitStarts


def gpu_params(window: Mapping[str, Any], starts: UnitStarts, *, busy_util: float) -> GpuQuery:
    return GpuQuery(
        window_params(
            window,
            busy=float(busy_util),
            slow=list(SLOWDOWN_REASONS),
            hw=list(HW_REASONS),
            **starts.params(),
        ),
        starts,
    )


def has_xid_events(store: Store, window: Mapping[str, Any]) -> bool:
    rows = _q(
        store,
        f"SELECT count() FROM events WHERE name = {{xid:String}} AND {_GWINDOW}",
        window_params(window, xid=XID_EVENT),
    )
    return bool(rows and int(rows[0][0]))


def gpu_replica_spans(store: Store, window: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Replica → (first, last) GPU sample in the window; empty without samples."""
    rows = _q(
        store,
        f"SELECT replica, min(t), max(t) FROM gpu_samples WHERE {_GWINDOW} GROUP BY replica",
        window_params(window),
    )
    return {str(r): (float(lo), float(hi)) for r, lo, hi in rows}


# --- per-GPU statistics ---------------------------------------------------------------------


@dataclass(frozen=True)
class GpuStats:
    """One GPU of one unit over the window (``busy``: samples under load; ``thr``: busy
    samples with a slowdown reason; over busy samples: SM clock medians, utilisation,
    temperature and power means; None where there were none)."""

    unit: str
    gpu_index: int
    uuid: str | None
    samples: int
    simulated: int  # samples labelled simulated
    t_first: float
    t_last: float
    busy: int
    thr: int
    hw: int  # busy samples with a hardware slowdown reason
    clock_ok_mhz: float | None  # busy, not throttled
    clock_thr_mhz: float | None  # busy, throttled
    clock_max_mhz: float | None
    first_thr: float | None
    last_thr: float | None
    util_ok: float | None
    util_thr: float | None
    temp_ok_c: float | None
    temp_thr_c: float | None
    power_ok_w: float | None
    power_thr_w: float | None
    power_limit_w: float | None
    reasons: dict[str, int]  # busy samples per clock-event reason (every reason seen)
    # Energy over the window, every sample (busy or not): the counter's readings and their
    # extremes (first/last by time), and the mean power over the samples that report one.
    energy_n: int = 0
    energy_min: float | None = None
    energy_max: float | None = None
    energy_first: float | None = None
    energy_last: float | None = None
    power_n: int = 0
    power_mean_w: float | None = None

    @property
    def replica(self) -> str:
        return split_unit(self.unit)[0]

    @property
    def span_s(self) -> float:
        return self.t_last - self.t_first

    def energy_j(self) -> tuple[float, str] | None:
        """Joules used over the span and how they were measured: the counter's rise where it
        was read on ≥ 90 % of the samples and only rose (its first and last readings are its
        extremes); else mean power × span (a uniformly sampled trapezoid, within a sample);
        None with neither."""
        if (
            self.energy_n >= 0.9 * self.samples
            and self.energy_n >= 2
            and self.energy_first == self.energy_min
            and self.energy_last == self.energy_max
            and self.energy_max is not None
            and self.energy_min is not None
        ):
            return self.energy_max - self.energy_min, "energy_counter"
        if self.power_n >= 2 and self.power_mean_w is not None and self.span_s > 0:
            return self.power_mean_w * self.span_s, "integrated_power"
        return None


def gpu_stats(store: Store, gq: GpuQuery) -> list[GpuStats]:
    rows = _q(
        store,
        f"""
        SELECT uid, gpu_index, min(uuid), count(), countIf(simulated), min(t), max(t),
               countIf(busy), countIf(busy AND thr), countIf(busy AND hw),
               quantileExactIf(0.5)(sm_clock_mhz, busy AND NOT thr),
               quantileExactIf(0.5)(sm_clock_mhz, busy AND thr),
               max(sm_clock_mhz),
               minIf(t, busy AND thr), maxIf(t, busy AND thr),
               avgIf(util_pct, busy AND NOT thr), avgIf(util_pct, busy AND thr),
               avgIf(temp_c, busy AND NOT thr), avgIf(temp_c, busy AND thr),
               avgIf(power_w, busy AND NOT thr), avgIf(power_w, busy AND thr),
               max(power_limit_w),
               sumMapIf(throttle_reasons, arrayMap(x -> toUInt64(1), throttle_reasons), busy)
                   AS rs,
               tupleElement(rs, 1), tupleElement(rs, 2),
               count(energy_j), min(energy_j), max(energy_j), argMin(energy_j, t),
               argMax(energy_j, t), count(power_w), avg(power_w)
        FROM {_GU}
        GROUP BY uid, gpu_index
        ORDER BY uid, gpu_index
        """,
        gq.params,
    )
    out = []
    for r in rows:
        busy, thr = int(r[7]), int(r[8])
        out.append(
            GpuStats(
                unit=gq.starts.unit_of(int(r[0])),
                gpu_index=int(r[1]),
                uuid=str(r[2]) if r[2] else None,
                samples=int(r[3]),
                simulated=int(r[4]),
                t_first=float(r[5]),
                t_last=float(r[6]),
                busy=busy,
                thr=thr,
                hw=int(r[9]),
                clock_ok_mhz=_f(r[10]) if busy > thr else None,
                clock_thr_mhz=_f(r[11]) if thr else None,
                clock_max_mhz=_f(r[12]),
                first_thr=float(r[13]) if thr else None,
                last_thr=float(r[14]) if thr else None,
                util_ok=_f(r[15]) if busy > thr else None,
                util_thr=_f(r[16]) if thr else None,
                temp_ok_c=_f(r[17]) if busy > thr else None,
                temp_thr_c=_f(r[18]) if thr else None,
                power_ok_w=_f(r[19]) if busy > thr else None,
                power_thr_w=_f(r[20]) if thr else None,
                power_limit_w=_f(r[21]),
                reasons={str(k): int(n) for k, n in zip(r[23], r[24], strict=True) if n},
                energy_n=int(r[25]),
                energy_min=_f(r[26]) if int(r[25]) else None,
                energy_max=_f(r[27]) if int(r[25]) else None,
                energy_first=_f(r[28]) if int(r[25]) else None,
                energy_last=_f(r[29]) if int(r[25]) else None,
                power_n=int(r[30]),
                power_mean_w=_f(r[31]) if int(r[30]) else None,
            )
        )
    return out


@dataclass(frozen=True)
class UtilBin:
    """Busy samples of one GPU in one utilisation bin: how many, how many throttled, and the
    sum and count of each reading (so the rest of the fleet's mean in the bin is a
    subtraction away)."""

    unit: str
    gpu_index: int
    bin: int  # floor(util_pct / width)
    samples: int
    thr: int
    clock_sum: float
    clock_n: int
    temp_sum: float
    temp_n: int
    power_sum: float
    power_n: int


def gpu_util_bins(store: Store, gq: GpuQuery, width: float) -> list[UtilBin]:
    """Per GPU and utilisation bin of ``width`` percent, over busy samples with a utilisation."""
    rows = _q(
        store,
        f"""
        SELECT uid, gpu_index, toUInt16(floor(util_pct / {{width:Float64}})) AS b,
               count(), countIf(thr),
               sum(ifNull(sm_clock_mhz, 0)), count(sm_clock_mhz),
               sum(ifNull(temp_c, 0)), count(temp_c),
               sum(ifNull(power_w, 0)), count(power_w)
        FROM {_GU}
        WHERE busy AND util_pct IS NOT NULL
        GROUP BY uid, gpu_index, b
        ORDER BY uid, gpu_index, b
        """,
        {**gq.params, "width": float(width)},
    )
    return [
        UtilBin(
            gq.starts.unit_of(int(r[0])),
            int(r[1]),
            int(r[2]),
            int(r[3]),
            int(r[4]),
            float(r[5]),
            int(r[6]),
            float(r[7]),
            int(r[8]),
            float(r[9]),
            int(r[10]),
        )
        for r in rows
    ]


# --- XID errors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class XidCount:
    unit: str
    xid: int  # 0: the event named no XID number
    count: int
    first: float
    last: float
    gpus: list[int]
    uuids: list[str]
    simulated: bool


def xid_counts(store: Store, window: Mapping[str, Any], starts: UnitStarts) -> list[XidCount]:
    """XID events (``event`` records named ``gpu_xid``, detail {xid, gpu_index, uuid}) per
    unit and XID number; an event without a deployment gets the unit its time falls in."""
    rows = _q(
        store,
        f"""
        SELECT unit, xid, count(), min(t), max(t), groupUniqArray(gi), groupUniqArray(u),
               max(sim)
        FROM (
            SELECT e.t AS t,
                   multiIf(e.deployment IS NOT NULL,
                           concat(e.replica, '\\x1F', assumeNotNull(e.deployment)),
                           has({{multi:Array(String)}}, e.replica) AND s.unit != '', s.unit,
                           transform(e.replica, {{one_rep:Array(String)}},
                                     {{one_unit:Array(String)}}, concat(e.replica, '\\x1F')))
                       AS unit,
                   JSONExtractInt(ifNull(e.detail, '{{}}'), 'xid') AS xid,
                   JSONExtract(ifNull(e.detail, '{{}}'), 'gpu_index', 'Nullable(Int64)') AS gi,
                   JSONExtractString(ifNull(e.detail, '{{}}'), 'uuid') AS u,
                   JSONExtractBool(ifNull(e.detail, '{{}}'), 'simulated')
                       OR startsWith(u, 'GPU-SIMULATED-') AS sim
            FROM (SELECT * FROM events WHERE name = {{xid_name:String}} AND {_GWINDOW}) AS e
            ASOF LEFT JOIN {_STARTS} AS s ON e.replica = s.replica AND e.t >= s.start
        )
        GROUP BY unit, xid
        ORDER BY unit, xid
        """,
        window_params(window, xid_name=XID_EVENT, **starts.params()),
    )
    return [
        XidCount(
            str(r[0]),
            int(r[1]),
            int(r[2]),
            float(r[3]),
            float(r[4]),
            sorted(int(x) for x in r[5]),
            sorted(str(x) for x in r[6] if x),
            bool(r[7]),
        )
        for r in rows
    ]
