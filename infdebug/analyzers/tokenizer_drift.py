"""Tokenizer drift: the fleet encodes or decodes text other than the way the model expects.

Kinds (analyzer ``tokenizer``):

- ``tokenizer.fingerprint_mismatch`` — one model served with more than one tokenizer fingerprint.
- ``tokenizer.cross_replica_ids`` — one prompt text logged with other IDs on other replicas
  (no reference needed).
- ``tokenizer.vocabulary_mismatch`` — replicas encode shared texts in unrelated vocabularies
  (two models the logs do not name; no reference needed).
- ``tokenizer.reencode_mismatch`` — the reference tokenizer encodes a logged prompt text to
  other IDs than logged; the cause is classified.
- ``tokenizer.decode_mismatch`` — logged output IDs decode to other text than logged.
- ``tokenizer.out_of_vocab`` — token IDs outside the vocabulary.

The checks of the logged IDs alone (the first three and the last) live in ``tokenizer_ids``;
this module adds the ones against the reference tokenizer and registers the analyzer.

Options (``ctx.options``): ``tokenizer_sample`` (distinct prompts / outputs checked per
replica, default 5,000: re-encoding runs at the tokenizer's own speed, about 2.8k
512-token prompts/s on 2 cores with ``tokenizers``' ``encode_batch_fast`` (bench/analyze.py),
and 5,000 finds a 0.1% rate with ~99% probability), ``model`` (restrict the reference checks
to one model's requests).
"""

from __future__ import annotations

import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.tokenizer_ids import (
    ERROR_SHARE,
    MAX_IDS,
    NAME,
    cross_replica_findings,
    fingerprint_findings,
    first_diff,
    oov_findings,
    sample_options,
    token_side,
)
from infdebug.analyzers.tokenizer_vocab import load_conflicts
from infdebug.schema import Finding
from infdebug.store import q_tokenizer as q
from infdebug.store.q_common import unit_label

CONTEXT_CHARS = 30


# --- re-encoding with the reference ---------------------------------------------------------


@dataclass
class _Tally:
    requests_checked: int = 0
    prompts_checked: int = 0
    affected: int = 0
    prompts_affected: int = 0
    first_seen: float | None = None
    causes: dict[str, int] | None = None
    request_ids: list[str] | None = None
    example: dict[str, Any] | None = None


def _strip_bos(ids: list[int], bos: int | None) -> list[int]:
    i = 0
    while bos is not None and i < len(ids) and ids[i] == bos:
        i += 1
    return ids[i:]


def _lead_space(piece: str | None) -> str | None:
    if piece and piece[0] in "▁Ġ":
        return piece[0]
    return None


def classify_reencode(
    tok: Any, text: str, logged: list[int], ref: list[int], added: set[int] | None = None
) -> tuple[str, int]:
    """The likely cause of ``logged`` ≠ ``ref`` for ``text``, and the first diverging index
    (after any leading BOS run, which is compared separately). ``added``: the tokenizer's
    added/special IDs (computed when not given)."""
    bos = getattr(tok, "bos_id", None)
    a, b = _strip_bos(logged, bos), _strip_bos(ref, bos)
    if a == b:
        return "bos", first_diff(logged, ref) or 0
    offset = len(logged) - len(a)
    i = first_diff(a, b)
    idx = offset + (i or 0)
    for form in ("NFC", "NFKC"):
        norm = unicodedata.normalize(form, text)
        if norm != text and _strip_bos(tok.encode(norm), bos) == a:
            return "normalization", idx
    if i is None:
        return "other", idx
    if added is None:
        added = added_ids(tok)
    near = {x for s in (a, b) for x in s[max(0, i - 1) : i + 1]}
    if near & added:
        return "special_tokens", idx
    pa = tok.piece(a[i]) if i < len(a) else None
    pb = tok.piece(b[i]) if i < len(b) else None
    la, lb = _lead_space(pa), _lead_space(pb)
    if la != lb or (pa in ("▁", "Ġ")) != (pb in ("▁", "Ġ")):
        return ("sentencepiece_legacy" if "▁" in (la, lb) else "prefix_space"), idx
    return "other", idx


def added_ids(tok: Any) -> set[int]:
    """IDs of the tokenizer's added tokens, BOS and EOS/end-of-turn."""
    inner = getattr(tok, "tok", None)
    ids: set[int] = set(inner.get_added_tokens_decoder().keys()) if inner is not None else set()
    for i in (getattr(tok, "bos_id", None), *(getattr(tok, "eos_ids", None) or [])):
        if i is not None:
            ids.add(int(i))
    return ids


