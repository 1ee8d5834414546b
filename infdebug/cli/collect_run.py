"""The option bundles of the collectors and the runner every ``collect`` command goes through.

``infdebug collect --otlp … --prometheus … --logs … --gpu`` and the one-kind commands
(``collect otlp``, ``collect prometheus``, ``collect gpu``) all build a ``Plan`` and call
``run_plan``: producers that spool, one pump that loads (collectors/service.py), a status
line every ``--status-every`` seconds and the collector's own ``/metrics``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from infdebug.cli.context import CliContext
from infdebug.cli.options import stack as _stack
from infdebug.console import fail, print_json

F = TypeVar("F", bound=Callable[..., Any])


def listen_address(value: str, what: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` and ``PORT`` mean 127.0.0.1)."""
    host, _, port = value.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        raise click.BadParameter(f"{what}: expected HOST:PORT, found {value!r}") from None
    if not 0 <= p <= 65535:
        raise click.BadParameter(f"{what}: port {p} is not 0..65535")
    return host or "127.0.0.1", p


def otlp_options() -> Callable[[F], F]:
    """How the OTLP receiver guards itself: bearer token, body cap, spool cap."""
    return _stack(
        click.option(
            "--token",
            envvar="INFDEBUG_OTLP_TOKEN",
            default=None,
            help="Bearer token OTLP clients must send (env INFDEBUG_OTLP_TOKEN); 401 without.",
        ),
        click.option(
            "--max-body-bytes",
            type=click.IntRange(min=1),
            default=16 << 20,
            show_default=True,
            help="OTLP bodies over this are refused (413).",
        ),
        click.option(
            "--spool-max-bytes",
            type=click.IntRange(min=4096),
            default=1 << 30,
            show_default=True,
            help="Per spool: past this, OTLP batches get 503 + Retry-After and scrapes / GPU "
            "samples are refused (counted, warned once) until the loader catches up.",
        ),
    )


def scrape_options() -> Callable[[F], F]:
    return _stack(
        click.option(
            "--interval",
            type=click.FloatRange(min=0.05),
            default=10.0,
            show_default=True,
            metavar="S",
            help="Seconds between scrapes of every target.",
        ),
        click.option(
            "--scrape-timeout",
            type=click.FloatRange(min=0.05),
            default=5.0,
            show_default=True,
            metavar="S",
            help="A target that has not answered within this is counted as a timeout.",
        ),
    )


def gpu_options() -> Callable[[F], F]:
    return _stack(
        click.option(
            "--gpu-replica",
            default=None,
            metavar="NAME",
            help="Replica the GPU samples are stored under (default: this host's name).",
        ),
        click.option(
            "--gpu-hz",
            type=click.FloatRange(min=0.01, max=100),
            default=1.0,
            show_default=True,
            help="GPU samples per second.",
        ),
        click.option(
            "--simulate-gpu",
            is_flag=True,
            help="No GPU here: sample a synthetic signal instead, every record marked simulated.",
        ),
    )


def pump_options() -> Callable[[F], F]:
    """Where the spools are, how the store is shared, what is shown."""
    return _stack(
        click.option(
            "--spool",
            "spool_dir",
            default=None,
            metavar="DIR",
            help="Where the spools live: DIR/otlp, DIR/prometheus, DIR/gpu (default: "
            "$INFDEBUG_HOME/otlp-spool, prometheus-spool, gpu-spool).",
        ),
        click.option(
            "--load-interval",
            type=click.FloatRange(min=0.01),
            default=1.0,
            show_default=True,
            metavar="S",
            help="Seconds between the loader's rounds (each opens the store, loads, releases).",
        ),
        click.option(
            "--hold/--release",
            default=None,
            help="Keep the store open between rounds, or release it so other commands can "
            "use it. Default: release the embedded store, hold a ClickHouse server.",
        ),
        click.option(
            "--status-listen",
            default="127.0.0.1:9464",
            show_default=True,
            metavar="HOST:PORT",
            help="Serve the collector's own counters at http://HOST:PORT/metrics ('off': not).",
        ),
        click.option(
            "--status-every",
            type=click.FloatRange(min=0),
            default=10.0,
            show_default=True,
            metavar="S",
            help="Print the status line every S seconds (0: never).",
        ),
        click.option(
            "--json", "as_json", is_flag=True, help="Print every counter as JSON when stopped."
        ),
    )


