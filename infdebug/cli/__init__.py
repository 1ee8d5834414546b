"""``infdebug``: the command line, one module per command group.

Configuration comes from a flag, then an ``INFDEBUG_*`` environment variable, then the
default. Every command has ``--json``. Exit codes: 0 done, 2 nothing could be done (the
reason is one line on stderr), 3 done with some input set aside (ingest's rejected lines).

A command group is a module here with a ``register(group)`` function, listed in
:data:`GROUPS`; commands import heavy libraries (torch, tokenizers) only when they run.
"""

from __future__ import annotations

import importlib

import click

from infdebug import __version__
from infdebug.cli.context import CliContext
from infdebug.cli.options import store_options

GROUPS = (
    "ingest",
    "collect",
    "query",
    "analyze",
    "diff",
    "engine",
    "sidecar",
    "text",
    "profile",
    "fleet",
    "workload",
    "store",
    "dashboard",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="infdebug")
@store_options()
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
    ctx.obj = CliContext(home, clickhouse)


for _name in GROUPS:
    importlib.import_module(f"infdebug.cli.{_name}").register(cli)


def main() -> None:
    cli(prog_name="infdebug")
