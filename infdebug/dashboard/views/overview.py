"""Fleet overview: SLO attainment and QPS, a replica × time heatmap of TTFT or TPOT p99, the
per-replica percentile table against the fleet, GPU sparklines and the findings feed."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from infdebug.dashboard import charts, data, feed, ui
from infdebug.dashboard.tables import fleet_series, unit_table_view

W = None  # charts take the width of their column
TTFT = "TTFT p99"
HEATMAPS = {  # the heatmap's choices: label → (column, title)
    TTFT: ("ttft_p99", "TTFT p99"),
    "TPOT p99": ("tpot_p99", "TPOT p99 (mean inter-token gap)"),
}


def budgets() -> tuple[float | None, float | None]:
    """The SLO budgets set on the page (shared with the workload page), in seconds."""
    with st.expander("SLO budgets", expanded=False):
        c1, c2 = st.columns(2)
        ttft = c1.number_input(
            "TTFT ≤ ms (0: not checked)", 0.0, 600_000.0, 1000.0, key="slo_ttft_ms"
        )
        tpot = c2.number_input(
            "TPOT ≤ ms (0: not checked)", 0.0, 60_000.0, 100.0, key="slo_tpot_ms"
        )
    return (ttft / 1000 or None), (tpot / 1000 or None)


def main() -> None:
    page = ui.start("Fleet overview")
    if page is None:
        return
    ttft, tpot = budgets()
    width = page.bucket(60)
    bins = data.fleet_bins(page.epoch, page.window, width, ttft, tpot)
    if not len(bins):
        st.info("No requests in this time range.")
        return
    bins["t_end"] = bins["t"] + pd.Timedelta(seconds=width)
    series = fleet_series(bins, width)
    total, met, errors = (int(series[c].sum()) for c in ("requests", "met", "errors"))
    c = st.columns(5)
    c[0].metric("requests", f"{total:,}")
    c[1].metric("mean QPS", f"{total / page.seconds:.2f}")
    c[2].metric("peak QPS", f"{series['qps'].max():.2f}", help=f"over {width} s buckets")
    c[3].metric(
        "SLO attainment",
        f"{met / total:.1%}" if (ttft or tpot) and total else "-",
        help=f"TTFT ≤ {ui.fmt_s(ttft)}, TPOT ≤ {ui.fmt_s(tpot)}, not failed",
    )
    c[4].metric(
        "errors",
        f"{errors:,}",
        f"{errors / total:.2%}" if total and errors else None,
        delta_color="inverse",
    )

    left, right = st.columns([3, 2])
    with left:
        st.altair_chart(charts.qps(series, W), width="stretch")
        if ttft or tpot:
            st.altair_chart(charts.attainment(series, W), width="stretch")
        # one heatmap, its metric chosen: each Vega chart costs the browser most of a
        # second to draw (bench/dashboard.py), two heatmaps one above the other doubled that
        metric = st.segmented_control(
            "Replica × time heatmap", list(HEATMAPS), default=TTFT, key="heatmap_metric"
        )
        column, title = HEATMAPS[metric or TTFT]
        st.altair_chart(charts.heatmap(bins, column, title, W), width="stretch")
    with right:
        st.subheader("Findings")
        feed.show(page, limit=15)

    st.subheader("Per replica against the fleet")
    table = unit_table_view(data.unit_table(page.epoch, page.window))
    st.dataframe(table, hide_index=True, width="stretch")

    gpu = data.gpu_bins(page.epoch, page.window, width)
    st.subheader("GPU power, temperature, SM clock")
    if len(gpu):
        if gpu["simulated"].any():
            st.caption(
                "[SIMULATED] marks replicas whose GPU samples were simulated "
                "(`--simulate-gpu`), not read from NVML."
            )
        st.altair_chart(charts.gpu_sparklines(gpu, W), width="content")
    else:
        st.caption("No GPU samples in this window.")


main()
