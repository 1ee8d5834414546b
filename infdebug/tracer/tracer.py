"""The in-process tracer: engine hooks that turn every finished request into one contract
``request`` record and fan it out to exporters (JSONL, Prometheus, OpenTelemetry).

The engine thread does almost nothing here. The engine itself appends each output token's
ID and monotonic time to the sequence's lists (the columnar buffers the trace is built
from); ``step_tokens`` is a no-op, and ``finished`` only hands the finished sequence to a
bounded queue. A background thread builds the record, applies redaction, and calls the
exporters. When that queue is full the oldest sequence is dropped and counted; an exporter
that raises is counted and skipped. Nothing here raises into the engine.

Redaction (``--redact``), applied once to the record every exporter receives:

- ``none``: everything the engine knows.
- ``prompts``: no prompt text, no message contents (roles stay), no output text; token IDs,
  lengths, timings and fingerprints stay, so token-level analysis still works.
- ``all``: ``prompts`` and no token IDs either (``prompt_ids``/``output_ids`` are left
  empty: ``None``). Output length survives as ``len(token_times_s)``; prompt length is
  only in the metrics and spans (``gen_ai.usage.input_tokens``), which read it from the
  sequence, not from the record.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from infdebug.schema import FinishReason, Request
from infdebug.tracer.engine.engine import NoHooks, Sequence

Redact = Literal["none", "prompts", "all"]
REDACT_CHOICES: tuple[str, ...] = ("none", "prompts", "all")

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}
_log = logging.getLogger("infdebug.tracer")

T = TypeVar("T")


class Exporter(Protocol):
    """One destination for finished-request records. ``export`` runs on the tracer's
    background thread, never on the engine thread; it should not block for long."""

    def export(self, record: Request, seq: Sequence) -> None: ...

    def close(self) -> None: ...


class DropOldestQueue(Generic[T]):
    """A bounded FIFO between two threads: ``put`` never blocks; when full it drops the
    oldest item and reports it through ``on_drop``."""

    def __init__(self, maxsize: int, on_drop: Callable[[int], None] | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.dropped = 0
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


@dataclass(frozen=True)
class ReplicaInfo:
    """What the tracer stamps on every record of one replica."""

    replica: str
    model: str
    deployment: str | None = None
    engine: str = "infdebug"
    engine_version: str | None = None
    tokenizer_fp: str | None = None
    template_fp: str | None = None


def build_record(seq: Sequence, info: ReplicaInfo, redact: Redact = "none") -> Request:
    """The contract record for one finished sequence, redacted as asked."""
    t = seq.timing()
    sampling: dict[str, Any] = seq.params.to_json()
    sampling["stop_ids"] = sorted(seq.stop_ids)
    text_ok = redact == "none"
    ids_ok = redact != "all"
    messages = seq.messages
    if messages is not None and not text_ok:
        messages = [{"role": m.get("role")} for m in messages]
    return Request(
        request_id=seq.request_id,
        replica=info.replica,
        t_arrival=t["t_arrival"],
        deployment=info.deployment,
        model=info.model,
        engine=info.engine,
        engine_version=info.engine_version,
        tokenizer_fp=info.tokenizer_fp,
        template_fp=info.template_fp,
        queue_s=t["queue_s"],
        prefill_s=t["prefill_s"],
        ttft_s=t["ttft_s"],
        e2e_s=t["e2e_s"],
        token_times_s=t["token_times_s"],
        messages=messages,
        prompt_text=seq.prompt_text if text_ok else None,
        prompt_ids=list(seq.prompt_ids) if ids_ok else None,
        output_text=seq.text if text_ok else None,
        output_ids=list(seq.output_ids) if ids_ok else None,
        cached_prompt_tokens=seq.cached_tokens,
        finish_reason=_FINISH.get(seq.finish_reason or ""),
        sampling=sampling,
        error="engine step failed" if seq.finish_reason == "error" else None,
    )


class Tracer(NoHooks):
    """Engine hooks that build one ``request`` record per finished request, off the engine
    thread, and give it to every exporter."""

    def __init__(
        self,
        info: ReplicaInfo,
        exporters: list[Exporter],
        *,
        redact: Redact = "none",
        max_queue: int = 10_000,
        on_drop: Callable[[int], None] | None = None,
        on_error: Callable[[int], None] | None = None,
    ) -> None:
        if redact not in REDACT_CHOICES:
            raise ValueError(f"redact must be one of {', '.join(REDACT_CHOICES)}, got {redact!r}")
        self.info = info
        self.exporters = list(exporters)
        self.redact: Redact = redact
        self.errors = 0
        self.exported = 0
        self._on_error = on_error
        self._q: DropOldestQueue[Sequence] = DropOldestQueue(max_queue, on_drop)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="infdebug-tracer", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self._q.dropped

    # -- engine thread -------------------------------------------------------------------
    # admitted / scheduled / prefill_done / step_tokens: the engine already stamps the
    # times and appends token IDs and times to the sequence; nothing more to do here.

    def finished(self, seq: Sequence) -> None:
        try:
            self._q.put(seq)
        except Exception:
            self._count_error()

    # -- background thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._q.get_batch(timeout=0.5)
            for seq in batch:
                self._export(seq)
            if not batch and self._q.closed:
                return

    def _export(self, seq: Sequence) -> None:
        try:
            rec = build_record(seq, self.info, self.redact)
        except Exception:
            _log.exception("could not build the trace record of %s", seq.request_id)
            self._count_error()
            return
        for ex in self.exporters:
            try:
                ex.export(rec, seq)
            except Exception:
                _log.exception("exporter %s failed on %s", type(ex).__name__, seq.request_id)
                self._count_error()
        self.exported += 1

    def _count_error(self) -> None:
        self.errors += 1
        if self._on_error is not None:
            with contextlib.suppress(Exception):
                self._on_error(1)

    def close(self, timeout: float = 30.0) -> None:
        """Export everything queued, then close every exporter (they flush and fsync)."""
        if self._closed:
            return
        self._closed = True
        self._q.close()
        self._thread.join(timeout=timeout)
        for ex in self.exporters:
            try:
                ex.close()
            except Exception:
                _log.exception("closing exporter %s failed", type(ex).__name__)
                self._count_error()