@dataclass
class Plan:
    """What one ``collect`` process runs."""

    otlp: tuple[str, int] | None = None
    targets: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    gpu: bool = False
    spools: dict[str, str] = field(default_factory=dict)  # kind -> directory (overrides)
    opts: dict[str, Any] = field(default_factory=dict)  # the bundles' values

    def empty(self) -> bool:
        return self.otlp is None and not self.targets and not self.logs and not self.gpu


def run_plan(obj: CliContext, plan: Plan) -> None:
    """Run ``plan`` until SIGINT / SIGTERM; the counters at the end (``--json``: as JSON)."""
    from infdebug import settings
    from infdebug.cli.collect import _say, _stopping
    from infdebug.collectors.service import Pump, status_line
    from infdebug.collectors.spool import Spool
    from infdebug.errors import InfdebugError

    o = plan.opts
    server = settings.clickhouse_url(obj.clickhouse) is not None
    home = settings.home(obj.home)
    base = o.get("spool_dir")

    def spool_dir(kind: str) -> str:
        if kind in plan.spools:
            return plan.spools[kind]
        return os.path.join(base, kind) if base else os.path.join(home, f"{kind}-spool")

    hold = o.get("hold")
    pump = Pump(
        obj.open_store,
        interval=o.get("load_interval", 1.0),
        hold=server if hold is None else hold,
        server=server,
        say=_say,
    )
    # SIGINT / SIGTERM from here on: a signal while the receivers start (a client may already
    # be answered) stops the run cleanly instead of killing the process
    signals = contextlib.ExitStack()
    signals.enter_context(_stopping(pump.stop))
    cap = o.get("spool_max_bytes", 1 << 30)
    started: list[Callable[[], None]] = []
    try:
        if plan.otlp is not None:
            _add_otlp(pump, plan.otlp, Spool(spool_dir("otlp"), max_bytes=cap), o, started)
        if plan.targets:
            _add_scrape(pump, plan.targets, Spool(spool_dir("prometheus"), max_bytes=cap), o)
        if plan.gpu:
            _add_gpu(pump, Spool(spool_dir("gpu"), max_bytes=cap), o)
        if plan.logs:
            _add_logs(obj, pump, plan.logs, o, server, home)
    except (InfdebugError, OSError) as e:
        for stop in started:
            stop()
        fail(str(e))
    metrics_server = _status_server(pump, o.get("status_listen", "off"))
    _say(
        "collecting: "
        + ", ".join(_describe(s) for s in pump.sources)
        + (f"; status at http://{_addr(metrics_server)}/metrics" if metrics_server else "")
    )
    every = float(o.get("status_every", 10.0))
    ticker = threading.Event()
    if every > 0:
        pump.status()  # the rates' baseline

        def tick() -> None:
            while not ticker.wait(every):
                _say(status_line(pump.status()))

        threading.Thread(target=tick, name="infdebug-status", daemon=True).start()
    try:
        pump.run()
    except InfdebugError as e:
        fail(f"collect failed: {e}")
    finally:
        ticker.set()
        for src in pump.sources:
            src.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
    _final_round(pump)
    signals.close()
    doc = pump.status()
    if o.get("as_json"):
        print_json(doc)
    else:
        _say("stopped: " + status_line(doc))
    sys.exit(0)


def _final_round(pump: Any) -> None:
    """After the producers stopped: load what they spooled last (the store permitting)."""
    from infdebug.collectors.tail import StoreUnavailable
    from infdebug.store.base import StoreError

    try:
        pump.round()
    except (StoreUnavailable, StoreError) as e:
        from infdebug.cli.collect import _say

        _say(f"stopping with data still spooled (loaded at the next start): {e}")
    finally:
        pump._release(force=True)


def _addr(server: Any) -> str:
    host, port = server.server_address[:2]
    return f"{host}:{port}"


def _describe(src: Any) -> str:
    return str(getattr(src, "describe", src.name))


def _status_server(pump: Any, listen: str) -> Any:
    from infdebug.cli.collect import _say
    from infdebug.collectors.self_metrics import serve_metrics

    if not listen or listen == "off":
        return None
    host, port = listen_address(listen, "--status-listen")
    try:
        return serve_metrics(pump.status, host, port)
    except OSError as e:
        _say(f"warning: no /metrics at {listen}: {e} (the status line still shows everything)")
        return None


