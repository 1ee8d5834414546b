"""Which replicas encode text in one token vocabulary, told from the logged IDs alone.

One prompt text logged with other IDs on other replicas is either drift within one
vocabulary — a doubled BOS, a special token split into pieces, a prefix space: a few IDs of
otherwise equal sequences (``tokenizer.cross_replica_ids``, in ``tokenizer_ids``) — or
another vocabulary altogether: two models the logs do not name (vLLM's request lines never
do), or a replica that loaded another model's tokenizer (``tokenizer.vocabulary_mismatch``,
here). The content tells them apart, never a replica's name:

- The statistic: the overlap coefficient |A ∩ B| / min(|A|, |B|) of the two sequences'
  sets of IDs ≥ ``ID_FLOOR``, pooled over the texts two units both logged (Σ shared /
  Σ smaller), a sequence shared by both counting as full overlap. Byte-level BPE
  vocabularies (GPT-2, Llama-3, Qwen2, cl100k) all give the 256 single bytes the same first
  IDs, so any two of them share punctuation, digits and spaces by construction: counted,
  they put Llama-3 vs Qwen2 at 0.55 on Phi-3-rendered prompts. Past the floor, IDs are
  merges, which coincide only where vocabularies share a lineage.
- Measured on the real tokenizers of ../shared/data (60 chat prompts of tests/fleetlogs
  rendered with three templates): unrelated vocabularies pool to 0.01-0.22 (GPT-2, Llama-3,
  Qwen2, Phi-3 pairwise; Llama-3 vs Qwen2 the highest, both descend from cl100k) and reach
  0.36 on one text; drift within one vocabulary (a doubled BOS, a special token as text
  pieces, Phi-3's two tokenizer revisions) pools to 0.88-1.0, 0.75 on one 4-token prompt.
  ``VOCAB_OVERLAP`` = 0.5 sits in the gap.
- Thin evidence never splits: a pair needs ``MIN_EVIDENCE`` IDs pooled (on the smaller
  side) before it may be called two vocabularies — a prompt that is one special token,
  handled two ways, looks exactly like two vocabularies and stays drift.

Units are grouped: two units that logged one text are in one vocabulary unless their pooled
evidence says otherwise, and the groups are the connected components — so a unit between
two proven-different ones on thin evidence joins them all, and the old drift finding stands.
The first IDs (BOS), the largest IDs and the length ratio of each side are reported as
evidence; they do not decide (Phi-3's two revisions differ in the first ID and 2.75× in
length on a short prompt, within one vocabulary).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from infdebug.analyzers.base import AnalysisContext, finding
from infdebug.schema import Finding
from infdebug.store import q_tokenizer as q
from infdebug.store.q_common import unit_label

ANALYZER = "tokenizer"  # the analyzer these findings belong to (tokenizer_ids.NAME)
ID_FLOOR = 256
VOCAB_OVERLAP = 0.5
MIN_EVIDENCE = 16
SAMPLE_TEXTS = 200  # conflicting texts per unit whose IDs are compared (by text hash)
EVIDENCE_IDS = 10
HEAD_IDS = 8


@dataclass
class Pool:
    """Overlap evidence between two units, pooled over the texts both logged."""

    shared: int = 0
    smaller: int = 0

    def add(self, shared: int, smaller: int) -> None:
        self.shared += shared
        self.smaller += smaller

    @property
    def overlap(self) -> float | None:
        return self.shared / self.smaller if self.smaller else None

    @property
    def different(self) -> bool:
        """Proven two vocabularies: enough evidence, and little of it shared."""
        return self.smaller >= MIN_EVIDENCE and self.shared < VOCAB_OVERLAP * self.smaller


@dataclass
class Vocabularies:
    """Per model, its units (those that logged a conflicting text) split into vocabularies,
    ordered by their earliest request; one group where nothing tells them apart."""

    groups: dict[str, list[frozenset[str]]] = field(default_factory=dict)
    pools: dict[tuple[str, str, str], Pool] = field(
        default_factory=dict
    )  # (model, unit, unit), units sorted
    index: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, unit) → its group

    def of(self, model: str, unit: str) -> int | None:
        return self.index.get((model, unit))

    def apart(self, model: str, a: str, b: str) -> bool:
        """The two units are known to encode with different vocabularies."""
        ga, gb = self.of(model, a), self.of(model, b)
        return ga is not None and gb is not None and ga != gb

    def pool(self, model: str, a: set[str] | frozenset[str], b: set[str] | frozenset[str]) -> Pool:
        out = Pool()
        for u in a:
            for v in b:
                p = self.pools.get(_pair(model, u, v))
                if p is not None and u != v:
                    out.add(p.shared, p.smaller)
        return out


@dataclass(frozen=True)
class Conflicts:
    """The prompt texts logged with more than one ID sequence, and the vocabularies they show."""

    variants: list[q.TextVariant]
    vocab: Vocabularies


def load_conflicts(ctx: AnalysisContext) -> Conflicts:
    w = ctx.window()
    variants = q.conflicting_variants(ctx.store, w)
    overlaps = q.side_overlaps(ctx.store, w, SAMPLE_TEXTS, ID_FLOOR) if variants else []
    return Conflicts(variants, group_units(variants, overlaps))


def _pair(model: str, u: str, v: str) -> tuple[str, str, str]:
    return (model, u, v) if u <= v else (model, v, u)


def _key(v: q.TextVariant) -> tuple[float, str]:
    return v.first_seen, v.request_id


def group_units(variants: list[q.TextVariant], overlaps: list[q.SideOverlap]) -> Vocabularies:
    sides: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    texts: dict[tuple[str, int], set[str]] = defaultdict(set)
    for v in variants:
        sides[(v.model, v.text_hash, v.ids_hash)].add(v.unit)
        texts[(v.model, v.text_hash)].add(v.unit)
    out = Vocabularies()
    for o in overlaps:
        us, vs = (
            sides.get((o.model, o.text_hash, o.ids_a), set()),
            sides.get((o.model, o.text_hash, o.ids_b), set()),
        )
        for u in us:
            for x in vs:
                # a unit never with itself; a sequence with itself: each pair of its units once
                if u != x and (o.ids_a != o.ids_b or u < x):
                    out.pools.setdefault(_pair(o.model, u, x), Pool()).add(o.shared, o.smaller)
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    together: set[tuple[str, str, str]] = set()  # units that logged one text, sorted
    for (model, _th), units in texts.items():
        ordered = sorted(units)
        for i, u in enumerate(ordered):
            find((model, u))
            together.update((model, u, x) for x in ordered[i + 1 :])
    for model, u, x in together:
        p = out.pools.get((model, u, x))
        if p is None or not p.different:
            parent[find((model, u))] = find((model, x))
    members: dict[tuple[str, str], set[str]] = defaultdict(set)
    for model, u in list(parent):
        members[find((model, u))].add(u)
    earliest: dict[tuple[str, str], tuple[float, str]] = {}
    for v in variants:
        earliest[(v.model, v.unit)] = min(earliest.get((v.model, v.unit), _key(v)), _key(v))
    by_model: dict[str, list[frozenset[str]]] = defaultdict(list)
    for (model, _root), units in members.items():
        by_model[model].append(frozenset(units))
    for model, groups in by_model.items():
        out.groups[model] = sorted(groups, key=lambda g: min(earliest[(model, u)] for u in g))
        out.index.update({(model, u): i for i, g in enumerate(out.groups[model]) for u in g})
    return out


# --- the finding ----------------------------------------------------------------------------


def _group_evidence(group: frozenset[str], vs: list[q.TextVariant]) -> dict[str, Any]:
    firsts: Counter[int] = Counter()
    for v in vs:
        firsts[v.first_id] += v.requests
    ex = min(vs, key=_key)
    top = min(firsts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    return {
        "replicas": [unit_label(u) for u in sorted(group)],
        "requests": sum(v.requests for v in vs),
        # a BOS shows as one first ID on every text; a tokenizer without one starts with the text's
        "first_id": top,
        "first_id_share": round(firsts[top] / sum(firsts.values()), 4),
        "first_ids": sorted(firsts)[:EVIDENCE_IDS],
        "max_id": max(v.max_id for v in vs),
        "example": {"replica": unit_label(ex.unit), "request_id": ex.request_id},
    }


def vocabulary_findings(ctx: AnalysisContext, conflicts: Conflicts) -> list[Finding]:
    """One finding per model whose replicas encode shared prompt texts in unrelated
    vocabularies, naming every group with its first ID, largest ID and an example request."""
    out = []
    for model, groups in sorted(conflicts.vocab.groups.items()):
        if len(groups) < 2:
            continue
        gid = {u: i for i, g in enumerate(groups) for u in g}
        by_text: dict[int, list[q.TextVariant]] = defaultdict(list)
        for v in conflicts.variants:
            if v.model == model:
                by_text[v.text_hash].append(v)
        cross = [vs for _th, vs in sorted(by_text.items()) if len({gid[v.unit] for v in vs}) > 1]
        if not cross:
            continue
        per_group = [
            [v for vs in cross for v in vs if gid[v.unit] == i] for i in range(len(groups))
        ]
        present = [i for i, vs in enumerate(per_group) if vs]
        pairs: list[dict[str, Any]] = []
        for a_i, i in enumerate(present):
            for j in present[a_i + 1 :]:
                pool = conflicts.vocab.pool(model, groups[i], groups[j])
                both = [vs for vs in cross if {gid[v.unit] for v in vs} >= {i, j}]
                len_i = sum(min((v for v in vs if gid[v.unit] == i), key=_key).n_ids for vs in both)
                len_j = sum(min((v for v in vs if gid[v.unit] == j), key=_key).n_ids for vs in both)
                pairs.append(
                    {
                        "groups": [i, j],
                        "texts": len(both),
                        "overlap": _round(pool.overlap),
                        "ids_compared": pool.smaller,
                        "length_ratio": round(len_j / len_i, 4) if len_i else None,
                    }
                )
        cross_pool = Pool()
        for p in pairs:
            i, j = p["groups"]
            pp = conflicts.vocab.pool(model, groups[i], groups[j])
            cross_pool.add(pp.shared, pp.smaller)
        first_text = min(cross, key=lambda vs: min(_key(v) for v in vs))
        sides = sorted(
            (
                min((v for v in first_text if gid[v.unit] == i), key=_key)
                for i in {gid[v.unit] for v in first_text}
            ),
            key=lambda v: gid[v.unit],
        )
        evidence: dict[str, Any] = {
            "model": model,
            "statistic": (
                f"overlap coefficient of the token-ID sets (IDs >= {ID_FLOOR}), "
                "pooled over the texts "
                f"both sides logged; below {VOCAB_OVERLAP} on >= {MIN_EVIDENCE} IDs: "
                "another vocabulary"
            ),
            "groups": [
                _group_evidence(groups[i], per_group[i])
                if per_group[i]
                else {"replicas": [unit_label(u) for u in sorted(groups[i])]}
                for i in range(len(groups))
            ],
            "pairs": pairs,
            "request_ids": [
                v.request_id
                for v in sorted((v for vs in cross for v in vs), key=_key)[:EVIDENCE_IDS]
            ],
            "first_seen": min(_key(v) for vs in cross for v in vs)[0],
        }
        example = _example(ctx, sides, gid)
        if example:
            evidence["example"] = example
        requests = sum(v.requests for vs in cross for v in vs)
        gs = evidence["groups"]
        named = f"model {model}" if model else "the model the logs do not name"
        out.append(
            finding(
                ANALYZER,
                "tokenizer.vocabulary_mismatch",
                "warning",
                f"replicas serve different vocabularies ({named}): "
                + "; ".join(
                    f"{', '.join(g['replicas'][:4])}{' …' if len(g['replicas']) > 4 else ''}"
                    + (f" ({_first(g)}, largest ID {g['max_id']})" if "first_id" in g else "")
                    for g in gs
                )
                + f" encode {len(cross)} shared prompt text(s) to unrelated IDs (overlap "
                f"{_round(cross_pool.overlap)}): two models, or a replica that loaded "
                "another model's tokenizer; "
                "not drift",
                t_start=evidence["first_seen"],
                values={
                    "vocabularies": len(present),
                    "texts": len(cross),
                    "requests_affected": requests,
                    "overlap": _round(cross_pool.overlap),
                    "ids_compared": cross_pool.smaller,
                    "threshold": VOCAB_OVERLAP,
                },
                evidence=evidence,
            )
        )
    return out


def _first(group: dict[str, Any]) -> str:
    if group["first_id_share"] == 1.0:
        return f"every prompt starts with {group['first_id']}"
    return "no first ID shared by every prompt"


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _example(
    ctx: AnalysisContext, sides: list[q.TextVariant], gid: dict[str, int]
) -> dict[str, Any] | None:
    """The earliest text encoded in two vocabularies: each group's earliest request of it."""
    got = q.requests_by_id(ctx.store, ctx.window(), [v.request_id for v in sides])
    rows = []
    text = ""
    for v in sides:
        hit = got.get((v.unit, v.request_id))
        if hit is None:
            return None
        ids, text = hit
        rows.append(
            {
                "group": gid[v.unit],
                "replica": unit_label(v.unit),
                "request_id": v.request_id,
                "ids_head": ids[:HEAD_IDS],
                "length": len(ids),
            }
        )
    return {"prompt_text": text[:200], "sides": rows}
