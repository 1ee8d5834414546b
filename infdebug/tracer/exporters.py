"""The exporter seam: contract ``request`` records in, nothing else.

:class:`Exporter` has the shape of the OpenTelemetry SDK's ``SpanExporter`` (``export``,
``shutdown``, ``force_flush``), so the in-process tracer and a sidecar in front of another
engine hand the same records to the same exporters (JSONL, Prometheus, OTel).
:class:`InMemoryExporter` is its real fake (as OTel's ``InMemorySpanExporter``), and
:class:`DropOldestQueue` the bounded queue the tracer and the JSONL writer share.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from infdebug.schema import Request

T = TypeVar("T")


class Exporter(Protocol):
    """One destination for finished-request records. ``export`` runs on the tracer's
    background thread, never on the engine thread; it should not block for long."""

    def export(self, record: Request) -> None: ...

    def shutdown(self) -> None:
        """Export what is pending, then release files and connections. Called once."""
        ...

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export what is pending; False when that did not finish within the timeout."""
        ...


def token_counts(record: Request) -> tuple[int, int]:
    """(prompt, output) token counts of a record: its ``prompt_tokens``/``output_tokens``,
    else the lengths of its IDs (the output also from its token times, which survive
    ``--redact all``)."""
    n_prompt = (
        record.prompt_tokens if record.prompt_tokens is not None else len(record.prompt_ids or ())
    )
    if record.output_tokens is not None:
        return n_prompt, record.output_tokens
    return n_prompt, len(record.output_ids or ()) or len(record.token_times_s or ())


class InMemoryExporter:
    """Keeps every exported record in memory (tests, and a tracer's last-records view).
    Records exported after ``shutdown`` are not kept, as OTel's in-memory exporter does."""

    def __init__(self) -> None:
        self._records: list[Request] = []
        self._lock = threading.Lock()
        self.is_shutdown = False

    def export(self, record: Request) -> None:
        with self._lock:
            if not self.is_shutdown:
                self._records.append(record)

    @property
    def records(self) -> list[Request]:
        """A copy of the records exported so far, in order."""
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def shutdown(self) -> None:
        self.is_shutdown = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class DropOldestQueue(Generic[T]):
    """A bounded FIFO between two threads: ``put`` never blocks; when full it drops the
    oldest item and reports it through ``on_drop``. ``puts`` counts every item put, so
    ``puts - dropped`` items have been or will be handed out by ``get_batch``."""

    def __init__(self, maxsize: int, on_drop: Callable[[int], None] | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.dropped = 0
        self.puts = 0
        self._on_drop = on_drop
        self._items: deque[T] = deque()
        self._cv = threading.Condition()
        self.closed = False

    def put(self, item: T) -> None:
        with self._cv:
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
                if self._on_drop is not None:
                    with contextlib.suppress(Exception):  # a metric must never break the producer
                        self._on_drop(1)
            self._items.append(item)
            self.puts += 1
            self._cv.notify()

    def get_batch(self, timeout: float | None) -> list[T]:
        """Everything queued now (waiting up to ``timeout`` for the first item)."""
        with self._cv:
            if not self._items and not self.closed:
                self._cv.wait(timeout)
            out = list(self._items)
            self._items.clear()
            return out

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()

    def __len__(self) -> int:
        return len(self._items)


class Progress:
    """How far a consumer thread has got through a :class:`DropOldestQueue`: the consumer
    calls ``done(n)`` after handling n items; ``wait_for(target, timeout)`` blocks until
    ``handled + queue.dropped >= target`` (``target``: the queue's ``puts`` at the time).
    Items dropped after that time count too, so under overload it may return early."""

    def __init__(self, queue: DropOldestQueue[Any]) -> None:
        self._queue = queue
        self.handled = 0
        self._cv = threading.Condition()

    def done(self, n: int) -> None:
        with self._cv:
            self.handled += n
            self._cv.notify_all()

    def wait_for(self, target: int, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self.handled + self._queue.dropped >= target, timeout)
