"""``infdebug fleet`` (N replicas on one machine) and ``infdebug load`` (replay a real
workload trace against them)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import click
from rich.table import Table

from infdebug.cli.options import json_option
from infdebug.console import (
    MISSING,
    err_console,
    fail,
    fmt_ms,
    fmt_number,
    fmt_percent,
    fmt_rate,
    fmt_seconds,
    id_column,
    out_console,
    print_json,
)
from infdebug.tracer.engine.faults import fault_specs


@click.command("fleet")
@click.option("--replicas", default=3, show_default=True, help="How many replicas (named r1..rN).")
@click.option(
    "--model",
    "model_dir",
    required=True,
    metavar="DIR",
    help="A checkpoint directory (infdebug make-model).",
)
@click.option(
    "--inject",
    "injects",
    multiple=True,
    metavar="REPLICA:FAULT",
    help="A fault for one replica, e.g. r2:slow=1.3 or r3:double-bos ('all:' for every one); "
    f"FAULT is one of serve's: {fault_specs()}. Repeatable.",
)
@click.option(
    "--deployment-of",
    "deployments",
    multiple=True,
    metavar="REPLICA=LABEL",
    help="A deployment label for one replica, e.g. r3=canary. Repeatable.",
)
@click.option(
    "--base-port",
    default=8100,
    show_default=True,
    envvar="INFDEBUG_FLEET_BASE_PORT",
    help="Replica rI listens on BASE+I.",
)
@click.option(
    "--trace-dir",
    default="traces",
    show_default=True,
    metavar="DIR",
    envvar="INFDEBUG_TRACE_DIR",
    help="Every replica writes its request JSONL here (one file per replica); logs go to DIR/logs.",
)
@click.option("--max-batch", default=None, type=int, help="Passed to every replica's serve.")
@click.option("--max-model-len", default=None, type=int, help="Passed to every replica's serve.")
@click.option("--device", default=None, help="cpu or cuda, passed to every replica.")
@click.option(
    "--startup-timeout", default=180.0, show_default=True, help="Seconds to wait for every /health."
)
@json_option("Print the replicas as one JSON line once all are ready.")
def fleet_cmd(
    replicas: int,
    model_dir: str,
    injects: tuple[str, ...],
    deployments: tuple[str, ...],
    base_port: int,
    trace_dir: str,
    max_batch: int | None,
    max_model_len: int | None,
    device: str | None,
    startup_timeout: float,
    as_json: bool,
) -> None:
    """Start REPLICAS `infdebug serve` processes of one checkpoint and keep them up until
    Ctrl-C or SIGTERM, then stop them all (SIGTERM; they flush their traces)."""
    from infdebug.fleet.replicas import Fleet, FleetError

    try:
        fleet = Fleet(
            model_dir,
            replicas,
            injections=injects,
            deployments=deployments,
            base_port=base_port,
            trace_dir=trace_dir,
            max_batch=max_batch,
            max_model_len=max_model_len,
            device=device,
            startup_timeout_s=startup_timeout,
        )
    except FleetError as e:
        fail(str(e))

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        if not as_json:
            with err_console.status(f"starting {replicas} replicas of {model_dir} …"):
                fleet.start()
        else:
            fleet.start()
    except FleetError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fleet.stop()
        fail("interrupted while starting; all replicas stopped", code=130)
    info = {"trace_dir": fleet.trace_dir, "log_dir": fleet.log_dir, "replicas": fleet.describe()}
    if as_json:
        print_json(info)
    else:
        t = Table(title=f"fleet: {replicas} replicas of {fleet.model_dir}")
        for col in ("replica", "url"):
            id_column(t, col)
        t.add_column("injected")
        id_column(t, "deployment")
        id_column(t, "pid", justify="right")
        t.add_column("ready", justify="right")
        for r in fleet.replicas:
            t.add_row(
                r.name,
                r.url + "/v1",
                ", ".join(r.injections) or MISSING,
                r.deployment or MISSING,
                str(r.pid),
                fmt_seconds(r.ready_s),
            )
        out_console.print(t)
        out_console.print(f"traces: {fleet.trace_dir}   logs: {fleet.log_dir}", highlight=False)
        urls = " ".join(f"--url {u}" for u in fleet.urls)
        out_console.print(
            f"load it: infdebug load --trace FILE {urls} --rate 2 --duration 60", highlight=False
        )
        out_console.print("Ctrl-C stops every replica.", style="dim")
    reported: set[str] = set()
    code = 0
    try:
        while True:
            for r in fleet.dead():
                if r.name not in reported:
                    reported.add(r.name)
                    err_console.print(
                        f"[bold red]infdebug:[/] replica {r.name} exited with code "
                        f"{r.proc.returncode if r.proc else '?'} (log {r.log_path}):\n"
                        f"{r.stderr_tail()}",
                        highlight=False,
                    )
            if len(reported) == len(fleet.replicas):
                code = 1
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        codes = fleet.stop()
        if not as_json:
            err_console.print(
                "stopped: " + ", ".join(f"{n} (exit {c})" for n, c in codes.items()),
                highlight=False,
            )
    raise SystemExit(code)


@click.command("load")
@click.option(
    "--trace",
    "trace_path",
    required=True,
    metavar="FILE",
    help="Azure LLM 2023 CSV or Mooncake JSONL.",
)
@click.option(
    "--url",
    "urls",
    multiple=True,
    required=True,
    metavar="URL",
    help="A replica's base URL. Repeatable.",
)
@click.option(
    "--rate",
    default=None,
    type=float,
    help="Requests/s on average over the run (round(RATE × duration) requests; "
    "the trace's gaps keep "
    "their shape, rescaled to span the run). Default 2 unless --time-scale.",
)
@click.option(
    "--time-scale",
    default=None,
    type=float,
    help="Instead of --rate: multiply the trace's gaps by X.",
)
@click.option("--duration", default=60.0, show_default=True, help="Seconds to send requests for.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["azure", "mooncake", "auto"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--length-scale",
    default=0.1,
    show_default=True,
    help="Multiply prompt/output lengths (and Mooncake's 512-token blocks) by X.",
)
@click.option(
    "--max-prompt-tokens", default=None, type=int, help="Clamp prompt lengths (after scaling)."
)
@click.option(
    "--max-output-tokens",
    default=128,
    show_default=True,
    help="Clamp output lengths (after scaling).",
)
@click.option(
    "--policy",
    type=click.Choice(["round-robin", "least-loaded"]),
    default="round-robin",
    show_default=True,
)
@click.option("--concurrency", default=64, show_default=True, help="Requests in flight at most.")
@click.option("--max-requests", default=10_000, show_default=True, help="Requests sent at most.")
@click.option(
    "--drain",
    "drain_s",
    default=30.0,
    show_default=True,
    help="Seconds to wait after the last arrival for requests in flight "
    "(then cancelled, counted failed).",
)
@click.option(
    "--seed", default=0, show_default=True, help="Seeds the prompt text (same seed, same prompts)."
)
@click.option(
    "--allow-remote", is_flag=True, help="Allow URLs on other hosts than 127.0.0.1/localhost."
)
@json_option()
def load_cmd(
    trace_path: str,
    urls: tuple[str, ...],
    rate: float | None,
    time_scale: float | None,
    duration: float,
    fmt: str,
    length_scale: float,
    max_prompt_tokens: int | None,
    max_output_tokens: int,
    policy: str,
    concurrency: int,
    max_requests: int,
    drain_s: float,
    seed: int,
    allow_remote: bool,
    as_json: bool,
) -> None:
    """Replay a real workload trace against replicas with concurrent streaming chat clients,
    then print per-replica requests ok/failed, TTFT and inter-token p50/p99, tokens/s and the
    prefix cache hit rate."""
    from infdebug.fleet.loadgen import (
        LoadError,
        RequestResult,
        Target,
        check_urls,
        run_load,
        summarize,
    )
    from infdebug.fleet.traces import PlannedRequest, TraceFormatError, plan, read_trace

    if rate is None and time_scale is None:
        rate = 2.0
    elif rate is not None and time_scale is not None:
        fail("give --rate or --time-scale, not both")
    if duration <= 0 or concurrency < 1 or max_requests < 1:
        fail("--duration, --concurrency and --max-requests must be positive")
    try:
        base_urls = check_urls(list(urls), allow_remote)
        trace = read_trace(trace_path, fmt)
    except (LoadError, TraceFormatError) as e:
        fail(str(e))

    def schedule(targets: list[Target]) -> list[PlannedRequest]:
        lens = [t.max_model_len for t in targets if t.max_model_len]
        try:
            return plan(
                trace,
                duration_s=duration,
                rate=rate,
                time_scale=time_scale,
                length_scale=length_scale,
                max_prompt_tokens=max_prompt_tokens,
                max_output_tokens=max_output_tokens,
                max_model_len=min(lens) if lens else None,
                max_requests=max_requests,
            )
        except ValueError as e:
            fail(str(e))

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("load"),
        BarColumn(),
        TextColumn("{task.completed} done · {task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=err_console,
        disable=as_json,
        transient=True,
    )
    task = progress.add_task("load", total=None, failed=0)
    failed = 0

    def on_done(r: RequestResult) -> None:
        nonlocal failed
        failed += not r.ok
        progress.update(task, advance=1, failed=failed)

    try:
        with progress:
            run = asyncio.run(
                run_load(
                    base_urls,
                    schedule,
                    policy=policy,
                    concurrency=concurrency,
                    seed=seed,
                    drain_s=drain_s,
                    on_done=on_done,
                    duration_s=duration,
                )
            )
    except LoadError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    summary = summarize(run)
    summary.update(
        {
            "trace": trace_path,
            "policy": policy,
            "rate": rate,
            "time_scale": time_scale,
            "length_scale": length_scale,
            "duration_s": duration,
        }
    )
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)
    if summary["total"]["failed"]:
        raise SystemExit(1)


def _print_summary(s: dict[str, Any]) -> None:
    t = Table(title=f"load: {s['trace']} · {s['policy']} · {fmt_seconds(s['wall_s'])}")
    id_column(t, "replica")
    for col in (
        "sent",
        "ok",
        "failed",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
        "out tok/s",
        "prefix hit",
    ):
        t.add_column(col, justify="right")
    rows = [*s["replicas"].items(), ("total", s["total"])]
    for name, g in rows:
        t.add_row(
            name,
            str(g["sent"]),
            str(g["ok"]),
            str(g["failed"]),
            fmt_ms(g["ttft_p50_s"]),
            fmt_ms(g["ttft_p99_s"]),
            fmt_ms(g["itl_p50_s"]),
            fmt_ms(g["itl_p99_s"]),
            fmt_number(g["output_tokens_per_s"]),
            fmt_percent(g["prefix_hit_rate"]),
            style="bold" if name == "total" else None,
        )
    out_console.print(t)
    if s.get("sent_per_s") is not None:
        asked = f" (asked {fmt_rate(s['rate'])})" if s.get("rate") else ""
        out_console.print(
            f"sent {fmt_rate(s['sent_per_s'])} over {fmt_seconds(s['duration_s'])}{asked}; "
            f"latest send {fmt_seconds(s['max_late_s'])} behind plan",
            highlight=False,
        )
    if s["not_sent"]:
        out_console.print(f"{s['not_sent']} planned requests were not sent", highlight=False)
    for e in s["errors"]:
        err_console.print(f"[red]failed[/] {e}", highlight=False)


def register(group: click.Group) -> None:
    group.add_command(fleet_cmd)
    group.add_command(load_cmd)
