"""Latency sanity for request records: drop the latencies that cannot be true, keep the request.

Old vLLM ``RequestMetrics`` mix a monotonic ``arrival_time`` with wall-clock token times, so
``first_token_time - arrival_time`` comes out as a TTFT of 1.7e9 s; other engines and
hand-written exporters produce negative durations, or a TTFT longer than the whole request.
``sanitize_timing`` is the one rule, used by the engine-log readers (``build_request``) and by
contract JSONL ingest (the careful path; the fast path's row guard sends a file with such a
request there, see ``store.ddl.request_latency_guard``). A latency — ``queue_s``,
``prefill_s``, ``ttft_s``, ``e2e_s`` or a ``token_times_s`` entry — is dropped (``None``, or
``[]`` for the token times) when it is

* negative or not a finite number;
* past the ceiling (default one day; ``--max-latency`` on ingest/analyze, or
  ``INFDEBUG_MAX_LATENCY_S``);
* past the arrival-to-finish span ``e2e_s`` where that is known, with a small tolerance
  (``e2e_s + max(SPAN_TOLERANCE_S, SPAN_TOLERANCE_REL * e2e_s)``).

``e2e_s`` is judged first (against the ceiling only); the others are then judged against
what is left of it. Each drop comes back as a note, one line per field and reason, which
ingest counts per file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import msgspec

DEFAULT_MAX_LATENCY_S = 86400.0
MAX_LATENCY_ENV = "INFDEBUG_MAX_LATENCY_S"
SPAN_TOLERANCE_S = 0.01  # clocks read a few microseconds apart, rounding in the log
SPAN_TOLERANCE_REL = 0.01
SCALAR_FIELDS = ("queue_s", "prefill_s", "ttft_s")  # judged against e2e_s as well

R = TypeVar("R", bound=msgspec.Struct)

# Set by ``latency_ceiling`` for the duration of an ingest, so the readers (which get no
# options) apply the same ceiling as the flag given to the command.
_CEILING: ContextVar[float | None] = ContextVar("infdebug_max_latency_s", default=None)


class LatencyConfigError(ValueError):
    """A ceiling that is not a positive number; the message names where it came from."""


def parse_max_latency(value: str | float, where: str) -> float:
    """Seconds from a flag or environment value (``86400``, ``1e5``, ``inf``); > 0."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise LatencyConfigError(
            f"{where}: expected a number of seconds > 0, got {value!r}"
        ) from None
    if math.isnan(s) or s <= 0:
        raise LatencyConfigError(f"{where}: expected a number of seconds > 0, got {value!r}")
    return s


def max_latency_s(flag: str | float | None = None) -> float:
    """The latency ceiling now: the flag, else the ingest in progress, else
    ``INFDEBUG_MAX_LATENCY_S``, else one day. Read at each call, never at import."""
    if flag is not None:
        return parse_max_latency(flag, "--max-latency")
    current = _CEILING.get()
    if current is not None:
        return current
    env = os.environ.get(MAX_LATENCY_ENV)
    if env is not None and env.strip():
        return parse_max_latency(env.strip(), MAX_LATENCY_ENV)
    return DEFAULT_MAX_LATENCY_S


@contextmanager
def latency_ceiling(seconds: float) -> Iterator[float]:
    """Make ``seconds`` the ceiling that ``sanitize_timing`` applies inside the block."""
    token = _CEILING.set(seconds)
    try:
        yield seconds
    finally:
        _CEILING.reset(token)


def fmt_seconds(v: float) -> str:
    """Two significant digits, exponent without padding: ``1.7e9``, ``86400``, ``0.25``."""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    s = f"{v:.2g}"
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"
    return s


def span_limit(e2e_s: float) -> float:
    """The latest a latency may be, given the request's arrival-to-finish span."""
    return e2e_s + max(SPAN_TOLERANCE_S, SPAN_TOLERANCE_REL * e2e_s)


def _why(name: str, v: float, ceiling: float, span: float | None) -> str | None:
    if v != v or math.isinf(v):
        return f"{name} is not a finite number: dropped"
    if v < 0:
        return f"{name} negative: dropped"
    if v > ceiling:
        return f"{name} {fmt_seconds(v)} s past the {fmt_seconds(ceiling)} s ceiling: dropped"
    if span is not None and v > span:
        return f"{name} past e2e_s, the arrival-to-finish span: dropped"
    return None


def _why_times(times: list[float], ceiling: float, span: float | None) -> str | None:
    if not all(map(math.isfinite, times)):
        return "token_times_s has a time that is not a finite number: dropped"
    lo, hi = min(times), max(times)
    if lo < 0:
        return "token_times_s has a negative time: dropped"
    if hi > ceiling:
        return (
            f"token_times_s has a time {fmt_seconds(hi)} s past the {fmt_seconds(ceiling)} s "
            "ceiling: dropped"
        )
    if span is not None and hi > span:
        return "token_times_s has a time past e2e_s, the arrival-to-finish span: dropped"
    return None


def sanitize_timing(req: R, ceiling: float | None = None) -> tuple[R, list[str]]:
    """``req`` without the latencies that cannot be true, and one note per field dropped.

    ``req`` is a contract ``Request`` (or its strict decoding twin); the same object comes
    back when nothing is wrong. ``ceiling`` defaults to ``max_latency_s()``.
    """
    lim = max_latency_s() if ceiling is None else ceiling
    r: Any = req
    drop: dict[str, Any] = {}
    notes: list[str] = []
    e2e = r.e2e_s
    if e2e is not None:
        why = _why("e2e_s", e2e, lim, None)
        if why:
            drop["e2e_s"], e2e = None, None
            notes.append(why)
    span = None if e2e is None else span_limit(e2e)
    for name in SCALAR_FIELDS:
        v = getattr(r, name)
        if v is not None:
            why = _why(name, v, lim, span)
            if why:
                drop[name] = None
                notes.append(why)
    times = r.token_times_s
    if times:
        why = _why_times(times, lim, span)
        if why:
            drop["token_times_s"] = []
            drop["token_offsets_us"] = []  # the same times in the integer form
            notes.append(why)
    if not drop:
        return req, notes
    return msgspec.structs.replace(req, **drop), notes
