"""Benchmark the tracer's cost to the engine, against OpenTelemetry span-event-per-token tracing.

What it measures (all in one run, on this machine)
--------------------------------------------------
(a) **Engine-thread cost per output token** at batch 8. A loop does exactly what the engine
    thread does for the trace on every step: append each sequence's token ID and time to its
    lists (the columnar buffers the record is built from), call ``hooks.step_tokens``, and,
    every ``--tokens`` steps, ``hooks.finished`` for the 8 finished sequences. Variants:
    ``no tracer`` (the appends alone, ``NoHooks``), ``infdebug tracer`` (the real ``Tracer`` with
    all exporters on: Prometheus, JSONL to a temp dir, OTLP/HTTP spans to a local sink — its
    background thread runs and competes for the GIL during the timed loop), and the named
    baseline ``otel span events`` (one span per request, one ``add_event`` per token, same
    SDK and exporter). ns/token = loop time / tokens. Target: the tracer ≤ 200 ns/token and
    ≥ 25× cheaper than span events.
(b) **Engine decode throughput**, tiny model, batch 8: the same Engine workload (``--requests``
    requests of ``--tokens`` tokens, greedy, EOS ignored, max_batch 8) with hooks off and
    with the replica's tracer and all exporters on, alternated ``--rounds`` times; medians and
    their ratio. Target ≥ 0.99.
(c) **JSONL writer throughput**: ``--records`` contract records of 512 prompt + 256 output
    token IDs and 256 token times, with text and without (as under ``--redact prompts``),
    through ``JsonlExporter`` (encode on the caller, write on the writer thread) until
    ``shutdown()`` has flushed and fsynced them. Target ≥ 50k records/s.

No numbers are asserted here; tests check behaviour, this prints ratios.

    python bench/tracer.py                   # defaults
    python bench/tracer.py --quick           # a smoke run
    python bench/tracer.py --json
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from infdebug.schema import Request
from infdebug.tracer.engine.engine import Engine, EngineConfig, SamplingParams, Sequence
from infdebug.tracer.engine.make_model import make_model
from infdebug.tracer.engine.replica import Replica
from infdebug.tracer.exporters import Exporter
from infdebug.tracer.hooks import EngineHooks, NoHooks
from infdebug.tracer.jsonl import JsonlExporter
from infdebug.tracer.otel import OtelExporter
from infdebug.tracer.prom import PromExporter, ReplicaMetrics
from infdebug.tracer.tracer import ReplicaInfo, Tracer

BATCH = 8


class OtlpSink:
    """A local OTLP/HTTP endpoint that accepts and discards spans."""

    def __init__(self) -> None:
        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- (a) per-token cost on the engine thread ----------------------------------------------
def _new_batch(prompt: list[int], n: int) -> list[Sequence]:
    return [
        Sequence(
            f"b-{i}-{random.getrandbits(40):x}",
            prompt,
            SamplingParams(max_tokens=n),
            _noop,
            frozenset(),
            prompt_text="bench prompt",
            messages=None,
        )
        for i in range(BATCH)
    ]


def _noop(ev: Any) -> None:
    pass


def per_token_loop(hooks: EngineHooks, requests: int, tokens: int) -> tuple[float, int]:
    """Seconds spent doing the engine thread's trace work, and the tokens it covered."""
    prompt = list(range(512))
    batches = [_new_batch(prompt, tokens) for _ in range(requests // BATCH)]
    clock = time.perf_counter
    t_all = 0.0
    for seqs in batches:
        now = clock()
        for s in seqs:
            s.t_scheduled = s.t_prefill_done = now
        t0 = clock()
        for step in range(tokens):
            now = clock()
            for s in seqs:
                s.output_ids.append(step)
                s.token_times.append(now)
            hooks.step_tokens(seqs, now)
        for s in seqs:
            s.finish_reason = "length"
            hooks.finished(s)
        t_all += clock() - t0
    return t_all, len(batches) * BATCH * tokens


def otel_events_loop(otel: OtelExporter, requests: int, tokens: int) -> tuple[float, int]:
    tracer = otel.tracer
    clock = time.perf_counter
    t_all = 0.0
    for _ in range(requests // BATCH):
        t0 = clock()
        spans = [tracer.start_span("request") for _ in range(BATCH)]
        ids: list[list[int]] = [[] for _ in range(BATCH)]
        times: list[list[float]] = [[] for _ in range(BATCH)]
        for step in range(tokens):
            now = clock()
            for i, sp in enumerate(spans):
                ids[i].append(step)
                times[i].append(now)
                sp.add_event("token", {"token_id": step})
        for sp in spans:
            sp.end()
        t_all += clock() - t0
    return t_all, (requests // BATCH) * BATCH * tokens


def bench_per_token(
    tmp: str, sink: OtlpSink, requests: int, tokens: int, repeat: int
) -> dict[str, float]:
    info = ReplicaInfo(replica="bench", model="bench-model", tokenizer_fp="t", template_fp="c")
    res: dict[str, list[float]] = {"no tracer": [], "infdebug tracer": [], "otel span events": []}
    for _ in range(repeat):
        t, n = per_token_loop(NoHooks(), requests, tokens)
        res["no tracer"].append(t / n * 1e9)
        m = ReplicaMetrics("bench", "bench-model")
        exps: list[Exporter] = [
            PromExporter(m),
            JsonlExporter(tmp, replica="bench", on_drop=m.dropped("jsonl")),
            OtelExporter(replica="bench", model="bench-model", endpoint=sink.url),
        ]
        tr = Tracer(info, exps, on_drop=m.dropped("tracer"))
        t, n = per_token_loop(tr, requests, tokens)
        res["infdebug tracer"].append(t / n * 1e9)
        tr.close()
        ot = OtelExporter(replica="bench", model="bench-model", endpoint=sink.url)
        t, n = otel_events_loop(ot, requests, tokens)
        res["otel span events"].append(t / n * 1e9)
        ot.shutdown()
    return {k: statistics.median(v) for k, v in res.items()}


# -- (b) engine throughput ----------------------------------------------------------------
def run_engine(engine: Engine, prompts: list[list[int]], tokens: int) -> float:
    """Output tokens per second for one round of requests through a running engine."""
    done = threading.Event()
    left = [len(prompts)]
    lock = threading.Lock()

    def on_event(ev: Any) -> None:
        if ev.finish_reason is not None:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    for p in prompts:
        engine.submit(p, params, on_event)
    if not done.wait(600):
        raise RuntimeError("the engine did not finish the round in 600 s")
    return len(prompts) * tokens / (time.perf_counter() - t0)


def bench_engine(
    model_dir: str, tmp: str, sink: OtlpSink, requests: int, tokens: int, rounds: int
) -> dict[str, float]:
    rep = Replica(
        model_dir,
        name="bench",
        max_batch=BATCH,
        max_model_len=512,
        device="cpu",
        trace_dir=os.path.join(tmp, "engine-trace"),
        otlp_endpoint=sink.url,
    )
    off = Engine(
        rep.model,
        eos_ids=rep.eos_ids,
        decode_text=lambda ids: rep.tokenizer.decode(ids),
        config=EngineConfig(max_batch=BATCH, max_model_len=512, prefix_cache_blocks=0),
        hooks=NoHooks(),
    )
    on = Engine(
        rep.model,
        eos_ids=rep.eos_ids,
        decode_text=lambda ids: rep.tokenizer.decode(ids),
        config=EngineConfig(max_batch=BATCH, max_model_len=512, prefix_cache_blocks=0),
        hooks=rep.tracer,
    )
    rng = random.Random(0)
    vocab = rep.vocab_size
    off.start()
    on.start()
    r_off: list[float] = []
    r_on: list[float] = []
    try:
        for _ in range(rounds + 1):  # the first round of each is a warm-up
            prompts = [[rng.randrange(4, vocab) for _ in range(32)] for _ in range(requests)]
            r_off.append(run_engine(off, prompts, tokens))
            r_on.append(run_engine(on, prompts, tokens))
    finally:
        off.stop()
        on.stop()
        rep.tracer.close()
    a, b = statistics.median(r_off[1:]), statistics.median(r_on[1:])
    return {"tracer off tok/s": a, "all exporters tok/s": b, "ratio": b / a}


# -- (c) JSONL writer -----------------------------------------------------------------------
def bench_jsonl(tmp: str, records: int, text: bool = True) -> dict[str, float]:
    rng = random.Random(1)
    words = ["the", "fleet", "replica", "token", "latency", "prefill", "decode", "cache"]
    base = [
        Request(
            request_id=f"cmpl-{i:08x}",
            replica="bench",
            t_arrival=1.7e9 + i,
            model="bench-model",
            engine="infdebug",
            tokenizer_fp="tok-fp",
            template_fp="tpl-fp",
            queue_s=0.001,
            prefill_s=0.02,
            ttft_s=0.03,
            e2e_s=2.5,
            token_times_s=[0.03 + k * 0.0097 for k in range(256)],
            prompt_text=" ".join(rng.choice(words) for _ in range(400)) if text else None,
            prompt_ids=[rng.randrange(32000) for _ in range(512)],
            output_text=" ".join(rng.choice(words) for _ in range(200)) if text else None,
            output_ids=[rng.randrange(32000) for _ in range(256)],
            cached_prompt_tokens=256,
            finish_reason="length",
            sampling={"temperature": 0.7, "top_p": 0.95, "max_tokens": 256},
        )
        for i in range(64)
    ]
    d = os.path.join(tmp, "jsonl-text" if text else "jsonl-ids")
    ex = JsonlExporter(d, replica="bench", max_queue=records + 1, max_bytes=None)
    t0 = time.perf_counter()
    for i in range(records):
        ex.export(base[i % 64])
    t_put = time.perf_counter() - t0
    ex.shutdown()
    dt = time.perf_counter() - t0
    size = os.path.getsize(ex.path)
    assert ex.written == records and ex.dropped == 0, (ex.written, ex.dropped)
    return {
        "records/s": records / dt,
        "MB/s": size / dt / 1e6,
        "bytes/record": size / records,
        "export() ns/record": t_put / records * 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model-dir", default=None, help="tiny checkpoint (default: made under a temp dir)"
    )
    ap.add_argument("--requests", type=int, default=64, help="requests per round, (a) and (b)")
    ap.add_argument(
        "--tokens", type=int, default=128, help="output tokens per request, (a) and (b)"
    )
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds, (b)")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions, (a)")
    ap.add_argument("--records", type=int, default=20_000, help="records, (c)")
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.tokens, args.rounds, args.repeat, args.records = 16, 32, 2, 2, 2000
    console = Console(stderr=args.json)
    sink = OtlpSink()
    out: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="infdebug-bench-") as tmp:
        model_dir = args.model_dir or make_model(os.path.join(tmp, "tiny"), preset="tiny")
        with console.status("(a) per-token cost …"):
            out["per_token_ns"] = bench_per_token(
                tmp, sink, args.requests, args.tokens, args.repeat
            )
        with console.status("(b) engine throughput …"):
            out["engine"] = bench_engine(
                model_dir, tmp, sink, args.requests, args.tokens, args.rounds
            )
        with console.status("(c) JSONL writer …"):
            out["jsonl"] = bench_jsonl(tmp, args.records)
            out["jsonl_redacted"] = bench_jsonl(tmp, args.records, text=False)
    sink.close()
    pt = out["per_token_ns"]
    hooks_only = pt["infdebug tracer"] - pt["no tracer"]
    out["summary"] = {
        "tracer ns/token (appends + hooks)": pt["infdebug tracer"],
        "tracer ns/token (hooks only)": hooks_only,
        "otel events / tracer": pt["otel span events"] / pt["infdebug tracer"],
        "engine ratio": out["engine"]["ratio"],
        "jsonl records/s": out["jsonl"]["records/s"],
        "targets met": {
            "(a) <= 200 ns/token": pt["infdebug tracer"] <= 200,
            "(a) >= 25x cheaper than span events": pt["otel span events"] / pt["infdebug tracer"]
            >= 25,
            "(b) ratio >= 0.99": out["engine"]["ratio"] >= 0.99,
            "(c) >= 50k records/s": out["jsonl"]["records/s"] >= 50_000,
        },
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    t = Table(
        title=(
            f"infdebug tracer cost · batch {BATCH} · "
            f"{args.requests} requests × {args.tokens} tokens"
        )
    )
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("vs baseline", justify="right")
    t.add_column("target")
    t.add_row("(a) no tracer: engine appends, ns/token", f"{pt['no tracer']:.0f}", "", "")
    t.add_row(
        "(a) infdebug tracer, ns/token",
        f"{pt['infdebug tracer']:.0f}",
        f"{pt['otel span events'] / pt['infdebug tracer']:.1f}× cheaper",
        "≤ 200 ns, ≥ 25×",
    )
    t.add_row("(a)   of which hooks, ns/token", f"{hooks_only:.0f}", "", "")
    t.add_row(
        "(a) otel span event per token, ns/token [baseline]",
        f"{pt['otel span events']:.0f}",
        "1.0×",
        "",
    )
    e = out["engine"]
    t.add_row(
        "(b) engine decode, tracer off, tok/s [baseline]",
        f"{e['tracer off tok/s']:.0f}",
        "1.000",
        "",
    )
    t.add_row(
        "(b) engine decode, all exporters on, tok/s",
        f"{e['all exporters tok/s']:.0f}",
        f"{e['ratio']:.3f}",
        "≥ 0.99",
    )
    j = out["jsonl"]
    t.add_row(
        "(c) JSONL writer, records/s (512+256 tokens)",
        f"{j['records/s']:.0f}",
        f"{j['MB/s']:.0f} MB/s, {j['bytes/record']:.0f} B/rec",
        "≥ 50k",
    )
    j = out["jsonl_redacted"]
    t.add_row(
        "(c) same, --redact prompts (no text), records/s",
        f"{j['records/s']:.0f}",
        f"{j['MB/s']:.0f} MB/s, {j['bytes/record']:.0f} B/rec",
        "≥ 50k",
    )
    console.print(t)
    met = out["summary"]["targets met"]
    console.print("targets: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in met.items()))


if __name__ == "__main__":
    main()
