"""What every dashboard page starts with: the store check (held by another process, empty:
said plainly, with what to do), the sidebar (time range, replicas, auto-refresh, the
follower's status) and the window every query of the page is cut by."""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from typing import Any

import streamlit as st

from infdebug.dashboard import data, runtime
from infdebug.store.q_common import split_unit, unit_label

RANGES = {  # label → seconds back from the newest request (None: everything)
    "all data": None,
    "last 5 min": 300,
    "last 15 min": 900,
    "last 1 h": 3600,
    "last 6 h": 6 * 3600,
    "last 24 h": 86400,
    "custom": -1,
}
REFRESH_S = 5
PAGES = {  # where the pages are, relative to app.py
    "overview": "views/overview.py",
    "replica": "views/replica.py",
    "finding": "views/finding.py",
    "requests": "views/requests.py",
    "workload": "views/workload.py",
    "report": "views/report.py",
}
TRUNCATE_CHARS = 20_000  # a longer text is cut, with a "show all" toggle
TRUNCATE_TOKENS = 2_000


@dataclass(frozen=True)
class Page:
    """The window a page shows, and what it needs to query it."""

    epoch: data.Epoch
    window: data.Window
    span: Any  # q_dashboard.DataSpan of the whole store
    rt: runtime.Runtime

    @property
    def since(self) -> float:
        return self.window[0]

    @property
    def until(self) -> float:
        return self.window[1]

    @property
    def seconds(self) -> float:
        lo = max(self.since, self.span.t_first or self.since)
        hi = min(self.until, (self.span.t_last or lo) + 1)
        return max(1.0, hi - lo)

    def bucket(self, target: int = 60) -> int:
        """A bucket width (seconds, a round number) giving about ``target`` buckets."""
        for w in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400):
            if self.seconds / w <= target:
                return w
        return 86400


def start(title: str) -> Page | None:
    """Check the store and draw the sidebar; None when there is nothing to show (the page
    has been told why)."""
    rt = runtime.get()
    if rt.store is None:
        _no_store(rt)
        return None
    epoch = rt.epoch()
    span = data.span(epoch)
    window = _sidebar(rt, span)
    st.title(title)
    if span.empty:
        _empty(rt)
        return None
    return Page(epoch, window, span, rt)


def _no_store(rt: runtime.Runtime) -> None:
    st.title("infdebug")
    if rt.busy:
        st.error(
            f"The store is held by another process: {rt.error}\n\n"
            "The embedded store (chDB) admits one process at a time. Stop that process, or "
            "share one store between many: run a ClickHouse server and start every command "
            "with `--clickhouse http://HOST:8123` (`infdebug dashboard --clickhouse URL`)."
        )
    else:
        st.error(f"The store cannot be opened: {rt.error}")


def _empty(rt: runtime.Runtime) -> None:
    follow = ", ".join(rt.config.follow)
    st.info(
        "The store holds no requests yet.\n\n"
        + (
            f"Following **{follow}**: records appear here as they are written.\n\n"
            if follow
            else ""
        )
        + "To get data in:\n"
        "- `infdebug ingest sample_logs/`: two recorded fleets (a baseline and a canary with "
        "faults);\n"
        "- `infdebug dashboard --follow traces/`: follow a running fleet's trace directory;\n"
        "- `make demo`, then `infdebug dashboard`: a fleet with injected faults, recorded."
    )


