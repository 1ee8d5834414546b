"""Terminal output shared by every command: rich consoles, one-line failures, JSON, and the
one way numbers are written in text output (``fmt_*``; ``--json`` keeps full precision).

On a terminal the consoles wrap at its width; piped or redirected, a line is never wrapped
(tables take the width their cells need), so an ID, a path or a row stays whole for grep,
cut and copy-paste. ID columns are ``no_wrap`` even on a terminal (see ``id_column``).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import re
import sys
import uuid
from typing import Any, NoReturn

import click
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.table import Table

# Piped or redirected: wide enough that nothing wraps (rich pads only to a table's own width).
UNWRAPPED_WIDTH = 100_000


class _Console(Console):
    """A rich Console that wraps at the terminal's width on a terminal and never otherwise.

    The decision is made at print time, against the stream printed to then (click's
    CliRunner swaps sys.stdout after import). COLUMNS applies to terminals only.
    """

    @property
    def size(self) -> ConsoleDimensions:
        dims: ConsoleDimensions = Console.size.fget(self)  # type: ignore[attr-defined]
        if self.is_terminal:
            return dims
        return ConsoleDimensions(UNWRAPPED_WIDTH, dims.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


err_console: Console = _Console(stderr=True)
out_console: Console = _Console()


def id_column(table: Table, header: str, **kw: Any) -> None:
    """Add a column of IDs (replica, request ID, fingerprint, pid…): never folded across
    lines, so what is shown can be copied whole. Other columns give way first; only a
    terminal too narrow for the IDs alone cuts them, visibly (…). Piped, nothing is cut."""
    table.add_column(header, no_wrap=True, overflow="ellipsis", **kw)


# --- numbers in text output ---------------------------------------------------------------------
# One rule for every command: three significant figures (at most two decimals), "—" for
# a missing value; times of a request in milliseconds, durations of a run in seconds,
# shares as percentages with one decimal.

MISSING = "—"


def fmt_number(x: float | None) -> str:
    """``x`` to three significant figures, at most two decimals: 0.0412 → 0.04, 4.12, 41.2,
    412, 4120."""
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return MISSING
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_ms(seconds: float | None) -> str:
    """A latency given in seconds, written in milliseconds (no unit): 0.0123 → 12.3."""
    return MISSING if seconds is None else fmt_number(seconds * 1000.0)


def fmt_seconds(seconds: float | None) -> str:
    """A duration in seconds, with its unit: 59.71 → "59.7 s"."""
    s = fmt_number(seconds)
    return s if s == MISSING else f"{s} s"


def fmt_percent(ratio: float | None) -> str:
    """A share given as a ratio, as a percentage with one decimal: 0.1234 → "12.3%"."""
    if ratio is None or ratio != ratio:
        return MISSING
    return f"{ratio * 100:.1f}%"


def fmt_rate(per_s: float | None) -> str:
    """A rate per second: 2.994 → "2.99/s"."""
    s = fmt_number(per_s)
    return s if s == MISSING else f"{s}/s"


def fail(msg: str, code: int = 2) -> NoReturn:
    """Say why the command stops, then exit with ``code``: one line on stderr,
    ``infdebug: msg`` (msg is plain text: ``[profile]`` stays as is), or, when the running
    command was given ``--json``, ``{"error": msg}`` on stdout. A message of several lines
    (ClickHouse's) is joined into one."""
    line = one_line(msg)
    if wants_json():
        print_json({"error": line})
    else:
        err_console.print(f"[bold red]infdebug:[/] {escape(line)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def one_line(msg: str) -> str:
    """``msg`` with its line breaks (and the blanks around them) made single spaces."""
    return " ".join(part.strip() for part in re.split(r"[\r\n]+", msg) if part.strip())


def wants_json() -> bool:
    """Whether the running click command was given ``--json`` (its ``as_json`` parameter)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("as_json"))


def to_jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(v).decode("ascii")
    if isinstance(v, dict):
        return {str(k): to_jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [to_jsonable(x) for x in v]
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    return v


def print_json(obj: Any) -> None:
    click.echo(json.dumps(to_jsonable(obj), ensure_ascii=False))
