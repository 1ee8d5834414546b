"""``infdebug workload``: what the fleet is asked to do and how well it does it — arrival rate
and burstiness, token lengths, prefix reuse, cache hits, SLO attainment and goodput,
start-up times, replicas needed at peak and median, decode bandwidth — from the store, from
log files, or from a workload trace (Azure LLM CSV, Mooncake JSONL).

The numbers and their definitions are ``infdebug.workload``'s; this module parses the flags,
picks the source and prints the report (rich tables and a per-minute QPS sparkline, or
``--json``: one document, ``{"error": …}`` on failure).
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from dataclasses import dataclass
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from infdebug.cli.base import CommandFailed, JsonCommand, exit_failed
from infdebug.cli.context import CliContext, pass_cli
from infdebug.cli.options import json_option, log_loading_options, window_options
from infdebug.console import (
    MISSING,
    err_console,
    fmt_ms,
    fmt_number,
    fmt_percent,
    fmt_rate,
    fmt_seconds,
    id_column,
    out_console,
    print_json,
)
from infdebug.errors import InputError, StoreError
from infdebug.workload import (
    DEFAULT_SLO_GOAL,
    Budgets,
    Distribution,
    WorkloadOptions,
    WorkloadReport,
    parse_duration,
    positive,
)

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 60
MAX_TABLE_ROWS = 20


@dataclass(frozen=True)
class WorkloadArgs:
    """The ``workload`` command's options, typed (the names click gives them)."""

    logs: tuple[str, ...]
    trace: str | None
    trace_format: str
    since: str | None
    until: str | None
    ttft: str | None
    tpot: str | None
    slo_goal: float
    replica_capacity: float | None
    weights_gb: float | None
    peak_bandwidth_gbs: float | None
    as_json: bool
    rejects_path: str | None
    max_latency: str | None


@click.command("workload", cls=JsonCommand)
@click.argument("logs", nargs=-1, metavar="[LOGS]...")
@click.option(
    "--trace",
    metavar="FILE",
    help="Describe a workload trace instead of logs: an Azure LLM CSV "
    "(TIMESTAMP,ContextTokens,GeneratedTokens) or a Mooncake JSONL (with hash_ids).",
)
@click.option(
    "--format",
    "trace_format",
    type=click.Choice(["auto", "azure", "mooncake"]),
    default="auto",
    show_default=True,
    help="The --trace file's format (auto: by suffix, then by content).",
)
@window_options()
@click.option(
    "--ttft", metavar="DURATION", help="SLO budget for time to first token: 1s, 500ms, 0.2 …"
)
@click.option(
    "--tpot",
    metavar="DURATION",
    help="SLO budget for the mean time per output token after the first: 50ms, 0.05 …",
)
@click.option(
    "--slo-goal",
    type=float,
    default=DEFAULT_SLO_GOAL,
    show_default=True,
    metavar="SHARE",
    help="The share of a minute's requests that must meet the SLO for that minute to count "
    "as served within it (when deriving the per-replica capacity).",
)
@click.option(
    "--replica-capacity",
    type=float,
    metavar="R",
    help="Requests/s one replica serves within the SLO. Default: derived from the logs (the "
    "busiest replica minute that met the SLO goal).",
)
@click.option(
    "--weights-gb", type=float, metavar="G", help="Model weights in GB (with --peak-bandwidth-gbs)."
)
@click.option(
    "--peak-bandwidth-gbs",
    type=float,
    metavar="B",
    help="Peak memory bandwidth in GB/s (H100 SXM: 3350), for decode bandwidth utilisation.",
)
@json_option('Print the report as one JSON document; on failure {"error": ...}.')
@log_loading_options("workload", prefix="With LOGS: ")
@pass_cli
def workload_cmd(obj: CliContext, /, **params: Any) -> None:
    """Describe the workload: QPS over time, token lengths, prefix reuse, SLO, replicas needed.

    \b
    Without LOGS or --trace, describes the store (--home / --clickhouse). With LOGS (JSONL
    files, engine logs, directories — whatever ingest reads), loads them into a temporary
    store first. With --trace, reads a workload trace: arrivals, lengths and (Mooncake)
    prefix reuse only, since a trace has no latencies.

    \b
    Examples:
      infdebug workload                                    the store
      infdebug workload sample_logs/baseline --ttft 1s --tpot 50ms
      infdebug workload --trace ../shared/data/traces/mooncake_fast25/conversation_trace.jsonl
      infdebug workload --trace AzureLLMInferenceTrace_code.csv --replica-capacity 2.5
      infdebug workload logs/ --weights-gb 16 --peak-bandwidth-gbs 3350 --json

    \b
    What it reports:
      QPS          mean over the span, the busiest and the median whole minute, burstiness
                   (coefficient of variation of inter-arrival gaps: 1 = Poisson)
      tokens       prompt and output lengths: mean, p50, p90, p99
      prefix reuse share of prompt tokens in 512-token blocks an earlier request had
                   (unbounded cache; from logged prompt IDs or Mooncake hash_ids)
      cache hits   cached_prompt_tokens / prompt tokens, where the engine logged them
      SLO          a request meets it when TTFT <= --ttft and (e2e - TTFT) / (output
                   tokens - 1) <= --tpot; attainment and goodput (SLO-meeting requests/s)
      start-up     process start to ready per replica, and its phases (from events)
      replicas     needed for the peak and the median minute at --replica-capacity (or
                   the capacity derived from the logs: a lower bound if no replica was
                   saturated), and the over-provisioning a fleet sized for peak pays
      bandwidth    with --weights-gb and --peak-bandwidth-gbs: weights read once per
                   decode step, steps/s = 1 / mean time per output token, ÷ peak

    \b
    Durations: 1s, 50ms, 250us, 2min, or a number of seconds (0.2).
    Exit code: 0 done, 2 nothing could be done, 3 done with some log lines set aside.
    """
    args = WorkloadArgs(**params)
    try:
        code = _run(obj, args)
    except CommandFailed as e:
        exit_failed(e, args.as_json)
    except (InputError, StoreError) as e:
        exit_failed(CommandFailed(str(e)), args.as_json)
    sys.exit(code)