def _sidebar(rt: runtime.Runtime, span: Any) -> data.Window:
    sb = st.sidebar
    sb.caption(f"store: {rt.store.description if rt.store else '-'}")
    if span.requests:
        first, last = fmt_time(span.t_first), fmt_time(span.t_last)
        sb.caption(f"{span.requests:,} requests, {first} → {last} UTC")
    choice = sb.selectbox("time range", list(RANGES), key="range")
    since, until = 0.0, 1e11
    back = RANGES[choice]
    if back == -1 and span.t_first is not None:
        lo = dt.datetime.fromtimestamp(span.t_first, dt.UTC)
        hi = dt.datetime.fromtimestamp(span.t_last + 1, dt.UTC)
        a = sb.datetime_input("from (UTC)", value=lo, key="range_from")
        b = sb.datetime_input("to (UTC)", value=hi, key="range_to")
        since = _ts(a)
        until = _ts(b)
    elif back is not None and back > 0 and span.t_last is not None:
        since = span.t_last - back
    replicas = sb.multiselect(
        "replicas", _replica_names(rt), key="replicas", help="Empty: the whole fleet."
    )
    auto = sb.toggle(f"auto-refresh ({REFRESH_S} s)", key="auto", value=bool(rt.config.follow))
    if rt.config.follow:
        sb.caption(
            ("following: " if rt.following else "stopped following: ") + ", ".join(rt.config.follow)
        )
        if rt.tail_lines:
            sb.caption(rt.tail_lines[-1])
    if auto:
        _refresher(rt.epoch())
    return (float(since), float(until), tuple(sorted(replicas)))


def _ts(v: Any) -> float:
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).timestamp()
    return float(v)


@st.cache_data(ttl=30, show_spinner=False)
def _replica_names_cached(epoch: data.Epoch) -> list[str]:
    df = data.unit_table(epoch, (0.0, 1e11, ()))
    return sorted({split_unit(u)[0] for u in df["unit"] if u}) if len(df) else []


def _replica_names(rt: runtime.Runtime) -> list[str]:
    return _replica_names_cached(rt.epoch())


@st.fragment(run_every=REFRESH_S)
def _refresher(seen: data.Epoch) -> None:
    """Rerun the page when the data changed since it was drawn."""
    now = runtime.get().epoch()
    if now != seen:
        st.rerun(scope="app")


def run_marker() -> None:
    """An invisible element numbering this session's full runs, drawn last: a browser
    knows a run is over (and which) when the number it shows changes."""
    n = int(st.session_state.get("_infdebug_runs", 0)) + 1
    st.session_state["_infdebug_runs"] = n
    st.html(f'<div id="infdebug-run" data-run="{n}" style="display:none"></div>')


def window_dict(page: Page) -> dict[str, Any]:
    return data.win(page.window)


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_{}[]()#+-.!|<>~$"})


def md(text: Any) -> str:
    """Text safe inside Markdown: every character Markdown gives a meaning escaped."""
    return str(text).translate(_MD_SPECIAL).replace("\n", " ")


def fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_s(v: Any) -> str:
    """Seconds as ms or s."""
    if v is None or v != v:
        return "-"
    v = float(v)
    return f"{v * 1000:.1f} ms" if abs(v) < 1 else f"{v:.2f} s"


def units_of(page: Page) -> list[str]:
    df = data.unit_table(page.epoch, page.window)
    return [u for u in df["unit"] if u] if len(df) else []


def unit_picker(page: Page, key: str = "unit") -> str | None:
    """A replica (unit) chosen on the page; ``?unit=`` in the address selects one."""
    units = units_of(page)
    if not units:
        st.info("No replica has requests in this window.")
        return None
    wanted = st.query_params.get("unit")
    if wanted in units and key not in st.session_state:
        st.session_state[key] = wanted
    return str(st.selectbox("replica", units, format_func=unit_label, key=key))


SEVERITY_ICON = {
    "error": ":red-badge[error]",
    "warning": ":orange-badge[warning]",
    "info": ":blue-badge[info]",
}


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def long_text(label: str, text: str | None, key: str) -> None:
    """A text shown whole up to ``TRUNCATE_CHARS``, cut beyond with a toggle to show all."""
    if not text:
        st.caption(f"{label}: (not logged)")
        return
    st.markdown(f"**{label}** ({len(text):,} characters)")
    if len(text) > TRUNCATE_CHARS and not st.toggle(
        f"show all {len(text):,} characters", key=f"all-{key}"
    ):
        st.code(text[:TRUNCATE_CHARS] + f"\n… ({len(text) - TRUNCATE_CHARS:,} more)", language=None)
    else:
        st.code(text, language=None)
