"""What ``ingest`` and ``analyze LOGS`` tell about the files they load (the per-file table,
notes, rejected lines and where the rejects file went), and ``--json`` that prints JSON on
stdout also when the command fails: ``{"error": "…"}`` plus whatever partial report applies,
with the exit code kept.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, NoReturn

import click
from rich.markup import escape
from rich.table import Table

from infdebug.console import err_console, fail, out_console, print_json

MAX_LATENCY_HELP = (
    "Drop a request latency (queue, prefill, TTFT, e2e, a token time) longer than SECONDS, "
    "with a note; negative ones, and ones past the request's e2e, are dropped too. "
    "Env INFDEBUG_MAX_LATENCY_S; default 86400 (one day)."
)


class CommandFailed(Exception):
    """The command cannot go on: ``message`` for the user, ``code`` to exit with, ``doc``
    the partial report that ``--json`` prints beside the error."""

    def __init__(self, message: str, code: int = 2, doc: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.doc = doc or {}


class JsonCommand(click.Command):
    """A click command whose ``--json`` output is JSON also when click refuses the arguments
    (an unknown option, a bad choice, a missing path): ``{"error": …}`` on stdout, click's
    usage message on stderr, click's exit code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        wants_json = "--json" in args
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if wants_json:
                print_json({"error": e.format_message()})
            raise


def exit_failed(e: CommandFailed, as_json: bool) -> NoReturn:
    """Report ``e`` (JSON on stdout with ``--json``, one line on stderr otherwise) and exit."""
    if as_json:
        print_json({"error": e.message, **e.doc})
        sys.exit(e.code)
    fail(e.message, e.code)


def resolve_max_latency(flag: str | None) -> float:
    """The latency ceiling from ``--max-latency``, else the environment, else one day."""
    from infdebug.collectors.timing import LatencyConfigError, max_latency_s

    try:
        return max_latency_s(flag)
    except LatencyConfigError as e:
        raise CommandFailed(str(e)) from None


def default_rejects_path(home: str | None, clickhouse: str | None, command: str) -> str:
    """``HOME/rejects/<command>-<time>-<pid>.jsonl`` (``./.infdebug/rejects/…`` with a server)."""
    from infdebug.store import default_home

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    base = (home or default_home()) if not clickhouse else os.path.join(os.getcwd(), ".infdebug")
    return os.path.join(base, "rejects", f"{command}-{stamp}-{os.getpid()}.jsonl")


def failure_reasons(report: Any) -> list[str]:
    """Why files were not loaded: bad arguments, then the files that failed."""
    errors: list[str] = list(report.errors)
    return errors + [f.message for f in report.files if f.status == "error"]


# --- text output ----------------------------------------------------------------------------


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
        t.add_row(escape(_short_path(f.path)), status, rows, f"[red]{f.rejected}[/]" if f.rejected else "0")
    out_console.print(t)
    for e in report.errors:
        err_console.print(f"[yellow]skipped[/] {escape(e)}", highlight=False)
    rows = report.rows
    mbps = report.bytes / 1e6 / report.seconds if report.seconds > 0 else 0.0
    out_console.print(
        f"{sum(rows.values())} rows ("
        + ", ".join(f"{v} {k}" for k, v in rows.items())
        + f") from {len(report.files)} file(s), {report.bytes / 1e6:.1f} MB in {report.seconds:.2f}s "
        f"({mbps:.0f} MB/s)",
        highlight=False,
    )
    print_notes(report)
    print_rejects(report)


def print_file_messages(report: Any) -> None:
    """One line per file that was not loaded (empty, a JSON array, binary, unreadable…)."""
    for f in report.files:
        if f.status == "error":
            err_console.print(f"[red]not loaded:[/] {escape(f.message)}", highlight=False, soft_wrap=True)
        elif f.status == "empty":
            err_console.print(f"[yellow]empty:[/] {escape(f.path)}: {escape(f.message)}", highlight=False,
                              soft_wrap=True)
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
    err_console.print(f"[red]{report.rejected} line(s) rejected[/], written to {escape(str(report.rejects_file))}:",
                      highlight=False, soft_wrap=True)
    for r in first:
        fld = f" field {r['field']}:" if r.get("field") else ""
        err_console.print(f"  {escape(str(r['file']))}:{r['line']}:{escape(fld)} {escape(str(r['reason']))}",
                          highlight=False, soft_wrap=True)
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
