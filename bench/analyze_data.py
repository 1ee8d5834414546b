"""The fleet that ``bench/analyze.py`` analyses: N logged chat requests in a fresh embedded store.

K base conversations (one of six system prompts; a user message that is a window of the
Python documentation topics CPython ships — English prose with code — and a question) are
rendered with a real chat template and encoded with the real tokenizer to ``--prompt-tokens``
(- 3). Each gets an output (a shorter window, encoded the same way, its decoded text, an
end-of-turn ID when it stopped; 5% run to the length cap, 1% end in a loop). These K rows go
through ``ingest_paths``;
ClickHouse then multiplies them to N rows (``INSERT … SELECT`` over ``numbers(N)``):

- row n takes base ``h % K`` with ``h = n % (N/2)`` and two words ``w[h % W]``, ``w[h / W % W]``
  appended to its last user message — in the text, in the logged messages and as two token
  IDs before the template's tail — so there are N/2 distinct prompts, each on two replicas;
- 8 replicas, r0–r5 in deployment ``baseline``, r6–r7 in ``canary``; one model, with its
  tokenizer and template fingerprints; arrival times spread over a day.

One fault is injected (``fault_share``, default 2%): on r7 the first appended word is logged
as two tokens (a split that decodes to the same text), which ``tokenizer.cross_replica_ids``
and ``tokenizer.reencode_mismatch`` should report. Everything else is clean.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any

REPLICAS = 8
CANARY = (6, 7)
FAULT_REPLICA = 7
T0 = 1_764_000_000.0
MODEL = "bench-chat-8b"


@dataclass
class Base:
    """What the multiplication needs about the base rows and the words it appends."""

    words: list[str]  # appended words, each one token with its leading space
    word_ids: list[int]
    split_ids: list[list[int]]  # each word as two tokens (the injected fault)
    tail_chars: int  # bytes of the template's tail after the last user message
    tail_ids: int  # token IDs of that tail
    texts: list[str]  # the K rendered base prompts
    prompt_tokens: list[int]


def _spaced_words(tok: Any, vocab_limit: int) -> list[tuple[str, int]]:
    """(word, ID) for the vocabulary's lowercase ASCII words with a leading space."""
    out = []
    for piece, i in tok.tok.get_vocab().items():
        w = piece[1:]
        if (
            piece.startswith("Ġ")
            and i < vocab_limit
            and w.isascii()
            and w.isalpha()
            and w.islower()
        ):
            out.append((w, i))
    out.sort(key=lambda x: x[1])
    return out


SYSTEMS = (
    "You are a helpful assistant. Answer concisely and cite the passage you rely on.",
    "You are an expert Python developer. Explain the documentation below to a colleague; "
    "include a short example when it helps.",
    "You are a support bot for an internal developer platform. Be precise, say when you are "
    "unsure, and never invent API names.",
    "Summarise the user's document in plain language for a new engineer. "
    "Keep code identifiers as they are.",
    "You are a careful reviewer. Point out edge cases and incorrect assumptions in the user's "
    "question.",
    "You answer questions about the Python language reference. Quote the grammar where relevant.",
)
QUESTIONS = (
    "Question: what does this mean in practice, and when would I use it",
    "Can you explain the part above with a small example and the main pitfall",
    "Summarise the rules above in three bullet points for a code review checklist",
    "Which of these behaviours changed recently, and what should I watch out for",
)


class _Writer:
    """Prompt and output text: windows of real English prose with code (the Python
    documentation topics every CPython install ships), else Zipf-weighted vocabulary words."""

    def __init__(self, words: list[str], rnd: random.Random) -> None:
        self.rnd = rnd
        self.words = words
        self.weights = [1.0 / (r + 10) for r in range(len(words))]
        try:
            from pydoc_data.topics import topics

            self.corpus = "\n\n".join(topics[k] for k in sorted(topics))
        except ImportError:  # pragma: no cover - a stripped Python
            self.corpus = "\n\n".join(self.sentence() for _ in range(20_000))

    def sentence(self) -> str:
        ws = self.rnd.choices(self.words, self.weights, k=self.rnd.randint(6, 22))
        return " ".join(ws).capitalize() + "."

    def window(self, chars: int) -> str:
        at = self.rnd.randrange(0, max(1, len(self.corpus) - chars))
        at = self.corpus.find(" ", at) + 1
        return self.corpus[at : at + chars].strip()


