"""Fingerprints: short stable hashes that say "these produce the same token IDs" (tokenizers)
or "this is the same template source" (chat templates).

A tokenizer's fingerprint covers what decides IDs and nothing else: the model (type, vocab,
merges and its options), normalizer, pre-tokenizer, post-processor, decoder, every added
token with all its flags, and the BOS/EOS settings of the config. It is computed from the
tokenizer's own serialisation, canonicalised (sorted keys, no whitespace, merges as pairs,
added tokens by ID), so key order and formatting of the file on disk do not matter, and a
tokenizer that is saved and loaded again keeps its fingerprint. Truncation and padding are
left out: they change batch shapes, not IDs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

TOKENIZER_PREFIX = "tok-"
TEMPLATE_PREFIX = "tpl-"
HEX_CHARS = 20

_ID_KEYS = ("model", "normalizer", "pre_tokenizer", "post_processor", "decoder")
_ADDED_FLAGS = ("id", "content", "single_word", "lstrip", "rstrip", "normalized", "special")


def _canonical_merges(merges: list[Any]) -> list[list[str]]:
    # tokenizers writes merges as "a b" strings (older) or ["a", "b"] pairs (newer)
    out: list[list[str]] = []
    for m in merges:
        if isinstance(m, str):
            left, _, right = m.partition(" ")
            out.append([left, right])
        else:
            out.append([str(m[0]), str(m[1])])
    return out


def canonical_tokenizer(
    tokenizer_json: str | dict[str, Any], config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The part of a tokenizer.json (plus config flags) that determines token IDs."""
    data = json.loads(tokenizer_json) if isinstance(tokenizer_json, str) else tokenizer_json
    out: dict[str, Any] = {k: data.get(k) for k in _ID_KEYS}
    model = dict(out["model"] or {})
    if isinstance(model.get("merges"), list):
        model["merges"] = _canonical_merges(model["merges"])
    out["model"] = model
    added = []
    for t in data.get("added_tokens") or []:
        entry = {k: t.get(k) for k in _ADDED_FLAGS}
        added.append(entry)
    out["added_tokens"] = sorted(added, key=lambda t: (t["id"], t["content"]))
    out["config"] = dict(sorted((config or {}).items()))
    return out


def tokenizer_fingerprint(
    tokenizer_json: str | dict[str, Any], config: dict[str, Any] | None = None
) -> str:
    """``tok-`` and 20 hex digits of sha256 over :func:`canonical_tokenizer`."""
    canon = json.dumps(
        canonical_tokenizer(tokenizer_json, config),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return TOKENIZER_PREFIX + hashlib.sha256(canon.encode("utf-8")).hexdigest()[:HEX_CHARS]


def template_fingerprint(template: str) -> str:
    """``tpl-`` and 20 hex digits of sha256 over the exact template source (whitespace counts:
    trim_blocks/lstrip_blocks make it part of the output)."""
    return TEMPLATE_PREFIX + hashlib.sha256(template.encode("utf-8")).hexdigest()[:HEX_CHARS]
