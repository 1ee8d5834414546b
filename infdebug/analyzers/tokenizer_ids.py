"""Checks of the logged token IDs alone, no reference needed (analyzer ``tokenizer``):

- ``tokenizer.fingerprint_mismatch`` — one model served with more than one tokenizer fingerprint.
- ``tokenizer.cross_replica_ids`` — one prompt text logged with other IDs on other replicas.
- ``tokenizer.vocabulary_mismatch`` — the other IDs are another vocabulary altogether, not
  drift (two models the logs do not name): told apart by content in ``tokenizer_vocab``.
- ``tokenizer.out_of_vocab`` — token IDs outside the vocabulary (the reference's, or far
  beyond what the model's other replicas logged).

All of it runs in the store (grouping by the hash columns ingest materialized); only the
texts logged with conflicting IDs come to Python, so a clean fleet costs one scan.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from infdebug.analyzers.base import AnalysisContext, finding
from infdebug.analyzers.tokenizer_vocab import (
    Conflicts,
    Vocabularies,
    load_conflicts,
    vocabulary_findings,
)
from infdebug.schema import UINT32_MAX, Finding
from infdebug.store import q_tokenizer as q
from infdebug.store.q_common import split_unit, unit_label

NAME = "tokenizer"
DEFAULT_SAMPLE = 5_000  # distinct prompts / outputs per replica the reference checks take
ERROR_SHARE = 0.01  # mismatches on ≥ 1% of a replica's requests are errors
MAX_IDS = 10
# Without a reference, an ID counts as out of range when it exceeds the largest ID the
# model's other replicas logged by this factor plus this margin.
OOV_FACTOR = 1.25
OOV_MARGIN = 1024
OOV_MIN_PEER_REQUESTS = 100
# The ceiling asked for when only the largest IDs are wanted: no ID below it counts as out of range.
NO_CEILING = UINT32_MAX


def _severity(affected: int, total: int) -> str:
    return "error" if total and affected / total >= ERROR_SHARE else "warning"


def first_diff(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def token_side(ids: list[int], i: int, tok: Any) -> dict[str, Any]:
    window = ids[max(0, i - 2) : i + 3]
    out: dict[str, Any] = {
        "id": ids[i] if i < len(ids) else None,
        "ids_around": window,
        "length": len(ids),
    }
    if tok is not None:
        out["piece"] = tok.piece(ids[i]) if i < len(ids) else None
        out["pieces_around"] = [tok.piece(x) for x in window]
    return out


def sample_options(ctx: AnalysisContext) -> tuple[int, str]:
    return int(ctx.options.get("tokenizer_sample", DEFAULT_SAMPLE)), str(
        ctx.options.get("model") or ""
    )


# --- fingerprints ---------------------------------------------------------------------------


def fingerprint_findings(ctx: AnalysisContext) -> list[Finding]:
    by_model: dict[str, list[q.FingerprintVariant]] = defaultdict(list)
    for v in q.fingerprint_variants(ctx.store, ctx.window()):
        by_model[v.model].append(v)
    out = []
    for model, variants in sorted(by_model.items()):
        fps: dict[str, list[q.FingerprintVariant]] = defaultdict(list)
        for v in variants:
            fps[v.fp].append(v)
        if len(fps) < 2:
            continue
        # the majority fingerprint: served by strictly more replicas than any other; on a tie
        # (two replicas, one each) nothing tells which is off, and no replica is blamed
        ranked = sorted(
            fps.items(),
            key=lambda kv: (
                -len({v.replica for v in kv[1]}),
                min(v.first_seen for v in kv[1]),
                kv[0],
            ),
        )
        decided = len({v.replica for v in ranked[0][1]}) > len({v.replica for v in ranked[1][1]})
        minority_units = sorted({v.replica for fp, vs in ranked[1:] for v in vs})
        minority_replicas = [unit_label(u) for u in minority_units]
        scope_unit = minority_units[0] if len(minority_units) == 1 and decided else None
        by_fp = {
            fp: {
                "replicas": [unit_label(u) for u in sorted({v.replica for v in vs})],
                "deployments": sorted({d for v in vs for d in v.deployments}),
                "requests": sum(v.requests for v in vs),
                "first_seen": min(v.first_seen for v in vs),
                "last_seen": max(v.last_seen for v in vs),
                "request_ids": sorted({i for v in vs for i in v.request_ids})[:MAX_IDS],
            }
            for fp, vs in ranked
        }
        first = min(v.first_seen for fp, vs in ranked[1:] for v in vs)
        n_min = sum(v.requests for fp, vs in ranked[1:] for v in vs)
        total = sum(v.requests for v in variants)
        out.append(
            finding(
                NAME,
                "tokenizer.fingerprint_mismatch",
                "error",
                f"model {model or '(unnamed)'} is served with {len(fps)} tokenizer fingerprints; "
                + (
                    f"{', '.join(minority_replicas)} "
                    f"{'differs' if len(minority_replicas) == 1 else 'differ'} "
                    f"from the majority ({ranked[0][0]})"
                    if decided
                    else "no majority to tell which is off: "
                    + "; ".join(
                        f"{fp} on {', '.join(unit_label(v.replica) for v in vs)}"
                        for fp, vs in ranked
                    )
                ),
                unit=scope_unit,
                t_start=first,
                values={
                    "fingerprints": len(fps),
                    "requests_off_majority": n_min,
                    "requests": total,
                    "share_off_majority": n_min / total if total else 0.0,
                },
                evidence={
                    "model": model,
                    "majority_fingerprint": ranked[0][0] if decided else None,
                    "by_fingerprint": by_fp,
                    "replicas_off_majority": minority_replicas,
                    "first_seen": first,
                    "request_ids": by_fp[ranked[1][0]]["request_ids"],
                },
            )
        )
    return out


# --- the same text, other IDs, across replicas ------------------------------------------------


def _leading_repeat(ids: list[int], ref_ids: list[int]) -> str | None:
    """ "doubled_first_token" when one side is the other with its first ID repeated (a
    doubled BOS: template.double_bos names it), "dropped_first_token" the other way."""
    if len(ids) == len(ref_ids) + 1 and ids[1:] == ref_ids and ids[:1] == ids[1:2]:
        return "doubled_first_token"
    if len(ref_ids) == len(ids) + 1 and ref_ids[1:] == ids and ref_ids[:1] == ref_ids[1:2]:
        return "dropped_first_token"
    return None


def _starts_doubled(v: q.TextVariant) -> bool:
    """Whether a logged ID sequence starts with one ID twice: a doubled BOS, never the right
    encoding (so the suspect side of a tie)."""
    return v.n_ids >= 2 and v.first_id == v.second_id


@dataclass
class _Blame:
    """The prompt texts one unit encoded otherwise than the reference side."""

    prompts: int = 0
    requests: int = 0
    first_seen: float = float("inf")
    ids: list[tuple[float, str]] = field(default_factory=list)  # (first seen, request ID)
    example: tuple[float, str, q.TextVariant, q.TextVariant] | None = (
        None  # (first, rid, this, reference)
    )
    reference_units: set[str] = field(default_factory=set)

    def add(self, mine: q.TextVariant, ref: q.TextVariant, ref_units: set[str]) -> None:
        self.prompts += 1
        self.requests += mine.requests
        self.first_seen = min(self.first_seen, mine.first_seen)
        self.ids = sorted({*self.ids, *((mine.first_seen, r) for r in mine.request_ids)})[:MAX_IDS]
        key = (mine.first_seen, mine.request_id)
        if self.example is None or key < self.example[:2]:
            self.example = (mine.first_seen, mine.request_id, mine, ref)
        self.reference_units |= ref_units


def _text_sides(variants: list[q.TextVariant]) -> dict[int, dict[str, q.TextVariant]]:
    """ids hash → unit → its group, for one prompt text."""
    sides: dict[int, dict[str, q.TextVariant]] = defaultdict(dict)
    for v in variants:
        sides[v.ids_hash][v.unit] = v
    return sides


def _earliest(side: dict[str, q.TextVariant]) -> q.TextVariant:
    return min(side.values(), key=lambda v: (v.first_seen, v.request_id))


Undecided = dict[tuple[str, int], list[dict[int, dict[str, q.TextVariant]]]]


def attribute_conflicts(
    variants: list[q.TextVariant], vocab: Vocabularies | None = None
) -> tuple[dict[tuple[str, str], _Blame], Undecided]:
    """Which unit to blame for each prompt text logged with several ID sequences.

    A text whose ID sequence is shared by strictly more units than any other is decided: the
    units of every other sequence are blamed. A tie (two replicas, one each) is decided by
    what the decided texts showed: when exactly one of the tied sequences has no blamed unit,
    it is the reference (a sequence starting with one ID twice, a doubled BOS, counts as
    suspect too). Nothing is ever decided by a replica's name or by request counts, so
    renaming replicas or replaying traffic changes nothing. Units of different vocabularies
    (``vocab``) are compared only within their own: across, the IDs are not drift. Returns
    the blames, keyed by (model, unit), and per (model, vocabulary) the texts that stay
    undecided."""
    texts: dict[tuple[str, int, int], list[q.TextVariant]] = defaultdict(list)
    for v in variants:
        g = vocab.of(v.model, v.unit) if vocab is not None else None
        texts[(v.model, g or 0, v.text_hash)].append(v)
    blames: dict[tuple[str, str], _Blame] = defaultdict(_Blame)
    ties: list[tuple[tuple[str, int], dict[int, dict[str, q.TextVariant]]]] = []
    for (model, g, _th), vs in sorted(texts.items()):
        sides = _text_sides(vs)
        if len(sides) < 2:  # one sequence within this vocabulary: the others were another's
            continue
        ranked = sorted(sides, key=lambda h: -len(sides[h]))
        if len(sides[ranked[0]]) > len(sides[ranked[1]]):
            _blame_all(blames, model, sides, ranked[0])
        else:
            ties.append(((model, g), sides))
    undecided: Undecided = defaultdict(list)
    blamed = {unit for (_m, unit) in blames}
    for model_g, sides in ties:
        top = max(len(units) for units in sides.values())
        # not suspect: no unit blamed on other texts, and not starting with one ID twice (a
        # doubled BOS is never the right encoding)
        clean = [
            h
            for h, units in sides.items()
            if len(units) == top
            and not set(units) & blamed
            and not any(_starts_doubled(v) for v in units.values())
        ]
        if len(clean) == 1:
            _blame_all(blames, model_g[0], sides, clean[0])
        else:
            undecided[model_g].append(sides)
    return dict(blames), dict(undecided)


def _blame_all(
    blames: dict[tuple[str, str], _Blame],
    model: str,
    sides: dict[int, dict[str, q.TextVariant]],
    ref_hash: int,
) -> None:
    ref_side = sides[ref_hash]
    ref = _earliest(ref_side)
    for h, units in sides.items():
        if h == ref_hash:
            continue
        for unit, mine in units.items():
            blames[(model, unit)].add(mine, ref, set(ref_side))


def _example(
    ctx: AnalysisContext, w: dict[str, Any], this: q.TextVariant, ref: q.TextVariant
) -> tuple[dict[str, Any] | None, str | None]:
    """The first diverging token of one conflicting text, both sides, and the cause when it
    is a doubled / dropped first token."""
    got = q.requests_by_id(ctx.store, w, [this.request_id, ref.request_id])
    a, b = got.get((this.unit, this.request_id)), got.get((ref.unit, ref.request_id))
    if a is None or b is None:
        return None, None
    (ids, text), (ref_ids, _) = a, b
    i = first_diff(ids, ref_ids)
    if i is None:
        return None, None
    return {
        "prompt_text": text[:200],
        "first_diverging_index": i,
        "this": {
            "replica": unit_label(this.unit),
            "request_id": this.request_id,
            **token_side(ids, i, ctx.tokenizer),
        },
        "reference": {
            "replica": unit_label(ref.unit),
            "request_id": ref.request_id,
            **token_side(ref_ids, i, ctx.tokenizer),
        },
    }, _leading_repeat(ids, ref_ids)


def cross_replica_findings(
    ctx: AnalysisContext, conflicts: Conflicts | None = None
) -> list[Finding]:
    """``tokenizer.cross_replica_ids`` within each vocabulary, ``tokenizer.vocabulary_mismatch``
    across them (``conflicts``: as ``load_conflicts`` gives, when the caller has them)."""
    w = ctx.window()
    conflicts = conflicts if conflicts is not None else load_conflicts(ctx)
    if not conflicts.variants:
        return []
    blames, undecided = attribute_conflicts(conflicts.variants, conflicts.vocab)
    totals = q.replica_totals(ctx.store, w)
    out = vocabulary_findings(ctx, conflicts)
    for (model, unit), bl in sorted(blames.items()):
        total = totals.get(unit, 0)
        assert bl.example is not None
        example, cause = _example(ctx, w, bl.example[2], bl.example[3])
        refs = sorted(bl.reference_units)
        evidence: dict[str, Any] = {
            "model": model,
            "reference_replicas": [unit_label(u) for u in refs[:20]],
            "request_ids": [r for _, r in bl.ids],
            "first_seen": bl.first_seen,
        }
        if cause:
            evidence["cause"] = cause
        if example:
            evidence["example"] = example
        out.append(
            finding(
                NAME,
                "tokenizer.cross_replica_ids",
                _severity(bl.requests, total),
                f"{unit_label(unit)}: {bl.prompts} prompt text(s) encoded to other IDs than on "
                f"{', '.join(unit_label(u) for u in refs[:5])}{' …' if len(refs) > 5 else ''} "
                f"({bl.requests} of {total} requests)",
                unit=unit,
                t_start=bl.first_seen,
                values={
                    "prompts_differing": bl.prompts,
                    "requests_affected": bl.requests,
                    "requests": total,
                    "share": bl.requests / total if total else 0.0,
                },
                evidence=evidence,
            )
        )
    for (model, _g), texts in sorted(undecided.items()):
        out.append(_undecided_finding(ctx, w, model, texts, totals))
    return out


def _undecided_finding(
    ctx: AnalysisContext,
    w: dict[str, Any],
    model: str,
    texts: list[dict[int, dict[str, q.TextVariant]]],
    totals: dict[str, int],
) -> Finding:
    """Texts encoded differently with no majority to tell which side is off (a fleet of two,
    or an even split): one fleet-level finding naming every side."""
    units = sorted({u for sides in texts for units in sides.values() for u in units})
    requests = sum(
        v.requests for sides in texts for units in sides.values() for v in units.values()
    )
    first_text = min(
        texts,
        key=lambda sides: min(
            (v.first_seen, v.request_id) for u in sides.values() for v in u.values()
        ),
    )
    a, b = sorted(
        (_earliest(units) for units in first_text.values()),
        key=lambda v: (v.first_seen, v.request_id),
    )[:2]
    example, cause = _example(ctx, w, a, b)
    first = min(v.first_seen for sides in texts for units in sides.values() for v in units.values())
    ids = sorted(
        {
            (v.first_seen, r)
            for sides in texts
            for units in sides.values()
            for v in units.values()
            for r in v.request_ids
        }
    )[:MAX_IDS]
    total = sum(n for u, n in totals.items() if u in units)
    evidence: dict[str, Any] = {
        "model": model,
        "replicas": [unit_label(u) for u in units],
        "request_ids": [r for _, r in ids],
        "first_seen": first,
    }
    if cause:
        evidence["cause"] = cause
    if example:
        evidence["example"] = example
    return finding(
        NAME,
        "tokenizer.cross_replica_ids",
        _severity(requests, total),
        f"{', '.join(unit_label(u) for u in units[:5])}: {len(texts)} prompt text(s) "
        "encoded to different IDs "
        "with no majority to tell which side is off "
        "(give --tokenizer to check each against the reference)",
        t_start=first,
        values={
            "prompts_differing": len(texts),
            "requests_affected": requests,
            "requests": total,
            "share": requests / total if total else 0.0,
            "decided": False,
        },
        evidence=evidence,
    )


# --- IDs out of the vocabulary ----------------------------------------------------------------


def _oov_finding(r: q.IdRange, limit: int, severity: str, basis: str) -> Finding:
    return finding(
        NAME,
        "tokenizer.out_of_vocab",
        severity,
        f"{unit_label(r.replica)}: {r.bad} of {r.requests} requests hold token IDs ≥ {limit} "
        f"({basis}); largest {r.max_id}",
        unit=r.replica,
        t_start=r.first_bad,
        values={
            "requests_affected": r.bad,
            "requests": r.requests,
            "share": r.bad / r.requests if r.requests else 0.0,
            "limit": limit,
            "max_id": r.max_id,
        },
        evidence={
            "model": r.model,
            "basis": basis,
            "request_ids": sorted(r.bad_request_ids)[:MAX_IDS],
            "first_seen": r.first_bad,
        },
    )


def oov_findings(ctx: AnalysisContext, conflicts: Conflicts | None = None) -> list[Finding]:
    """Without a reference, a replica's IDs are measured against its model's other replicas
    of the same vocabulary (``conflicts``: as ``load_conflicts`` gives)."""
    w = ctx.window()
    _, model = sample_options(ctx)
    if ctx.tokenizer is not None:
        vocab = int(ctx.tokenizer.vocab_size)
        return [
            _oov_finding(r, vocab, "error", "reference vocabulary size")
            for r in q.id_ranges(ctx.store, w, vocab, model)
            if r.bad
        ]
    ranges = q.id_ranges(ctx.store, w, NO_CEILING)
    vocabs = (conflicts if conflicts is not None else load_conflicts(ctx)).vocab
    by_model: dict[str, list[q.IdRange]] = defaultdict(list)
    for r in ranges:
        by_model[r.model].append(r)
    out = []
    for m, rs in sorted(by_model.items()):
        for r in rs:
            peers = [
                p
                for p in rs
                if p.replica != r.replica and not vocabs.apart(m, r.replica, p.replica)
            ]
            if sum(p.requests for p in peers) < OOV_MIN_PEER_REQUESTS:
                continue
            peer_max = max(p.max_id for p in peers)
            if r.max_id <= peer_max * OOV_FACTOR + OOV_MARGIN:
                continue
            limit = peer_max + 1
            for hit in q.id_ranges(
                ctx.store, {**w, "replicas": [split_unit(r.replica)[0]]}, limit, m
            ):
                if hit.bad and hit.replica == r.replica:
                    out.append(
                        _oov_finding(
                            hit, limit, "warning", "largest ID on the model's other replicas"
                        )
                    )
    return out