def _add_otlp(
    pump: Any, addr: tuple[str, int], spool: Any, o: dict[str, Any], started: list[Any]
) -> None:
    from infdebug.cli.collect import _say
    from infdebug.collectors.otlp import OtlpReceiver, SpoolLoader
    from infdebug.collectors.service import Source

    host, port = addr
    rx = OtlpReceiver(
        spool,
        host=host,
        port=port,
        token=o.get("token"),
        max_body_bytes=o.get("max_body_bytes", 16 << 20),
        say=_say,
    ).start()
    started.append(rx.stop)
    loader = SpoolLoader(spool, pump.borrow, say=_say, server=pump.server)
    src = pump.add(Source("otlp", rx.stats, rx.stop, loader=loader, rate_key="loaded_spans"))
    src.describe = f"OTLP on http://{host}:{rx.port}/v1/traces (spool {spool.directory})"


def _add_scrape(pump: Any, specs: list[str], spool: Any, o: dict[str, Any]) -> None:
    from infdebug.cli.collect import _say
    from infdebug.collectors.record_spool import record_loader
    from infdebug.collectors.scrape import Scraper, Target
    from infdebug.collectors.service import Source

    scraper = Scraper(
        [Target.parse(s) for s in specs],
        spool,
        interval=o.get("interval", 10.0),
        timeout=o.get("scrape_timeout", 5.0),
        say=_say,
    )
    loader = record_loader(spool, pump.borrow, "prometheus", say=_say, server=pump.server)

    def stats() -> dict[str, Any]:
        return scraper.stats() | {"targets": len(scraper.targets)}

    scraper.start()
    src = pump.add(
        Source("prometheus", stats, scraper.stop, loader=loader, rate_key="loaded_metrics")
    )
    names = ", ".join(f"{t.target.name}={t.target.url}" for t in scraper.targets)
    src.describe = f"Prometheus every {scraper.interval:g} s from {names}"


def _add_gpu(pump: Any, spool: Any, o: dict[str, Any]) -> None:
    from infdebug.cli.collect import _say
    from infdebug.collectors.gpu_collect import GpuCollector
    from infdebug.collectors.record_spool import record_loader
    from infdebug.collectors.service import Source

    replica = o.get("gpu_replica") or socket.gethostname()
    gpu = GpuCollector(
        spool, replica, hz=o.get("gpu_hz", 1.0), simulate=o.get("simulate_gpu", False), say=_say
    ).start()
    loader = record_loader(spool, pump.borrow, "gpu", say=_say, server=pump.server)
    src = pump.add(Source("gpu", gpu.stats, gpu.stop, loader=loader, rate_key="loaded_gpu"))
    what = "SIMULATED GPU samples" if gpu.simulated else "NVML samples"
    src.describe = f"{what} at {o.get('gpu_hz', 1.0):g} Hz as {replica}"


def _add_logs(
    obj: CliContext, pump: Any, paths: list[str], o: dict[str, Any], server: bool, home: str
) -> None:
    from infdebug.cli.base import default_rejects_path, resolve_max_latency
    from infdebug.cli.collect import _say
    from infdebug.cli.options import trace_sample_assign
    from infdebug.collectors.service import Source
    from infdebug.collectors.tail import Tailer

    default_rejects = default_rejects_path(obj.home, obj.clickhouse, "collect")
    rejects_path = o.get("rejects_path") or default_rejects
    exclude = [rejects_path, os.path.dirname(default_rejects)] + ([] if server else [home])
    tailer = Tailer(
        paths,
        open_store=pump.borrow,
        rejects_path=rejects_path,
        follow=True,
        hold=False,  # the pump's store, dropped after each poll: the pump releases it
        server=server,
        strict=o.get("strict", False),
        fmt=o.get("fmt", "auto"),
        replica=o.get("replica"),
        max_latency=resolve_max_latency(o.get("max_latency")),
        exclude=exclude,
        say=_say,
        **trace_sample_assign(o.get("trace_sample"), o.get("trace_seed", 0)),
    )

    def stats() -> dict[str, Any]:
        return {"loaded": tailer.loaded, "rejected": tailer.rejected_lines, "polls": tailer.polls}

    src = pump.add(Source("logs", stats, tailer.stop, tailer=tailer, rate_key="loaded"))
    src.describe = f"logs {' '.join(paths)}"
