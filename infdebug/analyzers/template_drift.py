"""Chat-template drift: the model is fed a differently rendered prompt than it was trained on.

Kinds (analyzer ``template``):

- ``template.double_bos`` / ``template.missing_bos`` — from prompt token IDs alone, once the
  BOS ID is known (reference tokenizer, ``options["bos_id"]``, or inferred from the fleet).
- ``template.render_mismatch`` — the reference template renders the logged messages into
  other text than the engine used; classified, with a diff at the level of template markers.
- ``template.fingerprint_mismatch`` — one model served with different template fingerprints.
- ``template.new_skeleton`` — without any reference: a replica whose prompt skeleton (message
  contents masked, special tokens and fixed template text kept) is new to the fleet, compared
  within families of the same message-role sequence so conversation shape is not drift.

The unit everywhere is a replica within a deployment: replica names are reused across
deployments (``r3`` of ``baseline`` and ``r3`` of ``canary`` are different pods).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.schema import Finding
from infdebug.store import q_template
from infdebug.store.q_template import PromptRow
from infdebug.text.template import ChatTemplateError, fixed_now, render_chat

NAME = "template"
ERROR_SHARE = 0.01  # a fault on ≥ 1% of a replica's requests is an error
INFER_BOS_SHARE = 0.95  # infer the BOS only when this share of prompts start with one ID
RARE_SHARE = 0.01  # a skeleton below this share elsewhere is "new"
EXAMPLES = 5
SHOW = 160  # characters of a segment shown in evidence

# Special-token-like template markers: <|...|>, [INST], <<SYS>>, <s>, Gemma's turn tokens, …
MARKER_RE = re.compile(
    r"<\|[^|<>\n]{1,48}\|>|<｜[^｜\n]{1,48}｜>|\[/?INST\]|\[/?SYS\]|<</?SYS>>|</?s>|<bos>|<eos>"
    r"|<start_of_turn>|<end_of_turn>|<\|?(?:im_start|im_end)\|?>"
)
ROLE_RE = re.compile(r"^\s*(system|user|assistant|tool|ipython|developer|model|function)\s*$", re.IGNORECASE)
# fixed template lines kept when contents are masked from markers alone
FIXED_LINE_RE = re.compile(r"^(Cutting Knowledge Date|Today Date|Environment|Tools|Knowledge Cutoff|Current Date):")
# dates a template writes from the clock: normalised so the daily change is no skeleton change
DATE_RES = (
    re.compile(r"(Today Date: )[^\n<]*"),
    re.compile(r"((?:Current|Today's) [Dd]ate: )[^\n<]*"),
)
LEADING_BOS = ("<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>", "<｜begin▁of▁sentence｜>")
Unit = tuple[str, str | None]  # (replica, deployment)


def _unit_scope(unit: Unit) -> dict[str, Any]:
    return {"replica": unit[0], "deployment": unit[1]}


def _unit_name(unit: Unit) -> str:
    return unit[0] if unit[1] is None else f"{unit[0]} ({unit[1]})"


def _short(s: str, n: int = SHOW) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


# --- BOS ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BosRef:
    bos_id: int
    source: str  # tokenizer | option | inferred
    values: dict[str, Any]


_BOS_SOURCE = {
    "tokenizer": "from the reference tokenizer",
    "option": "as given",
    "inferred": "inferred from the fleet's first prompt IDs",
}


def _resolve_bos(ctx: AnalysisContext) -> BosRef | None:
    tok = ctx.tokenizer
    if tok is not None and getattr(tok, "bos_id", None) is not None:
        return BosRef(int(tok.bos_id), "tokenizer", {"bos_token": getattr(tok, "bos_token", None)})
    if ctx.options.get("bos_id") is not None:
        return BosRef(int(ctx.options["bos_id"]), "option", {})
    total, top = q_template.first_id_counts(ctx.store, ctx.window())
    if not total or not top:
        return None
    best = top[0]
    share = best.n / total
    if share < INFER_BOS_SHARE:
        return None
    marker = MARKER_RE.match(best.text_head or "")
    if best.text_head is not None and marker is None:
        return None  # the prompts start with ordinary text: that first ID is no special token
    return BosRef(
        best.first_id,
        "inferred",
        {
            "bos_inferred_share": round(share, 4),
            "bos_inferred_from": total,
            "bos_text": marker.group(0) if marker else None,
            "bos_inference": f"{share:.1%} of {total} prompts start with ID {best.first_id}"
            + (f" (text {marker.group(0)!r})" if marker else " (no prompt text to confirm it is a special token)"),
        },
    )


def _pieces(ctx: AnalysisContext, ids: list[int]) -> list[str | None] | None:
    tok = ctx.tokenizer
    if tok is None or not hasattr(tok, "piece"):
        return None
    return [tok.piece(i) for i in ids]


def _bos_findings(ctx: AnalysisContext) -> list[Finding]:
    ref = _resolve_bos(ctx)
    if ref is None:
        return []
    counts = q_template.bos_counts(ctx.store, ctx.window(), ref.bos_id, EXAMPLES)
    tok = ctx.tokenizer
    add_bos = bool(getattr(tok, "add_bos", False)) if tok is not None else bool(ctx.options.get("add_bos", False))
    out: list[Finding] = []
    for kind, attr in (("template.double_bos", "double"), ("template.missing_bos", "missing")):
        if kind == "template.missing_bos" and not add_bos:
            continue
        shares = {_unit_name((c.replica, c.deployment)): round(getattr(c, attr) / c.n, 4) for c in counts if c.n}
        for c in counts:
            k = getattr(c, attr)
            if not k:
                continue
            share = k / c.n
            head: list[int] = getattr(c, f"{attr}_head")
            what = "start with the BOS twice" if attr == "double" else "do not start with the BOS"
            out.append(
                finding(
                    NAME,
                    kind,
                    "error" if share >= ERROR_SHARE else "warning",
                    f"{k} of {c.n} prompts on {_unit_name((c.replica, c.deployment))} ({share:.1%}) {what} "
                    f"(BOS ID {ref.bos_id}, {_BOS_SOURCE[ref.source]})",
                    replica=c.replica,
                    deployment=c.deployment,
                    t_start=getattr(c, f"{attr}_first_seen"),
                    values={
                        "requests": c.n,
                        "affected": k,
                        "share": round(share, 4),
                        "bos_id": ref.bos_id,
                        "bos_source": ref.source,
                        **ref.values,
                    },
                    evidence={
                        "request_ids": getattr(c, f"{attr}_ids"),
                        "first_ids": head,
                        "first_pieces": _pieces(ctx, head),
                        "first_seen": getattr(c, f"{attr}_first_seen"),
                        "share_by_replica": shares,
                    },
                )
            )
    return out


# --- marker-level text diff -----------------------------------------------------------------


def split_markers(text: str) -> list[str]:
    """``text`` cut into template markers and the text between them (no empty pieces)."""
    parts: list[str] = []
    pos = 0
    for m in MARKER_RE.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append(m.group(0))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def marker_diff(logged: str, reference: str) -> dict[str, Any]:
    """The first differing marker segment on both sides, with the marker before it."""
    a, b = split_markers(logged), split_markers(reference)
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    char = 0
    while char < min(len(logged), len(reference)) and logged[char] == reference[char]:
        char += 1
    before = next((a[j] for j in range(i - 1, -1, -1) if MARKER_RE.fullmatch(a[j])), None)
    return {
        "segment_index": i,
        "char_offset": char,
        "after_marker": before,
        "logged": _short(a[i]) if i < len(a) else None,
        "reference": _short(b[i]) if i < len(b) else None,
        "logged_segments": len(a),
        "reference_segments": len(b),
    }


def _skeleton_of_markers(text: str) -> list[str]:
    """Markers and the role headers right after them (a one-word first line: ``user`` in
    ``<|im_start|>user\n…`` or ``<|start_header_id|>user<|end_header_id|>``): what
    ``role_marker`` compares."""
    out: list[str] = []
    for p in split_markers(text):
        if MARKER_RE.fullmatch(p):
            out.append(p)
        elif out:
            head = p.split("\n", 1)[0].strip()
            if head and re.fullmatch(r"[A-Za-z_][\w-]{0,31}", head):
                out.append(head)
    return out


# --- render mismatch ------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _uses_tools(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("role") in ("tool", "ipython") or m.get("tool_calls") for m in messages)


def classify_mismatch(
    logged: str, reference: str, reference_no_gen: str | None, messages: list[dict[str, Any]]
) -> str:
    """Why the logged prompt differs from the reference rendering (one of the class names)."""
    if re.sub(r"\s+", "", logged) == re.sub(r"\s+", "", reference):
        return "whitespace"
    if reference_no_gen is not None and logged.rstrip() == reference_no_gen.rstrip():
        return "missing_generation_prompt"
    for m in messages:
        if m.get("role") == "system":
            content = _content_text(m.get("content")).strip()
            if content and content in reference and content not in logged:
                return "system_dropped"
    diff = marker_diff(logged, reference)
    if _uses_tools(messages) or re.search(r"tool|function|ipython", f"{diff['logged']}{diff['reference']}", re.I):
        return "tools"
    if _skeleton_of_markers(logged) != _skeleton_of_markers(reference):
        return "role_marker"
    return "other"


def _reference_render(ctx: AnalysisContext, row: PromptRow, logged: str, gen: bool) -> str:
    assert ctx.template is not None
    tok = ctx.tokenizer
    bos = getattr(tok, "bos_token", None) if tok is not None else ctx.options.get("bos_token")
    eos = getattr(tok, "eos_token", None) if tok is not None else ctx.options.get("eos_token")
    if bos is None:  # no tokenizer: take the BOS text the logged prompt starts with, if any
        bos = next((b for b in LEADING_BOS if logged.startswith(b)), "")
    with fixed_now(datetime.fromtimestamp(row.t_arrival)):
        return render_chat(
            ctx.template, row.messages or [], add_generation_prompt=gen, bos_token=bos, eos_token=eos or ""
        )


def _render_findings(ctx: AnalysisContext) -> list[Finding]:
    if not ctx.template:
        return []
    cap = int(ctx.options.get("template_sample", 200))
    rows = q_template.prompt_sample(ctx.store, ctx.window(), cap, need_messages=True)
    population = q_template.replica_request_counts(ctx.store, ctx.window())
    checked: Counter[Unit] = Counter()
    failed: Counter[Unit] = Counter()
    bad: dict[tuple[Unit, str], list[tuple[PromptRow, dict[str, Any]]]] = defaultdict(list)
    for row in rows:
        unit = (row.replica, row.deployment)
        logged = row.prompt_text
        if logged is None and row.prompt_ids and ctx.tokenizer is not None:
            logged = ctx.tokenizer.decode(row.prompt_ids)
        if logged is None or not row.messages:
            continue
        try:
            ref = _reference_render(ctx, row, logged, True)
        except ChatTemplateError:
            failed[unit] += 1
            continue
        checked[unit] += 1
        if ref == logged:
            continue
        try:
            ref_no_gen: str | None = _reference_render(ctx, row, logged, False)
        except ChatTemplateError:
            ref_no_gen = None
        cls = classify_mismatch(logged, ref, ref_no_gen, row.messages)
        bad[(unit, cls)].append((row, marker_diff(logged, ref)))
    out: list[Finding] = []
    for (unit, cls), items in sorted(bad.items(), key=lambda kv: (kv[0][0][0], str(kv[0][0][1]), kv[0][1])):
        items.sort(key=lambda it: it[0].t_arrival)
        share = len(items) / checked[unit]
        out.append(
            finding(
                NAME,
                "template.render_mismatch",
                "error" if share >= ERROR_SHARE else "warning",
                f"{len(items)} of {checked[unit]} sampled prompts on {_unit_name(unit)} ({share:.1%}) differ from "
                f"the reference template's rendering: {cls}",
                replica=unit[0],
                deployment=unit[1],
                t_start=items[0][0].t_arrival,
                values={
                    "class": cls,
                    "checked": checked[unit],
                    "mismatched": len(items),
                    "share": round(share, 4),
                    "render_failed": failed[unit],
                    "sample_cap_per_replica": cap,
                    "requests_in_window": population.get(unit),
                },
                evidence={
                    "request_ids": [it[0].request_id for it in items[:EXAMPLES]],
                    "first_seen": items[0][0].t_arrival,
                    "diff": items[0][1],
                    "sampled": f"up to {cap} requests per replica, chosen by request-ID hash",
                },
            )
        )
    return out


# --- fingerprint mismatch -------------------------------------------------------------------


def _fingerprint_findings(ctx: AnalysisContext) -> list[Finding]:
    uses = q_template.template_fp_uses(ctx.store, ctx.window())
    by_model: dict[str, list[q_template.TemplateFpUse]] = defaultdict(list)
    for u in uses:
        by_model[u.model].append(u)
    out: list[Finding] = []
    for model, us in sorted(by_model.items()):
        per_fp: Counter[str] = Counter()
        for u in us:
            per_fp[u.template_fp] += u.n
        if len(per_fp) < 2:
            continue
        majority = sorted(per_fp.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        fleet = {
            fp: {
                "requests": n,
                "replicas": sorted({_unit_name((u.replica, u.deployment or None)) for u in us if u.template_fp == fp}),
            }
            for fp, n in per_fp.items()
        }
        for u in us:
            if u.template_fp == majority:
                continue
            unit = (u.replica, u.deployment or None)
            out.append(
                finding(
                    NAME,
                    "template.fingerprint_mismatch",
                    "warning",
                    f"{_unit_name(unit)} serves model {model or '(unnamed)'} with chat template {u.template_fp} "
                    f"on {u.n} requests; the fleet's most used is {majority}",
                    replica=u.replica,
                    deployment=u.deployment or None,
                    t_start=u.first_seen,
                    t_end=u.last_seen,
                    values={"model": model, "template_fp": u.template_fp, "fleet_template_fp": majority,
                            "requests": u.n, "distinct_fingerprints": len(per_fp)},
                    evidence={"request_ids": u.request_ids, "first_seen": u.first_seen, "fingerprints": fleet},
                )
            )
    return out


# --- skeletons ------------------------------------------------------------------------------


def _normalise_dates(text: str) -> str:
    for rx in DATE_RES:
        text = rx.sub(lambda m: m.group(1) + "{date}", text)
    return text


def _mask_between_markers(text: str) -> str:
    out: list[str] = []
    for part in split_markers(text):
        if MARKER_RE.fullmatch(part) or ROLE_RE.match(part):
            out.append(part)
            continue
        lines = []
        for line in part.split("\n"):
            if FIXED_LINE_RE.match(line):
                lines.append(line)
            elif line.strip():
                lead = line[: len(line) - len(line.lstrip())]
                trail = line[len(line.rstrip()) :]
                lines.append(f"{lead}{{content}}{trail}")
            else:
                lines.append(line)
        masked = "\n".join(lines)
        out.append(re.sub(r"\{content\}(\n*\{content\})+", "{content}", masked))
    return "".join(out)


def skeleton(text: str, messages: list[dict[str, Any]] | None) -> str:
    """``text`` with message contents masked ("{role}"), special tokens and fixed template
    text kept, and the clock's date normalised to "{date}"."""
    if messages:
        out: list[str] = []
        pos = 0
        ok = True
        for m in messages:
            content = _content_text(m.get("content"))
            for candidate in (content, content.strip()):
                if not candidate:
                    break
                at = text.find(candidate, pos)
                if at >= 0:
                    out.append(text[pos:at])
                    out.append("{" + str(m.get("role", "?")) + "}")
                    pos = at + len(candidate)
                    break
            else:
                ok = False
        if ok:
            out.append(text[pos:])
            return _normalise_dates("".join(out))
    return _normalise_dates(_mask_between_markers(text))


