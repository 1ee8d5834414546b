"""Incident report: one click exports the window's scope, timeline, findings with evidence
and the charts (PNG) as a Markdown report in a zip; the Markdown is previewed here."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
import streamlit as st

from infdebug.dashboard import charts, data, feed, report, ui
from infdebug.dashboard.tables import fleet_series, to_markdown, unit_table_view

W = 800


def build(page: ui.Page, findings: list[Any]) -> tuple[str, list[tuple[str, str, Any]]]:
    width = page.bucket(60)
    bins = data.fleet_bins(page.epoch, page.window, width, None, None)
    shown: list[tuple[str, str, Any]] = []
    if len(bins):
        bins = bins.assign(t_end=bins["t"] + pd.Timedelta(seconds=width))
        shown.append(("QPS", "qps.png", charts.qps(fleet_series(bins, width), W)))
        shown.append(
            ("TTFT p99 by replica", "ttft_p99.png", charts.heatmap(bins, "ttft_p99", "TTFT p99", W))
        )
        shown.append(
            ("TPOT p99 by replica", "tpot_p99.png", charts.heatmap(bins, "tpot_p99", "TPOT p99", W))
        )
    for f in findings:
        unit = feed.unit_of(f)
        metric = (f.values or {}).get("metric")
        if (
            f.severity == "info"
            or unit is None
            or metric not in ("ttft_s", "itl_s", "e2e_s", "tpot_s", "queue_s")
        ):
            continue
        h = data.histogram(page.epoch, page.window, metric, unit)
        if len(h):
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{f.kind}-{unit}-{metric}")[:80] + ".png"
            shown.append(
                (
                    f"{f.kind}: {feed.scope_label(f)} {metric}",
                    name,
                    charts.compare_hist(h, metric, feed.scope_label(f), W),
                )
            )
    table = unit_table_view(data.unit_table(page.epoch, page.window))
    md_table = to_markdown(table)
    scope = report.Scope(
        store=page.rt.store.description if page.rt.store else "-",
        since=page.since or None,
        until=page.until,
        replicas=list(page.window[2]),
        requests=page.span.requests,
        t_first=page.span.t_first,
        t_last=page.span.t_last,
    )
    md = report.markdown(scope, findings, [(t, n) for t, n, _ in shown], table=md_table)
    return md, shown


def main() -> None:
    page = ui.start("Incident report")
    if page is None:
        return
    found, res = feed.findings(page)
    if res is None:
        feed.wait_for(page)
        return
    md, shown = build(page, found)

    def zipped() -> bytes:
        return report.bundle(md, [(name, report.png(ch)) for _, name, ch in shown])

    st.download_button(
        "Download the incident report (Markdown + PNG charts, .zip)",
        zipped,
        file_name="infdebug-incident-report.zip",
        mime="application/zip",
        type="primary",
        key="report_zip",
    )
    st.caption(
        f"{len(found)} findings, {len(shown)} charts. The preview below is the report's Markdown."
    )
    with st.container(border=True):
        st.markdown(md.split("## Charts")[0])


main()
