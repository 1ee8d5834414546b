"""``infdebug collect otlp``: an OTLP/HTTP trace receiver that spools and loads spans."""

from __future__ import annotations

import os
import threading

import click

from infdebug.cli.collect import _say, _stopping, collect_group
from infdebug.cli.context import CliContext, pass_cli
from infdebug.console import print_json


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise click.BadParameter(f"expected HOST:PORT, found {value!r}") from None


@collect_group.command("otlp")
@click.option("--listen", default="127.0.0.1:4318", show_default=True, metavar="HOST:PORT")
@click.option(
    "--spool",
    "spool_dir",
    default=None,
    metavar="DIR",
    help="Spool directory (default: $INFDEBUG_HOME/otlp-spool).",
)
@click.option(
    "--spool-max-bytes",
    type=click.IntRange(min=4096),
    default=1 << 30,
    show_default=True,
    help="Refuse batches (503, Retry-After) past this.",
)
@click.option(
    "--token",
    envvar="INFDEBUG_OTLP_TOKEN",
    default=None,
    help="Bearer token clients must send (env INFDEBUG_OTLP_TOKEN); 401 without.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=16 << 20,
    show_default=True,
    help="Bodies over this are refused (413).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON at the end.")
@pass_cli
def otlp(
    obj: CliContext,
    listen: str,
    spool_dir: str | None,
    spool_max_bytes: int,
    token: str | None,
    max_body_bytes: int,
    as_json: bool,
) -> None:
    """Receive OTLP/HTTP traces on POST /v1/traces (protobuf or JSON, gzip) and load every
    span into otel_traces, exactly once, until SIGINT / SIGTERM.

    \b
      infdebug collect otlp                      listen on 127.0.0.1:4318
      vllm serve MODEL --otlp-traces-endpoint http://127.0.0.1:4318/v1/traces

    A batch is written to the spool (fsync) before it is answered 200; the loader replays
    the spool into the store and deletes what it loaded. When the store is busy or a
    --clickhouse server is unreachable, the spool keeps everything until it is back.
    """
    from infdebug import settings
    from infdebug.collectors.otlp import OtlpReceiver, SpoolLoader
    from infdebug.collectors.spool import Spool

    host, port = _listen(listen)
    home = settings.home(obj.home)
    spool = Spool(spool_dir or os.path.join(home, "otlp-spool"), max_bytes=spool_max_bytes)
    rx = OtlpReceiver(
        spool, host=host, port=port, token=token, max_body_bytes=max_body_bytes, say=_say
    )
    server = settings.clickhouse_url(obj.clickhouse) is not None
    loader = SpoolLoader(spool, obj.open_store, say=_say, server=server)
    stop = threading.Event()
    rx.start()
    _say(f"receiving OTLP traces on http://{host}:{rx.port}/v1/traces, spool {spool.directory}")
    try:
        with _stopping(stop.set):
            loader.run(stop)
    finally:
        rx.stop()
    stats = rx.stats() | loader.stats()
    if as_json:
        print_json(stats)
    else:
        _say(", ".join(f"{k} {v:,}" for k, v in stats.items()))
