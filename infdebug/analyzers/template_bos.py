"""The BOS part of chat-template drift (analyzer ``template``): ``template.double_bos`` and
``template.missing_bos`` from prompt token IDs alone, once the BOS ID is known (the reference
tokenizer, ``options["bos_id"]``, or inferred from the fleet). A helper of template_drift.py;
it registers nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infdebug.analyzers.base import AnalysisContext, finding
from infdebug.analyzers.template_text import MARKER_RE
from infdebug.schema import Finding
from infdebug.store import q_template
from infdebug.store.q_common import make_unit, unit_label

NAME = "template"  # the analyzer these findings belong to (template_drift.py)
ERROR_SHARE = 0.01  # a fault on ≥ 1% of a replica's requests is an error
INFER_BOS_SHARE = 0.95  # infer the BOS only when this share of prompts start with one ID
EXAMPLES = 5
DOUBLED_BOS_RUN = 2  # a prompt that starts with the BOS this many times has a doubled BOS
HEAD_IDS = 8  # first prompt IDs shown in a BOS finding's evidence
Unit = tuple[str, str | None]  # (replica, deployment)


def served_model(ctx: AnalysisContext) -> str:
    """The served model the reference (tokenizer, template, BOS) belongs to; "" = every request."""
    return str(ctx.options.get("model") or "")


def unit_name(unit: Unit) -> str:
    return unit_label(make_unit(*unit))


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


def _resolve_bos(ctx: AnalysisContext, model: str) -> BosRef | None:
    tok = ctx.tokenizer
    if tok is not None and getattr(tok, "bos_id", None) is not None:
        return BosRef(int(tok.bos_id), "tokenizer", {"bos_token": getattr(tok, "bos_token", None)})
    if ctx.options.get("bos_id") is not None:
        return BosRef(int(ctx.options["bos_id"]), "option", {})
    total, top = q_template.first_id_counts(ctx.store, ctx.window(), model=model)
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
            + (
                f" (text {marker.group(0)!r})"
                if marker
                else " (no prompt text to confirm it is a special token)"
            ),
        },
    )


def _pieces(ctx: AnalysisContext, ids: list[int]) -> list[str | None] | None:
    tok = ctx.tokenizer
    if tok is None or not hasattr(tok, "piece"):
        return None
    return [tok.piece(i) for i in ids]


def bos_findings(ctx: AnalysisContext) -> list[Finding]:
    """With a reference (tokenizer, bos_id option) or a model named: that model's requests.
    Otherwise the BOS is inferred model by model (one fleet may serve several, with other
    BOS IDs)."""
    given = served_model(ctx)
    referenced = ctx.tokenizer is not None or ctx.options.get("bos_id") is not None
    models = [given] if given or referenced else q_template.models(ctx.store, ctx.window())
    return [f for m in models for f in _bos_findings_of(ctx, m, several=len(models) > 1)]


def _bos_findings_of(ctx: AnalysisContext, model: str, *, several: bool) -> list[Finding]:
    ref = _resolve_bos(ctx, model)
    if ref is None:
        return []
    counts = q_template.bos_counts(
        ctx.store,
        ctx.window(),
        ref.bos_id,
        double_run=DOUBLED_BOS_RUN,
        examples=EXAMPLES,
        head=HEAD_IDS,
        model=model,
    )
    tok = ctx.tokenizer
    add_bos = (
        bool(getattr(tok, "add_bos", False))
        if tok is not None
        else bool(ctx.options.get("add_bos", False))
    )
    out: list[Finding] = []
    for kind, attr in (("template.double_bos", "double"), ("template.missing_bos", "missing")):
        if kind == "template.missing_bos" and not add_bos:
            continue
        shares = {
            unit_name((c.replica, c.deployment)): round(getattr(c, attr) / c.n, 4)
            for c in counts
            if c.n
        }
        for c in counts:
            k = getattr(c, attr)
            if not k:
                continue
            share = k / c.n
            head: list[int] = getattr(c, f"{attr}_head")
            what = "start with the BOS twice" if attr == "double" else "do not start with the BOS"
            if several:
                what += f" (model {model or '(unnamed)'})"
            out.append(
                finding(
                    NAME,
                    kind,
                    "error" if share >= ERROR_SHARE else "warning",
                    f"{k} of {c.n} prompts on {unit_name((c.replica, c.deployment))} "
                    f"({share:.1%}) {what} "
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
                        "model": model or None,
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
