"""The workload of what the store holds: ``infdebug.store.q_workload``'s aggregates (only
those cross from ClickHouse) turned into a :class:`infdebug.workload.WorkloadReport`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infdebug.store import q_workload as qw
from infdebug.store.base import Store
from infdebug.store.q_common import unit_label
from infdebug.workload import (
    Arrivals,
    CacheHits,
    Distribution,
    MinuteBin,
    SloResult,
    WorkloadOptions,
    WorkloadReport,
    arrivals,
    prefix_reuse_from_blocks,
)
from infdebug.workload.fleet import (
    Capacity,
    DecodeBandwidth,
    UnitLoad,
    derive_capacity,
    replicas_needed,
    startup_summary,
    startups,
)

ALL = {"since": 0.0, "until": 1e11, "replicas": []}


def _dist(n: int, mean: float | None, q: tuple[float, float, float] | None) -> Distribution:
    return Distribution(n, mean, *q) if n and q else Distribution(n)


def store_report(
    store: Store,
    options: WorkloadOptions,
    source: dict[str, Any],
    window: Mapping[str, Any] | None = None,
) -> WorkloadReport:
    """The workload of the requests (and lifecycle events) in ``window`` (default: all)."""
    w = window or ALL
    sp = qw.span(store, w)
    startup = startup_summary(startups(qw.startup_events(store, w)))
    if sp.requests == 0 or sp.t_first is None:
        return WorkloadReport(
            source,
            arrivals(0, None, None, []),
            Distribution(0),
            Distribution(0),
            startup=startup,
            notes=["no requests"],
        )
    t0 = sp.t_first
    bins = [MinuteBin(*b) for b in qw.minute_bins(store, w, t0)]
    a = arrivals(sp.requests, sp.t_first, sp.t_last, bins)
    ls = qw.lengths(store, w)
    cache = (
        CacheHits(ls.cache_requests, ls.cached_tokens, ls.cache_prompt_tokens)
        if ls.cache_requests
        else None
    )
    pc = qw.prefix_counts(store, w, options.block_tokens)
    prefix = prefix_reuse_from_blocks(
        pc.requests, pc.tokens, pc.blocks, pc.distinct, options.block_tokens
    )
    b = options.budgets
    units = qw.unit_slo(
        store,
        w,
        t0=t0,
        whole_minutes=a.whole_minutes,
        ttft_s=b.ttft_s,
        tpot_s=b.tpot_s,
        goal=options.slo_goal,
    )
    slo = None
    if b.given:
        slo = SloResult(
            b,
            sum(u.requests for u in units),
            sum(u.failed for u in units),
            sum(u.judged for u in units),
            sum(u.met for u in units),
            a.duration_s,
        )
    notes: list[str] = []
    capacity = _capacity(units, a, options, notes)
    bandwidth = None
    if options.weights_gb is not None and options.peak_bandwidth_gbs is not None:
        bandwidth = [
            DecodeBandwidth(
                unit_label(u.unit),
                u.decode_s,
                u.decode_steps,
                options.weights_gb,
                options.peak_bandwidth_gbs,
            )
            for u in units
        ]
        if not any(x.steps for x in bandwidth):
            notes.append("no request logged two or more output tokens with their times")
    if prefix is None:
        notes.append("no request logged prompt IDs: prefix reuse cannot be measured")
    return WorkloadReport(
        source=source,
        arrivals=a,
        prompt=_dist(ls.prompt_n, ls.prompt_mean, ls.prompt_q),
        output=_dist(ls.output_n, ls.output_mean, ls.output_q),
        prefix=prefix,
        cache=cache,
        slo=slo,
        startup=startup,
        capacity=capacity,
        replicas=replicas_needed(a.peak_1m, a.median_1m, capacity),
        bandwidth=bandwidth,
        notes=notes,
    )


def _capacity(
    units: list[qw.UnitSlo], a: Arrivals, options: WorkloadOptions, notes: list[str]
) -> Capacity | None:
    if options.replica_capacity_rps is not None:
        return Capacity(options.replica_capacity_rps, "given")
    given = options.budgets.given
    cap = derive_capacity(
        [
            UnitLoad(
                unit_label(u.unit),
                u.requests,
                u.judged,
                u.met,
                u.best_minute_requests,
                u.best_minute,
            )
            for u in units
        ],
        whole_minutes=a.whole_minutes,
        span_s=a.duration_s,
        slo_given=given,
        goal=options.slo_goal,
    )
    if cap is None and not a.duration_s:
        notes.append("the requests arrived at one instant: no rate to derive a capacity from")
    elif cap is None:
        notes.append(
            "no replica minute met the SLO goal: give --replica-capacity for the replicas needed"
            if given
            else "no per-replica throughput to derive a capacity from: give --replica-capacity"
        )
    elif given:
        notes.append(
            "capacity derived from the busiest replica minute that met the SLO goal: a lower "
            "bound if no replica was driven to saturation, so the replica counts are upper bounds"
        )
    else:
        notes.append(
            "capacity derived from the busiest replica minute, without an SLO (give --ttft/--tpot "
            "to count only minutes that met it): a lower bound if no replica was saturated"
        )
    return cap
