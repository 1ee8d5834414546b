"""The findings of the window: every analyzer run in the background over the page's window
(the same ``analyze`` as ``infdebug analyze``), shown most severe first, each linking to its
detail page. A page never waits for the analysis: it says it is running and reruns itself
when it is done."""

from __future__ import annotations

from typing import Any

import streamlit as st

from infdebug.dashboard import runtime, ui
from infdebug.schema import Finding
from infdebug.store.q_common import make_unit

POLL_S = 0.3  # how often a page waiting for its analysis looks


def findings(page: ui.Page) -> tuple[list[Finding], Any]:
    """(findings, the analysis result or None while it runs)."""
    a = page.rt.analysis(ui.window_dict(page))
    if a is None or not a.done:
        return [], None
    try:
        res = a.future.result()
    except Exception as e:  # the analysis itself failed (the store went away…): said
        st.error(f"analysis failed: {type(e).__name__}: {e}")
        return [], None
    return list(res.findings), res


def wait_for(page: ui.Page) -> None:
    """While the window's analysis runs: say so, and rerun the page when it is done."""
    a = page.rt.analysis(ui.window_dict(page))
    if a is not None and not a.done:
        _poll(ui.window_dict(page))


@st.fragment(run_every=POLL_S)
def _poll(window: dict[str, Any]) -> None:
    a = runtime.get().analysis(window)
    if a is None or a.done:
        st.rerun(scope="app")
    st.caption("analysers running over this window …")


def unit_of(f: Finding) -> str | None:
    scope = f.scope or {}
    rep = scope.get("replica")
    return make_unit(str(rep), scope.get("deployment")) if rep else None


def scope_label(f: Finding) -> str:
    scope = f.scope or {}
    rep = scope.get("replica")
    if not rep:
        return "fleet"
    dep = scope.get("deployment")
    return f"{rep} ({dep})" if dep else str(rep)


def show(page: ui.Page, *, limit: int = 50, key: str = "feed") -> list[Finding]:
    """The feed: findings most severe first, each with links to its detail and replica."""
    found, res = findings(page)
    if res is None:
        wait_for(page)
        return []
    if res.failed:
        st.warning(
            "analysers that failed: " + "; ".join(f"{k}: {v}" for k, v in res.failed.items())
        )
    if not found:
        st.success(f"No findings over this window ({len(res.ran)} analysers ran).")
        return []
    counts = {s: sum(1 for f in found if f.severity == s) for s in ("error", "warning", "info")}
    st.caption(
        f"{counts['error']} error · {counts['warning']} warning · {counts['info']} info — "
        f"{len(res.ran)} analysers, {res.seconds.get('(total)', 0):.1f} s"
    )
    for f in found[:limit]:
        fid = runtime.finding_id(f)
        with st.container(border=True):
            st.markdown(
                f"{ui.SEVERITY_ICON.get(f.severity, f.severity)} **{ui.md(f.kind)}** · "
                f"{ui.md(scope_label(f))}"
            )
            st.text(f.summary if len(f.summary) < 600 else f.summary[:600] + " …")
            c1, c2 = st.columns(2)
            c1.page_link(
                ui.PAGES["finding"],
                label="details",
                icon=":material/search:",
                query_params={"id": fid},
            )
            unit = unit_of(f)
            if unit:
                c2.page_link(
                    ui.PAGES["replica"],
                    label="replica",
                    icon=":material/biotech:",
                    query_params={"unit": unit},
                )
    if len(found) > limit:
        st.caption(f"… and {len(found) - limit} more (the incident report lists all)")
    return found