def _fit(
    tok: Any, template: str, writer: _Writer, system: str, budget: int
) -> tuple[str, list[dict[str, str]], list[int]]:
    """A conversation whose rendered prompt is ``budget`` tokens (± 2), its text and IDs: a
    document window and a question, ending in a word (so appended words tokenize alone)."""
    from infdebug.text.template import render_chat

    question = writer.rnd.choice(QUESTIONS)

    def render(doc: str) -> tuple[str, list[dict[str, str]], list[int]]:
        user = f"{doc.strip()}\n\n{question}"
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = render_chat(
            template,
            msgs,
            add_generation_prompt=True,
            bos_token=tok.bos_token,
            eos_token=tok.eos_token,
        )
        return text, msgs, tok.encode(text, add_special_tokens=False)

    window = writer.window(budget * 6)
    offsets = tok.tok.encode(window, add_special_tokens=False).offsets
    m = budget - len(render("")[2])  # the window's tokens that fit, then corrected
    best = render("")
    for _ in range(8):
        m = min(max(m, 1), len(offsets))
        got = render(window[: offsets[m - 1][1]])
        if len(best[2]) < len(got[2]) <= budget:
            best = got
        if len(got[2]) == budget:
            break
        m += budget - len(got[2])
    return best


def build_base(
    tok: Any, template: str, k: int, prompt_tokens: int, seed: int = 0
) -> tuple[list[Any], Base]:
    """K base Request records (replica ``base``, t_arrival T0 + index) and what the SQL needs."""
    from infdebug.schema import Request
    from infdebug.text.fingerprint import template_fingerprint

    rnd = random.Random(seed)
    vocab = _spaced_words(tok, int(tok.vocab_size))
    writer = _Writer([w for w, _ in vocab[:20_000] if len(w) > 1], rnd)
    # appended words: single tokens that also split into two tokens of the vocabulary
    ids_of = dict(tok.tok.get_vocab())
    words: list[str] = []
    word_ids: list[int] = []
    splits: list[list[int]] = []
    for w, i in vocab[200:]:
        if len(w) < 4 or tok.encode(" " + w) != [i]:
            continue
        cut = next(
            (c for c in range(2, len(w) - 1) if "Ġ" + w[:c] in ids_of and w[c:] in ids_of), None
        )
        if cut is None:
            continue
        words.append(w)
        word_ids.append(i)
        splits.append([ids_of["Ġ" + w[:cut]], ids_of[w[cut:]]])
        if len(words) == 1000:
            break
    eot = [
        t for t in (tok.tok.token_to_id(s) for s in ("<|eot_id|>", "<|im_end|>")) if t is not None
    ]
    stop_ids = sorted(set(eot + list(tok.eos_ids)))
    end_id = eot[0] if eot else (tok.eos_ids[0] if tok.eos_ids else None)
    t_fp = template_fingerprint(template)
    recs: list[Any] = []
    texts: list[str] = []
    lengths: list[int] = []
    tail: tuple[int, int] | None = None
    for b in range(k):
        text, msgs, ids = _fit(tok, template, writer, SYSTEMS[b % len(SYSTEMS)], prompt_tokens - 2)
        content = msgs[-1]["content"]
        at = text.rindex(content) + len(content)
        tail_text = text[at:]
        tail_ids = tok.encode(tail_text)
        if ids[len(ids) - len(tail_ids) :] != tail_ids:
            raise RuntimeError(
                f"template tail {tail_text!r} does not encode apart from the content"
            )
        this = (len(tail_text.encode()), len(tail_ids))
        if tail not in (None, this):
            raise RuntimeError(
                "the template's tail after the last user message varies between prompts"
            )
        tail = this
        out_ids, finish = _output(tok, writer, rnd, end_id)
        recs.append(
            Request(
                request_id=f"b{b}",
                replica="base",
                t_arrival=T0 + b,
                deployment="baseline",
                model=MODEL,
                engine="vllm",
                engine_version="0.8.5",
                tokenizer_fp=tok.fingerprint,
                template_fp=t_fp,
                queue_s=0.01,
                prefill_s=0.05,
                ttft_s=0.06,
                e2e_s=2.5,
                messages=msgs,
                prompt_text=text,
                prompt_ids=ids,
                output_text=tok.decode(out_ids, skip_special_tokens=True),
                output_ids=out_ids,
                finish_reason=finish,
                sampling={
                    "temperature": 0.7,
                    "top_p": 0.9,
                    "max_tokens": 256,
                    "stop_ids": stop_ids,
                },
            )
        )
        texts.append(text)
        lengths.append(len(ids) + 2)
    assert tail is not None
    return recs, Base(words, word_ids, splits, tail[0], tail[1], texts, lengths)


