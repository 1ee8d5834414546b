"""Benchmark the tokenizer-drift analyzers (infdebug/analyzers/tokenizer_drift.py) on chDB.

What it measures
----------------
N synthetic logged requests (default 200k) with 512-token prompts are put in a fresh
embedded store: K base prompts (default 2,000) are random GPT-2 token sequences decoded to
text and re-encoded with the real GPT-2 tokenizer (so logged IDs are real encodes), ingested
through ``ingest_paths``, then multiplied inside ClickHouse to N rows spread over 4
replicas, each prompt text appearing on two replicas with the same IDs (a clean fleet).
Every pair gets a distinct two-word suffix (" word1 word2", each a single GPT-2 token that
re-encodes to itself), so the cross-replica check groups N/2 texts and re-encoding is clean.

Timed, each on its own:

1. ``id checks``: fingerprint_mismatch + cross_replica_ids + out_of_vocab (no reference).
2. ``oov (ref)``: out_of_vocab against the reference vocabulary.
3. ``re-encode``: reencode_mismatch, sampled (``--sample`` distinct prompts per replica,
   default 5,000, the analyzer's default), with ``tokenizers``' batch API on ``--threads`` threads (default 2).
4. ``decode``: decode_mismatch over the same sample size.

Rates are requests/s: N for the store-side checks, requests actually checked for the
sampled ones; "covered" is N / seconds (the analysis of the whole window, sampled). The baseline named in the table is the issue's target (50k req/s for the
ID checks, 5k req/s for re-encode on 2 cores); ratios are measured/target.

Reproduce
---------
    python bench/analyze_tokenizer.py                       # 200k requests
    python bench/analyze_tokenizer.py --requests 20000      # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--base", type=int, default=2_000, help="distinct base prompts")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--sample", type=int, default=5_000, help="re-encode sample per replica")
    ap.add_argument("--threads", type=int, default=2, help="tokenizers threads (RAYON_NUM_THREADS)")
    ap.add_argument("--tokenizer", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                        "tokenizers", "gpt2"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before tokenizers starts its pool
    os.environ["RAYON_RS_NUM_CPUS"] = str(args.threads)

    from infdebug.analyzers import tokenizer_drift as td
    from infdebug.analyzers.base import AnalysisContext
    from infdebug.collectors.ingest import ingest_paths
    from infdebug.schema import Request, encode_records
    from infdebug.store import open_store
    from infdebug.text.tokenizer import load_tokenizer

    if not os.path.isdir(args.tokenizer):
        sys.exit(f"{args.tokenizer}: tokenizer directory absent (needs ../shared/data)")
    tok = load_tokenizer(args.tokenizer)
    rnd = random.Random(0)
    vocab = 50_000
    # words with a leading space, Zipf-weighted by ID (GPT-2 IDs follow merge order, roughly
    # frequency): closer to real text than uniform random tokens, which defeat the BPE cache
    spaced = sorted(i for w, i in tok.tok.get_vocab().items() if w.startswith("Ġ") and i < vocab)
    weights = [1.0 / (r + 10) for r in range(len(spaced))]
    raw = [rnd.choices(spaced, weights, k=args.prompt_tokens) for _ in range(args.base)]
    texts = [str(t) for t in tok.tok.decode_batch(raw)]
    t_enc = time.perf_counter()
    ids = [list(e.ids) for e in tok.tok.encode_batch(texts, add_special_tokens=False)]
    raw_encode_rate = len(texts) / (time.perf_counter() - t_enc)
    out_text = "The answer is four, of course."
    out_ids = tok.encode(out_text)

    results: dict[str, Any] = {"requests": args.requests, "prompt_tokens": args.prompt_tokens,
                               "threads": args.threads}
    with tempfile.TemporaryDirectory() as home:
        st = open_store(home=os.path.join(home, "store"))
        path = os.path.join(home, "base.jsonl")
        recs = [
            Request(request_id=f"b{k}", replica="base", t_arrival=1_764_000_000.0 + k, model="gpt2",
                    tokenizer_fp=tok.fingerprint, prompt_text=texts[k], prompt_ids=ids[k],
                    output_text=out_text, output_ids=out_ids, finish_reason="stop")
            for k in range(args.base)
        ]
        with open(path, "wb") as f:
            f.write(encode_records(list(recs)))
        ingest_paths(st, [path], rejects_path=os.path.join(home, "rejects.jsonl"))
        t0 = time.perf_counter()
        words = sorted(
            w for w, i in tok.tok.get_vocab().items()
            if w.startswith("Ġ") and w[1:].isascii() and w[1:].isalpha() and w[1:].islower() and 3 <= len(w) <= 9
        )[:1000]
        words = [w for w in words if tok.encode(" " + w[1:]) == [tok.tok.token_to_id(w)]]
        _multiply(st, args.requests, args.base, [w[1:] for w in words], [tok.tok.token_to_id(w) for w in words])
        results["synthesize_s"] = time.perf_counter() - t0

        ctx = AnalysisContext(store=st, options={"tokenizer_sample": args.sample})
        ref = AnalysisContext(store=st, tokenizer=tok, options={"tokenizer_sample": args.sample})
        rows: list[tuple[str, float, int, float]] = []

        def timed(name: str, fn: Any, c: AnalysisContext, n: int, target: float) -> None:
            t = time.perf_counter()
            found = fn(c)
            dt = time.perf_counter() - t
            bad = [f for f in found if f.severity != "info"]
            if bad:
                print(f"unexpected findings in {name}: {[f.summary for f in bad]}", file=sys.stderr)
            rows.append((name, dt, n, target))

        def id_checks(c: AnalysisContext) -> list[Any]:
            return td._fingerprint_findings(c) + td._cross_replica_findings(c) + td._oov_findings(c)

        checked = min(args.requests, 4 * args.sample)
        timed("id checks (fingerprint+cross-replica+oov)", id_checks, ctx, args.requests, 50_000)
        timed("oov (reference vocab)", td._oov_findings, ref, args.requests, 50_000)
        timed(f"re-encode (sample {args.sample}/replica)", td._reencode_findings, ref, checked, 5_000)
        timed(f"decode (sample {args.sample}/replica)", td._decode_findings, ref, checked, 5_000)
        st.close()

    results["baseline_raw_encode_batch_req_per_s"] = raw_encode_rate
    results["checks"] = [
        {"check": n, "seconds": dt, "requests": k, "req_per_s": k / dt, "target_req_per_s": tg, "ratio": k / dt / tg}
        for n, dt, k, tg in rows
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.requests} requests, {args.prompt_tokens}-token prompts, tokenizers threads={args.threads}, "
          f"synthesized in {results['synthesize_s']:.1f}s")
    print(f"{'check':48} {'seconds':>8} {'requests':>9} {'req/s':>10} {'vs target':>10} {'covered/s':>10}")
    for r in results["checks"]:
        print(f"{r['check']:48} {r['seconds']:8.2f} {r['requests']:9d} {r['req_per_s']:10.0f} "
              f"{r['ratio']:9.2f}x {args.requests / r['seconds']:10.0f}")
    print("baseline: the issue's targets (50k req/s ID checks, 5k req/s re-encode on 2 cores)")
    enc = next(r for r in results["checks"] if r["check"].startswith("re-encode"))
    print(f"raw tokenizers encode_batch on the base prompts, same threads: {raw_encode_rate:.0f} req/s; "
          f"re-encode check / raw = {enc['req_per_s'] / raw_encode_rate:.2f}x")


def _multiply(st: Any, n: int, k: int, words: list[str], word_ids: list[int]) -> None:
    """Turn the K base rows into N: row n copies base n % K; its text gets the suffix
    ' w[h % W] w[h / W % W]' (h = n mod N/2) and its IDs the two word tokens, so each text
    is on two replicas with identical, real IDs. Synthetic data for this benchmark only."""
    half = max(1, n // 2)
    st.command("RENAME TABLE requests TO requests_base")
    st.command("CREATE TABLE requests AS requests_base")
    st.command(
        """
        INSERT INTO requests
        SELECT * EXCEPT (number, k) REPLACE (
            concat('q', toString(number)) AS request_id,
            concat('r', toString((number + intDiv(number, {half:UInt64})) % 4)) AS replica,
            1764000000.0 + number / 100 AS t_arrival,
            concat(prompt_text, ' ', {w:Array(String)}[(number % {half:UInt64}) % {nw:UInt64} + 1],
                   ' ', {w:Array(String)}[intDiv(number % {half:UInt64}, {nw:UInt64}) % {nw:UInt64} + 1]) AS prompt_text,
            arrayConcat(prompt_ids, [{wi:Array(UInt32)}[(number % {half:UInt64}) % {nw:UInt64} + 1],
                   {wi:Array(UInt32)}[intDiv(number % {half:UInt64}, {nw:UInt64}) % {nw:UInt64} + 1]]) AS prompt_ids
        )
        FROM (SELECT *, toUInt64(t_arrival - 1764000000.0) AS k FROM requests_base) AS b
        INNER JOIN (SELECT number FROM numbers({n:UInt64})) AS c ON b.k = c.number % {kk:UInt64}
        """,
        {"half": half, "n": n, "kk": k, "w": words, "wi": word_ids, "nw": len(words)},
    )
    st.command("DROP TABLE requests_base")


if __name__ == "__main__":
    main()
