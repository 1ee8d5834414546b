"""What every command shares when it fails: :class:`CommandFailed`, and ``--json`` that
prints JSON on stdout also then (``{"error": "…"}`` plus whatever partial report applies,
with the exit code kept); the latency ceiling and rejects path of commands that load logs.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, NoReturn

import click

from infdebug.console import fail, one_line, print_json
from infdebug.errors import InfdebugError


class CommandFailed(InfdebugError):
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
        print_json({"error": one_line(e.message), **e.doc})
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
