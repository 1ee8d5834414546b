"""Queries behind ``replica.change_point`` and ``replica.version_skew``: one unit's latency
series in time (percentiles within the covariate strata of ``q_latency``), the same unit
before and after a split, and what each unit ran (builds, lifecycle events).

Every query binds the analysis window (``AnalysisContext.window()``); nothing is formatted
into SQL. Fields named ``unit`` hold ``q_common.UNIT`` values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import UNIT as _UNIT
from infdebug.store.q_common import WINDOW as _WINDOW
from infdebug.store.q_common import window_params
from infdebug.store.q_latency import (
    ALL,
    METRICS,
    OUT_UNIT,
    Sampling,
    Side,
    rep_levels,
    side_pair,
    unpack,
)
from infdebug.store.q_ranks import ranked, sample_source
from infdebug.store.scratch import Scratch


def split_sides(
    store: Store, window: Mapping[str, Any], model: str, metric: str, unit: str, t: float
) -> tuple[Side, Side]:
    """(after ``t``, before ``t``) of one unit's ``metric``, unstratified."""
    return side_pair(
        store,
        window,
        model,
        metric,
        "t >= {t_split:Float64}",
        "AND unit = {unit:String}",
        {"unit": unit, "t_split": t},
    )


# --- change points --------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesBin:
    """One time bin of one unit's series of one metric: requests, and the sum and sum of
    squares of their mid-percentiles ``u`` within their covariate stratum (pooled over the
    model's units and the whole window), and the first and last arrival in the bin."""

    model: str
    metric: str
    unit: str
    tbin: int
    n: int
    u_sum: float
    u_sq: float
    t_first: float
    t_last: float


