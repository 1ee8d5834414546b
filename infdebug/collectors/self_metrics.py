"""The collector's own ``/metrics``: ``Pump.status()`` as Prometheus series, read at scrape time.

Every numeric counter of every source is ``infdebug_collector_<name>{source="otlp"}``;
the pump's are ``infdebug_collector_lag_seconds``, ``…_spool_bytes``, ``…_backlog_frames``,
``…_store_waiting`` (1 while it waits for the store). Counters (``…_total``) are the ones
that only grow; the rest are gauges.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

_GAUGES = {"spool_bytes", "backlog_frames", "targets", "targets_down", "rate", "lag_s"}
_SAFE = re.compile(r"[^a-zA-Z0-9_]")


def _families(status: Callable[[], dict[str, Any]]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    doc = status()
    by_name: dict[str, Any] = {}
    for source, d in doc.items():
        if source == "pump":
            continue
        for key, value in d.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            name = "infdebug_collector_" + _SAFE.sub("_", key)
            fam = by_name.get(name)
            if fam is None:
                cls = GaugeMetricFamily if key in _GAUGES else CounterMetricFamily
                fam = by_name[name] = cls(name, f"{key} of a collector source", labels=["source"])
            fam.add_metric([source], float(value))
    yield from by_name.values()
    p = doc.get("pump", {})
    for key, name, help_ in (
        ("lag_s", "lag_seconds", "seconds since the pump last left nothing unloaded"),
        ("spool_bytes", "spool_bytes", "bytes in every spool, loaded or not"),
        ("backlog_frames", "backlog_frames", "spool frames received and not loaded yet"),
        ("waiting", "store_waiting", "1 while the store is held elsewhere or unreachable"),
    ):
        yield GaugeMetricFamily(f"infdebug_collector_{name}", help_, value=float(p.get(key, 0)))
    yield CounterMetricFamily(
        "infdebug_collector_store_waits", "times the store went away", value=p.get("store_waits", 0)
    )


class _StatusCollector:
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        return _families(self._status)


def serve_metrics(status: Callable[[], dict[str, Any]], host: str, port: int) -> Any:
    """Serve ``/metrics`` on ``host:port`` (a daemon thread); the server (``.shutdown()``)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def metrics_text(status: Callable[[], dict[str, Any]]) -> bytes:
    """The exposition ``serve_metrics`` serves (tests)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status))
    return bytes(generate_latest(registry))
