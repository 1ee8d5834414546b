"""Workload: what ``infdebug workload`` reports, as charts: QPS over time, length
distributions, prefix reuse, SLO attainment under budgets set here, replicas needed."""

from __future__ import annotations

import streamlit as st

from infdebug.dashboard import charts, data, ui

W = None  # charts take the width of their column


def main() -> None:
    page = ui.start("Workload")
    if page is None:
        return
    c = st.columns(4)
    ttft = c[0].number_input(
        "TTFT ≤ ms (0: not checked)", 0.0, 600_000.0, 1000.0, key="slo_ttft_ms"
    )
    tpot = c[1].number_input("TPOT ≤ ms (0: not checked)", 0.0, 60_000.0, 100.0, key="slo_tpot_ms")
    goal = c[2].slider(
        "SLO goal (share of a minute's requests)", 0.5, 1.0, 0.9, 0.01, key="wl_goal"
    )
    cap = c[3].number_input("replica capacity req/s (0: derive)", 0.0, 1e6, 0.0, key="wl_cap")
    rep = data.workload(
        page.epoch, page.window, ttft / 1000 or None, tpot / 1000 or None, goal, cap or None
    )
    qps = rep["qps"]
    m = st.columns(5)
    m[0].metric("requests", f"{rep['requests']:,}")
    m[1].metric("mean QPS", f"{qps['mean'] or 0:.2f}")
    m[2].metric("peak 1-min QPS", f"{qps['peak_1m'] or 0:.2f}")
    m[3].metric("median 1-min QPS", f"{qps['median_1m'] or 0:.2f}")
    slo = rep.get("slo")
    m[4].metric(
        "SLO attainment",
        f"{slo['attainment']:.1%}" if slo and slo["attainment"] is not None else "-",
        help="requests meeting every budget and not failed, of those judged",
    )
    span = data.span(page.epoch)
    if qps.get("per_minute"):
        t0 = max(page.since, span.t_first or 0.0)
        st.altair_chart(charts.per_minute(qps["per_minute"], t0, W), width="stretch")
    st.altair_chart(
        charts.lengths(data.length_histogram(page.epoch, page.window), W), width="stretch"
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**lengths (tokens)**")
        st.dataframe(
            [{"": k, **(rep[f"{k}_tokens"] or {})} for k in ("prompt", "output")], hide_index=True
        )
        pr = rep.get("prefix")
        st.metric(
            "prefix reuse",
            f"{rep['prefix_reuse']:.1%}" if rep.get("prefix_reuse") is not None else "-",
            help="share of whole prompt blocks whose prefix was seen before",
        )
        if pr is None:
            st.caption("No request logged prompt IDs: prefix reuse cannot be measured.")
        if rep.get("cache_hit_rate") is not None:
            st.metric("prompt-cache hit rate", f"{rep['cache_hit_rate']:.1%}")
    with right:
        need = rep.get("replicas_needed") or {}
        st.markdown("**replicas needed**")
        st.metric("at peak", need.get("peak") if need.get("peak") is not None else "-")
        st.metric("at median", need.get("median") if need.get("median") is not None else "-")
        if rep.get("capacity"):
            st.json(rep["capacity"], expanded=False)
        if rep.get("startup"):
            st.markdown("**start-up**")
            st.json(rep["startup"], expanded=False)
    for n in rep.get("notes") or []:
        st.caption(f"note: {n}")


main()
