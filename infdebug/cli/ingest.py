"""``infdebug ingest``: load logs into the store, with a progress bar on long work, and the
report of what each file gave (the per-file table, notes, rejected lines and where the
rejects file went) that ``analyze LOGS`` prints too."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from infdebug.cli.base import (
    CommandFailed,
    JsonCommand,
    default_rejects_path,
    exit_failed,
    failure_reasons,
    resolve_max_latency,
)
from infdebug.cli.context import CliContext, pass_cli
from infdebug.cli.options import (
    input_options,
    json_option,
    trace_sample_assign,
    trace_sample_options,
)
from infdebug.console import err_console, fail, out_console, print_json
from infdebug.store import StoreError


@click.command("ingest", cls=JsonCommand)
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@input_options("ingest")
@trace_sample_options()
@json_option('Print a JSON summary instead of tables (on failure too: {"error": …}).')
@pass_cli
def ingest(
    obj: CliContext,
    paths: tuple[str, ...],
    strict: bool,
    rejects_path: str | None,
    fmt: str,
    replica: str | None,
    max_latency: str | None,
    trace_sample: float | None,
    trace_seed: int,
    as_json: bool,
) -> None:
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
    from infdebug.errors import InputError

    try:
        try:
            sampled = trace_sample_assign(trace_sample, trace_seed)
        except InputError as e:
            raise CommandFailed(str(e)) from None
        ceiling = resolve_max_latency(max_latency)
        rejects_path = rejects_path or default_rejects_path(obj.home, obj.clickhouse, "ingest")
        try:
            st = obj.open_store()
        except StoreError as e:
            raise CommandFailed(str(e)) from None
        try:
            with _Progress(enabled=not as_json) as prog:
                report = ingest_paths(
                    st,
                    list(paths),
                    strict=strict,
                    rejects_path=rejects_path,
                    progress=prog.advance,
                    on_file=prog.file,
                    fmt=fmt,
                    replica=replica,
                    max_latency=ceiling,
                    **sampled,
                )
        except StoreError as e:
            raise CommandFailed(f"ingest failed: {e}") from None
        finally:
            st.close()
    except CommandFailed as e:
        exit_failed(e, as_json)
    except StoreError as e:  # any other store failure: one line (JSON with --json)
        exit_failed(CommandFailed(str(e)), as_json)
    code = report.exit_code()
    failed = "nothing could be ingested: " + (
        "; ".join(failure_reasons(report)) or "no input files"
    )
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
            self._bar.update(
                self._task, completed=self.done, total=self.total or None, description=self._name
            )

    def file(self, path: str, size: int) -> None:
        with self._lock:
            self.total += size
            self._name = os.path.basename(path)
            self._refresh()

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            self._refresh()


def print_ingest(report: Any) -> None:
    """The ``ingest`` table (one row per file), the totals, notes and rejected lines."""
    t = Table(title=None, show_edge=False, header_style="bold")
    t.add_column("file", overflow="fold", ratio=3)
    t.add_column("status", ratio=2, overflow="fold")
    t.add_column("rows", justify="right", ratio=2)
    t.add_column("rejected", justify="right")
    for f in report.files:
        status = f.status if f.status != "loaded" else f"loaded ({f.path_taken})"
        if f.status == "error":
            status = f"[red]error[/]: {escape(f.message)}"
        elif f.status == "empty":
            status = f"[yellow]empty[/]: {escape(f.message)}"
        rows = ", ".join(f"{v} {k}" for k, v in f.rows.items() if v) or "0"
        t.add_row(
            escape(_short_path(f.path)),
            status,
            rows,
            f"[red]{f.rejected}[/]" if f.rejected else "0",
        )
    out_console.print(t)
    for e in report.errors:
        err_console.print(f"[yellow]skipped[/] {escape(e)}", highlight=False)
    rows = report.rows
    mbps = report.bytes / 1e6 / report.seconds if report.seconds > 0 else 0.0
    out_console.print(
        f"{sum(rows.values())} rows ("
        + ", ".join(f"{v} {k}" for k, v in rows.items())
        + f") from {len(report.files)} file(s), {report.bytes / 1e6:.1f} MB "
        f"in {report.seconds:.2f}s "
        f"({mbps:.0f} MB/s)",
        highlight=False,
    )
    print_notes(report)
    print_rejects(report)


def print_file_messages(report: Any) -> None:
    """One line per file that was not loaded (empty, a JSON array, binary, unreadable…)."""
    for f in report.files:
        if f.status == "error":
            err_console.print(
                f"[red]not loaded:[/] {escape(f.message)}", highlight=False, soft_wrap=True
            )
        elif f.status == "empty":
            err_console.print(
                f"[yellow]empty:[/] {escape(f.path)}: {escape(f.message)}",
                highlight=False,
                soft_wrap=True,
            )
    for e in report.errors:
        err_console.print(f"[yellow]skipped[/] {escape(e)}", highlight=False, soft_wrap=True)


def print_notes(report: Any) -> None:
    """Fields dropped on the way (a latency from another clock …), per file and reason."""
    for line in report.notes():
        err_console.print(f"[yellow]note:[/] {escape(line)}", highlight=False, soft_wrap=True)


def print_rejects(report: Any, limit: int = 10) -> None:
    """How many lines were rejected, where the rejects file is, and the first few as file:line."""
    if not report.rejected:
        return
    first = _first_rejects(report.rejects_file, limit)
    err_console.print(
        f"[red]{report.rejected} line(s) rejected[/], written to "
        f"{escape(str(report.rejects_file))}:",
        highlight=False,
        soft_wrap=True,
    )
    for r in first:
        fld = f" field {r['field']}:" if r.get("field") else ""
        err_console.print(
            f"  {escape(str(r['file']))}:{r['line']}:{escape(fld)} {escape(str(r['reason']))}",
            highlight=False,
            soft_wrap=True,
        )
    if report.rejected > len(first):
        err_console.print(f"  … and {report.rejected - len(first)} more", highlight=False)


def first_rejects_json(report: Any, limit: int = 20) -> list[str]:
    """The first rejected lines as ``file:line: reason`` strings (for ``--json``)."""
    out = []
    for r in _first_rejects(report.rejects_file, limit):
        fld = f" field {r['field']}:" if r.get("field") else ""
        out.append(f"{r['file']}:{r['line']}:{fld} {r['reason']}")
    return out


def _short_path(p: str) -> str:
    rel = os.path.relpath(p)
    return rel if not rel.startswith("../..") else p


def _first_rejects(path: str | None, n: int) -> list[dict[str, Any]]:
    if not path or not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if len(out) >= n:
                break
    return out


def register(group: click.Group) -> None:
    """Add ``ingest`` to ``group``."""
    group.add_command(ingest)
