"""The incident report: scope, timeline, findings with their evidence, and the charts as PNG,
as one Markdown file in a zip beside its images. Built from the same frames and charts as
the pages (no Streamlit here); the PNGs are rendered offline by vl-convert."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from infdebug.schema import Finding


@dataclass
class Scope:
    store: str
    since: float | None
    until: float | None
    replicas: Sequence[str]
    requests: int
    t_first: float | None
    t_last: float | None
    generated: float = field(default_factory=lambda: dt.datetime.now(dt.UTC).timestamp())


def _t(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(float(t), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s.replace("|", "\\|").replace("\n", " ")[:300]


def png(chart: Any, scale: float = 1.5) -> bytes:
    """An Altair chart as PNG bytes (vl-convert, no browser)."""
    import vl_convert as vlc

    return bytes(vlc.vegalite_to_png(chart.to_json(), scale=scale))


def markdown(
    scope: Scope,
    findings: Sequence[Finding],
    images: Sequence[tuple[str, str]] = (),
    *,
    table: str | None = None,
) -> str:
    """The report's Markdown. ``images``: (title, file name) of the charts beside it;
    ``table``: the per-replica percentile table, as Markdown."""
    sev = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "info")}
    out = [
        "# Incident report",
        "",
        f"Generated {_t(scope.generated)} by infdebug from `{scope.store}`.",
        "",
        "## Scope",
        "",
        f"- window: {_t(scope.since) if scope.since else 'start of data'} → "
        f"{_t(scope.until) if scope.until and scope.until < 1e11 else 'end of data'}",
        f"- replicas: {', '.join(scope.replicas) if scope.replicas else 'the whole fleet'}",
        f"- requests in the store: {scope.requests:,} ({_t(scope.t_first)} → {_t(scope.t_last)})",
        f"- findings: {sev['error']} error, {sev['warning']} warning, {sev['info']} info",
        "",
        "## Timeline",
        "",
    ]
    events = sorted(
        (
            (float((f.scope or {}).get("t_start") or 0.0), f)
            for f in findings
            if f.severity != "info"
        ),
        key=lambda x: x[0],
    )
    if scope.t_first is not None:
        out.append(f"- {_t(scope.t_first)}: first request in the store")
    for t, f in events:
        where = (f.scope or {}).get("replica") or "fleet"
        dep = (f.scope or {}).get("deployment")
        label = f"{where} ({dep})" if dep else where
        when = _t(t) if t else "(no start time)"
        out.append(f"- {when}: **{f.kind}** on {label} ({f.severity})")
    if scope.t_last is not None:
        out.append(f"- {_t(scope.t_last)}: last request in the store")
    out += ["", "## Findings", ""]
    if not findings:
        out.append("No analyzer found anything over this window.")
    for i, f in enumerate(findings, 1):
        where = (f.scope or {}).get("replica") or "fleet"
        dep = (f.scope or {}).get("deployment")
        out += [
            f"### {i}. {f.severity.upper()} `{f.kind}` · {where}" + (f" ({dep})" if dep else ""),
            "",
            f.summary,
            "",
        ]
        if f.values:
            out += ["| value | |", "|---|---|"]
            out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in f.values.items()]
            out.append("")
        if f.evidence:
            out += [
                "<details><summary>evidence</summary>",
                "",
                "```json",
                json.dumps(f.evidence, indent=1, default=str)[:8000],
                "```",
                "",
                "</details>",
                "",
            ]
    if table:
        out += ["## Per replica", "", table, ""]
    if images:
        out += ["## Charts", ""]
        for title, name in images:
            out += [f"### {title}", "", f"![{title}](charts/{name})", ""]
    return "\n".join(out) + "\n"


def bundle(md: str, images: Sequence[tuple[str, bytes]]) -> bytes:
    """``report.md`` and ``charts/NAME.png`` in one zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("report.md", md)
        for name, data in images:
            z.writestr(f"charts/{name}", data)
    return buf.getvalue()
