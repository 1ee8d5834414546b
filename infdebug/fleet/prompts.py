"""Deterministic chat prompts of a given token length, built from words.

Words are the 200 most frequent of the corpus the reference engine's tokenizer is trained
on, so a word is about 1.2 tokens there (common English words are one token in real BPE
vocabularies too). A Mooncake hash id maps to
a fixed block of words, seeded by (seed, hash id): requests that share hash ids share a
literal text prefix, and so a token prefix the engine's prefix cache can reuse.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from functools import lru_cache
from importlib import resources

from infdebug.fleet.traces import PlannedRequest

TOKENS_PER_WORD = (
    1.2  # word + its space, measured on the tiny preset's tokenizer (tests/test_loadgen.py)
)
N_WORDS = 200


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    text = (
        resources.files("infdebug.tracer.engine").joinpath("corpus.txt").read_text(encoding="utf-8")
    )
    counts = Counter(w.lower() for w in re.findall(r"[A-Za-z]{2,12}", text))
    return tuple(w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:N_WORDS])


def words_for(tokens: int) -> int:
    return max(1, round(tokens / TOKENS_PER_WORD))


@lru_cache(maxsize=65536)
def block_text(seed: int, hash_id: int, tokens: int) -> str:
    """The text of one prefix block: the same (seed, hash id) always gives the same words, and
    a shorter block is a prefix of a longer one."""
    rng = random.Random(f"{seed}:block:{hash_id}")
    words = word_list()
    return " ".join(rng.choice(words) for _ in range(words_for(tokens)))


def unique_text(seed: int, index: int, tokens: int) -> str:
    rng = random.Random(f"{seed}:request:{index}")
    words = word_list()
    return " ".join(rng.choice(words) for _ in range(words_for(tokens)))


def prompt_text(req: PlannedRequest, seed: int = 0) -> str:
    """The user message for one planned request: its shared blocks (Mooncake), then unique
    words for whatever length the blocks do not cover."""
    parts = [block_text(seed, h, n) for h, n in req.blocks]
    rest = req.prompt_tokens - sum(n for _, n in req.blocks)
    if rest > 0 or not parts:
        parts.append(unique_text(seed, req.index, max(1, rest)))
    return " ".join(parts)


def chat_messages(req: PlannedRequest, seed: int = 0) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt_text(req, seed)}]
