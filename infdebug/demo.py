"""The end-to-end fleet demo behind ``make demo`` (and how ``sample_logs/`` is made).

1. make a small checkpoint (random weights, a tokenizer trained here, a chat template);
2. start a 3-replica fleet with injected faults (r3, the canary, decodes 1.5× slower and
   encodes its prompts with a doubled BOS);
3. replay a real workload trace (Azure LLM 2023, scaled to this machine) for about a minute;
4. stop the fleet (SIGTERM: every replica flushes its trace), ingest the traces, print stats,
   run the analyzers (the model directory as reference) and print their findings.

    python -m infdebug.demo                       # ~1 minute of load
    python -m infdebug.demo --seconds 20 --out DIR  # traces kept in DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from infdebug.console import err_console, out_console

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TRACE = os.path.join(HERE, "..", "..", "shared", "data", "traces", "azure_llm_2023")


def find_trace(path: str | None) -> str:
    if path:
        return path
    candidates = [os.path.join(os.getcwd(), "..", "shared", "data", "traces", "azure_llm_2023"), DEFAULT_TRACE]
    for d in candidates:
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if name.endswith(".csv") and "conv" in name.lower():
                    return os.path.join(d, name)
            for name in sorted(os.listdir(d)):
                if name.endswith(".csv"):
                    return os.path.join(d, name)
    raise SystemExit("no Azure LLM trace found under ../shared/data/traces/azure_llm_2023; pass --trace FILE")


def run_fleet(model_dir: str, trace_dir: str, trace_path: str, *, seconds: float, rate: float,
              injections: list[str], deployments: list[str], base_port: int) -> dict[str, Any]:
    from infdebug.fleet import Fleet
    from infdebug.loadgen import Target, run_load, summarize
    from infdebug.traces import PlannedRequest, plan, read_trace

    trace = read_trace(trace_path)
    with Fleet(model_dir, 3, injections=injections, deployments=deployments, base_port=base_port,
               trace_dir=trace_dir, max_model_len=1024, extra_args=["--simulate-gpu"]) as fleet:
        urls = fleet.urls
        err_console.print(f"fleet up: {', '.join(urls)}; replaying {os.path.basename(trace_path)} "
                          f"at ~{rate:g} req/s for {seconds:g}s …", highlight=False)

        def schedule(targets: list[Target]) -> list[PlannedRequest]:
            lens = [t.max_model_len for t in targets if t.max_model_len]
            return plan(trace, duration_s=seconds, rate=rate, length_scale=0.2, max_prompt_tokens=400,
                        max_output_tokens=64, max_model_len=min(lens) if lens else None)

        run = asyncio.run(run_load(urls, schedule, policy="round-robin", concurrency=32, drain_s=60))
    return summarize(run)


def _analyze(st: Any, model_dir: str) -> None:
    """Every analyzer over what was just ingested, with the served checkpoint's tokenizer and
    chat template as the reference; the findings are stored and printed."""
    from infdebug.analyzers.base import AnalysisContext, run_all
    from infdebug.cli_analyze import print_findings
    from infdebug.store.findings import store_findings
    from infdebug.store.q_outputs import count_requests
    from infdebug.text.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    ctx = AnalysisContext(store=st, tokenizer=tok, template=tok.chat_template)
    findings, failed = run_all(ctx)
    if findings:
        store_findings(st, findings)
    out_console.print("\n[bold]infdebug analyze[/] (reference: the served checkpoint's tokenizer and template)")
    print_findings(findings, failed, count_requests(st, ctx.window()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("INFDEBUG_DEMO_SECONDS", "60")))
    ap.add_argument("--rate", type=float, default=4.0,
                    help="mean requests/s over the fleet (the trace's own burstiness is kept)")
    ap.add_argument("--trace", default=None, help="workload trace (Azure CSV or Mooncake JSONL)")
    ap.add_argument("--out", default=None, help="keep the fleet's trace files here")
    ap.add_argument("--inject", action="append", default=None, metavar="REPLICA:FAULT",
                    help="faults (default: r3:slow=1.5 and r3:double-bos)")
    ap.add_argument("--deployment-of", action="append", default=None, metavar="REPLICA=LABEL",
                    help="labels (default: r1=stable r2=stable r3=canary)")
    ap.add_argument("--clean", action="store_true", help="inject no fault (a baseline fleet)")
    ap.add_argument("--base-port", type=int, default=int(os.environ.get("INFDEBUG_DEMO_PORT", "8100")))
    ap.add_argument("--no-ingest", action="store_true")
    args = ap.parse_args(argv)

    from infdebug.tracer.engine.make_model import make_model

    home = os.environ.get("INFDEBUG_HOME") or os.path.join(os.getcwd(), ".infdebug")
    model_dir = os.path.join(home, "demo", "model")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        err_console.print(f"making a small checkpoint in {model_dir} …")
        make_model(model_dir, preset="small", chat_format="llama3")
    trace_dir = args.out or tempfile.mkdtemp(prefix="infdebug-demo-traces-")
    if args.out and os.path.isdir(trace_dir) and os.listdir(trace_dir):
        shutil.rmtree(trace_dir)
    os.makedirs(trace_dir, exist_ok=True)
    t0 = time.time()
    summary = run_fleet(model_dir, trace_dir, find_trace(args.trace), seconds=args.seconds, rate=args.rate,
                        injections=[] if args.clean else (args.inject if args.inject is not None else ["r3:slow=1.5", "r3:double-bos"]),
                        deployments=args.deployment_of or ["r1=stable", "r2=stable", "r3=canary"],
                        base_port=args.base_port)
    tot: dict[str, Any] = summary.get("total") or {}
    err_console.print(f"load done in {time.time() - t0:.0f}s: {tot.get('ok', '?')} ok, {tot.get('failed', '?')} failed; "
                      f"traces in {trace_dir}", highlight=False)
    if args.no_ingest:
        return 0
    from infdebug.collectors.ingest import ingest_paths
    from infdebug.store import open_store
    from infdebug.store.queries import replica_stats

    st = open_store(home=home)
    try:
        rep = ingest_paths(st, [trace_dir], rejects_path=os.path.join(home, "rejects", "demo.jsonl"))
        out_console.print(f"ingested {dict(rep.rows)} from {len(rep.files)} files into {st.description}")
        from infdebug.cli import stats_table

        out_console.print(stats_table(replica_stats(st)))
        _, rows = st.query(
            "SELECT replica, name, round(duration_s, 3) FROM events WHERE name IN ('weights_loaded', 'ready') "
            "ORDER BY replica, t"
        )
        if rows:
            out_console.print("start-up (s): " + "; ".join(f"{r} {n} {d}" for r, n, d in rows), highlight=False)
        _analyze(st, model_dir)
    finally:
        st.close()
    out_console.print(
        "\nNext:\n"
        "  .venv/bin/infdebug stats --deployment canary\n"
        "  .venv/bin/infdebug analyze --json --model " + model_dir + "\n"
        "  .venv/bin/infdebug query \"SELECT replica, max(temp_c), groupUniqArrayArray(throttle_reasons) "
        "FROM gpu_samples GROUP BY replica\"\n"
        "  .venv/bin/infdebug query \"SELECT replica, name, duration_s FROM events ORDER BY replica, t\"\n"
        "  .venv/bin/infdebug --help",
        highlight=False,
    )
    return 0 if not tot.get("failed") else 1


if __name__ == "__main__":
    sys.exit(main())
