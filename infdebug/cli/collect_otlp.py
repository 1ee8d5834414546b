"""``infdebug collect otlp``: an OTLP/HTTP trace receiver that spools and loads spans."""

from __future__ import annotations

from typing import Any

import click

from infdebug.cli.collect import collect_group
from infdebug.cli.collect_run import Plan, listen_address, otlp_options, pump_options, run_plan
from infdebug.cli.context import CliContext, pass_cli


@collect_group.command("otlp")
@click.option("--listen", default="127.0.0.1:4318", show_default=True, metavar="HOST:PORT")
@otlp_options()
@pump_options()
@pass_cli
def otlp(obj: CliContext, /, listen: str, **opts: Any) -> None:
    """Receive OTLP/HTTP traces on POST /v1/traces (protobuf or JSON, gzip) and load every
    span into otel_traces, exactly once, until SIGINT / SIGTERM. Spans that describe a
    request (vLLM's, GenAI semantic conventions, infdebug's own) also become request records.

    \b
      infdebug collect otlp                      listen on 127.0.0.1:4318
      vllm serve MODEL --otlp-traces-endpoint http://127.0.0.1:4318/v1/traces

    A batch is written to the spool (fsync) before it is answered 200; the loader replays
    the spool into the store and deletes what it loaded. When the store is busy or a
    --clickhouse server is unreachable, the spool keeps everything until it is back; a full
    spool answers 503 with Retry-After, which OTLP exporters retry. --spool DIR is the
    spool itself here (default $INFDEBUG_HOME/otlp-spool).
    """
    spool = opts.get("spool_dir")
    plan = Plan(otlp=listen_address(listen), spools={"otlp": spool} if spool else {}, opts=opts)
    run_plan(obj, plan)
