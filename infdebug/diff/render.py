"""A diff as text: the terminal report (rich markup, fits 100 columns) and Markdown for an
incident channel or a PR, built from one list of (kind, text) lines so the two never tell
different stories; and the stable JSON document (``to_json``).

JSON (``infdebug diff --json``), stable: ``labels``, ``verdict`` (the worst change's
severity or null), ``findings`` (changes, in the contract's Finding shape and the analyzers'
kinds), ``unchanged`` (kinds found on both sides), ``pairing``, ``sections`` (most severe
first; each with ``severity``), ``sides`` (per-side summaries), ``failed``, ``seconds``,
``ingest`` (per side, when logs were loaded).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from rich.markup import escape

from infdebug.diff import DiffResult
from infdebug.render import KEY_VALUES, SEVERITY_STYLE

_VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "→", "\r": "␍"})


def visible(s: str | None) -> str:
    return "?" if s is None else s.translate(_VISIBLE)


def to_json(res: DiffResult) -> dict[str, Any]:
    return {
        "labels": list(res.labels),
        "verdict": res.worst(),
        "findings": msgspec.to_builtins(res.findings),
        "unchanged": res.unchanged,
        "pairing": res.pairing,
        "sections": res.sections,
        "sides": res.sides,
        "failed": res.failed,
        "seconds": res.seconds,
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}%"


def _ms(s: float | None) -> str:
    if s is None or s != s:
        return "n/a"
    return f"{s * 1000:.3g} ms" if abs(s) < 1 else f"{s:.3g} s"


def _tokens(seq: list[dict[str, Any]], at: int) -> str:
    out = []
    for t in seq:
        piece = "" if t.get("piece") is None else f"“{visible(t['piece'])}”"
        item = f"{t['id']}{piece}"
        out.append(f"[{item}]" if t["index"] == at else item)
    return " ".join(out)


# (kind, text): kind is a severity (a heading or finding line), "h" a section heading,
# "t" plain text, "c" a code-like line
Line = tuple[str, str]


def lines(res: DiffResult) -> list[Line]:
    a, b = res.labels
    sa, sb = res.sides.get(a, {}), res.sides.get(b, {})
    out: list[Line] = []
    verdict = res.worst()
    out.append(
        (
            "t",
            f"{a}: {sa.get('requests', 0)} requests on {len(sa.get('replicas', []))} replicas"
            f" · {b}: {sb.get('requests', 0)} requests on {len(sb.get('replicas', []))}"
            " replicas",
        )
    )
    p = res.pairing
    out.append(
        (
            "t",
            f"pairs: {p['pairs']} ({p['by_request_id']} by request ID, {p['by_prompt']} by "
            f"prompt) · only in {a}: {p['baseline_only']} · only in {b}: {p['candidate_only']}",
        )
    )
    if not p["comparable"]:
        out.append(("warning", "workloads not comparable: " + "; ".join(p["incomparable_because"])))
    if not res.findings and not res.sections:
        out.append(("t", "no changes"))
    for f in res.findings:
        scope = f.scope or {}
        where = scope.get("replica") or ""
        if scope.get("deployment"):
            where = f"{where} ({scope['deployment']})" if where else str(scope["deployment"])
        summary = f.summary
        for prefix in (f"{where}: ", f"{where} "):
            if where and summary.startswith(prefix):
                summary = summary[len(prefix) :]
        out.append((f.severity, f"{f.kind} {where}: {summary}"))
        vals = {k: v for k, v in (f.values or {}).items() if k in KEY_VALUES}
        if vals:
            out.append(("c", ", ".join(f"{k}={v}" for k, v in vals.items())[:200]))
    for name, sec in res.sections.items():
        out.append(("h", f"{name} [{sec['severity']}]"))
        out.extend(_section(name, sec, a, b))
    if res.unchanged:
        kinds = ", ".join(
            f"{u['kind']}" + (f" on {u['replica']}" if u.get("replica") else "")
            for u in res.unchanged
        )
        out.append(("t", f"unchanged (found on both sides): {kinds}"))
    for name, why in sorted(res.failed.items()):
        out.append(("error", f"analyzer {name} failed: {why}"))
    out.append(("t", f"verdict: {verdict or 'nothing changed'}"))
    return out


def _section(name: str, sec: dict[str, Any], a: str, b: str) -> list[Line]:
    out: list[Line] = []
    if name == "fingerprints":
        for k, v in sec["changed"].items():
            out.append(
                (
                    "t",
                    f"{k}: {', '.join(v['baseline']) or '-'} → {', '.join(v['candidate']) or '-'}",
                )
            )
    elif name in ("tokenization", "outputs"):
        what = (
            "paired prompts tokenized differently"
            if name == "tokenization"
            else ("greedy pairs of the same prompt IDs whose outputs diverge")
        )
        out.append(("t", f"{sec['count']} of {sec['of_pairs']} {what} ({sec['share']:.1%})"))
        for ex in sec["examples"][:3]:
            at = ex["first_diverging_index"]
            gap = f", logprob gap {ex['logprob_gap']:+.3f}" if "logprob_gap" in ex else ""
            out.append(
                (
                    "t",
                    f"{ex['baseline_request_id']} ↔ {ex['candidate_request_id']}: "
                    f"first diverging token {at}{gap}",
                )
            )
            out.append(("c", f"{a}: {_tokens(ex['baseline'], at)}"))
            out.append(("c", f"{b}: {_tokens(ex['candidate'], at)}"))
    elif name == "templates":
        out.append(
            (
                "t",
                f"{sec['count']} of {sec['of_pairs']} paired prompts rendered "
                f"differently ({sec['share']:.1%})",
            )
        )
        for ex in sec["examples"][:2]:
            out.append(("t", f"{ex['baseline_request_id']}: at char {ex['first_diverging_char']}"))
            out.append(("c", f"{a}: {visible(ex['baseline'])}"))
            out.append(("c", f"{b}: {visible(ex['candidate'])}"))
    elif name == "stop":
        for r in sec["finish_reasons"]:
            out.append(
                (
                    "t",
                    f"{r['finish_reason']}: {_share(r['baseline_share'])} → "
                    f"{_share(r['candidate_share'])} (p={r['p_value']:.2g})",
                )
            )
        for c in sec["paired_changes"][:5]:
            out.append(("t", f"paired: {c['baseline']} → {c['candidate']}: {c['pairs']}"))
    elif name == "latency":
        for m in sec["metrics"]:
            qa, qb = m["baseline_p50_p90_p99_s"], m["candidate_p50_p90_p99_s"]
            lo, hi = m["shift_ci95"]
            out.append(
                (
                    m["severity"],
                    f"{m['name']}: {_pct(m['shift'])} (95% CI {_pct(lo)} to {_pct(hi)}, "
                    f"p={m['p_value']:.2g}, {m['strata']} strata)",
                )
            )
            out.append(("c", f"p50/p90/p99 {a}: {' / '.join(map(_ms, qa))}"))
            out.append(("c", f"p50/p90/p99 {b}: {' / '.join(map(_ms, qb))}"))
    elif name == "gpu":
        tag = " [SIMULATED GPU]" if sec["simulated"] else ""
        for k, v in sec["means"].items():
            out.append(
                (
                    "t",
                    f"{k}: {v['baseline']:.1f} → {v['candidate']:.1f} ({_pct(v['relative'])}){tag}",
                )
            )
        for r, v in sec["throttle_share"].items():
            out.append(("t", f"throttled {r}: {v['baseline']:.0%} → {v['candidate']:.0%}"))
        j = sec["joules_per_output_token"]
        if j["baseline"] and j["candidate"]:
            out.append(("t", f"J/token: {j['baseline']:.3g} → {j['candidate']:.3g}{tag}"))
    elif name == "workload":
        qps = sec["qps"]
        out.append(("t", f"QPS: {_num(qps['baseline'])} → {_num(qps['candidate'])}"))
        pt = sec["prompt_tokens_p50_p90_p99"]
        out.append(
            ("t", f"prompt tokens p50/p90/p99: {_q(pt['baseline'])} → {_q(pt['candidate'])}")
        )
        ot = sec["output_tokens_p50_p90_p99"]
        out.append(
            ("t", f"output tokens p50/p90/p99: {_q(ot['baseline'])} → {_q(ot['candidate'])}")
        )
    return out


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _q(v: list[float] | None) -> str:
    return "/".join(f"{x:.0f}" for x in v) if v else "n/a"


def print_terminal(res: DiffResult, console: Any) -> None:
    for kind, text in lines(res):
        if kind in SEVERITY_STYLE:
            style = SEVERITY_STYLE[kind]
            console.print(f"[{style}]{kind.upper():<7}[/] {escape(text)}", highlight=False)
        elif kind == "h":
            console.print(f"\n[bold]── {escape(text)}[/]", highlight=False)
        elif kind == "c":
            console.print(f"    [dim]{escape(text)}[/]", highlight=False)
        else:
            console.print(escape(text), highlight=False)


def markdown(res: DiffResult, when: float | None = None) -> str:
    a, b = res.labels
    stamp = (
        dt.datetime.fromtimestamp(when, dt.UTC).strftime(" (%Y-%m-%d %H:%M UTC)") if when else ""
    )
    out = [f"## infdebug diff: `{a}` → `{b}`{stamp}", ""]
    for kind, text in lines(res):
        if kind in SEVERITY_STYLE:
            out.append(f"- **{kind.upper()}** {text}")
        elif kind == "h":
            out += ["", f"### {text}", ""]
        elif kind == "c":
            out.append(f"  - `{text.replace('`', 'ʼ')}`")
        else:
            out.append(f"- {text}" if not text.startswith("verdict") else f"\n**{text}**")
    return "\n".join(out) + "\n"
