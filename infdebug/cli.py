"""``infdebug``: the command line.

Configuration comes from a flag, then an ``INFDEBUG_*`` environment variable, then the
default. Every command has ``--json``. Exit codes: 0 done, 2 nothing could be done (the
reason is one line on stderr), 3 done with some input set aside (ingest's rejected lines).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from infdebug import __version__
from infdebug.cli_ingest import (
    MAX_LATENCY_HELP,
    CommandFailed,
    JsonCommand,
    default_rejects_path,
    exit_failed,
    failure_reasons,
    print_ingest,
    resolve_max_latency,
)
from infdebug.collectors.readers import format_names
from infdebug.console import (
    err_console,
    fail,
    fmt_ms,
    id_column,
    out_console,
    print_json,
    to_jsonable,
)
from infdebug.store import Store, StoreError, open_store
from infdebug.store.ddl import table_names


class Ctx:
    def __init__(self, home: str | None, clickhouse: str | None) -> None:
        self.home = home
        self.clickhouse = clickhouse

    @contextmanager
    def store(self) -> Iterator[Store]:
        try:
            st = open_store(self.clickhouse, self.home)
        except StoreError as e:
            fail(str(e))
        try:
            yield st
        finally:
            st.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="infdebug")
@click.option(
    "--home",
    envvar="INFDEBUG_HOME",
    metavar="DIR",
    help="Embedded store (chDB) directory. Env INFDEBUG_HOME; default ./.infdebug",
)
@click.option(
    "--clickhouse",
    envvar="INFDEBUG_CLICKHOUSE_URL",
    metavar="URL",
    help="Use a ClickHouse server instead of the embedded store, e.g. "
    "http://user:pass@host:8123/infdebug. Env INFDEBUG_CLICKHOUSE_URL. Many processes can share one.",
)
@click.pass_context
def cli(ctx: click.Context, home: str | None, clickhouse: str | None) -> None:
    """Find out why an LLM inference fleet misbehaves, from what the fleet records.

    \b
    Start here:
      infdebug ingest sample_logs/          load JSONL logs into the store
      infdebug stats                        per-replica TTFT / inter-token / e2e percentiles
      infdebug query "SELECT replica, count() FROM requests GROUP BY replica"

    The store is ClickHouse: embedded chDB under --home by default (one process at a time),
    or a server with --clickhouse.
    """
    ctx.obj = Ctx(home, clickhouse)


# --- ingest ---------------------------------------------------------------------------------


@cli.command(cls=JsonCommand)
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--strict", is_flag=True, help="Reject lines with fields the contract does not know.")
@click.option(
    "--rejects",
    "rejects_path",
    metavar="FILE",
    help="Where rejected lines go (JSONL: file, line, field, reason, raw). "
    "Default: HOME/rejects/ingest-<time>.jsonl",
)
@click.option("--format", "fmt", type=click.Choice(["auto", *format_names()]),
              default="auto", show_default=True, help="Input format (the log-format registry's); auto-detected per file.")
@click.option("--replica", default=None, help="Replica name for engine logs that do not carry one (default: file name).")
@click.option("--max-latency", metavar="SECONDS", default=None, help=MAX_LATENCY_HELP)
@click.option("--json", "as_json", is_flag=True,
              help='Print a JSON summary instead of tables (on failure too: {"error": …}).')
@click.pass_obj
def ingest(obj: Ctx, paths: tuple[str, ...], strict: bool, rejects_path: str | None, fmt: str, replica: str | None,
           max_latency: str | None, as_json: bool) -> None:
    """Load logs (files, directories, globs; .jsonl, .jsonl.gz, .log, .prom) into the store.

    Contract JSONL (request, gpu, metrics, event, profile, finding records) goes to its
    tables; engine logs — vLLM request log lines and RequestOutput reprs, SGLang
    --log-requests lines, OpenAI-style {"request", "response"} JSONL — are converted to
    request records on the way, Prometheus exposition snapshots (curl …/metrics > r1.prom)
    to metrics records (format detected per file, or --format).
    Ingesting is idempotent: a file already loaded adds nothing, a file that grew is read
    from where it stopped (also after it was renamed or gzipped).

    A bad line (malformed JSON, a wrong type, a missing required field, invalid UTF-8, a
    truncated last line, a malformed exposition line) is written to the rejects file with
    its file, line number, field and reason, and the rest of the file still loads. A
    latency that cannot be true (another clock, negative, past --max-latency) is dropped
    from its request with a note. An empty file, a JSON array or a binary file is named
    for what it is.

    Exit code: 0 everything loaded, 3 some lines were rejected, 2 nothing could be done.
    """
    from infdebug.collectors.ingest import ingest_paths

    try:
        ceiling = resolve_max_latency(max_latency)
        rejects_path = rejects_path or default_rejects_path(obj.home, obj.clickhouse, "ingest")
        try:
            st = open_store(obj.clickhouse, obj.home)
        except StoreError as e:
            raise CommandFailed(str(e)) from None
        try:
            with _Progress(enabled=not as_json) as prog:
                report = ingest_paths(st, list(paths), strict=strict, rejects_path=rejects_path,
                                      progress=prog.advance, on_file=prog.file, fmt=fmt, replica=replica,
                                      max_latency=ceiling)
        except StoreError as e:
            raise CommandFailed(f"ingest failed: {e}") from None
        finally:
            st.close()
    except CommandFailed as e:
        exit_failed(e, as_json)
    code = report.exit_code()
    failed = "nothing could be ingested: " + ("; ".join(failure_reasons(report)) or "no input files")
    if as_json:
        print_json({"error": failed, **report.to_json()} if code == 2 else report.to_json())
    else:
        print_ingest(report)
        if code == 2:
            fail(failed)
    sys.exit(code)


class _Progress:
    """A rich progress bar with MB/s that appears once work has taken a second.

    ClickHouse loads a file on the fast path in one statement, so bytes advance per file;
    the bar keeps moving (elapsed time, current file) in between.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and err_console.is_terminal
        self.total = 0
        self.done = 0
        self._name = ""
        self._bar: Any = None
        self._task: Any = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(1.0, self._start)
        self._timer.daemon = True

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            if self._bar is not None:
                self._refresh()
                self._bar.stop()
                self._bar = None

    def _start(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        with self._lock:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._name, total=self.total or None)
            self._refresh()

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total or None, description=self._name)

    def file(self, path: str, size: int) -> None:
        with self._lock:
            self.total += size
            self._name = os.path.basename(path)
            self._refresh()

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            self._refresh()


