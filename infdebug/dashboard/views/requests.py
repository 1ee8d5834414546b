"""Request explorer: find requests by ID or filter; one request's messages, rendered prompt,
token IDs with pieces, per-token timeline, logprobs and the GPU state during its life."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pandas as pd
import streamlit as st

from infdebug.dashboard import charts, data, tokens, ui
from infdebug.store import q_dashboard as q
from infdebug.store.q_common import unit_label

W = None  # charts take the width of their column


def filters(page: ui.Page) -> dict[str, Any]:
    rid = st.text_input(
        "request ID",
        value=st.query_params.get("id", ""),
        key="rq_id",
        help="An exact ID finds it in any time range.",
    ).strip()
    c = st.columns(4)
    units = [""] + ui.units_of(page)
    want = st.query_params.get("unit", "")
    if want in units and "rq_unit" not in st.session_state:
        st.session_state["rq_unit"] = want
    unit = c[0].selectbox(
        "replica", units, format_func=lambda u: unit_label(u) if u else "any", key="rq_unit"
    )
    fr = c[1].text_input("finish reason", key="rq_fr", help="stop, length, error, …").strip()
    text = c[2].text_input(
        "text contains", key="rq_text", help="A substring of the prompt or output text."
    )
    min_ms = c[3].number_input("e2e ≥ ms", 0.0, 1e9, 0.0, key="rq_min")
    order = st.radio("order", list(q.ORDERS), horizontal=True, key="rq_order")
    return {
        "request_id": rid,
        "unit": unit,
        "finish_reason": fr,
        "text": text,
        "min_e2e_s": (min_ms / 1000) if min_ms else None,
        "order": order,
        "limit": 200,
    }


def results(page: ui.Page, f: dict[str, Any]) -> str | None:
    df = data.search(page.epoch, page.window, **f)
    if not len(df):
        st.info("No request matches." + (" (An ID is matched exactly.)" if f["request_id"] else ""))
        return None
    if len(df) == 1:
        return str(df.iloc[0]["request_id"])
    st.caption(
        f"{len(df)} requests" + (" (the first 200)" if len(df) == 200 else "") + " — select a row"
    )
    view = df[
        [
            "request_id",
            "replica_label",
            "t_arrival",
            "ttft_s",
            "tpot_s",
            "e2e_s",
            "prompt_tokens",
            "output_tokens",
            "finish_reason",
        ]
    ]
    ev = st.dataframe(
        view,
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key="rq_table",
    )
    rows = ev.selection.rows if ev is not None and hasattr(ev, "selection") else []
    return str(df.iloc[rows[0]]["request_id"]) if rows else None


def show(page: ui.Page, rid: str) -> None:
    r = data.request(page.epoch, rid)
    if r is None:
        st.warning(f"Request {ui.md(rid)} is not in the store.")
        return
    st.markdown(f"### {ui.md(rid)}")
    c = st.columns(5)
    dep = r.get("deployment")
    c[0].metric("replica", f"{r['replica']}" + (f" ({dep})" if dep else ""))
    c[1].metric("TTFT", ui.fmt_s(r.get("ttft_s")))
    c[2].metric("e2e", ui.fmt_s(r.get("e2e_s")))
    c[3].metric("queue", ui.fmt_s(r.get("queue_s")))
    c[4].metric("finish", str(r.get("error") and "error" or r.get("finish_reason") or "-"))
    st.caption(
        f"arrived {ui.fmt_time(r['t_arrival'])} UTC · model {r.get('model') or '-'} · engine "
        f"{r.get('engine') or '-'} {r.get('engine_version') or ''} · tokenizer "
        f"{r.get('tokenizer_fp') or '-'} · template {r.get('template_fp') or '-'}"
        + (f" · derived: {', '.join(r['derived'])}" if r.get("derived") else "")
    )
    if r.get("error"):
        st.error(str(r["error"])[:2000])
    if r.get("messages"):
        msgs = r["messages"]
        with contextlib.suppress(TypeError, ValueError):
            msgs = json.loads(msgs)
        with st.expander("messages", expanded=False):
            text = (
                json.dumps(msgs, indent=1, ensure_ascii=False)
                if not isinstance(msgs, str)
                else msgs
            )
            ui.long_text("messages", text, key=f"msg-{rid}")
    ui.long_text("rendered prompt", r.get("prompt_text"), key=f"p-{rid}")
    tok = page.rt.tokenizer()
    st.markdown(tokens.CSS, unsafe_allow_html=True)
    for field, title in (("prompt_ids", "prompt token IDs"), ("output_ids", "output token IDs")):
        ids = list(r.get(field) or [])
        if not ids:
            st.caption(f"{title}: not logged")
            continue
        limit = (
            None
            if len(ids) <= ui.TRUNCATE_TOKENS
            or st.toggle(f"show all {len(ids):,} {title}", key=f"all-{field}-{rid}")
            else ui.TRUNCATE_TOKENS
        )
        st.markdown(f"**{title}** ({len(ids):,})")
        st.markdown(tokens.chips(ids, tok, limit=limit), unsafe_allow_html=True)
    ui.long_text("output text", r.get("output_text"), key=f"o-{rid}")
    times = [float(x) for x in (r.get("token_times_s") or [])]
    if times:
        st.altair_chart(charts.gaps(times[: 20 * ui.TRUNCATE_TOKENS], W), width="stretch")
    lps = list(r.get("output_logprobs") or [])
    if lps:
        st.markdown("**chosen-token logprobs**")
        st.line_chart(pd.DataFrame({"logprob": lps[: 20 * ui.TRUNCATE_TOKENS]}), height=160)
    t0, t1 = float(r["t_arrival"]), float(r["t_arrival"]) + float(r.get("e2e_s") or 0.0)
    gpu = data.gpu_during(page.epoch, str(r["replica"]), dep, t0, t1)
    st.markdown("**GPU during the request** (±2 s)")
    if len(gpu):
        if gpu["simulated"].any():
            st.caption("[SIMULATED] GPU samples")
        st.dataframe(gpu, hide_index=True, width="stretch")
    else:
        st.caption("No GPU samples of this replica around this request.")


def main() -> None:
    page = ui.start("Request explorer")
    if page is None:
        return
    f = filters(page)
    rid = results(page, f)
    if rid:
        show(page, rid)


main()
