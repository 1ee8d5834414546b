"""The dashboard's charts, as Altair specifications built from the data module's frames (no
Streamlit here, so the incident report renders the same charts to PNG). Altair's chained
builders are untyped, so each returns ``Any`` (a chart ``st.altair_chart`` and vl-convert
take)."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

ALT_WIDTH = "container"
SIM = " [SIMULATED]"


def _size(width: int | None, height: Any) -> dict[str, Any]:
    """Height always; width only when given (a PNG), else the page's column decides."""
    return {"height": height, **({"width": width} if width else {})}


def _x(title: str = "time (UTC)", shared: bool = False) -> Any:
    return alt.X("t:T", title=title, axis=alt.Axis(format="%H:%M:%S"))


def heatmap(df: pd.DataFrame, value: str, title: str, width: int | None = None) -> Any:
    """Replica × time, colour = ``value`` (seconds, log scale)."""
    d = df.dropna(subset=[value]).copy()
    d["ms"] = d[value] * 1000
    return (
        alt.Chart(d, title=title)
        .mark_rect()
        .encode(
            x=alt.X("t:T", title=None, axis=alt.Axis(format="%H:%M")),
            x2=alt.X2("t_end:T"),
            y=alt.Y("replica_label:N", title=None),
            color=alt.Color("ms:Q", title="ms", scale=alt.Scale(type="log", scheme="inferno")),
            tooltip=[
                alt.Tooltip("replica_label:N", title="replica"),
                alt.Tooltip("t:T", title="from", format="%H:%M:%S"),
                alt.Tooltip("ms:Q", title=f"{title} (ms)", format=".1f"),
                alt.Tooltip("requests:Q"),
            ],
        )
        .properties(**_size(width, alt.Step(30)))
    )


def qps(df: pd.DataFrame, width: int | None = None) -> Any:
    """Fleet requests/s per bucket."""
    return (
        alt.Chart(df, title="QPS")
        .mark_line()
        .encode(
            x=_x(),
            y=alt.Y("qps:Q", title="requests/s"),
            tooltip=[alt.Tooltip("t:T", format="%H:%M:%S"), alt.Tooltip("qps:Q", format=".2f")],
        )
        .properties(**_size(width, 200))
    )


def attainment(df: pd.DataFrame, width: int | None = None) -> Any:
    """The share of each bucket's requests meeting the SLO."""
    return (
        alt.Chart(df, title="SLO attainment")
        .mark_line(color="#2ca02c")
        .encode(
            x=_x(),
            y=alt.Y(
                "attainment:Q",
                title=None,
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%"),
            ),
            tooltip=[
                alt.Tooltip("t:T", format="%H:%M:%S"),
                alt.Tooltip("attainment:Q", format=".1%"),
            ],
        )
        .properties(**_size(width, 140))
    )


def gpu_sparklines(df: pd.DataFrame, width: int | None = None) -> Any:
    """Per replica (rows) power, temperature and SM clock (columns) over time."""
    d = df.copy()
    d["label"] = d["replica_label"] + d["simulated"].map(lambda s: SIM if s else "")
    long = d.melt(
        id_vars=["label", "t", "gpu"],
        value_vars=["power_w", "temp_c", "sm_clock_mhz"],
        var_name="metric",
        value_name="value",
    ).dropna(subset=["value"])
    return (
        alt.Chart(long)
        .mark_line(strokeWidth=1)
        .encode(
            x=alt.X("t:T", title=None, axis=alt.Axis(labels=False, ticks=False)),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
            detail="gpu:N",
            tooltip=[
                "label:N",
                "metric:N",
                alt.Tooltip("value:Q", format=".1f"),
                alt.Tooltip("t:T", format="%H:%M:%S"),
            ],
        )
        .properties(height=40, width=max(120, (width or 900) // 3 - 40))
        .facet(
            row=alt.Row("label:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left")),
            column=alt.Column("metric:N", title=None),
        )
        .resolve_scale(y="independent")
    )


def compare_hist(df: pd.DataFrame, title: str, unit_label: str, width: int | None = None) -> Any:
    """A log-binned distribution of one replica against the rest of its fleet, each as
    shares of its own count."""
    d = df.copy()
    for c in ("unit", "rest"):
        total = d[c].sum()
        d[c] = d[c] / total if total else 0.0
    long = d.melt(id_vars=["lo"], value_vars=["unit", "rest"], var_name="who", value_name="share")
    long["who"] = long["who"].map({"unit": unit_label, "rest": "rest of fleet"})
    long["ms"] = long["lo"] * 1000
    return (
        alt.Chart(long, title=title)
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("ms:Q", title="ms (log)", scale=alt.Scale(type="log")),
            y=alt.Y("share:Q", title="share", axis=alt.Axis(format="%")),
            color=alt.Color("who:N", title=None),
            tooltip=[
                "who:N",
                alt.Tooltip("ms:Q", format=".2f"),
                alt.Tooltip("share:Q", format=".1%"),
            ],
        )
        .properties(**_size(width, 240))
    )


