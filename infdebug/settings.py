"""Configuration: a flag, then the ``INFDEBUG_*`` environment variable, then the default.

Every environment variable infdebug reads is read here, when a value is asked for, never at
import (a test or a long-lived process that changes the environment sees the change). The
CLI's click options name the same variables (``envvar=``); ``ENV`` lists them all.
"""

from __future__ import annotations

import os

HOME = "INFDEBUG_HOME"
CLICKHOUSE_URL = "INFDEBUG_CLICKHOUSE_URL"
RETENTION_DAYS = "INFDEBUG_RETENTION_DAYS"
TRACE_RETENTION_DAYS = "INFDEBUG_TRACE_RETENTION_DAYS"
TRACE_SAMPLE = "INFDEBUG_TRACE_SAMPLE"
MAX_LATENCY_S = "INFDEBUG_MAX_LATENCY_S"
DEMO_SECONDS = "INFDEBUG_DEMO_SECONDS"
DEMO_PORT = "INFDEBUG_DEMO_PORT"
MAX_BODY_MB = "INFDEBUG_MAX_BODY_MB"
HEADER_TIMEOUT = "INFDEBUG_HEADER_TIMEOUT"
BODY_TIMEOUT = "INFDEBUG_BODY_TIMEOUT"
OTLP_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"

ENV: dict[str, str] = {
    HOME: "the embedded store's directory (default ./.infdebug)",
    CLICKHOUSE_URL: "a ClickHouse server to use instead of the embedded store",
    RETENTION_DAYS: "days rows are kept after ingest (table TTL; default 30)",
    TRACE_RETENTION_DAYS: "days requests keep their token arrays (IDs, times, logprobs) after "
    "ingest (column TTL, set when the store is created; default: the rows' retention)",
    TRACE_SAMPLE: "share (0..1) of ordinary requests ingest keeps with full token arrays and "
    "texts; anomalous ones are always kept whole (default 1: all)",
    MAX_LATENCY_S: "latencies past this many seconds are dropped at ingest (default 86400)",
    DEMO_SECONDS: "how long `make demo` replays the trace (default 60)",
    DEMO_PORT: "the demo fleet's first port (default 8100)",
    MAX_BODY_MB: "largest request body a server accepts, in MiB (default 4; 413 beyond)",
    HEADER_TIMEOUT: "seconds a client has to send a request's headers (default 10)",
    BODY_TIMEOUT: "seconds a client has to send a request's body (default 30; 408 beyond)",
    OTLP_TRACES_ENDPOINT: "OTLP/HTTP traces endpoint for the tracer's spans (standard OTel name)",
    OTLP_ENDPOINT: "OTLP/HTTP endpoint, when the traces-specific one is unset (standard OTel name)",
}


def env(name: str) -> str | None:
    """The variable's value, stripped; None when unset or blank."""
    v = os.environ.get(name)
    return v.strip() or None if v is not None else None


def home(flag: str | None = None) -> str:
    return flag or env(HOME) or os.path.join(os.getcwd(), ".infdebug")


def clickhouse_url(flag: str | None = None) -> str | None:
    return flag or env(CLICKHOUSE_URL)


def _number(name: str, default: float, *, integer: bool = False) -> float:
    raw = env(name)
    if raw is None:
        return default
    try:
        v = int(raw) if integer else float(raw)
    except ValueError:
        from infdebug.errors import InputError

        kind = "an integer" if integer else "a number"
        raise InputError(f"{name}: expected {kind}, got {raw!r}") from None
    if v <= 0:
        from infdebug.errors import InputError

        raise InputError(f"{name}: expected a value > 0, got {raw!r}")
    return v


def retention_days() -> int:
    return int(_number(RETENTION_DAYS, 30, integer=True))


def trace_retention_days() -> int:
    return int(_number(TRACE_RETENTION_DAYS, retention_days(), integer=True))


def trace_sample() -> float:
    """``INFDEBUG_TRACE_SAMPLE``: a share in (0, 1] (collectors/sampling.py)."""
    v = _number(TRACE_SAMPLE, 1.0)
    if v > 1:
        from infdebug.errors import InputError

        raise InputError(f"{TRACE_SAMPLE}: expected a share in (0, 1], got {v!r}")
    return v


def demo_seconds() -> float:
    return _number(DEMO_SECONDS, 60.0)


def demo_port() -> int:
    return int(_number(DEMO_PORT, 8100, integer=True))


def otlp_endpoint(flag: str | None = None) -> str | None:
    return flag or env(OTLP_TRACES_ENDPOINT) or env(OTLP_ENDPOINT)