def _options(args: WorkloadArgs) -> WorkloadOptions:
    budgets = Budgets(
        parse_duration(args.ttft, "--ttft") if args.ttft is not None else None,
        parse_duration(args.tpot, "--tpot") if args.tpot is not None else None,
    )
    if not (0.0 < args.slo_goal <= 1.0):
        raise CommandFailed(f"--slo-goal: expected a share in (0, 1], found {args.slo_goal}")
    if (args.weights_gb is None) != (args.peak_bandwidth_gbs is None):
        raise CommandFailed(
            "--weights-gb and --peak-bandwidth-gbs go together: give both or neither"
        )
    return WorkloadOptions(
        budgets=budgets,
        slo_goal=args.slo_goal,
        replica_capacity_rps=positive(args.replica_capacity, "--replica-capacity"),
        weights_gb=positive(args.weights_gb, "--weights-gb"),
        peak_bandwidth_gbs=positive(args.peak_bandwidth_gbs, "--peak-bandwidth-gbs"),
    )


def _window(args: WorkloadArgs) -> dict[str, Any]:
    from infdebug.cli.analyze import parse_time

    w: dict[str, Any] = {"since": 0.0, "until": 1e11, "replicas": []}
    for opt, value in (("since", args.since), ("until", args.until)):
        try:
            t = parse_time(value)
        except click.BadParameter as e:
            raise CommandFailed(f"--{opt}: {e.message}") from None
        if t is not None:
            w[opt] = t
    return w


def _run(obj: CliContext, args: WorkloadArgs) -> int:
    from infdebug.workload.store import store_report

    options = _options(args)
    doc: dict[str, Any] = {}
    code = 0
    if args.trace is not None:
        if args.logs:
            raise CommandFailed("give LOGS or --trace, not both")
        if args.since or args.until:
            raise CommandFailed("--since / --until apply to logs and the store, not to a trace")
        report = _trace(args.trace, args.trace_format, options)
    elif args.logs:
        from infdebug.cli.logstore import loaded_logs

        with loaded_logs(
            list(args.logs),
            command="workload",
            home=obj.home,
            clickhouse=obj.clickhouse,
            rejects_path=args.rejects_path,
            max_latency=args.max_latency,
            doc=doc,
        ) as (st, ingest):
            source = {"kind": "logs", "paths": list(args.logs)}
            report = store_report(st, options, source, _window(args))
        if ingest.rejected:
            code = 3
            err_console.print(
                "[yellow]note:[/] rejected lines are not part of the workload", highlight=False
            )
    else:
        window = _window(args)
        st = obj.open_store()
        try:
            report = store_report(st, options, {"kind": "store", "store": st.description}, window)
        finally:
            st.close()
    if report.arrivals.requests == 0:
        raise CommandFailed(
            "no requests to describe" + _where(args), 2, {**report.to_json(), **doc}
        )
    if args.as_json:
        print_json({**report.to_json(), **doc})
    else:
        print_report(report)
    return code


