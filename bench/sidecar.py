"""Benchmark the sidecar's overhead: ``infdebug serve`` direct against the same server through
``infdebug sidecar``, side by side in one run.

What it measures
----------------
One ``infdebug serve`` (a ``make-model`` checkpoint, ``--preset``) and one ``infdebug sidecar``
in front of it (with ``--model-dir`` and ``--trace-dir``: the full tracing path), each a
separate process. ``--clients`` concurrent streaming clients (default 64) send chat requests
(``max_tokens`` ``--tokens``, greedy) until ``--requests`` are done; the phases alternate
direct / through the sidecar ``--repeat`` times (default 3) so drift hits both alike.

Per phase: per-request end-to-end and TTFT (client side, first content chunk), their p50,
and throughput (requests/s over the phase). Reported: p50 added latency per request and
TTFT p50 added (sidecar − direct, medians over repeats), throughput ratio (sidecar / direct),
and the sidecar's CPU per request (its process's utime+stime over the phase, from /proc).
The issue's targets: added p50 ≤ 1 ms, TTFT p50 added ≤ 1 ms, throughput ≥ 95% of direct.

Reproduce
---------
    python bench/sidecar.py                       # 64 clients, 512 requests a phase, 3 repeats
    python bench/sidecar.py --clients 16 --requests 128 --repeat 1 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, os.path.join(REPO, "tests"))

from serveproc import free_port  # noqa: E402 - tests/ is not a package


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _wait(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{what} did not start")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, float]:
    t0 = time.perf_counter()
    ttft = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if ttft is None and line.startswith("data: ") and '"content": "' in line:
                ttft = time.perf_counter() - t0
    e2e = time.perf_counter() - t0
    return e2e, ttft if ttft is not None else e2e


async def _phase(url: str, clients: int, n: int, tokens: int) -> dict[str, Any]:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": "Tell me a story about a lighthouse."}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    done: list[tuple[float, float]] = []
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def worker() -> None:
            for _ in todo:
                done.append(await _one(client, url, body))

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t
    e2e = sorted(x[0] for x in done)
    ttft = sorted(x[1] for x in done)
    return {
        "e2e_p50": statistics.median(e2e),
        "ttft_p50": statistics.median(ttft),
        "rps": len(done) / wall,
        "wall": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from infdebug.tracer.engine.make_model import make_model

    tmp = tempfile.mkdtemp(prefix="infdebug-bench-sidecar-")
    model = make_model(os.path.join(tmp, "bench"), preset=args.preset)
    exe = [sys.executable, "-m", "infdebug.cli"]
    up_port, sc_port = free_port(), free_port()
    up = subprocess.Popen(
        [*exe, "serve", "--model", model, "--port", str(up_port), "--device", "cpu",
         "--max-batch", str(args.clients), "--served-model-name", "bench"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    sc = subprocess.Popen(
        [*exe, "sidecar", "--upstream", f"http://127.0.0.1:{up_port}", "--listen",
         f"127.0.0.1:{sc_port}", "--replica", "bench", "--model-dir", model,
         "--trace-dir", os.path.join(tmp, "traces")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    direct, via = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{sc_port}"
    try:
        _wait(direct + "/health", up, "infdebug serve")
        _wait(via + "/infdebug/health", sc, "infdebug sidecar")
        asyncio.run(_phase(via, args.clients, args.clients, args.tokens))  # warm both paths
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "sidecar": []}
        cpu: list[float] = []
        for i in range(args.repeat):
            for name, url in (("direct", direct), ("sidecar", via)):
                log(f"repeat {i + 1}/{args.repeat}: {name} …")
                c0 = _cpu_s(sc.pid)
                runs[name].append(
                    asyncio.run(_phase(url, args.clients, args.requests, args.tokens))
                )
                if name == "sidecar":
                    cpu.append((_cpu_s(sc.pid) - c0) / args.requests)
    finally:
        for p in (sc, up):
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    res = {
        "cores": os.cpu_count(),
        "clients": args.clients,
        "requests_per_phase": args.requests,
        "tokens": args.tokens,
        "repeat": args.repeat,
        "direct": {k: med("direct", k) for k in ("e2e_p50", "ttft_p50", "rps")},
        "sidecar": {k: med("sidecar", k) for k in ("e2e_p50", "ttft_p50", "rps")},
        "added_e2e_p50_ms": 1000 * (med("sidecar", "e2e_p50") - med("direct", "e2e_p50")),
        "added_ttft_p50_ms": 1000 * (med("sidecar", "ttft_p50") - med("direct", "ttft_p50")),
        "throughput_ratio": med("sidecar", "rps") / med("direct", "rps"),
        "sidecar_cpu_ms_per_request": 1000 * statistics.median(cpu),
        "runs": runs,
    }
    res["targets_met"] = (
        res["added_e2e_p50_ms"] <= 1
        and res["added_ttft_p50_ms"] <= 1
        and res["throughput_ratio"] >= 0.95
    )
    if args.json:
        print(json.dumps(res, indent=2))
        return
    d, s = res["direct"], res["sidecar"]
    print(
        f"{args.clients} streaming clients, {args.requests} requests a phase, "
        f"{args.repeat} repeat(s)"
    )
    print(f"{'':10}{'e2e p50 ms':>12}{'TTFT p50 ms':>13}{'req/s':>9}")
    for name, x in (("direct", d), ("sidecar", s)):
        print(f"{name:10}{1000 * x['e2e_p50']:>12.1f}{1000 * x['ttft_p50']:>13.1f}{x['rps']:>9.1f}")
    print(
        f"added p50 {res['added_e2e_p50_ms']:+.2f} ms, TTFT p50 {res['added_ttft_p50_ms']:+.2f} ms,"
        f" throughput {100 * res['throughput_ratio']:.1f}% of direct, sidecar CPU "
        f"{res['sidecar_cpu_ms_per_request']:.2f} ms/request; targets "
        f"{'met' if res['targets_met'] else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