# --- query ----------------------------------------------------------------------------------


def _query_help() -> str:
    # The table list comes from the DDL, so a new table is listed without editing this text.
    tables = textwrap.fill(", ".join(table_names()) + ".", width=88, initial_indent="Tables: ",
                           subsequent_indent="  ")
    return f"""Run ad-hoc SQL against the store.

    \b
    {tables.replace(chr(10), chr(10) + "    ")}
    Example:
      infdebug query "SELECT replica, quantileExact(0.99)(ttft_s) FROM requests GROUP BY replica"
    """


@cli.command(help=_query_help())
@click.argument("sql")
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Bind a query parameter: use {NAME:Type} in the SQL, e.g. "
    "-p r=replica-1 with WHERE replica = {r:String}.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per row.")
@click.option("--limit", default=1000, show_default=True, help="Rows to show in the table view.")
@click.pass_obj
def query(obj: Ctx, sql: str, params: tuple[str, ...], as_json: bool, limit: int) -> None:
    bound: dict[str, str] = {}
    for p in params:
        if "=" not in p:
            fail(f"--param expects NAME=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        bound[k] = v
    with obj.store() as st:
        try:
            cols, rows = st.query(sql, bound)
        except StoreError as e:
            fail(f"query failed: {e}")
    if as_json:
        print_json([dict(zip(cols, r, strict=True)) for r in rows])
        return
    t = Table(show_edge=False, header_style="bold")
    for c in cols:
        if _is_id_column(c):
            id_column(t, c)
        else:
            t.add_column(c, overflow="fold")
    for r in rows[:limit]:
        t.add_row(*(_cell(v) for v in r))
    out_console.print(t)
    more = f", showing {limit}" if len(rows) > limit else ""
    err_console.print(f"{len(rows)} row(s){more}", style="dim")


_ID_NAMES = {"replica", "deployment", "model", "engine", "kind", "name", "pid", "path", "content_id"}


def _is_id_column(name: str) -> bool:
    """A column whose values are names or IDs, shown whole (never folded across lines)."""
    low = name.lower()
    return low in _ID_NAMES or low in ("id", "uuid") or low.endswith(("_id", "_fp", "_uuid")) or name.endswith("Id")


def _cell(v: Any) -> str:
    if v is None:
        return "[dim]NULL[/]"
    s = json.dumps(to_jsonable(v), ensure_ascii=False) if isinstance(v, list | dict | tuple) else str(to_jsonable(v))
    s = s.replace("[", "\\[")
    return s if len(s) <= 200 else s[:200] + "…"


# --- stats ----------------------------------------------------------------------------------


@cli.command()
@click.option("--replica", default="", help="Only this replica.")
@click.option("--deployment", default="", help="Only this deployment (revision or canary label).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def stats(obj: Ctx, replica: str, deployment: str, as_json: bool) -> None:
    """Request counts and TTFT / inter-token / end-to-end p50, p90, p99 per replica within
    its deployment: a replica name reused by two deployments is two rows, `r3 (canary)`.

    Each percentile group shows the number of samples (n) it was computed from. Inter-token
    latency pools every gap between consecutive output tokens.
    """
    from infdebug.store.queries import replica_stats

    with obj.store() as st:
        res = replica_stats(st, replica=replica, deployment=deployment)
    if as_json:
        print_json({"replicas": [r.to_json() for r in res]})
        return
    if not res:
        err_console.print("no requests in the store yet; load some with: infdebug ingest PATH")
        return
    out_console.print(stats_table(res))


def stats_table(res: list[Any]) -> Table:
    """The ``stats`` table: one row per replica within its deployment (``r3 (canary)``)."""
    t = Table(show_edge=False, header_style="bold",
              title="latency per replica (deployment), ms: p50 p90 p99 (n samples)")
    id_column(t, "replica")
    t.add_column("requests", justify="right")
    t.add_column("errors", justify="right")
    for metric in ("TTFT", "inter-token", "end-to-end"):
        t.add_column(metric, justify="right")
    for r in res:
        cells = [escape(r.label), str(r.requests), str(r.errors)]
        for s in (r.ttft_s, r.itl_s, r.e2e_s):
            cells.append(f"{fmt_ms(s.p50)} {fmt_ms(s.p90)} {fmt_ms(s.p99)}\n[dim]n={s.n}[/]")
        t.add_row(*cells)
    return t


def _register_commands() -> None:
    # Commands of other parts live beside their code; they import heavy libraries lazily.
    from infdebug import cli_analyze, cli_engine, cli_fleet, cli_profile, cli_text

    cli_analyze.register(cli)
    cli_engine.register(cli)
    cli_text.register(cli)
    cli_profile.register(cli)
    cli_fleet.register(cli)


_register_commands()


def main() -> None:
    cli(prog_name="infdebug")


if __name__ == "__main__":
    main()