def _encode_many(tok: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    inner = getattr(tok, "tok", None)
    if inner is not None and hasattr(inner, "encode_batch"):
        # encode_batch_fast (tokenizers ≥ 0.20) skips the offsets we do not need
        batch = getattr(inner, "encode_batch_fast", None) or inner.encode_batch
        return [list(e.ids) for e in batch(texts, add_special_tokens=add_special_tokens)]
    return [tok.encode(t, add_special_tokens=add_special_tokens) for t in texts]


def _decode_many(tok: Any, seqs: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
    inner = getattr(tok, "tok", None)
    if inner is not None and hasattr(inner, "decode_batch"):
        return [str(s) for s in inner.decode_batch(seqs, skip_special_tokens=skip_special_tokens)]
    return [tok.decode(s, skip_special_tokens=skip_special_tokens) for s in seqs]


def classify_decode(decoded: str, logged: str) -> str:
    """Why logged output text differs from the decode of its IDs: ``split_utf8`` (a U+FFFD
    where the decode has a character: bytes of one character split across detokenization
    steps), ``lost_space`` / ``extra_space`` (equal but for whitespace: an incremental
    detokenizer dropping or doubling the space a piece carries), ``truncated`` / ``extended``
    (one is a prefix of the other), else ``other``."""
    if "\ufffd" in logged and "\ufffd" not in decoded:
        return "split_utf8"
    if "".join(decoded.split()) == "".join(logged.split()):
        return "lost_space" if len(logged) < len(decoded) else "extra_space"
    if decoded.startswith(logged):
        return "truncated"
    if logged.startswith(decoded):
        return "extended"
    return "other"


def _reencode_findings(ctx: AnalysisContext) -> list[Finding]:
    tok = ctx.tokenizer
    n, model = sample_options(ctx)
    w = ctx.window()
    sample = q.prompt_sample(ctx.store, w, n, model)
    if not sample:
        return []
    texts = sorted({s.text for s in sample})
    plain = dict(zip(texts, _encode_many(tok, texts, False), strict=True))
    bos: int | None = getattr(tok, "bos_id", None)
    bos_token: str | None = getattr(tok, "bos_token", None)
    add_bos = bool(getattr(tok, "add_bos", False))

    def prompt_ids(text: str) -> list[int]:  # encode_prompt semantics, from the batch
        ids = plain[text]
        if add_bos and bos is not None and bos_token is not None and not text.startswith(bos_token):
            return [bos, *ids]
        return ids

    missing = [s for s in sample if s.ids != plain[s.text] and s.ids != prompt_ids(s.text)]
    with_special: dict[str, list[int]] = {}
    if missing:
        mt = sorted({s.text for s in missing})
        with_special = dict(zip(mt, _encode_many(tok, mt, True), strict=True))
    added = added_ids(tok)
    tallies: dict[str, _Tally] = defaultdict(_Tally)
    for s in sample:
        t = tallies[s.replica]
        t.requests_checked += s.requests
        t.prompts_checked += 1
    for s in missing:
        if s.ids == with_special[s.text]:
            continue
        ref = prompt_ids(s.text)
        cause, i = classify_reencode(tok, s.text, s.ids, ref, added)
        t = tallies[s.replica]
        t.affected += s.requests
        t.prompts_affected += 1
        t.first_seen = s.first_seen if t.first_seen is None else min(t.first_seen, s.first_seen)
        t.causes = t.causes or {}
        t.causes[cause] = t.causes.get(cause, 0) + s.requests
        t.request_ids = sorted({*(t.request_ids or []), *s.request_ids})[:MAX_IDS]
        if t.example is None or s.first_seen < t.example["first_seen"]:
            t.example = {
                "first_seen": s.first_seen,
                "request_id": min(s.request_ids) if s.request_ids else None,
                "prompt_text": s.text[:200],
                "cause": cause,
                "first_diverging_index": i,
                "logged": token_side(s.ids, i, tok),
                "reference": token_side(ref, i, tok),
            }
    totals = q.replica_totals(ctx.store, w, model)
    out = []
    for rep, t in sorted(tallies.items()):
        if not t.affected:
            continue
        total = totals.get(rep, t.requests_checked)
        share = t.affected / t.requests_checked if t.requests_checked else 0.0
        causes = dict(sorted((t.causes or {}).items(), key=lambda kv: -kv[1]))
        main = next(iter(causes))
        out.append(
            finding(
                NAME,
                "tokenizer.reencode_mismatch",
                "error" if share >= ERROR_SHARE else "warning",
                f"{unit_label(rep)}: {t.affected} of {t.requests_checked} checked requests "
                "re-encode to other IDs "
                f"with the reference tokenizer (cause: {main})",
                unit=rep,
                t_start=t.first_seen,
                values={
                    "requests_affected": t.affected,
                    "requests_checked": t.requests_checked,
                    "prompts_affected": t.prompts_affected,
                    "prompts_checked": t.prompts_checked,
                    "share": share,
                    "requests": total,
                    "sampled": t.requests_checked < total,
                    "sample_limit_per_replica": n,
                    "causes": causes,
                },
                evidence={
                    "cause": main,
                    "reference_fingerprint": getattr(tok, "fingerprint", None),
                    "request_ids": t.request_ids or [],
                    "first_seen": t.first_seen,
                    "example": t.example,
                },
            )
        )
    return out


# --- decoding ---------------------------------------------------------------------------------


def _decode_findings(ctx: AnalysisContext) -> list[Finding]:
    tok = ctx.tokenizer
    n, model = sample_options(ctx)
    w = ctx.window()
    sample = q.output_sample(ctx.store, w, n, model)
    if not sample:
        return []
    decoded = _decode_many(tok, [s.ids for s in sample])
    checked: dict[str, int] = defaultdict(int)
    bad: dict[str, list[tuple[q.OutputSample, str, int]]] = defaultdict(list)
    for s, d in zip(sample, decoded, strict=True):
        checked[s.replica] += 1
        if d == s.text:
            continue
        # a stop string is cut from the text but its tokens stay in the IDs
        if s.finish_reason == "stop" and d.startswith(s.text):
            continue
        # an output that ended inside a character: the detokenizer holds its first bytes back
        # (vLLM and the reference engine alike), the decode shows them as U+FFFD
        if d.endswith("\ufffd") and d.rstrip("\ufffd") == s.text:
            continue
        # engines that decode the first SentencePiece token alone drop its leading space
        if d == " " + s.text or s.text == " " + d:
            continue
        i = next(
            (k for k, (x, y) in enumerate(zip(d, s.text, strict=False)) if x != y),
            min(len(d), len(s.text)),
        )
        bad[s.replica].append((s, d, i))
    # an engine asked to keep special tokens in the text (skip_special_tokens=False) is no bug
    suspects = [s for items in bad.values() for s, _, _ in items]
    kept = (
        {
            s.request_id
            for s, d in zip(
                suspects, _decode_many(tok, [s.ids for s in suspects], False), strict=True
            )
            if d == s.text
        }
        if suspects
        else set()
    )
    for rep in list(bad):
        bad[rep] = [x for x in bad[rep] if x[0].request_id not in kept]
        if not bad[rep]:
            del bad[rep]
    totals = q.replica_totals(ctx.store, w, model)
    out = []
    for rep, items in sorted(bad.items()):
        items.sort(key=lambda x: (x[0].t_arrival, x[0].request_id))
        s, d, i = items[0]
        # the token that produced character i of the decoded text
        tok_index, acc = 0, 0
        for k in range(len(s.ids)):
            acc = len(tok.decode(s.ids[: k + 1], skip_special_tokens=True))
            if acc > i:
                tok_index = k
                break
        else:
            tok_index = len(s.ids) - 1
        lo = max(0, i - CONTEXT_CHARS)
        n_checked = checked[rep]
        share = len(items) / n_checked
        causes = Counter(classify_decode(dd, ss.text) for ss, dd, _ in items)
        main = causes.most_common(1)[0][0]
        out.append(
            finding(
                NAME,
                "tokenizer.decode_mismatch",
                "error" if share >= ERROR_SHARE else "warning",
                f"{unit_label(rep)}: {len(items)} of {n_checked} checked outputs decode to "
                "other text than logged "
                f"(cause: {main})",
                unit=rep,
                t_start=s.t_arrival,
                values={
                    "requests_affected": len(items),
                    "requests_checked": n_checked,
                    "share": share,
                    "requests": totals.get(rep, n_checked),
                    "sample_limit_per_replica": n,
                    "causes": dict(causes.most_common()),
                },
                evidence={
                    "cause": main,
                    "request_ids": sorted(x[0].request_id for x in items)[:MAX_IDS],
                    "first_seen": s.t_arrival,
                    "example": {
                        "request_id": s.request_id,
                        "first_differing_char": i,
                        "decoded": d[lo : i + CONTEXT_CHARS],
                        "logged": s.text[lo : i + CONTEXT_CHARS],
                        "token_index": tok_index,
                        "token_id": s.ids[tok_index],
                        "token_piece": tok.piece(s.ids[tok_index]),
                    },
                },
            )
        )
    return out


@analyzer(NAME)
def tokenizer_drift(ctx: AnalysisContext) -> list[Finding]:
    """Every tokenizer-drift check; the reference checks run only with ``ctx.tokenizer``."""
    conflicts = load_conflicts(ctx)
    out = (
        fingerprint_findings(ctx)
        + cross_replica_findings(ctx, conflicts)
        + oov_findings(ctx, conflicts)
    )
    if ctx.tokenizer is not None:
        out += _reencode_findings(ctx) + _decode_findings(ctx)
    return out
