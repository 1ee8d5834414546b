"""TTFT and inter-token latency of `infdebug serve` under a steady load of streaming clients.

A server (the real Starlette app under uvicorn, on 127.0.0.1) serves the benchmark's
``small`` checkpoint; ``--clients`` concurrent clients each send streaming chat completions
back to back for ``--duration`` seconds (httpx, SSE). Latencies are measured at the client:
TTFT from sending the request to the first content token, inter-token latency between
consecutive token chunks. Reports p50/p99 of each and the token throughput.

    python bench/engine_load.py                       # 8 clients, 20 s
    python bench/engine_load.py --clients 16 --duration 30 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import threading
import time
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL_DIR = os.path.join(BENCH_DIR, "out", "engine-small")
QUESTIONS = [
    "Explain how a key-value cache speeds up decoding.",
    "Write a short poem about a lighthouse keeper.",
    "List three causes of latency spikes in a web service.",
    "Summarize the difference between a process and a thread.",
]


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _client(
    url: str, model: str, stop_at: float, max_tokens: int, seed: int, out: dict[str, list[float]]
) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=120) as http:
        i = seed
        while time.perf_counter() < stop_at:
            body = {
                "model": model,
                "stream": True,
                "max_tokens": max_tokens,
                "temperature": 0.7,
                "seed": i,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "ignore_eos": True,
            }
            i += 1
            t0 = time.perf_counter()
            last = None
            async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    ch = json.loads(line[6:])["choices"]
                    if not ch or ch[0].get("delta", {}).get("role"):
                        continue  # the usage chunk, or the role chunk that precedes any token
                    now = time.perf_counter()  # infdebug streams one chunk per generated token
                    if last is None:
                        out["ttft"].append(now - t0)
                    else:
                        out["itl"].append(now - last)
                    out["tokens"].append(1.0)
                    last = now
            out["requests"].append(time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import uvicorn

    from infdebug.tracer.engine.make_model import make_model
    from infdebug.tracer.engine.replica import Replica
    from infdebug.tracer.engine.server import App

    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        make_model(args.model_dir, preset="small")
    rep = Replica(args.model_dir, name="bench", max_batch=max(args.clients, 1), max_model_len=512)
    rep.start()
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(App(rep).app, host="127.0.0.1", port=port, log_level="warning")
    )
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    out: dict[str, list[float]] = {"ttft": [], "itl": [], "tokens": [], "requests": []}
    url = f"http://127.0.0.1:{port}"

    async def run() -> None:
        stop_at = time.perf_counter() + args.duration
        await asyncio.gather(
            *(
                _client(url, rep.model_name, stop_at, args.max_tokens, k * 1000, out)
                for k in range(args.clients)
            )
        )

    t0 = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - t0
    server.should_exit = True
    th.join(timeout=10)
    rep.stop()
    res: dict[str, Any] = {
        "clients": args.clients,
        "duration_s": round(wall, 2),
        "requests": len(out["requests"]),
        "tokens_per_s": round(len(out["tokens"]) / wall, 1),
        "ttft_ms": {
            "p50": round(_pct(out["ttft"], 0.5) * 1e3, 2),
            "p99": round(_pct(out["ttft"], 0.99) * 1e3, 2),
        },
        "itl_ms": {
            "p50": round(_pct(out["itl"], 0.5) * 1e3, 2),
            "p99": round(_pct(out["itl"], 0.99) * 1e3, 2),
        },
        "e2e_ms_p50": round(statistics.median(out["requests"]) * 1e3, 1)
        if out["requests"]
        else None,
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{args.clients} streaming clients for {wall:.1f}s: {res['requests']} requests, "
            f"{res['tokens_per_s']} tokens/s; "
            f"TTFT p50 {res['ttft_ms']['p50']} ms p99 {res['ttft_ms']['p99']} ms; "
            f"inter-token p50 {res['itl_ms']['p50']} ms p99 {res['itl_ms']['p99']} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
