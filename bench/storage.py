"""Benchmark the store's bytes per request, column by column, on realistic request records:
today's layout against the layouts before it and other codecs, and the capacity model a
fleet's size gives.

What it measures
----------------
``--records`` request records are built from real parts: prompt and output lengths are
rows of the Azure LLM inference trace 2023 (conversation), token IDs come from a real
tokenizer (Qwen2's byte-level BPE in ``../shared/data/tokenizers``) run over real text (the
prose of Meta's Llama prompt-format documents, this repository's Markdown and Python, and
the Python of the installed packages: chat and code, as a fleet serves), the prompt starts
with one of a few system prompts (as a fleet's traffic does), and the per-token times are
a lognormal TTFT then lognormal inter-token gaps (median 22 ms, sigma 0.45) in Float64
seconds at full precision, as the tracer writes them. Not random IDs, not random text.

The records go through ``infdebug ingest`` into a fresh embedded store (today's
``requests`` table: migration 10 keeps the token times as Int64 microsecond offsets in
``token_offsets_us``, ``token_times_s`` is an ALIAS of them), and the same JSONL file is read
again by ``INSERT … SELECT … FROM file()`` into a probe table whose columns hold the same
fields, the token times as the records have them (Float64 seconds at full precision), under
other types and codecs. After ``OPTIMIZE … FINAL`` (one merged part, the steady state)
``system.columns.data_compressed_bytes`` divided by the rows gives bytes per request per
column, and by the tokens bytes per token; ``system.parts_columns`` gives the same of the
stored times column part by part (``stored_token_times``).

The layouts (``layouts_bytes_per_request``): ``today`` is the ``requests`` table as stored.
The others are today's with each heavy column's probe bytes as that schema kept it in place
of its probe bytes as today's does (``TODAY``, ``BEFORE``): ``migration_9`` the token times
as Float64 seconds, FPC + ZSTD(1); ``migration_8`` every heavy column without a codec (on
chDB that compresses as ZSTD(3) in large parts), and ``migration_8_lz4`` with LZ4, a
server's default codec.

Reproduce
---------
    python bench/storage.py                  # 4,000 records, a table, ~1 min on 2 cores
    python bench/storage.py --records 20000 --json    # the figures the README quotes

``--json`` prints every figure and the capacity model (``--replicas`` × ``--rps``
records per second, ``--node-mb-s``: the ingest rate one ClickHouse node is planned at).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
if not SHARED.exists():
    SHARED = Path("/work/shared/data")

SYSTEM_PROMPTS = (
    "You are a helpful assistant. Answer concisely and cite the documents you were given.",
    "You are an expert Python programmer. Write correct, idiomatic, well-tested code and "
    "explain your changes briefly.",
    "You are a customer support agent for an online store. Be polite, never promise "
    "refunds you cannot give, and ask for the order number first.",
    "You are a careful technical writer. Rewrite the user's text so that it is clear, "
    "short and correct; keep every fact.",
)

# (probe column, type with codec, expression from ``requests``): the alternatives measured.
US = "arrayMap(x -> toUInt32(round(x * 1e6)), token_times_s)"
PROBE: tuple[tuple[str, str, str], ...] = (
    ("tt_f64_default", "Array(Float64)", "token_times_s"),
    ("tt_f64_lz4", "Array(Float64) CODEC(LZ4)", "token_times_s"),
    ("tt_f64_zstd3", "Array(Float64) CODEC(ZSTD(3))", "token_times_s"),
    ("tt_f64_gorilla_zstd", "Array(Float64) CODEC(Gorilla, ZSTD(1))", "token_times_s"),
    ("tt_f64_fpc_zstd", "Array(Float64) CODEC(FPC, ZSTD(1))", "token_times_s"),
    ("tt_u32_lz4", "Array(UInt32)", US),
    ("tt_u32_delta_zstd1", "Array(UInt32) CODEC(Delta, ZSTD(1))", US),
    ("tt_u32_delta_zstd3", "Array(UInt32) CODEC(Delta, ZSTD(3))", US),
    ("tt_u32_t64_zstd", "Array(UInt32) CODEC(T64, ZSTD(1))", US),
    ("tt_u32_doubledelta_zstd", "Array(UInt32) CODEC(DoubleDelta, ZSTD(1))", US),
    ("tt_i64_delta_zstd1", "Array(Int64) CODEC(Delta, ZSTD(1))", US),
    ("tt_i64_delta_zstd3", "Array(Int64) CODEC(Delta, ZSTD(3))", US),
    ("pid_default", "Array(UInt32)", "prompt_ids"),
    ("pid_lz4", "Array(UInt32) CODEC(LZ4)", "prompt_ids"),
    ("pid_zstd1", "Array(UInt32) CODEC(ZSTD(1))", "prompt_ids"),
    ("pid_zstd3", "Array(UInt32) CODEC(ZSTD(3))", "prompt_ids"),
    ("pid_zstd9", "Array(UInt32) CODEC(ZSTD(9))", "prompt_ids"),
    ("pid_t64_zstd3", "Array(UInt32) CODEC(T64, ZSTD(3))", "prompt_ids"),
    ("oid_default", "Array(UInt32)", "output_ids"),
    ("oid_lz4", "Array(UInt32) CODEC(LZ4)", "output_ids"),
    ("oid_zstd1", "Array(UInt32) CODEC(ZSTD(1))", "output_ids"),
    ("oid_zstd3", "Array(UInt32) CODEC(ZSTD(3))", "output_ids"),
    ("oid_zstd9", "Array(UInt32) CODEC(ZSTD(9))", "output_ids"),
    ("ptext_default", "Nullable(String)", "prompt_text"),
    ("ptext_lz4", "Nullable(String) CODEC(LZ4)", "prompt_text"),
    ("ptext_zstd1", "Nullable(String) CODEC(ZSTD(1))", "prompt_text"),
    ("ptext_zstd3", "Nullable(String) CODEC(ZSTD(3))", "prompt_text"),
    ("ptext_zstd9", "Nullable(String) CODEC(ZSTD(9))", "prompt_text"),
    ("otext_default", "Nullable(String)", "output_text"),
    ("otext_lz4", "Nullable(String) CODEC(LZ4)", "output_text"),
    ("otext_zstd3", "Nullable(String) CODEC(ZSTD(3))", "output_text"),
    ("msg_default", "Nullable(String)", "messages"),
    ("msg_lz4", "Nullable(String) CODEC(LZ4)", "messages"),
    ("msg_zstd3", "Nullable(String) CODEC(ZSTD(3))", "messages"),
)

# Today's token times: the stored columns under the ``token_times_s`` ALIAS (migration 10,
# store/ddl.py); ``token_times_f64`` holds only rows stored before it (none here).
TIMES = ("token_offsets_us", "token_times_f64")
# For each heavy column, the probe column that holds it as today's schema does, and below,
# as the schemas before did: a layout before is today's with the difference between the two
# probe columns (the same rows in the same table: the probe table comes out a few percent
# larger than ``requests`` for the same codec, which differences of probe columns cancel).
TODAY = {
    "token_times_s": "tt_i64_delta_zstd1",
    "prompt_ids": "pid_zstd3",
    "output_ids": "oid_zstd3",
    "prompt_text": "ptext_zstd3",
    "output_text": "otext_zstd3",
    "messages": "msg_zstd3",
}
BEFORE: dict[str, dict[str, str]] = {
    "migration_9": {"token_times_s": "tt_f64_fpc_zstd"},
    "migration_8": {
        "token_times_s": "tt_f64_default",
        "prompt_ids": "pid_default",
        "output_ids": "oid_default",
        "prompt_text": "ptext_default",
        "output_text": "otext_default",
        "messages": "msg_default",
    },
    "migration_8_lz4": {
        "token_times_s": "tt_f64_lz4",
        "prompt_ids": "pid_lz4",
        "output_ids": "oid_lz4",
        "prompt_text": "ptext_lz4",
        "output_text": "otext_lz4",
        "messages": "msg_lz4",
    },
}
# What a request without its traces lacks (stored columns: the ALIAS holds nothing).
HEAVY = (*TIMES, *(c for c in TODAY if c != "token_times_s"), "output_logprobs")


def corpus_text(limit_chars: int = 6_000_000) -> str:
    parts: list[str] = []
    prompts = SHARED / "templates" / "llama_models_prompt_format"
    for p in sorted(prompts.glob("*.md")):
        parts.append(p.read_text(errors="replace"))
    for pat in ("*.md", "infdebug/**/*.py"):
        for p in sorted(ROOT.glob(pat)):
            parts.append(p.read_text(errors="replace"))
    site = next((ROOT / ".venv" / "lib").glob("python*/site-packages"), None)
    if site is not None:
        for pkg in ("click", "msgspec", "rich", "jinja2", "pyarrow"):
            for p in sorted((site / pkg).glob("**/*.py")):
                parts.append(p.read_text(errors="replace"))
                if sum(map(len, parts)) > limit_chars:
                    break
    return "\n\n".join(parts)[:limit_chars]


def load_tokenizer() -> Any:
    from tokenizers import ByteLevelBPETokenizer

    d = SHARED / "tokenizers" / "qwen2-1.5b-instruct-finetune"
    return ByteLevelBPETokenizer(str(d / "vocab.json"), str(d / "merges.txt"))


def lengths(n: int) -> list[tuple[int, int]]:
    path = SHARED / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
    with open(path, newline="") as f:
        rows = [(int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in csv.DictReader(f)]
    return [rows[i % len(rows)] for i in range(n)]


def build_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    tok = load_tokenizer()
    ids = tok.encode(corpus_text()).ids
    sys_ids = [tok.encode(s).ids for s in SYSTEM_PROMPTS]
    out = []
    t0 = 1_760_000_000.0
    for i, (n_in, n_out) in enumerate(lengths(n)):
        k = rng.randrange(len(SYSTEM_PROMPTS))
        body = max(1, n_in - len(sys_ids[k]))
        at = rng.randrange(0, len(ids) - body - n_out)
        prompt_ids = sys_ids[k] + ids[at : at + body]
        user_text = tok.decode(ids[at : at + body])
        o_at = rng.randrange(0, len(ids) - n_out)
        output_ids = ids[o_at : o_at + n_out]
        queue = rng.lognormvariate(-5.5, 1.0)
        prefill = n_in * 4e-5 * rng.lognormvariate(0, 0.2)
        t, times = queue + prefill, []
        for _ in range(n_out):
            times.append(t)
            t += rng.lognormvariate(-3.8, 0.45)  # median 22 ms
        system = SYSTEM_PROMPTS[k]
        out.append(
            {
                "kind": "request",
                "v": 1,
                "request_id": f"req-{seed}-{i:08d}-{rng.getrandbits(32):08x}",
                "replica": f"r{rng.randrange(16):02d}",
                "t_arrival": t0 + i * 0.02 + rng.random() * 0.01,
                "deployment": "prod",
                "model": "qwen2-1.5b-instruct",
                "engine": "vllm",
                "engine_version": "0.6.3",
                "tokenizer_fp": "tok:7f3a9c",
                "template_fp": "tpl:1b2c3d",
                "queue_s": queue,
                "prefill_s": prefill,
                "ttft_s": times[0] if times else None,
                "e2e_s": t,
                "token_times_s": times,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": user_text},
                ],
                "prompt_text": f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
                f"{user_text}<|im_end|>\n<|im_start|>assistant\n",
                "prompt_ids": prompt_ids,
                "output_text": tok.decode(output_ids),
                "output_ids": output_ids,
                "finish_reason": "stop" if rng.random() < 0.9 else "length",
                "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 2048},
                "prompt_tokens": len(prompt_ids),
                "output_tokens": len(output_ids),
            }
        )
    return out


def measure(n: int, seed: int) -> dict[str, Any]:
    from infdebug.collectors.ingest import ingest_paths
    from infdebug.store.base import migrate
    from infdebug.store.client import open_embedded
    from infdebug.store.ddl import TABLES
    from infdebug.store.filepath import literal_path

    records = build_records(n, seed)
    with tempfile.TemporaryDirectory(prefix="infdebug-storage-") as tmp:
        path = os.path.join(tmp, "requests.jsonl")
        with open(path, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        jsonl_bytes = os.path.getsize(path)
        st = open_embedded(os.path.join(tmp, "home"))
        try:
            migrate(st)
            # Wide parts: a compact part does not report its columns' sizes.
            st.command("ALTER TABLE requests MODIFY SETTING min_bytes_for_wide_part = 0")
            ingest_paths(st, [path], rejects_path=os.path.join(tmp, "rejects.jsonl"))
            cols = ", ".join(f"`{c}` {t}" for c, t, _ in PROBE)
            st.command(
                f"CREATE TABLE probe ({cols}) ENGINE = MergeTree ORDER BY tuple() "
                "SETTINGS min_bytes_for_wide_part = 0"
            )
            # The probe reads the records as they are (full-precision Float64 times), in the
            # order the requests table keeps them.
            sel = ", ".join(e for _, _, e in PROBE)
            with literal_path(path) as literal:
                st.command(
                    f"INSERT INTO probe SELECT {sel} FROM file({{p:String}}, 'JSONEachRow', "
                    "{s:String}) ORDER BY replica, t_arrival",
                    {"p": literal, "s": TABLES["request"].structure()},
                )
            for t in ("requests", "probe"):
                st.command(f"OPTIMIZE TABLE {t} FINAL")
            _, rows = st.query(
                "SELECT table, name, type, data_compressed_bytes, data_uncompressed_bytes, "
                "default_kind, compression_codec FROM system.columns "
                "WHERE database = currentDatabase() AND table IN ('requests', 'probe') "
                "ORDER BY table, position"
            )
            _, parts = st.query(
                "SELECT column, any(type), count(), sum(column_data_compressed_bytes), "
                "sum(rows) FROM system.parts_columns WHERE database = currentDatabase() "
                "AND table = 'requests' AND active AND column IN {c:Array(String)} "
                "GROUP BY column ORDER BY column",
                {"c": list(TIMES)},
            )
            _, cnt = st.query(
                "SELECT count(), sum(length(prompt_ids)), sum(length(output_ids)), "
                "sum(length(token_times_s)) FROM requests"
            )
        finally:
            st.close()
    n_rows, in_tok, out_tok, time_tok = (int(x) for x in cnt[0])
    per: dict[str, dict[str, Any]] = {}
    for table, name, typ, comp, raw, kind, codec in rows:
        per[f"{table}.{name}"] = {
            "type": typ + (f" {kind}" if kind else "") + (f" {codec}" if codec else ""),
            "bytes_per_request": comp / n_rows,
            "uncompressed_per_request": raw / n_rows,
        }
    today = sum(v["bytes_per_request"] for k, v in per.items() if k.startswith("requests."))
    layouts = {"today": today}
    for name, swap in BEFORE.items():
        layouts[name] = today + sum(
            per[f"probe.{p}"]["bytes_per_request"] - per[f"probe.{TODAY[c]}"]["bytes_per_request"]
            for c, p in swap.items()
        )
    # Aggregates only (a request whose token arrays and texts sampling dropped).
    layouts["aggregates_only"] = today - sum(
        per[f"requests.{c}"]["bytes_per_request"] for c in (*HEAVY, "prompt_ids_hash")
    )
    # The stored token times column as the parts hold it (system.parts_columns).
    stored_times = {
        f"requests.{col}": {
            "type": typ,
            "parts": int(n_parts),
            "rows": int(n),
            "bytes_per_request": comp / n_rows,
            "bytes_per_token": comp / max(1, time_tok),
        }
        for col, typ, n_parts, comp, n in parts
    }
    tok_cols = {
        f"requests.{c}": per[f"requests.{c}"]["bytes_per_request"] * n_rows / max(1, time_tok)
        for c in TIMES
    }
    tok_cols.update(
        {
            k: per[f"probe.{k}"]["bytes_per_request"] * n_rows / out_tok
            for k, _, _ in PROBE
            if k.startswith(("tt_", "oid_"))
        }
    )
    tok_cols.update(
        {
            k: per[f"probe.{k}"]["bytes_per_request"] * n_rows / in_tok
            for k, _, _ in PROBE
            if k.startswith("pid_")
        }
    )
    return {
        "records": n_rows,
        "prompt_tokens_per_request": in_tok / n_rows,
        "output_tokens_per_request": out_tok / n_rows,
        "jsonl_bytes_per_request": jsonl_bytes / n_rows,
        "columns": per,
        "bytes_per_token": tok_cols,
        "stored_token_times": stored_times,
        "layouts_bytes_per_request": layouts,
        "today": TODAY,
        "before": BEFORE,
    }


def capacity(
    res: dict[str, Any], replicas: int, rps: float, node_mb_s: float, sample: float
) -> dict[str, Any]:
    """Bytes/day, MB/s and ingest nodes for ``replicas`` × ``rps`` records/s, per layout,
    and with ``sample`` of the requests keeping their token arrays and texts (the rest
    aggregates only, ``INFDEBUG_TRACE_SAMPLE``) on today's layout."""
    per_s = replicas * rps
    lay = dict(res["layouts_bytes_per_request"])
    lay["today_sampled"] = lay["today"] * sample + lay["aggregates_only"] * (1 - sample)
    out: dict[str, Any] = {"records_per_s": per_s, "trace_sample": sample, "layouts": {}}
    for name, b in lay.items():
        out["layouts"][name] = {
            "bytes_per_request": b,
            "stored_tb_per_day": b * per_s * 86400 / 1e12,
            "stored_mb_per_s": b * per_s / 1e6,
        }
    ingest_mb_s = res["jsonl_bytes_per_request"] * per_s / 1e6
    out["ingest_jsonl_mb_per_s"] = ingest_mb_s
    out["node_ingest_mb_per_s"] = node_mb_s
    out["ingest_nodes"] = int(-(-ingest_mb_s // node_mb_s))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replicas", type=int, default=1000)
    ap.add_argument("--rps", type=float, default=50.0, help="requests/s per replica")
    ap.add_argument(
        "--node-mb-s",
        type=float,
        default=100.0,
        help="JSONL MB/s one ClickHouse node ingests (plan figure; bench/ingest.py measures it)",
    )
    ap.add_argument("--trace-sample", type=float, default=0.05)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = measure(a.records, a.seed)
    res["capacity"] = capacity(res, a.replicas, a.rps, a.node_mb_s, a.trace_sample)
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    print(
        f"{res['records']} records, {res['prompt_tokens_per_request']:.0f} prompt + "
        f"{res['output_tokens_per_request']:.0f} output tokens each, "
        f"{res['jsonl_bytes_per_request']:.0f} B of JSONL each"
    )
    print(f"{'column':40} {'type':48} {'B/request':>10}")
    for k, v in res["columns"].items():
        print(f"{k:40} {v['type'][:48]:48} {v['bytes_per_request']:10.1f}")
    print("bytes per token:")
    for k, v in res["bytes_per_token"].items():
        print(f"  {k:32} {v:6.2f}")
    for k, v in res["stored_token_times"].items():
        print(f"stored {k} ({v['type']}, {v['parts']} part): {v['bytes_per_token']:.2f} B/token")
    for k, v in res["layouts_bytes_per_request"].items():
        print(f"layout {k:16} {v:8.0f} B/request")
    print(json.dumps(res["capacity"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