def _output(
    tok: Any, writer: _Writer, rnd: random.Random, end_id: int | None
) -> tuple[list[int], Any]:
    ids = tok.encode(writer.window(rnd.randint(100, 1200)))
    r = rnd.random()
    if r < 0.01:  # a degenerate loop to the length cap (on every replica alike)
        loop = tok.encode(" " + " ".join(writer.sentence().split(" ")[:3]))
        ids = (ids[:60] + loop * 256)[:256]
        return ids, "length"
    if r < 0.06 or end_id is None:
        return (ids * 4)[:256], "length"
    return ids[:255] + [end_id], "stop"


def write_base(path: str, recs: list[Any]) -> None:
    from infdebug.schema import encode_records

    with open(path, "wb") as f:
        f.write(encode_records(list(recs)))


def multiply(st: Any, n: int, k: int, base: Base, fault_share: float) -> None:
    """Turn the K base rows into N (see the module docstring)."""
    half = max(1, n // 2)
    w1 = "(h % {nw:UInt64}) + 1"
    w2 = "(intDiv(h, {nw:UInt64}) % {nw:UInt64}) + 1"
    suffix = f"concat(' ', {{w:Array(String)}}[{w1}], ' ', {{w:Array(String)}}[{w2}])"
    first = f"if(bad, {{sp:Array(Array(UInt32))}}[{w1}], [{{wi:Array(UInt32)}}[{w1}]])"
    st.command("RENAME TABLE requests TO requests_base")
    st.command("CREATE TABLE requests AS requests_base")
    st.command(
        f"""
        INSERT INTO requests
        SELECT * EXCEPT (number, h, ck, rep, bad, k) REPLACE (
            concat('q', toString(number)) AS request_id,
            concat('r', toString(rep)) AS replica,
            if(rep IN {CANARY}, 'canary', 'baseline') AS deployment,
            {T0} + number * (86400.0 / {{n:UInt64}}) AS t_arrival,
            concat(left(prompt_text, length(prompt_text) - {{tc:UInt64}}), {suffix},
                   right(prompt_text, {{tc:UInt64}})) AS prompt_text,
            concat(left(messages, length(messages) - 3), {suffix}, right(messages, 3)) AS messages,
            arrayConcat(arraySlice(prompt_ids, 1, length(prompt_ids) - {{ti:UInt64}}), {first},
                        [{{wi:Array(UInt32)}}[{w2}]],
                        arraySlice(prompt_ids, length(prompt_ids) - {{ti:UInt64}} + 1)
            ) AS prompt_ids
        )
        FROM (
            SELECT number, number % {{half:UInt64}} AS h, h % {{kk:UInt64}} AS ck,
                   (h + intDiv(number, {{half:UInt64}})) % {REPLICAS} AS rep,
                   rep = {FAULT_REPLICA} AND cityHash64(number) % 10000 < {{fault:UInt64}} AS bad
            FROM numbers({{n:UInt64}})
        ) AS c
        INNER JOIN (SELECT *, toUInt64(t_arrival - {T0}) AS k FROM requests_base) AS b ON c.ck = b.k
        """,
        {
            "half": half,
            "n": n,
            "kk": k,
            "w": base.words,
            "wi": base.word_ids,
            "nw": len(base.words),
            "sp": base.split_ids,
            "tc": base.tail_chars,
            "ti": base.tail_ids,
            "fault": round(fault_share * 10000),
        },
    )
    st.command("DROP TABLE requests_base")


def build_store(
    home: str, recs: list[Any], base: Base, n: int, fault_share: float
) -> tuple[Any, dict[str, float]]:
    """A fresh embedded store under ``home`` holding the fleet made from ``build_base``'s
    records; seconds per step, distinct prompts and mean prompt length."""
    import time

    from infdebug.collectors.ingest import ingest_paths
    from infdebug.store import open_store

    t0 = time.perf_counter()
    st = open_store(home=os.path.join(home, "store"))
    path = os.path.join(home, "base.jsonl")
    write_base(path, recs)
    ingest_paths(st, [path], rejects_path=os.path.join(home, "rejects.jsonl"))
    t1 = time.perf_counter()
    multiply(st, n, len(recs), base, fault_share)
    t2 = time.perf_counter()
    _, rows = st.query(
        "SELECT count(), uniqExact(prompt_text), avg(length(prompt_ids)) FROM requests"
    )
    if int(rows[0][0]) != n:
        raise RuntimeError(f"expected {n} rows, the store holds {rows[0][0]}")
    return st, {
        "ingest_s": t1 - t0,
        "multiply_s": t2 - t1,
        "distinct_prompts": float(rows[0][1]),
        "avg_prompt_tokens": float(rows[0][2]),
    }


def describe(base: Base) -> dict[str, Any]:
    return {
        "base_prompts": len(base.texts),
        "words": len(base.words),
        "prompt_tokens_min": min(base.prompt_tokens),
        "prompt_tokens_max": max(base.prompt_tokens),
    }


if __name__ == "__main__":  # a look at one base prompt
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from infdebug.text.template import load_template
    from infdebug.text.tokenizer import load_tokenizer

    d = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
    tk = load_tokenizer(os.path.join(d, "tokenizers", "llama3"))
    rs, bs = build_base(tk, load_template(os.path.join(d, "templates", "llama3.1.jinja")), 3, 512)
    print(rs[0].prompt_text)
    print(json.dumps(describe(bs)))


# --- tiktoken, as a speed baseline for re-encoding ------------------------------------------

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def tiktoken_encoder(bundle: Any, threads: int) -> Any:
    """``texts -> IDs`` with tiktoken, built from a byte-level BPE tokenizer's vocabulary,
    merges, split regex and added tokens (None for other tokenizers, or without tiktoken).
    A speed baseline only: nothing checks it is exact beyond the texts the bench compares."""
    try:
        import tiktoken
    except ImportError:
        return None
    from infdebug.text.convert import bytes_to_unicode

    state = json.loads(bundle.tok.to_str())
    model, pre = state.get("model") or {}, state.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or state.get("normalizer") not in (None, {"type": "NFC"}):
        return None
    if pre.get("type") == "ByteLevel":
        pattern = GPT2_PATTERN
    elif pre.get("type") == "Sequence" and [
        p.get("type") for p in pre.get("pretokenizers", [])
    ] == ["Split", "ByteLevel"]:
        pattern = pre["pretokenizers"][0].get("pattern", {}).get("Regex")
    else:
        return None
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    made = {
        "".join(m.split(" ", 1) if isinstance(m, str) else m) for m in model.get("merges") or []
    }
    ranks = {}
    for piece, i in model["vocab"].items():
        if len(piece) == 1 or piece in made or model.get("ignore_merges"):
            if not all(c in byte_of for c in piece):
                return None
            ranks[bytes(byte_of[c] for c in piece)] = i
    specials = {t.content: i for i, t in bundle.tok.get_added_tokens_decoder().items()}
    enc = tiktoken.Encoding(
        "bench", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials
    )
    allowed = frozenset(specials)
    return lambda texts: enc.encode_batch(
        texts, num_threads=threads, allowed_special=allowed, disallowed_special=()
    )
