"""Benchmark ``infdebug diff BASELINE CANDIDATE --json`` on two large contract logs, against
the path a user would otherwise take (ingest both, then analyze), and the vLLM-log ingest rate.

What it measures
----------------
Two contract JSONL logs of ``request`` records of about ``--mb`` MB each (default 1000 MB,
~100k requests each) are generated under ``bench/out/diff-<mb>/`` (reused when present):
512 prompt and 256 output token IDs, prompt and output text, 256 token times, queue/TTFT/e2e,
greedy sampling (``{"temperature": 0, "max_tokens": 256}``), replicas r0..r7. The baseline is
deployment ``stable``; the candidate (``canary``) has the same prompts and outputs, half under
the same request IDs and half under new ones (so pairing by prompt hash is exercised), and
replica r3's inter-token times 1.3x.

Each repeat (``--repeat``, default 3; medians reported) runs, each command a fresh process
whose peak RSS is read from ``os.wait4``:

- ``diff``: ``infdebug diff BASE CAND --json``; its ``seconds`` object splits the time into
  read, pair, analyze and sections; ``other`` is the wall time less those (interpreter start,
  imports, the temporary store, rendering the JSON);
- ``ingest+analyze``: ``infdebug --home TMP ingest BASE``, ``… ingest CAND`` and
  ``… analyze --json`` in a fresh TMP; wall is the sum, peak RSS the largest of the three.

It reports wall seconds (median, min), peak RSS in MB, the ratio ingest+analyze / diff, and
checks the issue's target (diff <= 10 s and <= 2 GB RSS on 2 cores).

Unless ``--skip-vllm``, it also generates a vLLM request log of about ``--vllm-mb`` MB
(default 200; ``Received request …: params: SamplingParams(…)`` INFO lines with their
``Request … details: prompt: …, prompt_token_ids: […]`` lines, as vLLM >= 0.11.2 writes them)
and times ``infdebug ingest`` of it into a fresh store: MB/s and requests/s, the rate of the
path that converts another format in Python on the way.

Reproduce
---------
    python bench/diff.py                                   # 2 x ~1 GB, 3 repeats, 200 MB vLLM
    python bench/diff.py --mb 50 --repeat 1 --vllm-mb 20   # quick
    python bench/diff.py --skip-vllm --json > out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
OUT_DIR = os.path.join(BENCH_DIR, "out")
sys.path.insert(0, BENCH_DIR)

from ingest_data import TextPool, zipf_token_ids  # noqa: E402 - bench/ is not a package

PROMPT_TOKENS = 512
OUTPUT_TOKENS = 256
REPLICAS = tuple(f"r{i}" for i in range(8))
SLOW_REPLICA = 3
SLOW_FACTOR = 1.3
SAMPLING = {"temperature": 0, "max_tokens": OUTPUT_TOKENS}
BATCH = 2000
VLLM_BATCH = 500
T0 = 1_790_000_000.0
INFDEBUG = os.path.join(os.path.dirname(sys.executable), "infdebug")
TARGET_S, TARGET_RSS_MB = 10.0, 2048.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------------


def _batch(rng: np.random.Generator, pool: TextPool, first: int, n: int) -> tuple[bytes, bytes]:
    """Requests ``first`` .. ``first + n``: the baseline's and the candidate's, as JSONL."""
    from infdebug.schema import Request, encode_records

    arrivals = np.round(T0 + 0.02 * first + np.cumsum(rng.exponential(0.02, size=n)), 6)
    queue_s = np.round(rng.exponential(0.01, size=n), 6)
    ttft = queue_s + PROMPT_TOKENS / rng.lognormal(np.log(20_000), 0.3, size=n)
    gaps = rng.gamma(6.0, 0.0025, size=(n, OUTPUT_TOKENS - 1))  # ~15 ms per token
    prompt_ids = zipf_token_ids(rng, (n, PROMPT_TOKENS))
    prompt_ids[:, 0] = 1
    prompt_ids[:, 1] = 3 + (first + np.arange(n)) % 30_000  # every prompt its own
    prompt_ids[:, 2] = 3 + (first + np.arange(n)) // 30_000
    output_ids = zipf_token_ids(rng, (n, OUTPUT_TOKENS))
    prompts = [f"[{first + i}] {t}" for i, t in enumerate(pool.slices(rng, n, 2048))]
    outputs = pool.slices(rng, n, 1024)
    b_rep = rng.integers(0, len(REPLICAS), size=n)
    c_rep = rng.integers(0, len(REPLICAS), size=n)

    def side(rep: np.ndarray, slow: bool, label: str) -> bytes:
        g = gaps * np.where(rep == SLOW_REPLICA, SLOW_FACTOR, 1.0)[:, None] if slow else gaps
        times = np.empty((n, OUTPUT_TOKENS))
        times[:, 0] = ttft
        times[:, 1:] = ttft[:, None] + np.cumsum(g, axis=1)
        times = np.round(times, 6)
        e2e = np.round(times[:, -1] + 0.001, 6)
        recs = []
        for i, (ta, q, tt, e, tts, pids, oids, r) in enumerate(
            zip(
                arrivals.tolist(),
                queue_s.tolist(),
                np.round(ttft, 6).tolist(),
                e2e.tolist(),
                times.tolist(),
                prompt_ids.tolist(),
                output_ids.tolist(),
                rep.tolist(),
                strict=True,
            )
        ):
            k = first + i
            rid = f"req-{k:09d}" if not slow or k % 2 == 0 else f"cand-{k:09d}"
            recs.append(
                Request(
                    request_id=rid,
                    replica=REPLICAS[r],
                    deployment=label,
                    model="bench-8b",
                    engine="vllm",
                    engine_version="0.11.2" if slow else "0.11.1",
                    t_arrival=ta,
                    queue_s=q,
                    ttft_s=tt,
                    e2e_s=e,
                    token_times_s=tts,
                    prompt_text=prompts[i],
                    prompt_ids=pids,
                    output_text=outputs[i],
                    output_ids=oids,
                    finish_reason="length",
                    sampling=SAMPLING,
                )
            )
        return encode_records(recs)

    return side(b_rep, False, "stable"), side(c_rep, True, "canary")


def contract_logs(mb: int) -> tuple[str, str, int]:
    """``(baseline, candidate, requests per side)``, generated unless cached."""
    d = os.path.join(OUT_DIR, f"diff-{mb}")
    base, cand, meta = (os.path.join(d, n) for n in ("baseline.jsonl", "candidate.jsonl", "n"))
    if os.path.exists(meta) and os.path.exists(base) and os.path.exists(cand):
        with open(meta) as fh:
            n = int(fh.read())
        log(f"reusing {d} ({n:,} requests a side)")
        return base, cand, n
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = TextPool(rng)
    probe, _ = _batch(rng, pool, 0, 100)
    n = max(BATCH, round(mb * 1e6 / (len(probe) / 100) / BATCH) * BATCH)
    log(f"generating {d}: {n:,} requests a side …")
    t = time.perf_counter()
    with open(base + ".partial", "wb") as fb, open(cand + ".partial", "wb") as fc:
        for first in range(0, n, BATCH):
            b, c = _batch(rng, pool, first, min(BATCH, n - first))
            fb.write(b)
            fc.write(c)
    os.replace(base + ".partial", base)
    os.replace(cand + ".partial", cand)
    with open(meta, "w") as fh:
        fh.write(str(n))
    log(f"  generated in {time.perf_counter() - t:.1f} s")
    return base, cand, n


def _sp(seed: int | None) -> str:
    # vllm/sampling_params.py SamplingParams.__repr__ at v0.11.2 (as tests/test_readers_real.py)
    p: dict[str, Any] = {
        "n": 1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "seed": seed,
        "stop": [],
        "stop_token_ids": [2],
        "bad_words": [],
        "include_stop_str_in_output": False,
        "ignore_eos": False,
        "max_tokens": OUTPUT_TOKENS,
        "min_tokens": 0,
        "logprobs": None,
        "prompt_logprobs": None,
        "skip_special_tokens": True,
        "spaces_between_special_tokens": True,
        "truncate_prompt_tokens": None,
        "structured_outputs": None,
        "extra_args": None,
    }
    return "SamplingParams(" + ", ".join(f"{k}={v!r}" for k, v in p.items()) + ")"


def vllm_log(mb: int) -> tuple[str, int]:
    """A vLLM >= 0.11.2 request log (details + Received lines) of about ``mb`` MB."""
    d = os.path.join(OUT_DIR, f"diff-vllm-{mb}")
    path, meta = os.path.join(d, "vllm.log"), os.path.join(d, "n")
    if os.path.exists(meta) and os.path.exists(path):
        with open(meta) as fh:
            n = int(fh.read())
        log(f"reusing {path} ({n:,} requests)")
        return path, n
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(1)
    pool = TextPool(rng)
    t = time.perf_counter()
    written, n = 0, 0
    head = (
        "(APIServer pid=1) INFO 11-20 00:00:00 [api_server.py:1839] vLLM API server version "
        "0.11.2\n(APIServer pid=1) INFO 11-20 00:00:00 [utils.py:233] non-default args: "
        "{'model_tag': 'bench/bench-8b', 'model': 'bench/bench-8b'}\n"
    )
    with open(path + ".partial", "w") as fh:
        fh.write(head)
        while written < mb * 1e6:
            ids = zipf_token_ids(rng, (VLLM_BATCH, PROMPT_TOKENS)).tolist()
            texts = pool.slices(rng, VLLM_BATCH, 2048)
            lines = []
            for i in range(VLLM_BATCH):
                k = n + i
                s = int(k * 0.05)
                ts = f"11-20 {s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
                rid = f"chatcmpl-{k:012x}"
                prompt = f"<|im_start|>user\n[{k}] {texts[i]}<|im_end|>\n<|im_start|>assistant\n"
                lines.append(
                    f"(APIServer pid=1) DEBUG {ts} [logger.py:47] Request {rid} details: "
                    f"prompt: {prompt!r}, prompt_token_ids: {ids[i]}, prompt_embeds shape: None.\n"
                    f"(APIServer pid=1) INFO {ts} [logger.py:56] Received request {rid}: "
                    f"params: {_sp(k)}, lora_request: None.\n"
                )
            chunk = "".join(lines)
            fh.write(chunk)
            written += len(chunk)
            n += VLLM_BATCH
    os.replace(path + ".partial", path)
    with open(meta, "w") as fh:
        fh.write(str(n))
    log(f"generated {path}: {n:,} requests in {time.perf_counter() - t:.1f} s")
    return path, n


# --- runs ------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    drop = ("INFDEBUG_CLICKHOUSE_URL", "INFDEBUG_HOME")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(cmd: list[str], ok: tuple[int, ...] = (0, 1)) -> tuple[float, float, str]:
    """``(wall s, peak RSS MB, stdout)`` of ``cmd`` in a fresh process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=_env())
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode()
        if p.returncode not in ok:
            raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{err.read().decode()[-4000:]}")
    return wall, ru.ru_maxrss / 1024, stdout


