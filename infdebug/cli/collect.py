"""``infdebug collect``: the commands that keep getting a fleet's records into the store while
it runs. ``collect --otlp … --prometheus … --logs … --gpu`` runs several collectors in one
process (cli/collect_run.py); ``collect logs`` tails trace and engine-log files
(collectors/tail.py); ``collect otlp``, ``prometheus`` and ``gpu`` run one kind each.

The group is ``collect_group``; a collector of another kind is one more subcommand on it
(``@collect_group.command("NAME")`` in its own module, registered from ``register`` here).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import click
from rich.markup import escape

from infdebug.cli.base import (
    CommandFailed,
    JsonCommand,
    default_rejects_path,
    exit_failed,
    failure_reasons,
    resolve_max_latency,
)
from infdebug.cli.collect_run import gpu_options, otlp_options, pump_options, scrape_options
from infdebug.cli.context import CliContext, pass_cli
from infdebug.cli.options import (
    input_options,
    json_option,
    trace_sample_assign,
    trace_sample_options,
)
from infdebug.console import err_console, fail, print_json
from infdebug.store import StoreError


@click.group("collect", invoke_without_command=True)
@click.option(
    "--otlp", default=None, metavar="HOST:PORT", help="Receive OTLP/HTTP traces on HOST:PORT."
)
@click.option(
    "--prometheus",
    "targets",
    multiple=True,
    metavar="NAME=URL",
    help="Scrape URL (an engine's or DCGM exporter's /metrics) as replica NAME; repeatable.",
)
@click.option(
    "--logs",
    "log_paths",
    multiple=True,
    metavar="PATH",
    help="Follow these trace / engine-log files, directories or globs; repeatable.",
)
@click.option("--gpu", is_flag=True, help="Sample this host's GPUs through NVML.")
@otlp_options()
@scrape_options()
@gpu_options()
@input_options("collect")
@trace_sample_options()
@pump_options()
@click.pass_context
def collect_group(
    ctx: click.Context,
    /,
    otlp: str | None,
    targets: tuple[str, ...],
    log_paths: tuple[str, ...],
    gpu: bool,
    **opts: Any,
) -> None:
    """Keep loading what a running fleet sends and writes into the store: several
    collectors in one process (the embedded store has one owner), or one subcommand.

    \b
      infdebug collect --otlp 127.0.0.1:4318 --prometheus r1=http://r1:8000/metrics \\
                       --prometheus dcgm=http://node:9400/metrics --logs traces/ --gpu
      infdebug collect logs traces/ --follow    only tail trace and engine-log files
      infdebug collect otlp                     only receive OTLP traces
      infdebug collect prometheus --target r1=http://r1:8000/metrics
      infdebug collect gpu                      only sample this host's GPUs

    What arrives is spooled (fsync'd) before it is acknowledged; one loader puts every spool
    and log file into the store in turn, each record once, releasing the embedded store
    between rounds so `infdebug query` and `analyze` work meanwhile. When the store is held
    or a --clickhouse server is unreachable, it waits and loses nothing. Many collector
    processes can share one ClickHouse server (--clickhouse).

    A status line (rates, lag, spool size, errors) goes to stderr every --status-every
    seconds, and the same counters are served at http://127.0.0.1:9464/metrics.
    SIGINT / SIGTERM: stop receiving, load what was received, exit.
    """
    if ctx.invoked_subcommand is not None:
        return
    from infdebug.cli.collect_run import Plan, listen_address, run_plan

    plan = Plan(
        otlp=listen_address(otlp, "--otlp") if otlp else None,
        targets=list(targets),
        logs=list(log_paths),
        gpu=gpu,
        opts=opts,
    )
    if plan.empty():
        click.echo(ctx.get_help())
        ctx.exit(0)
    run_plan(ctx.find_object(CliContext) or CliContext(), plan)


@collect_group.command("logs", cls=JsonCommand)
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep reading as the files grow, rotate and appear, until SIGINT / SIGTERM.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    metavar="S",
    help="Seconds between polls when following.",
)
@click.option(
    "--hold/--release",
    default=None,
    help="Keep the store open between polls (--hold), or open it only to load and release "
    "it in between so that other commands can use it (--release). Default: release the "
    "embedded store, hold a ClickHouse server.",
)
@input_options("collect")
@trace_sample_options()
@json_option('Print a JSON summary at the end instead of tables (on failure too: {"error": …}).')
@pass_cli
def logs(
    obj: CliContext,
    paths: tuple[str, ...],
    follow: bool,
    interval: float,
    hold: bool | None,
    strict: bool,
    rejects_path: str | None,
    max_latency: str | None,
    fmt: str,
    replica: str | None,
    trace_sample: float | None,
    trace_seed: int,
    as_json: bool,
) -> None:
    """Load log files (files, directories, globs; any format `ingest` reads, .gz too) into
    the store, and with --follow keep loading what is written to them, each line once.

    \b
    Examples:
      infdebug collect logs traces/ --follow             every log in traces/, as written
      infdebug collect logs 'logs/*.requests.jsonl' -f --interval 5
      infdebug collect logs vllm.log --follow --json     a JSON summary when stopped
      infdebug collect logs traces/                       one pass, then exit (like ingest)

    How far each file was read is kept in the store with its rows, so a tailer that is
    stopped or killed (even half way through a load, which is rolled back) starts again
    exactly where it got: nothing is lost or loaded twice. Only changed files are read.

    Log rotation is followed: the rotated copies of a file read (app.jsonl.1,
    app.jsonl.1.gz, app.jsonl-20251201) are read too, and a file is known by its first
    line, not its name. Rotation by rename, gzip on rotate and copytruncate all work; a
    line cut in two by the rotation is loaded once, whole. A last line still being written
    is read once its newline is there (a one-pass run rejects it, as ingest does).

    The embedded store admits one process at a time: by default it is opened to load and
    released between polls, so `infdebug analyze` or `query` can run meanwhile (--hold
    keeps it). When the store is busy (another process holds it) or a --clickhouse server
    is unreachable, collect says so once, waits (backoff from 0.5 s to 30 s) and then
    loads everything written meanwhile: the files are the spool.

    Progress (rows loaded per poll) goes to stderr. SIGINT / SIGTERM finish the file being
    loaded and stop; a second SIGINT stops at once (that load is rolled back next time).

    Exit code: 0 done (following: stopped cleanly); once: 3 some lines were rejected, 2
    nothing could be done.
    """
    from infdebug import settings
    from infdebug.collectors.tail import Tailer
    from infdebug.errors import InputError

    server = settings.clickhouse_url(obj.clickhouse) is not None
    try:
        ceiling = resolve_max_latency(max_latency)
        try:
            sampled = trace_sample_assign(trace_sample, trace_seed)
        except InputError as e:
            raise CommandFailed(str(e)) from None
    except CommandFailed as e:
        exit_failed(e, as_json)
    default_rejects = default_rejects_path(obj.home, obj.clickhouse, "collect")
    # never read: the rejects file, the default rejects' folder (earlier runs'), the store
    exclude = [rejects_path or default_rejects, os.path.dirname(default_rejects)]
    rejects_path = rejects_path or default_rejects
    tailer = Tailer(
        paths,
        open_store=obj.open_store,
        rejects_path=rejects_path,
        follow=follow,
        interval=interval,
        hold=server if hold is None else hold,
        server=server,
        strict=strict,
        fmt=fmt,
        replica=replica,
        max_latency=ceiling,
        exclude=exclude + ([] if server else [settings.home(obj.home)]),
        say=_say,
        **sampled,
    )
    try:
        with _stopping(tailer.stop):
            done = tailer.run()
    except StoreError as e:  # a read-only store, an unwritable rejects file, a broken store
        exit_failed(CommandFailed(f"collect failed: {e}"), as_json)
    code = done.exit_code()
    if as_json:
        doc = done.to_json()
        if code == 2 and "error" not in doc:
            doc["error"] = "nothing could be loaded: " + (
                "; ".join(failure_reasons(done.report)) or "no input files"
            )
        print_json(doc)
        sys.exit(code)
    from infdebug.cli.ingest import print_ingest

    if done.report.files or code != 2:
        print_ingest(done.report)
    for path, n in sorted(done.held.items()):
        _say(f"held back: {path}: its last line ({n} bytes) has no newline yet")
    if code == 2:
        fail(
            done.unavailable
            or "nothing could be loaded: "
            + ("; ".join(failure_reasons(done.report)) or "no input files")
        )
    sys.exit(code)


def _say(line: str) -> None:
    err_console.print(escape(line), highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _stopping(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT / SIGTERM call ``stop`` (the run ends after the file being loaded); a second
    SIGINT is a KeyboardInterrupt, at once."""
    seen: list[int] = []

    def handler(signum: int, frame: types.FrameType | None) -> None:
        if seen and signum == signal.SIGINT:
            raise KeyboardInterrupt
        seen.append(signum)
        _say(f"{signal.Signals(signum).name}: stopping once the file being loaded is done")
        stop()

    before: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        before[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in before.items():
            signal.signal(sig, h)


def register(group: click.Group) -> None:
    """Add ``collect`` (and its subcommands) to ``group``."""
    import infdebug.cli.collect_gpu  # noqa: F401  (registers `collect gpu`)
    import infdebug.cli.collect_otlp  # noqa: F401  (registers `collect otlp`)
    import infdebug.cli.collect_prometheus  # noqa: F401  (registers `collect prometheus`)

    group.add_command(collect_group)