def timeline(lat: pd.DataFrame, gpu: pd.DataFrame, width: int | None = None) -> Any:
    """Latency (p50, p99 of TTFT and TPOT) above GPU power, temperature and SM clock, on
    one shared time axis: throttling is seen against latency."""
    lat_long = lat.melt(
        id_vars=["t"],
        value_vars=["ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99"],
        var_name="metric",
        value_name="s",
    ).dropna(subset=["s"])
    lat_long["ms"] = lat_long["s"] * 1000
    x = alt.X("t:T", title=None, axis=alt.Axis(format="%H:%M:%S"))
    top = (
        alt.Chart(lat_long, title="latency")
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("ms:Q", title="ms", scale=alt.Scale(type="log")),
            color=alt.Color("metric:N", title=None),
            tooltip=[
                "metric:N",
                alt.Tooltip("ms:Q", format=".1f"),
                alt.Tooltip("t:T", format="%H:%M:%S"),
            ],
        )
        .properties(**_size(width, 220))
    )
    charts: list[Any] = [top]
    sim = bool(len(gpu) and gpu["simulated"].any())
    for col, label in (
        ("power_w", "power W"),
        ("temp_c", "temperature °C"),
        ("sm_clock_mhz", "SM clock MHz"),
    ):
        if not len(gpu) or gpu[col].isna().all():
            continue
        g = (
            alt.Chart(gpu, title=label + (SIM if sim else ""))
            .mark_line()
            .encode(
                x=x, y=alt.Y(f"{col}:Q", title=None, scale=alt.Scale(zero=False)), color="gpu:N"
            )
        )
        thr = (
            alt.Chart(gpu[gpu["throttled"] > 0])
            .mark_tick(color="red", thickness=2)
            .encode(x=x, tooltip=[alt.Tooltip("t:T", format="%H:%M:%S", title="throttled at")])
        )
        charts.append(alt.layer(g, thr).properties(**_size(width, 140)))
    return alt.vconcat(*charts).resolve_scale(x="shared")


def gaps(times_s: list[float], width: int | None = None) -> Any:
    """A request's inter-token gaps by output position (the first bar is TTFT)."""
    rows = [{"token": 0, "ms": times_s[0] * 1000, "what": "TTFT"}] if times_s else []
    rows += [
        {"token": i, "ms": (b - a) * 1000, "what": "gap"}
        for i, (a, b) in enumerate(zip(times_s, times_s[1:], strict=False), start=1)
    ]
    return (
        alt.Chart(pd.DataFrame(rows), title="per-token timeline")
        .mark_bar()
        .encode(
            x=alt.X("token:Q", title="output token"),
            y=alt.Y("ms:Q", title="ms"),
            color=alt.Color("what:N", title=None),
            tooltip=["token:Q", alt.Tooltip("ms:Q", format=".2f")],
        )
        .properties(**_size(width, 220))
    )


def per_minute(per_minute: list[int], t0: float, width: int | None = None) -> Any:
    d = pd.DataFrame(
        {
            "t": pd.to_datetime([t0 + 60 * i for i in range(len(per_minute))], unit="s", utc=True),
            "requests": per_minute,
        }
    )
    return (
        alt.Chart(d, title="requests per minute")
        .mark_area(line=True, opacity=0.3)
        .encode(
            x=_x(),
            y=alt.Y("requests:Q", title="requests/min"),
            tooltip=[alt.Tooltip("t:T", format="%H:%M"), "requests:Q"],
        )
        .properties(**_size(width, 220))
    )


def lengths(df: pd.DataFrame, width: int | None = None) -> Any:
    return (
        alt.Chart(df, title="prompt and output lengths")
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("lo:Q", title="tokens (log)", scale=alt.Scale(type="log")),
            y=alt.Y("requests:Q", title="requests"),
            color=alt.Color("kind:N", title=None),
            tooltip=["kind:N", alt.Tooltip("lo:Q", format=".0f"), "requests:Q"],
        )
        .properties(**_size(width, 240))
    )