def run_diff(base: str, cand: str) -> dict[str, Any]:
    wall, rss, out = _run([INFDEBUG, "diff", base, cand, "--json"])
    doc = json.loads(out)
    sec = {k: float(v) for k, v in doc["seconds"].items() if k != "render"}
    sec["other"] = wall - sum(sec.values())
    pairing = doc.get("pairing")
    return {"wall": wall, "rss": rss, "seconds": sec, "pairing": pairing, "doc": doc}


def run_ingest_analyze(base: str, cand: str) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="infdebug-bench-diff-")
    try:
        parts: dict[str, float] = {}
        rss = 0.0
        for name, args in (
            ("ingest_base", ["ingest", base]),
            ("ingest_cand", ["ingest", cand]),
            ("analyze", ["analyze", "--json"]),
        ):
            w, r, _ = _run([INFDEBUG, "--home", home, *args], ok=(0, 1, 3))
            parts[name] = w
            rss = max(rss, r)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"wall": sum(parts.values()), "rss": rss, "seconds": parts}


def run_vllm(path: str) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="infdebug-bench-vllm-")
    try:
        wall, rss, _ = _run([INFDEBUG, "--home", home, "ingest", path], ok=(0, 3))
        _, _, out = _run(
            [INFDEBUG, "--home", home, "query", "--json", "SELECT count() AS n FROM requests"]
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"wall": wall, "rss": rss, "loaded": _count(out)}


