"""The rank statistics of the latency analyzers, in SQL: the window's sampled requests
(``q_latency.long_rows``) as one source a run builds once (``sample_source``, a scratch table
or the subquery), ranked per covariate stratum by array functions (``ranked``), as per-unit
cells (``strata_cells``: rank sums, tie terms, quantile representatives) or as one row per
replica or deployment test (``rank_sums``). ``q_change`` reads the same source for its series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import window_params
from infdebug.store.q_latency import (
    _REL,
    _TB,
    ALL,
    METRICS,
    OUT_UNIT,
    RANK_RATIO,
    REQ,
    Sampling,
    long_rows,
    rep_levels,
    unpack,
    value_bin,
)
from infdebug.store.scratch import Scratch


@dataclass(frozen=True)
class Source:
    """Where the sampled rows (``SAMPLE``: ``long_rows`` without IDs, keyed) of a window
    are read from: a scratch table, or the subquery itself with the parameters it binds."""

    sql: str
    params: dict[str, Any]

    def with_time_bucket(self, metrics: Sequence[str] = METRICS, where: str = "") -> str:
        """The rows of ``metrics`` (and ``where``), their stratum key with its time bucket
        (``{origin}``, ``{tw}``: the reader's parameters)."""
        ids = ", ".join(str(METRICS.index(x)) for x in metrics)
        return f"""(
            SELECT g, mh, m, rep, dep, t, metric, vb,
                   s + bitShiftLeft(least({_TB}, 65535), 48) AS s
            FROM {self.sql}
            WHERE metric IN ({ids}) {where}
        )"""

    def names(self) -> str:
        """``g`` → model ``m``, ``unit`` and deployment ``dname`` (what the keys stand for)."""
        return (
            f"(SELECT g, any(m) AS m, any({OUT_UNIT}) AS unit, any(ifNull(dep, '')) AS dname"
            f" FROM {self.sql} GROUP BY g)"
        )


def _sample_select(req: str = "") -> str:
    """``long_rows`` without IDs, with numeric keys for grouping (``g``: model and unit;
    ``mh``: model; string keys cost several times more to group and sort by) and the value as
    its rank bin ``vb``."""
    return f"""
        SELECT cityHash64(m, rep, ifNull(dep, '')) AS g, cityHash64(CAST(m AS String)) AS mh,
               m, rep, dep, t, metric, {value_bin(RANK_RATIO)} AS vb, s
        FROM ({long_rows(ids=False, req=req)})
    """


def sample_source(
    store: Store,
    window: Mapping[str, Any],
    *,
    origin: float,
    sampling: Sampling,
    scratch: Scratch | None = None,
) -> Source:
    """The sampled requests' rows of every metric: built once into ``scratch`` when a run
    has one (every analyzer of the run reading them shares the load sweep), else the
    subquery."""
    params = window_params(window, corigin=origin, **sampling.params())
    select = _sample_select()
    if scratch is not None:
        # the window's requests that count (``rel``) once, then the sweep over them: one scan
        # of the requests table instead of two (the sweep and the join each read it)
        reqs = scratch.table(REQ.replace("__EXTRA__", "AND " + _REL), params)
        name = scratch.table(_sample_select(reqs), {}) if reqs is not None else None
        if name is not None:
            return Source(name, {})
    return Source(f"({select})", params)


def ranked(bins: str, carry: Sequence[str]) -> str:
    """Per-bin rows ``bins`` (columns ``mh, metric, s, vb, cnt`` and ``carry``), each with
    what the rank statistics need of its stratum (``mh, metric, s``): ``below``, the count
    of lower value bins; ``nb``, the count in its own bin over all units; ``ntot``, the
    stratum's count; ``ttot``, its tie term (Σ over bins t³ − t). One array pass per
    stratum (sorted by bin: ``below`` is the exclusive running count at the start of the
    bin's run, ``nb`` that run's length): half the cost of the two window functions it
    replaces."""
    items = ", ".join(["vb", "cnt", *carry])
    keep = ", ".join(
        f"tupleElement(z.1, {i + 3}) AS {c.split(' AS ')[-1]}" for i, c in enumerate(carry)
    )
    return f"""
        SELECT mh, metric, s, tupleElement(z.1, 1) AS vb, toFloat64(tupleElement(z.1, 2)) AS cnt,
               z.2 AS below, z.3 AS nb, ntot, ttot, {keep}
        FROM (
            SELECT mh, metric, s, arraySort(x -> x.1, groupArray(({items}))) AS a,
                   arrayMap(x -> toFloat64(x.2), a) AS cs, arrayMap(x -> x.1, a) AS vbs,
                   arrayCumSum(cs) AS incl, arrayMap((x, y) -> x - y, incl, cs) AS excl,
                   arrayMap((v, i) -> i = 1 OR v != vbs[i - 1], vbs, arrayEnumerate(vbs)) AS st,
                   arrayMap((v, i) -> i = length(vbs) OR v != vbs[i + 1], vbs,
                            arrayEnumerate(vbs)) AS en,
                   arrayFill((x, f) -> f, excl, st) AS belows,
                   arrayMap((x, y) -> x - y, arrayReverseFill((x, f) -> f, incl, en), belows)
                       AS nbs,
                   arraySum(cs) AS ntot,
                   arraySum(arrayMap((c, b) -> c * (b * b - 1), cs, nbs)) AS ttot
            FROM ({bins})
            GROUP BY mh, metric, s
        )
        ARRAY JOIN arrayZip(a, belows, nbs) AS z
    """


@dataclass(frozen=True)
class Cell:
    """One unit's requests in one stratum of one metric: how many, the sum of their
    mid-ranks among everyone's in the stratum, its share of the stratum's tie term
    (Σ over bins of cnt·(bin total² − 1); summed over units: Σ t³ − t), and ``REPS``
    quantiles of its log-value bins."""

    model: str
    metric: str
    stratum: tuple[int, ...]
    unit: str
    n: int
    rank_sum: float
    tie_part: float
    reps: tuple[int, ...]


def strata_cells(
    store: Store,
    window: Mapping[str, Any],
    *,
    origin: float,
    tw: float,
    sampling: Sampling = ALL,
    metrics: Sequence[str] = METRICS,
    reps: bool = False,
    scratch: Scratch | None = None,
    units: Sequence[str] = (),
) -> list[Cell]:
    """Every (model, metric, stratum, unit) cell of the window for ``metrics``: see
    ``Cell`` (``reps`` only when asked for), over the requests ``sampling`` counts (read
    from ``scratch`` when the run has built them there); with ``units``, only the strata
    where one of them has requests (every unit's cells there)."""
    src = sample_source(store, window, origin=origin, sampling=sampling, scratch=scratch)
    quantiles = f"quantilesExactWeighted({rep_levels()})(vb, toUInt64(cnt))" if reps else "[]"
    bins = f"""
        SELECT g, mh, metric, s, vb, count() AS cnt
        FROM {src.with_time_bucket(metrics)}
        GROUP BY g, mh, metric, s, vb
    """
    sql = f"""
        SELECT m, metric, s, unit, n, w, tie, q
        FROM (
            SELECT names.m AS m, c.metric AS metric, c.s AS s, names.unit AS unit, c.n AS n,
                   c.w AS w, c.tie AS tie, c.q AS q,
                   max(empty({{units:Array(String)}}) OR has({{units:Array(String)}}, unit))
                       OVER (PARTITION BY c.mh, c.metric, c.s) AS wanted
            FROM (
                SELECT g, mh, metric, s, sum(cnt) AS n,
                       sum(cnt * (below + (nb + 1) / 2)) AS w,
                       sum(cnt * (nb * nb - 1)) AS tie, {quantiles} AS q
                FROM ({ranked(bins, ["g"])})
                GROUP BY g, mh, metric, s
            ) AS c
            JOIN {src.names()} AS names ON c.g = names.g
        )
        WHERE wanted
        ORDER BY m, metric, s, unit
    """
    params = window_params(window, **src.params, origin=origin, tw=tw, units=list(units))
    _, rows = store.query(sql, params)
    return [
        Cell(
            str(r[0]),
            METRICS[int(r[1])],
            unpack(r[2]),
            str(r[3]),
            int(r[4]),
            float(r[5]),
            float(r[6]),
            tuple(int(x) for x in r[7]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class RankSums:
    """Van Elteren's statistic of one side against the rest of its model, summed in SQL over
    the strata where both have requests (``stats.van_elteren`` term by term): the side's
    requests with the metric (compared or not), the compared requests of each side, the
    numerator Σ w (W − E W) and its null variance Σ w² Var W, w = 1/(N + 1)."""

    model: str
    metric: str
    level: str  # "replica" | "deployment"
    name: str  # the unit, or the deployment ("" for none)
    requests: int
    n1: int
    n2: int
    num: float
    var: float


def rank_sums(
    store: Store,
    window: Mapping[str, Any],
    *,
    origin: float,
    tw: float,
    sampling: Sampling = ALL,
    scratch: Scratch | None = None,
) -> list[RankSums]:
    """Every unit's and every deployment's ``RankSums`` for every metric: the tests of
    ``replica.latency_regression`` with nothing but one row per test leaving ClickHouse.
    Deployment rows come for every deployment; whether one is a comparison of its own
    (two or more units, two or more deployments) is the caller's rule."""
    src = sample_source(store, window, origin=origin, sampling=sampling, scratch=scratch)
    bins = f"""
        SELECT g, mh, metric, s, vb, count() AS cnt
        FROM {src.with_time_bucket()}
        GROUP BY g, mh, metric, s, vb
    """
    # each stratum's term rounded to 1e-18 and summed as Decimal128: exact, so the sum (and
    # every p-value) does not depend on the order ClickHouse reads the rows in
    terms = """
        sum(n1) AS requests, sumIf(n1, n1 < nt) AS c1, sumIf(nt - n1, n1 < nt) AS c2,
        toFloat64(sum(toDecimal128(if(n1 < nt, (w - n1 * (nt + 1) / 2) / (nt + 1), 0), 18)))
            AS num,
        toFloat64(sum(toDecimal128(if(n1 < nt AND nt >= 2,
            n1 * (nt - n1) / 12 * ((nt + 1) - tt / (nt * (nt - 1))) / ((nt + 1) * (nt + 1)), 0),
            18))) AS var
    """
    # each cell counted twice: for its unit, and summed with its deployment's (one pass
    # over the cells: a WITH clause would be inlined and computed twice)
    sql = f"""
        SELECT any(m), metric, if(lv.1 = 0, 'replica', 'deployment') AS level, lv.2 AS name,
               {terms}
        FROM (
            SELECT any(m) AS m, mh, metric, s, lv, sum(n1) AS n1, sum(w) AS w,
                   any(nt) AS nt, any(tt) AS tt
            FROM (
                SELECT c.mh AS mh, c.metric AS metric, c.s AS s, names.m AS m,
                       arrayJoin([(toUInt8(0), names.unit), (toUInt8(1), names.dname)]) AS lv,
                       c.n1 AS n1, c.w AS w, c.nt AS nt, c.tt AS tt
                FROM (
                    SELECT g, mh, metric, s, sum(cnt) AS n1,
                           sum(cnt * (below + (nb + 1) / 2)) AS w, any(ntot) AS nt,
                           any(ttot) AS tt
                    FROM ({ranked(bins, ["g"])})
                    GROUP BY g, mh, metric, s
                ) AS c
                JOIN {src.names()} AS names ON c.g = names.g
            )
            GROUP BY mh, metric, s, lv
        )
        GROUP BY mh, metric, lv
    """
    params = window_params(window, **src.params, origin=origin, tw=tw)
    _, rows = store.query(sql, params)
    out = [
        RankSums(
            str(r[0]),
            METRICS[int(r[1])],
            str(r[2]),
            str(r[3]),
            int(r[4]),
            int(r[5]),
            int(r[6]),
            float(r[7]),
            float(r[8]),
        )
        for r in rows
    ]
    return sorted(out, key=lambda x: (x.model, METRICS.index(x.metric), x.level, x.name))