def family_of(messages: list[dict[str, Any]] | None) -> str:
    """The message-role sequence a prompt was rendered from ("?" where none was logged)."""
    if not messages:
        return "?"
    return ",".join(str(m.get("role", "?")) for m in messages)


@dataclass
class _Seen:
    n: int = 0
    first_seen: float = float("inf")
    request_ids: list[str] | None = None


def _skeleton_findings(ctx: AnalysisContext) -> list[Finding]:
    cap = int(ctx.options.get("template_sample", 2000))
    min_n = int(ctx.options.get("template_min_requests", 10))
    rows = q_template.prompt_sample(ctx.store, ctx.window(), cap)
    # unit -> family -> skeleton -> seen
    dist: dict[Unit, dict[str, dict[str, _Seen]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        text = row.prompt_text
        if text is None and row.prompt_ids and ctx.tokenizer is not None:
            text = ctx.tokenizer.decode(row.prompt_ids)
        if text is None:
            continue
        sk = skeleton(text, row.messages)
        entry = dist[(row.replica, row.deployment)][family_of(row.messages)].setdefault(sk, _Seen(request_ids=[]))
        entry.n += 1
        entry.first_seen = min(entry.first_seen, row.t_arrival)
        assert entry.request_ids is not None
        if len(entry.request_ids) < EXAMPLES:
            entry.request_ids.append(row.request_id)
    out: list[Finding] = []
    for unit in sorted(dist, key=lambda u: (u[0], str(u[1]))):
        flagged: list[dict[str, Any]] = []
        for fam, sks in dist[unit].items():
            n_fam = sum(s.n for s in sks.values())
            if n_fam < min_n:
                continue
            dominant, dom_seen = sorted(sks.items(), key=lambda kv: (-kv[1].n, kv[0]))[0]
            rest: Counter[str] = Counter()
            for other, ofams in dist.items():
                if other == unit:
                    continue
                for sk, s in ofams.get(fam, {}).items():
                    rest[sk] += s.n
            n_rest = sum(rest.values())
            if n_rest < min_n:
                continue  # nothing to compare with
            share_rest = rest[dominant] / n_rest
            if share_rest >= RARE_SHARE:
                continue
            fleet_sk = rest.most_common(1)[0][0]
            flagged.append({
                "family": fam,
                "skeleton": dominant,
                "seen": dom_seen,
                "n_family": n_fam,
                "n_rest": n_rest,
                "share_rest": share_rest,
                "fleet_skeleton": fleet_sk,
                "fleet_count": rest[fleet_sk],
            })
        if not flagged:
            continue
        flagged.sort(key=lambda f: -f["n_family"])
        top = flagged[0]
        seen: _Seen = top["seen"]
        out.append(
            finding(
                NAME,
                "template.new_skeleton",
                "warning",
                f"{_unit_name(unit)} renders prompts with a template skeleton the rest of the fleet does not use "
                f"({seen.n} of {top['n_family']} sampled '{top['family']}' prompts; "
                f"{top['share_rest']:.1%} of {top['n_rest']} elsewhere)",
                replica=unit[0],
                deployment=unit[1],
                t_start=seen.first_seen,
                values={
                    "families_affected": [f["family"] for f in flagged],
                    "requests": seen.n,
                    "family_requests": top["n_family"],
                    "share_elsewhere": round(top["share_rest"], 4),
                    "fleet_family_requests": top["n_rest"],
                    "sample_cap_per_replica": cap,
                },
                evidence={
                    "request_ids": seen.request_ids,
                    "first_seen": seen.first_seen,
                    "family": top["family"],
                    "skeleton": _short(top["skeleton"], 400),
                    "fleet_skeleton": _short(top["fleet_skeleton"], 400),
                    "fleet_skeleton_requests": top["fleet_count"],
                    "diff": marker_diff(top["skeleton"], top["fleet_skeleton"]),
                    "diff_sides": "logged = this replica's skeleton, reference = the fleet's",
                },
            )
        )
    return out


def _all(parts: Iterable[list[Finding]]) -> list[Finding]:
    return [f for p in parts for f in p]


@analyzer(NAME)
def template_drift(ctx: AnalysisContext) -> list[Finding]:
    """Every ``template.*`` check over the context's window."""
    return _all(
        (
            _bos_findings(ctx),
            _render_findings(ctx),
            _fingerprint_findings(ctx),
            _skeleton_findings(ctx),
        )
    )