def _count(out: str) -> int | None:
    try:
        doc = json.loads(out)
    except ValueError:
        return None
    rows = doc.get("rows", doc) if isinstance(doc, dict) else doc
    if isinstance(rows, list) and rows:
        row = rows[0]
        return int(row["n"] if isinstance(row, dict) else row[0])
    return None


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall"] for r in runs]
    keys = runs[0]["seconds"].keys() if "seconds" in runs[0] else ()
    return {
        "wall_s": {"median": statistics.median(walls), "min": min(walls)},
        "peak_rss_mb": max(r["rss"] for r in runs),
        "seconds": {k: statistics.median(r["seconds"][k] for r in runs) for k in keys},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mb", type=int, default=1000, help="size of each side's log (MB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vllm-mb", type=int, default=200, help="size of the vLLM log (MB)")
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    base, cand, n = contract_logs(args.mb)
    size_mb = (os.path.getsize(base) + os.path.getsize(cand)) / 1e6
    diffs, users = [], []
    for i in range(args.repeat):
        log(f"repeat {i + 1}/{args.repeat}: diff …")
        diffs.append(run_diff(base, cand))
        log(f"repeat {i + 1}/{args.repeat}: ingest + ingest + analyze …")
        users.append(run_ingest_analyze(base, cand))
    d, u = _summary(diffs), _summary(users)
    last = diffs[-1]["doc"]
    result: dict[str, Any] = {
        "cores": os.cpu_count(),
        "requests_per_side": n,
        "input_mb": size_mb,
        "repeat": args.repeat,
        "diff": d,
        "ingest_analyze": u,
        "ratio": u["wall_s"]["median"] / d["wall_s"]["median"],
        "pairing": diffs[-1]["pairing"],
        "changed": [str(f.get("summary") or f.get("kind"))[:160] for f in last.get("findings", [])][
            :10
        ],
        "target_met": d["wall_s"]["median"] <= TARGET_S and d["peak_rss_mb"] <= TARGET_RSS_MB,
    }
    if not args.skip_vllm:
        vpath, vn = vllm_log(args.vllm_mb)
        vmb = os.path.getsize(vpath) / 1e6
        vr = []
        for i in range(args.repeat):
            log(f"repeat {i + 1}/{args.repeat}: ingest vLLM log …")
            vr.append(run_vllm(vpath))
        walls = [r["wall"] for r in vr]
        med = statistics.median(walls)
        result["vllm_ingest"] = {
            "mb": vmb,
            "requests": vn,
            "loaded": vr[-1]["loaded"],
            "wall_s": {"median": med, "min": min(walls)},
            "mb_per_s": vmb / med,
            "requests_per_s": vn / med,
            "peak_rss_mb": max(r["rss"] for r in vr),
        }

    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"\n2 x {n:,} requests ({size_mb:,.0f} MB in all), {os.cpu_count()} cores, "
        f"{args.repeat} repeat(s)"
    )
    print(f"{'path':<18}{'median s':>10}{'min s':>10}{'peak RSS MB':>13}")
    for name, s in (("diff", d), ("ingest+analyze", u)):
        w = s["wall_s"]
        print(f"{name:<18}{w['median']:>10.2f}{w['min']:>10.2f}{s['peak_rss_mb']:>13.0f}")
    print("diff split (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in d["seconds"].items()))
    print(
        "ingest+analyze split (median s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in u["seconds"].items())
    )
    print(f"ratio ingest+analyze / diff: {result['ratio']:.2f}x")
    if result["pairing"] is not None:
        print(f"pairing: {json.dumps(result['pairing'])[:300]}")
    for line in result["changed"][:5]:
        print(f"  changed: {line}")
    verdict = "met" if result["target_met"] else "NOT met"
    print(f"target (diff <= {TARGET_S:.0f} s, <= {TARGET_RSS_MB / 1024:.0f} GB RSS): {verdict}")
    if "vllm_ingest" in result:
        v = result["vllm_ingest"]
        print(
            f"vLLM log ingest: {v['mb']:.0f} MB, {v['requests']:,} requests "
            f"(loaded {v['loaded']}): {v['wall_s']['median']:.2f} s median, "
            f"{v['mb_per_s']:.1f} MB/s, {v['requests_per_s']:,.0f} req/s, "
            f"peak RSS {v['peak_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