def _where(args: WorkloadArgs) -> str:
    if args.since or args.until:
        return " in the --since/--until window"
    return " in the logs" if args.logs else " in the store (load logs with infdebug ingest)"


def _trace(path: str, fmt: str, options: WorkloadOptions) -> WorkloadReport:
    from infdebug.fleet.traces import detect_format, read_trace
    from infdebug.workload import trace_report

    kind = detect_format(path) if fmt == "auto" else fmt
    reqs = read_trace(path, kind)
    return trace_report(reqs, options, {"kind": "trace", "path": path, "format": kind})


# --- the terminal view ----------------------------------------------------------------------


def sparkline(values: list[int] | list[float], width: int = SPARK_WIDTH) -> str:
    """``values`` as unicode blocks, at most ``width`` of them (each the mean of a run of
    consecutive values); a zero is a blank, the largest value a full block."""
    if not values:
        return ""
    per = max(1, math.ceil(len(values) / width))
    cells = [
        sum(values[i : i + per]) / len(values[i : i + per]) for i in range(0, len(values), per)
    ]
    top = max(cells)
    if top <= 0:
        return SPARK[0] * len(cells)
    return "".join(
        " " if c <= 0 else SPARK[min(len(SPARK) - 1, int(c / top * (len(SPARK) - 1) + 0.5))]
        for c in cells
    )


def _when(t: float | None) -> str:
    if t is None:
        return MISSING
    if t < 1e8:  # a trace's relative seconds
        return f"+{fmt_seconds(t)}"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _source(src: dict[str, Any]) -> str:
    if src.get("kind") == "trace":
        return f"trace {src.get('path')} ({src.get('format')})"
    if src.get("kind") == "logs":
        return "logs " + ", ".join(str(p) for p in src.get("paths", []))
    return f"store {src.get('store', '')}"


