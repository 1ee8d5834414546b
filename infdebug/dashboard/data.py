"""The dashboard's data: store queries (``store/q_dashboard.py`` and the analyzers' own)
behind ``st.cache_data``, as pandas frames, keyed on the window and the data's epoch.

A cached function takes ``epoch`` (``Runtime.epoch()``: it changes when the tailer loads
rows, and every 30 s on a shared server) so a refresh after new data reads afresh, while
reruns of a page on the same data cost a dictionary lookup. The TTL bounds what a cache
holds, not how fresh it is.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from infdebug.dashboard import runtime
from infdebug.store import q_dashboard as q
from infdebug.store.q_common import split_unit, unit_label

TTL_S = 300
Window = tuple[float, float, tuple[str, ...]]  # since, until, replicas (hashable)
Epoch = tuple[int, int, int]  # Runtime.epoch()


def _store() -> Any:
    st_ = runtime.get().store
    if st_ is None:
        raise RuntimeError(runtime.get().error or "no store")
    return st_


def win(w: Window) -> dict[str, Any]:
    return {"since": w[0], "until": w[1], "replicas": list(w[2])}


def _frame(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns) if columns else pd.DataFrame(rows)
    if "unit" in df.columns:
        df["replica_label"] = [unit_label(u) for u in df["unit"]]
    return df


def _times(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    for c in cols:
        if c in df.columns:
            df[c] = pd.to_datetime(df[c], unit="s", utc=True)
    return df


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=32)
def span(epoch: Epoch) -> q.DataSpan:
    return q.data_span(_store())


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=32)
def fleet_bins(
    epoch: Epoch, w: Window, width: int, ttft: float | None, tpot: float | None
) -> pd.DataFrame:
    cols = ["unit", "t", "requests", "errors", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99"]
    rows = q.fleet_bins(_store(), win(w), width, ttft_budget=ttft, tpot_budget=tpot)
    return _times(_frame(rows, [*cols, "met"]), "t")


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=32)
def unit_table(epoch: Epoch, w: Window) -> pd.DataFrame:
    """Per unit (and ``unit`` = '' for the fleet): requests, errors, and per metric the
    tuple (p50, p90, p99) in seconds, or None."""
    rows = q.unit_table(_store(), win(w))
    for r in rows:
        for m in q.METRICS:
            v = r.get(m)
            r[m] = tuple(float(x) for x in v) if v is not None and len(v) == 3 else None
    return _frame(rows, ["unit", "requests", "errors", *q.METRICS])


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=32)
def gpu_bins(epoch: Epoch, w: Window, width: int, unit: str = "") -> pd.DataFrame:
    store = _store()
    rows = q.gpu_bins(store, win(w), width, q.gpu_starts(store, win(w)), unit)
    cols = ["unit", "gpu", "t", "power_w", "temp_c", "sm_clock_mhz", "util_pct", "throttled"]
    return _times(_frame(rows, [*cols, "simulated", "samples"]), "t")


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=64)
def histogram(epoch: Epoch, w: Window, metric: str, unit: str) -> pd.DataFrame:
    return pd.DataFrame(q.histogram(_store(), win(w), metric, unit), columns=["lo", "unit", "rest"])


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=32)
def length_histogram(epoch: Epoch, w: Window) -> pd.DataFrame:
    return pd.DataFrame(q.length_histogram(_store(), win(w)), columns=["lo", "kind", "requests"])


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=64)
def finish_reasons(epoch: Epoch, w: Window, unit: str) -> pd.DataFrame:
    rows = q.finish_reasons(_store(), win(w), unit)
    return pd.DataFrame(rows, columns=["finish_reason", "requests"])


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=64)
def identity(epoch: Epoch, w: Window, unit: str) -> pd.DataFrame:
    return _times(pd.DataFrame(q.identity(_store(), win(w), unit)), "first", "last")


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=64)
def startup(epoch: Epoch, unit: str) -> pd.DataFrame:
    from infdebug.store.q_startup import lifecycle_events

    replica, _ = split_unit(unit)
    events, _ = lifecycle_events(_store(), {"since": 0.0, "until": 1e11, "replicas": [replica]})
    rows = [
        {
            "pid": e.pid,
            "t": e.t,
            "event": e.name,
            "phase_s": e.duration_s,
            "since_start_s": e.since_start_s,
        }
        for e in events
        if e.unit == unit
    ]
    return _times(
        pd.DataFrame(rows, columns=["pid", "t", "event", "phase_s", "since_start_s"]), "t"
    )


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=64)
def search(epoch: Epoch, w: Window, **filters: Any) -> pd.DataFrame:
    from infdebug.store.q_common import make_unit

    rows = q.search(_store(), win(w), **filters)
    for r in rows:
        r["replica_label"] = unit_label(make_unit(r["replica"], r["deployment"] or None))
    return _times(pd.DataFrame(rows), "t_arrival")


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=64)
def request(epoch: Epoch, request_id: str) -> dict[str, Any] | None:
    return q.request(_store(), request_id)


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=64)
def counterpart(epoch: Epoch, request_id: str, prefer: tuple[str, ...]) -> str | None:
    return q.counterpart(_store(), request_id, list(prefer))


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=64)
def gpu_during(
    epoch: Epoch, replica: str, deployment: str | None, t0: float, t1: float
) -> pd.DataFrame:
    rows = q.gpu_during(_store(), replica, deployment, t0, t1)
    cols = ["t", "gpu", "power_w", "temp_c", "sm_clock_mhz", "util_pct", "throttle_reasons"]
    return _times(pd.DataFrame(rows, columns=[*cols, "simulated"]), "t")


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=16)
def workload(
    epoch: Epoch,
    w: Window,
    ttft: float | None,
    tpot: float | None,
    goal: float,
    capacity: float | None,
) -> dict[str, Any]:
    from infdebug.workload import Budgets, WorkloadOptions
    from infdebug.workload.store import store_report

    opts = WorkloadOptions(
        budgets=Budgets(ttft, tpot), slo_goal=goal, replica_capacity_rps=capacity
    )
    return store_report(_store(), opts, {"store": _store().description}, win(w)).to_json()
