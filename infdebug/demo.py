"""The end-to-end fleet demo behind ``make demo`` (and how ``sample_logs/`` is made).

1. make a small checkpoint (a tokenizer trained here, a chat template, weights trained here to
   chat for under a minute, so that clean replicas end their turns and do not loop);
2. start a 3-replica fleet with injected faults (r3, the canary, decodes 1.5× slower and
   encodes its prompts with a doubled BOS);
3. replay a real workload trace (Azure LLM 2023, scaled to this machine) for about a minute;
4. stop the fleet (SIGTERM: every replica flushes its trace), ingest the traces, print stats,
   run the analyzers (the model directory as reference) and print their findings.

    python -m infdebug.demo                       # ~1 minute of load
    python -m infdebug.demo --seconds 20 --out DIR  # traces kept in DIR

Without ``--out`` the traces go to a temporary directory that is removed when the demo
ends (also on an error, Ctrl-C or SIGTERM); they are in the store by then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from infdebug import settings
from infdebug.console import err_console, fmt_seconds, out_console

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TRACE = os.path.join(HERE, "..", "..", "shared", "data", "traces", "azure_llm_2023")


def find_trace(path: str | None) -> str:
    if path:
        return path
    candidates = [
        os.path.join(os.getcwd(), "..", "shared", "data", "traces", "azure_llm_2023"),
        DEFAULT_TRACE,
    ]
    for d in candidates:
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if name.endswith(".csv") and "conv" in name.lower():
                    return os.path.join(d, name)
            for name in sorted(os.listdir(d)):
                if name.endswith(".csv"):
                    return os.path.join(d, name)
    raise SystemExit(
        "no Azure LLM trace found under ../shared/data/traces/azure_llm_2023; pass --trace FILE"
    )


def run_fleet(
    model_dir: str,
    trace_dir: str,
    trace_path: str,
    *,
    seconds: float,
    rate: float,
    injections: list[str],
    deployments: list[str],
    base_port: int,
    sidecars: bool = False,
) -> dict[str, Any]:
    from infdebug.fleet.loadgen import Target, run_load, summarize
    from infdebug.fleet.replicas import Fleet
    from infdebug.fleet.traces import PlannedRequest, plan, read_trace

    trace = read_trace(trace_path)
    with Fleet(
        model_dir,
        3,
        injections=injections,
        deployments=deployments,
        base_port=base_port,
        trace_dir=trace_dir,
        max_model_len=1024,
        extra_args=["--simulate-gpu"],
        sidecars=sidecars,
    ) as fleet:
        urls = fleet.urls
        err_console.print(
            f"fleet up: {', '.join(urls)}; replaying {os.path.basename(trace_path)} "
            f"at ~{rate:g} req/s for {seconds:g}s …",
            highlight=False,
        )

        def schedule(targets: list[Target]) -> list[PlannedRequest]:
            lens = [t.max_model_len for t in targets if t.max_model_len]
            return plan(
                trace,
                duration_s=seconds,
                rate=rate,
                length_scale=0.2,
                max_prompt_tokens=400,
                max_output_tokens=64,
                max_model_len=min(lens) if lens else None,
            )

        run = asyncio.run(
            run_load(
                urls, schedule, policy="round-robin", concurrency=32, drain_s=60, duration_s=seconds
            )
        )
    return summarize(run)


def _analyze(st: Any, model_dir: str) -> None:
    """Every analyzer over what was just ingested, with the served checkpoint's tokenizer and
    chat template as the reference; the findings are stored and printed."""
    from infdebug.analyzers.base import AnalysisContext, analyze
    from infdebug.render import print_findings
    from infdebug.store.findings import store_findings
    from infdebug.text.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    result = analyze(AnalysisContext(store=st, tokenizer=tok, template=tok.chat_template))
    if result.findings:
        store_findings(st, result.findings)
    out_console.print(
        "\n[bold]infdebug analyze[/] (reference: the served checkpoint's tokenizer and template)"
    )
    print_findings(result.findings, result.failed, result.requests or 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=settings.demo_seconds())
    ap.add_argument(
        "--rate",
        type=float,
        default=4.0,
        help="mean requests/s over the fleet (the trace's own burstiness is kept)",
    )
    ap.add_argument("--trace", default=None, help="workload trace (Azure CSV or Mooncake JSONL)")
    ap.add_argument("--out", default=None, help="keep the fleet's trace files here")
    ap.add_argument(
        "--inject",
        action="append",
        default=None,
        metavar="REPLICA:FAULT",
        help="faults (default: r3:slow=1.5 and r3:double-bos)",
    )
    ap.add_argument(
        "--deployment-of",
        action="append",
        default=None,
        metavar="REPLICA=LABEL",
        help="labels (default: r1=stable r2=stable r3=canary)",
    )
    ap.add_argument("--clean", action="store_true", help="inject no fault (a baseline fleet)")
    ap.add_argument("--base-port", type=int, default=settings.demo_port())
    ap.add_argument("--no-ingest", action="store_true")
    ap.add_argument(
        "--sidecars",
        action="store_true",
        help="run each replica behind an infdebug sidecar, which writes the traces (as on an "
        "engine pod running an engine infdebug cannot change)",
    )
    args = ap.parse_args(argv)

    from infdebug.fleet.traces import read_trace
    from infdebug.render import training_progress
    from infdebug.tracer.engine.make_model import is_trained, make_model

    read_trace(find_trace(args.trace), limit=100)  # a bad trace fails now, not after training
    home = settings.home()
    model_dir = os.path.join(home, "demo", "model")
    if not is_trained(model_dir):  # also remakes a random-weight model an older demo left
        err_console.print(
            f"making a small checkpoint in {model_dir} and training it to chat (under a minute) …"
        )
        with training_progress() as on_step:
            make_model(
                model_dir, preset="small", chat_format="llama3", train_steps=0, on_step=on_step
            )
    with sigterm_as_interrupt(), trace_dir_for(args.out) as trace_dir:
        return _fleet_ingest_analyze(args, home, model_dir, trace_dir)


@contextlib.contextmanager
def trace_dir_for(out: str | None) -> Iterator[str]:
    """The directory the fleet traces into: ``out`` (emptied first, then kept), or a
    temporary one that is removed when the demo ends, however it ends (done, an error,
    Ctrl-C, SIGTERM under ``sigterm_as_interrupt``): the traces are in the store by then."""
    if out:
        if os.path.isdir(out) and os.listdir(out):
            shutil.rmtree(out)
        os.makedirs(out, exist_ok=True)
        yield out
        return
    tmp = tempfile.mkdtemp(prefix="infdebug-demo-traces-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so cleanup runs; restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fleet_ingest_analyze(
    args: argparse.Namespace, home: str, model_dir: str, trace_dir: str
) -> int:
    """Steps 2–4: the fleet under load, then ingest, stats and the analyzers' findings."""
    t0 = time.time()
    err_console.print(
        "watch it live, from another terminal (a store of its own: the demo ingests into "
        f"{home} when the load is done):\n"
        f"  .venv/bin/infdebug --home {os.path.join(home, 'live')} dashboard "
        f"--follow {trace_dir} --model {model_dir}\n"
        "  then open http://127.0.0.1:8501",
        highlight=False,
    )
    summary = run_fleet(
        model_dir,
        trace_dir,
        find_trace(args.trace),
        seconds=args.seconds,
        rate=args.rate,
        injections=[]
        if args.clean
        else (args.inject if args.inject is not None else ["r3:slow=1.5", "r3:double-bos"]),
        deployments=args.deployment_of or ["r1=stable", "r2=stable", "r3=canary"],
        base_port=args.base_port,
        sidecars=args.sidecars,
    )
    tot: dict[str, Any] = summary.get("total") or {}
    kept = "" if args.out else " (temporary: removed when the demo ends; --out DIR keeps them)"
    err_console.print(
        f"load done in {fmt_seconds(time.time() - t0)}: {tot.get('ok', '?')} ok, "
        f"{tot.get('failed', '?')} failed; traces in {trace_dir}{kept}",
        highlight=False,
    )
    if args.no_ingest:
        return 0
    from infdebug.collectors.ingest import ingest_paths
    from infdebug.store import open_store
    from infdebug.store.queries import replica_stats, startup_times

    st = open_store(home=home)
    try:
        rep = ingest_paths(
            st, [trace_dir], rejects_path=os.path.join(home, "rejects", "demo.jsonl")
        )
        out_console.print(
            f"ingested {dict(rep.rows)} from {len(rep.files)} files into {st.description}"
        )
        from infdebug.render import stats_table

        out_console.print(stats_table(replica_stats(st)))
        rows = startup_times(st)
        if rows:
            out_console.print(
                "start-up: " + "; ".join(f"{r} {n} {fmt_seconds(d)}" for r, n, d in rows),
                highlight=False,
            )
        _analyze(st, model_dir)
    finally:
        st.close()
    out_console.print(
        "\nNext:\n"
        "  .venv/bin/infdebug dashboard --model " + model_dir + "   (http://127.0.0.1:8501)\n"
        "  .venv/bin/infdebug stats --deployment canary\n"
        "  .venv/bin/infdebug analyze --json --model " + model_dir + "\n"
        '  .venv/bin/infdebug query "SELECT replica, max(temp_c), '
        "groupUniqArrayArray(throttle_reasons) "
        'FROM gpu_samples GROUP BY replica"\n'
        '  .venv/bin/infdebug query "SELECT replica, name, duration_s FROM events '
        'ORDER BY replica, t"\n'
        "  .venv/bin/infdebug --help",
        highlight=False,
    )
    return 0 if not tot.get("failed") else 1


if __name__ == "__main__":
    sys.exit(main())