def _kv_table(title: str) -> Table:
    t = Table(show_edge=False, show_header=False, title=title, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    return t


def print_report(r: WorkloadReport) -> None:
    """The terminal view of a workload report."""
    a = r.arrivals
    out_console.print(
        f"[bold]workload[/] of {escape(_source(r.source))}: {a.requests} requests over "
        f"{fmt_seconds(a.duration_s)} from {_when(a.t_first)}",
        highlight=False,
    )
    t = _kv_table("arrivals")
    t.add_row("mean QPS", fmt_rate(a.mean_qps))
    peak_at = None
    if a.peak_minute is not None and a.t_first is not None:
        peak_at = a.t_first + 60.0 * a.peak_minute
    t.add_row("peak minute", f"{fmt_rate(a.peak_1m)} at {_when(peak_at)}")
    t.add_row("median minute", fmt_rate(a.median_1m))
    t.add_row("burstiness", f"{fmt_number(a.cv_interarrival)} (CV of inter-arrival gaps)")
    if a.per_minute:
        per = max(1, math.ceil(len(a.per_minute) / SPARK_WIDTH))
        t.add_row(
            "QPS per minute",
            f"{sparkline(a.per_minute)}  [dim]({per} min a block, max {fmt_rate(a.peak_1m)})[/]",
        )
    out_console.print(t, highlight=False)
    _print_tokens(r)
    _print_slo(r)
    _print_startup(r)
    _print_capacity(r)
    _print_bandwidth(r)
    for note in r.notes:
        out_console.print(f"[dim]note: {escape(note)}[/]", highlight=False)


def _dist_cells(d: Distribution) -> list[str]:
    return [str(d.n)] + [fmt_number(x) for x in (d.mean, d.p50, d.p90, d.p99)]


def _print_tokens(r: WorkloadReport) -> None:
    t = Table(show_edge=False, header_style="bold", title="tokens", title_justify="left")
    t.add_column("")
    for h in ("requests", "mean", "p50", "p90", "p99"):
        t.add_column(h, justify="right")
    t.add_row("prompt", *_dist_cells(r.prompt))
    t.add_row("output", *_dist_cells(r.output))
    out_console.print(t, highlight=False)
    kv = _kv_table("")
    if r.prefix is not None:
        kv.add_row(
            "prefix reuse",
            f"{fmt_percent(r.prefix.share)} of {r.prefix.tokens} prompt tokens in "
            f"{r.prefix.block_tokens}-token blocks seen before ({r.prefix.requests} requests, "
            f"from {r.prefix.source}, unbounded cache)",
        )
    else:
        kv.add_row("prefix reuse", f"{MISSING} (no prompt IDs or hash IDs to hash)")
    if r.cache is not None:
        kv.add_row(
            "cache hit rate",
            f"{fmt_percent(r.cache.rate)} of prompt tokens ({r.cache.requests} requests logged "
            "cached_prompt_tokens)",
        )
    out_console.print(kv, highlight=False)


def _budget(seconds: float) -> str:
    return f"{fmt_ms(seconds)} ms" if seconds < 1 else fmt_seconds(seconds)


def _print_slo(r: WorkloadReport) -> None:
    s = r.slo
    if s is None:
        return
    b = s.budgets
    budget = " and ".join(
        x
        for x in (
            f"TTFT ≤ {_budget(b.ttft_s)}" if b.ttft_s is not None else "",
            f"TPOT ≤ {_budget(b.tpot_s)}" if b.tpot_s is not None else "",
        )
        if x
    )
    t = _kv_table(f"SLO: {budget}")
    t.add_row("attainment", f"{fmt_percent(s.attainment)} of {s.judged} judged requests")
    t.add_row("goodput", f"{fmt_rate(s.goodput_rps)} SLO-meeting requests")
    t.add_row("failed", str(s.failed))
    if s.requests - s.judged:
        t.add_row("unjudged", f"{s.requests - s.judged} (latencies not logged)")
    out_console.print(t, highlight=False)


def _print_startup(r: WorkloadReport) -> None:
    su = r.startup
    if not su:
        return
    tot = su["total_s"]
    out_console.print(
        f"[bold]start-up[/]: {su['starts']} starts, {su['ready']} ready; process start to "
        f"ready median {fmt_seconds(tot['median'])}, max {fmt_seconds(tot['max'])}",
        highlight=False,
    )
    t = Table(show_edge=False, header_style="bold")
    id_column(t, "replica")
    for h in ("starts", "median", "max", "weights", "warm-up", "ready"):
        t.add_column(h, justify="right")
    for row in su["replicas"][:MAX_TABLE_ROWS]:
        ph = row["phases_s"]
        label = row["replica"] + (f" ({row['deployment']})" if row["deployment"] else "")
        t.add_row(
            escape(label),
            str(row["starts"]),
            fmt_seconds(row["median_s"]),
            fmt_seconds(row["max_s"]),
            *(fmt_seconds(ph.get(p)) for p in ("weights_loaded", "warmup_done", "ready")),
        )
    out_console.print(t, highlight=False)
    if len(su["replicas"]) > MAX_TABLE_ROWS:
        out_console.print(f"[dim]… {len(su['replicas']) - MAX_TABLE_ROWS} more replicas[/]")


def _print_capacity(r: WorkloadReport) -> None:
    t = _kv_table("replicas needed")
    c = r.capacity
    if c is None:
        t.add_row("capacity", f"{MISSING} (give --replica-capacity)")
    else:
        where = f", {escape(c.replica)} minute {c.minute}" if c.replica is not None else ""
        t.add_row("capacity", f"{fmt_rate(c.rps)} per replica ({c.source}{where})")
    rn = r.replicas
    t.add_row("peak minute", MISSING if rn.peak is None else str(rn.peak))
    t.add_row("median minute", MISSING if rn.median is None else str(rn.median))
    if rn.overprovision is not None:
        t.add_row(
            "over-provisioning",
            f"{fmt_number(rn.overprovision)}x: a fleet sized for the peak runs "
            f"{fmt_percent(1 - 1 / rn.overprovision)} of its replicas idle in a median minute",
        )
    out_console.print(t, highlight=False)


def _print_bandwidth(r: WorkloadReport) -> None:
    if not r.bandwidth:
        return
    b0 = r.bandwidth[0]
    out_console.print(
        f"[bold]decode bandwidth[/]: {fmt_number(b0.weights_gb)} GB of weights read once per "
        f"decode step, peak {fmt_number(b0.peak_gbs)} GB/s",
        highlight=False,
    )
    t = Table(show_edge=False, header_style="bold")
    id_column(t, "replica")
    for h in ("steps", "ms/step", "GB/s", "utilisation"):
        t.add_column(h, justify="right")
    for b in r.bandwidth[:MAX_TABLE_ROWS]:
        t.add_row(
            escape(b.replica),
            str(b.steps),
            fmt_number(b.step_s * 1000 if b.step_s else None),
            fmt_number(b.achieved_gbs),
            fmt_percent(b.utilisation),
        )
    out_console.print(t, highlight=False)


def register(group: click.Group) -> None:
    """Add ``workload`` to ``group``."""
    group.add_command(workload_cmd)