def series(
    store: Store,
    window: Mapping[str, Any],
    *,
    origin: float,
    width: float,
    sampling: Sampling = ALL,
    scratch: Scratch | None = None,
) -> list[SeriesBin]:
    """Per (model, metric, unit, time bin of ``width`` from ``origin``): ``SeriesBin``."""
    src = sample_source(store, window, origin=origin, sampling=sampling, scratch=scratch)
    bins = f"""
        SELECT g, mh, metric, s, vb,
               toInt32(floor((t - {{origin:Float64}}) / {{width:Float64}})) AS tbin,
               count() AS cnt, min(t) AS t0, max(t) AS t1
        FROM {src.sql}
        GROUP BY g, mh, metric, s, vb, tbin
    """
    sql = f"""
        SELECT names.m, b.metric, names.unit, b.tbin, b.n, b.u1, b.u2, b.t0, b.t1
        FROM (
            SELECT g, metric, tbin, sum(cnt) AS n, sum(cnt * u) AS u1, sum(cnt * u * u) AS u2,
                   min(t0) AS t0, max(t1) AS t1
            FROM (
                SELECT g, metric, tbin, cnt, t0, t1, (below + nb / 2) / ntot AS u
                FROM ({ranked(bins, ["g", "tbin", "t0", "t1"])})
            )
            GROUP BY g, metric, tbin
        ) AS b
        JOIN {src.names()} AS names ON b.g = names.g
        ORDER BY names.m, b.metric, names.unit, b.tbin
    """
    params = window_params(window, **src.params, origin=origin, width=width)
    _, rows = store.query(sql, params)
    return [
        SeriesBin(
            str(r[0]),
            METRICS[int(r[1])],
            str(r[2]),
            int(r[3]),
            int(r[4]),
            float(r[5]),
            float(r[6]),
            float(r[7]),
            float(r[8]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class SplitCell:
    """One covariate stratum of one unit's metric split at a time: counts and log-value
    bin quantiles after and before the split."""

    stratum: tuple[int, ...]
    n_after: int
    n_before: int
    reps_after: tuple[int, ...]
    reps_before: tuple[int, ...]


def split_cells(
    store: Store,
    window: Mapping[str, Any],
    model: str,
    metric: str,
    unit: str,
    t_split: float,
    origin: float,
    *,
    sampling: Sampling = ALL,
    scratch: Scratch | None = None,
) -> list[SplitCell]:
    """One unit's ``metric`` in its covariate strata, after and before ``t_split``, over
    the requests ``sampling`` counts (those of ``series``: read from ``scratch`` when the
    run has built them there)."""
    src = sample_source(store, window, origin=origin, sampling=sampling, scratch=scratch)
    one_unit = f"AND {OUT_UNIT} = {{unit:String}} AND m = {{model:String}}"
    levels = rep_levels()
    after = "t >= {t_split:Float64}"
    sql = f"""
        SELECT s, countIf({after}), countIf(NOT {after}),
               quantilesExactIf({levels})(vb, {after}),
               quantilesExactIf({levels})(vb, NOT {after})
        FROM {src.with_time_bucket([metric], one_unit)}
        GROUP BY s
        ORDER BY s
    """
    params = window_params(
        window, **src.params, model=model, unit=unit, t_split=t_split, origin=0.0, tw=1e12
    )
    _, rows = store.query(sql, params)
    return [
        SplitCell(
            unpack(r[0]),
            int(r[1]),
            int(r[2]),
            tuple(int(x) for x in r[3]) if int(r[1]) else (),
            tuple(int(x) for x in r[4]) if int(r[2]) else (),
        )
        for r in rows
    ]


# --- what each unit runs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One (unit, build) pair: the engine, its version and the fingerprints a unit served a
    model with, how many requests and when (first and last arrival)."""

    model: str
    unit: str
    engine: str
    engine_version: str
    tokenizer_fp: str
    template_fp: str
    requests: int
    t_first: float
    t_last: float
    first_request_id: str


# one 64-bit key per (model, unit, build): grouping by it and reading the strings back with
# any() costs half of grouping by the six nullable strings (10M rows: 0.52 s against 0.90 s)
_KEY = ", ".join(
    f"ifNull({c}, '')"
    for c in (
        "model",
        "replica",
        "deployment",
        "engine",
        "engine_version",
        "tokenizer_fp",
        "template_fp",
    )
)


def configs(store: Store, window: Mapping[str, Any]) -> list[Config]:
    sql = f"""
        SELECT any(ifNull(model, '')) AS m, any({_UNIT}) AS unit, any(ifNull(engine, '')) AS e,
               any(ifNull(engine_version, '')) AS ev, any(ifNull(tokenizer_fp, '')) AS tf,
               any(ifNull(template_fp, '')) AS pf, count(), min(t_arrival) AS t0,
               max(t_arrival), argMin(request_id, (t_arrival, request_id))
        FROM requests
        WHERE {_WINDOW}
        GROUP BY cityHash64({_KEY})
        ORDER BY m, unit, t0, e, ev, tf, pf
    """
    _, rows = store.query(sql, window_params(window))
    return [
        Config(
            str(r[0]),
            str(r[1]),
            str(r[2]),
            str(r[3]),
            str(r[4]),
            str(r[5]),
            int(r[6]),
            float(r[7]),
            float(r[8]),
            str(r[9]),
        )
        for r in rows
    ]


def lifecycle(
    store: Store, window: Mapping[str, Any], names: Sequence[str]
) -> list[tuple[str, str, float]]:
    """Lifecycle events of the window's replicas: (unit, event name, t), by time."""
    sql = f"""
        SELECT {_UNIT} AS unit, name, t FROM events
        WHERE t >= {{since:Float64}} AND t < {{until:Float64}}
          AND (empty({{replicas:Array(String)}}) OR has({{replicas:Array(String)}}, replica))
          AND has({{names:Array(String)}}, name)
        ORDER BY t, unit, name
    """
    _, rows = store.query(sql, window_params(window, names=list(names)))
    return [(str(r[0]), str(r[1]), float(r[2])) for r in rows]
