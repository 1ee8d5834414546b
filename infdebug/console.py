"""Terminal output shared by every command: rich consoles, one-line failures, JSON."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import sys
import uuid
from typing import Any, NoReturn

import click
from rich.console import Console

err_console = Console(stderr=True)
out_console = Console()


def fail(msg: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]infdebug:[/] {msg}", highlight=False, soft_wrap=True)
    sys.exit(code)


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
