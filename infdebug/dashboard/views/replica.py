"""Replica drill-down: this replica's latency distributions over the fleet's, latency and GPU
clock/power/temperature on one time axis, finish reasons and errors, what it served as
(engine version, fingerprints) and its start-up phases."""

from __future__ import annotations

import streamlit as st

from infdebug.dashboard import charts, data, ui
from infdebug.store.q_common import unit_label

W = None  # charts take the width of their column
HISTS = (
    ("ttft_s", "TTFT"),
    ("itl_s", "inter-token gaps (every token)"),
    ("tpot_s", "TPOT (per-request mean gap)"),
    ("e2e_s", "end-to-end"),
    ("queue_s", "queue"),
)


def main() -> None:
    page = ui.start("Replica drill-down")
    if page is None:
        return
    unit = ui.unit_picker(page)
    if unit is None:
        return
    label = unit_label(unit)
    table = data.unit_table(page.epoch, page.window)
    row = table[table["unit"] == unit]
    if len(row):
        r = row.iloc[0]
        c = st.columns(4)
        c[0].metric("requests", f"{int(r['requests']):,}")
        c[1].metric(
            "errors",
            f"{int(r['errors']):,}",
            f"{int(r['errors']) / max(1, int(r['requests'])):.2%}",
            delta_color="inverse",
        )
        tp = r["tpot_s"] if r["tpot_s"] is not None else [None] * 3
        tt = r["ttft_s"] if r["ttft_s"] is not None else [None] * 3
        c[2].metric("TTFT p50 / p99", f"{ui.fmt_s(tt[0])} / {ui.fmt_s(tt[2])}")
        c[3].metric("TPOT p50 / p99", f"{ui.fmt_s(tp[0])} / {ui.fmt_s(tp[2])}")

    st.subheader(f"{label} against the rest of the fleet")
    cols = st.columns(2)
    for i, (metric, title) in enumerate(HISTS):
        h = data.histogram(page.epoch, page.window, metric, unit)
        with cols[i % 2]:
            if len(h) and h["unit"].sum():
                st.altair_chart(charts.compare_hist(h, title, label, W), width="stretch")
            else:
                st.caption(f"{title}: not logged by {label} in this window")

    st.subheader("Latency and GPU state, one time axis")
    width = page.bucket(80)
    bins = data.fleet_bins(page.epoch, page.window, width, None, None)
    lat = bins[bins["unit"] == unit]
    gpu = data.gpu_bins(page.epoch, page.window, width, unit)
    if len(lat) or len(gpu):
        st.altair_chart(charts.timeline(lat, gpu, W), width="stretch")
        if len(gpu) and gpu["simulated"].any():
            st.caption("[SIMULATED] GPU samples: `--simulate-gpu`, not NVML readings.")
        if len(gpu) and gpu["throttled"].any():
            st.warning(
                f"{int(gpu['throttled'].sum())} time bucket(s) with a clock slowdown "
                "reason (red ticks)."
            )
    left, right = st.columns(2)
    with left:
        st.subheader("Finish reasons")
        st.dataframe(
            data.finish_reasons(page.epoch, page.window, unit), hide_index=True, width="stretch"
        )
    with right:
        st.subheader("Served as")
        ident = data.identity(page.epoch, page.window, unit)
        st.dataframe(ident, hide_index=True, width="stretch")
        if len(ident) > 1:
            st.warning(f"{label} changed what it served {len(ident) - 1} time(s) in this window.")
    st.subheader("Start-up phases")
    events = data.startup(page.epoch, unit)
    if len(events):
        st.dataframe(events, hide_index=True, width="stretch")
    else:
        st.caption("No lifecycle events logged for this replica.")
    st.page_link(
        ui.PAGES["requests"],
        label=f"requests of {label}",
        icon=":material/receipt_long:",
        query_params={"unit": unit},
    )


main()
