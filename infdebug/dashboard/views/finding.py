"""Finding detail: the finding and its evidence; for token findings the two token sequences
aligned chip by chip with the first divergence marked, for template findings the rendered
prompts diffed, for latency findings both distributions and the test's numbers, for GPU
findings the replica's GPU state against its latency."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from infdebug.dashboard import charts, data, evidence, feed, runtime, tokens, ui
from infdebug.schema import Finding
from infdebug.store.q_common import unit_label

W = None  # charts take the width of their column


def pick(page: ui.Page) -> Finding | None:
    fid = st.query_params.get("id", "")
    f = page.rt.finding(fid) if fid else None
    if f is not None:
        return f
    found, res = feed.findings(page)
    if res is None:
        feed.wait_for(page)
        return None
    if not found:
        st.info("No findings over this window.")
        return None
    if fid:
        st.warning(
            f"Finding {ui.md(fid)} is not among this window's findings (the data or the "
            "window changed): pick one below."
        )
    labels = {runtime.finding_id(f): f for f in found}
    choice = st.selectbox(
        "finding",
        list(labels),
        format_func=lambda k: (
            f"{labels[k].severity}: {labels[k].kind} · {feed.scope_label(labels[k])}"
        ),
    )
    return labels[choice]


def header(f: Finding) -> None:
    st.markdown(
        f"### {ui.SEVERITY_ICON.get(f.severity, '')} {ui.md(f.kind)} · {ui.md(feed.scope_label(f))}"
    )
    st.text(f.summary)
    scope = f.scope or {}
    if scope.get("t_start"):
        st.caption(f"since {ui.fmt_time(scope['t_start'])} UTC · analyzer {f.analyzer}")
    if f.values:
        st.markdown("**The numbers**")
        st.dataframe(values_table(f.values), hide_index=True, width="stretch")


def values_table(values: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for k, v in values.items():
        rows.append(
            {
                "value": k,
                "": v
                if isinstance(v, str | int | float | bool) or v is None
                else json.dumps(v, default=str)[:300],
            }
        )
    return pd.DataFrame(rows).astype(str)


def token_view(page: ui.Page, f: Finding) -> None:
    p = evidence.pair(f)
    if p.this is None:
        st.caption("The evidence names no request.")
        return
    other = p.other or data.counterpart(page.epoch, p.this, p.prefer_units)
    a = data.request(page.epoch, p.this)
    if a is None:
        st.caption(f"Request {p.this} is not in the store.")
        return
    b = data.request(page.epoch, other) if other else None
    tok = page.rt.tokenizer()
    st.markdown(tokens.CSS, unsafe_allow_html=True)
    if tok is None:
        st.caption(
            "Token IDs only: start the dashboard with `--tokenizer DIR` (or `--model DIR`) "
            "to see each token's piece."
        )
    for field, title in (("prompt_ids", "prompt"), ("output_ids", "output")):
        ia, ib = list(a.get(field) or []), list((b or {}).get(field) or [])
        if not ia and not ib:
            continue
        st.markdown(f"**{title} tokens**")
        if b is None:
            st.caption(
                f"{ui.md(p.this)} on {ui.md(_where(a))} (no other replica served this prompt)"
            )
            st.markdown(tokens.chips(ia, tok, limit=ui.TRUNCATE_TOKENS), unsafe_allow_html=True)
            continue
        ra, rb, d = tokens.aligned_chips(ia, ib, tok)
        if d is None:
            st.caption(f"identical ({len(ia)} tokens)")
            continue
        st.caption(f"first divergence at token {d} · {len(ia)} vs {len(ib)} tokens")
        st.markdown(f"A: {ui.md(p.this)} on {ui.md(_where(a))}")
        st.markdown(ra, unsafe_allow_html=True)
        st.markdown(f"B: {ui.md(other)} on {ui.md(_where(b))}")
        st.markdown(rb, unsafe_allow_html=True)
    st.page_link(
        ui.PAGES["requests"],
        label=f"open request {p.this}",
        icon=":material/receipt_long:",
        query_params={"id": p.this},
    )


def _where(r: dict[str, Any]) -> str:
    dep = r.get("deployment")
    return f"{r.get('replica')} ({dep})" if dep else str(r.get("replica"))


def template_view(page: ui.Page, f: Finding) -> None:
    p = evidence.pair(f)
    if p.this is None:
        return
    other = p.other or data.counterpart(page.epoch, p.this, p.prefer_units)
    a = data.request(page.epoch, p.this)
    b = data.request(page.epoch, other) if other else None
    if a is None or b is None:
        if a is not None:
            ui.long_text("rendered prompt", a.get("prompt_text"), key=f"tpl-{p.this}")
        return
    ta, tb = a.get("prompt_text") or "", b.get("prompt_text") or ""
    st.markdown("**rendered prompts**")
    if ta == tb:
        st.caption("The two rendered prompts are the same text: the difference is in the IDs.")
    else:
        st.code(tokens.text_diff(tb, ta, f"B {_where(b)}", f"A {_where(a)}"), language="diff")


def latency_view(page: ui.Page, f: Finding) -> None:
    unit = feed.unit_of(f)
    metric = (f.values or {}).get("metric") or "e2e_s"
    if unit is None or metric not in evidence.LATENCY_METRICS:
        return
    h = data.histogram(page.epoch, page.window, metric, unit)
    if len(h):
        st.altair_chart(
            charts.compare_hist(
                h, f"{metric}: {unit_label(unit)} against the rest", unit_label(unit), W
            ),
            width="stretch",
        )
    slow = (f.evidence or {}).get("slowest") or []
    if slow:
        st.markdown("**slowest requests**")
        st.dataframe(pd.DataFrame(slow), hide_index=True)


def gpu_view(page: ui.Page, f: Finding) -> None:
    unit = feed.unit_of(f)
    if unit is None:
        return
    width = page.bucket(80)
    bins = data.fleet_bins(page.epoch, page.window, width, None, None)
    gpu = data.gpu_bins(page.epoch, page.window, width, unit)
    if len(gpu):
        st.altair_chart(charts.timeline(bins[bins["unit"] == unit], gpu, W), width="stretch")


VIEWS = {"tokens": token_view, "template": template_view, "latency": latency_view, "gpu": gpu_view}


def main() -> None:
    page = ui.start("Finding detail")
    if page is None:
        return
    f = pick(page)
    if f is None:
        return
    header(f)
    for v in evidence.views(f):
        VIEWS[v](page, f)
    with st.expander("evidence (as stored)"):
        st.json(f.evidence or {})
    unit = feed.unit_of(f)
    if unit:
        st.page_link(
            ui.PAGES["replica"],
            label=f"drill down into {unit_label(unit)}",
            icon=":material/biotech:",
            query_params={"unit": unit},
        )


main()
