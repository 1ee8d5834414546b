"""Data for bench/ingest.py: a JSONL file of contract `request` records with realistic
token IDs (Zipf over a 32k vocabulary), text and token times, generated fast with numpy."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

VOCAB = 32_000
PROMPT_TOKENS = 512
OUTPUT_TOKENS = 256
CHARS_PER_TOKEN = 4
BOS_ID, EOS_ID, FIRST_REGULAR_ID = 1, 2, 3
REPLICAS = ("replica-0", "replica-1", "replica-2", "replica-3")
SAMPLING: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 0.95,
    "max_tokens": OUTPUT_TOKENS,
    "stop_ids": [EOS_ID],
}
_WORD_TEXT = (
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their can has been if more when "
    "will would who so no model token request latency server batch cache prefill decode "
    "replica memory kernel tensor layer attention value query key output input sequence "
    "system user assistant please explain why how what where summary answer question data "
    "report error result function return number string list table stream queue sample"
)
WORDS = _WORD_TEXT.split()


# --- data generation -----------------------------------------------------------------------


def zipf_token_ids(rng: np.random.Generator, shape: tuple[int, ...], a: float = 1.2) -> np.ndarray:
    """Token IDs with a Zipf(``a``) frequency over the vocabulary (low IDs common, as in BPE).

    Sampled as a power law truncated to the vocabulary by inverting its CDF: the same head
    as ``rng.zipf(a)`` but ~10x faster, and no spike on the last ID where ``rng.zipf``'s
    heavy tail (~13% of draws beyond 32000) would be clipped. IDs 0-2 are pad/BOS/EOS.
    """
    ranks = VOCAB - FIRST_REGULAR_ID
    u = rng.random(shape)
    x = (1.0 - u * (1.0 - (ranks + 1.0) ** (1.0 - a))) ** (1.0 / (1.0 - a))  # in [1, ranks + 1)
    ids = np.minimum(x.astype(np.int64), ranks) - 1 + FIRST_REGULAR_ID
    return ids


class TextPool:
    """A long run of words; texts are word-aligned slices of it (fast, realistic enough)."""

    def __init__(self, rng: np.random.Generator, n_words: int = 400_000) -> None:
        weights = 1.0 / np.arange(1, len(WORDS) + 1)
        idx = rng.choice(len(WORDS), size=n_words, p=weights / weights.sum())
        words = [WORDS[i] for i in idx]
        for i in range(11, n_words, 13):  # some punctuation
            words[i] += "."
        self.text = " ".join(words)
        lengths = np.fromiter((len(w) + 1 for w in words), dtype=np.int64, count=n_words)
        self.starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))

    def slices(self, rng: np.random.Generator, n: int, chars: int) -> list[str]:
        limit = int(np.searchsorted(self.starts, len(self.text) - chars - 64))
        starts = self.starts[rng.integers(0, limit, size=n)]
        out = []
        for s in starts.tolist():
            piece = self.text[s : s + chars]
            cut = piece.rfind(" ")
            out.append(piece[:cut] if cut > 0 else piece)
        return out


def generate_batch(
    rng: np.random.Generator, pool: TextPool, first: int, n: int, t0: float
) -> bytes:
    """``n`` request records (IDs ``first`` ..), arriving after unix time ``t0``, as JSONL."""
    from infdebug.schema import Request, encode_records

    arrivals = np.round(t0 + np.cumsum(rng.exponential(0.02, size=n)), 6)  # ~50 req/s
    queue_s = rng.exponential(0.02, size=n)
    prefill_s = PROMPT_TOKENS / rng.lognormal(np.log(20_000), 0.3, size=n)
    ttft_s = queue_s + prefill_s + rng.gamma(4.0, 0.004, size=n)
    gaps = rng.gamma(6.0, 0.0025, size=(n, OUTPUT_TOKENS - 1))  # ~15 ms per token
    times = np.empty((n, OUTPUT_TOKENS))
    times[:, 0] = ttft_s
    times[:, 1:] = ttft_s[:, None] + np.cumsum(gaps, axis=1)
    times = np.round(times, 6)
    e2e_s = times[:, -1] + rng.exponential(0.002, size=n)

    prompt_ids = zipf_token_ids(rng, (n, PROMPT_TOKENS))
    prompt_ids[:, 0] = BOS_ID
    output_ids = zipf_token_ids(rng, (n, OUTPUT_TOKENS))
    stopped = rng.random(n) < 0.3
    output_ids[stopped, -1] = EOS_ID

    replica = rng.integers(0, len(REPLICAS), size=n)
    canary = rng.random(n) < 0.1
    prompts = pool.slices(rng, n, PROMPT_TOKENS * CHARS_PER_TOKEN)
    outputs = pool.slices(rng, n, OUTPUT_TOKENS * CHARS_PER_TOKEN)

    cols = zip(
        arrivals.tolist(),
        np.round(queue_s, 6).tolist(),
        np.round(prefill_s, 6).tolist(),
        np.round(ttft_s, 6).tolist(),
        np.round(e2e_s, 6).tolist(),
        times.tolist(),
        prompt_ids.tolist(),
        output_ids.tolist(),
        replica.tolist(),
        canary.tolist(),
        stopped.tolist(),
        prompts,
        outputs,
        strict=True,
    )
    records: list[Any] = []
    for i, (t_arr, q, pf, tt, e2e, tts, pids, oids, rep, can, stop, ptext, otext) in enumerate(
        cols
    ):
        records.append(
            Request(
                request_id=f"req-{first + i:010d}",
                replica=REPLICAS[rep],
                deployment="canary-b" if can else "rev-a",
                model="llama-3.1-8b-instruct",
                engine="infdebug",
                engine_version="0.1.0",
                tokenizer_fp="tok-3f9a1c2e7b6d5a48",
                template_fp="tpl-8e21d4b07c9f3a16",
                t_arrival=t_arr,
                queue_s=q,
                prefill_s=pf,
                ttft_s=tt,
                e2e_s=e2e,
                token_times_s=tts,
                messages=[{"role": "user", "content": ptext}],
                prompt_text=ptext,
                prompt_ids=pids,
                output_text=otext,
                output_ids=oids,
                finish_reason="stop" if stop else "length",
                sampling=SAMPLING,
            )
        )
    return encode_records(records)


def generate_file(
    path: str, n: int, *, seed: int = 0, batch: int = 2000, log: Callable[[str], None]
) -> float:
    """Write ``n`` request records to ``path`` (atomically); returns the seconds it took."""
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    pool = TextPool(rng)
    t0 = time.time() - n * 0.02  # the arrivals end around now
    tmp = path + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "wb") as fh:
        for first in range(0, n, batch):
            k = min(batch, n - first)
            fh.write(generate_batch(rng, pool, first, k, t0))
            t0 += k * 0.02
            if first // batch % 10 == 9:
                log(f"  generated {first + k:,}/{n:,} records")
    os.replace(tmp, path)
    return time.perf_counter() - t_start


def iter_chunks(path: str, size: int = 16 << 20) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(size):
            yield chunk


def count_lines(path: str) -> int:
    return sum(chunk.count(b"\n") for chunk in iter_chunks(path))


def warm_read(path: str) -> float:
    """Read the whole file once (like ``cat > /dev/null``) so the page cache is warm."""
    t = time.perf_counter()
    for _ in iter_chunks(path):
        pass
    return time.perf_counter() - t


def write_head(src: str, dst: str, n_lines: int) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for i, line in enumerate(fin):
            if i >= n_lines:
                break
            fout.write(line)
