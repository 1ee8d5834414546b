"""The in-process tracer: engine hooks that turn every finished request into one contract
``request`` record and fan it out to exporters (JSONL, Prometheus, OpenTelemetry).

The engine thread does almost nothing here. The engine itself appends each output token's
ID and monotonic time to the request's lists (the columnar buffers the trace is built
from); ``step_tokens`` is a no-op, and ``finished`` only hands the finished request (a
:class:`~infdebug.tracer.hooks.TracedRequest`) to a bounded queue. A background thread
builds the record, applies redaction, and calls the exporters with the record alone. When
that queue is full the oldest request is dropped and counted; an exporter that raises is
counted and skipped. Nothing here raises into the engine. This module knows no engine: it
reads requests through the hook interface only.

Redaction (``--redact``), applied once to the record every exporter receives:

- ``none``: everything the engine knows.
- ``prompts``: no prompt text, no message contents (the standard roles stay; any other role
  is a client's text and is replaced), no output text, and no text among the sampling
  parameters (each ``stop`` string, and any other string there, becomes ``"[redacted]"``, so
  their number stays); token IDs, lengths, timings and fingerprints stay, so token-level
  analysis still works.
- ``all``: ``prompts`` and no token IDs either (``prompt_ids``/``output_ids`` are left
  empty: ``[]``, the contract's "not recorded"). Lengths survive in ``prompt_tokens`` and
  ``output_tokens``, which every record carries whatever the redaction (and in
  ``len(token_times_s)``); the metrics and
  spans (``gen_ai.usage.input_tokens``) read them from the record.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from infdebug.schema import FinishReason, Request
from infdebug.tracer.exporters import DropOldestQueue, Exporter, Progress
from infdebug.tracer.hooks import NoHooks, TracedRequest

Redact = Literal["none", "prompts", "all"]
REDACT_CHOICES: tuple[str, ...] = ("none", "prompts", "all")

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "error": "error",
}
_log = logging.getLogger(__name__)
REDACTED = "[redacted]"
# what ``TracedRequest.extra`` may set, and which of it is free text
_EXTRA = frozenset(
    {"prompt_tokens", "output_tokens", "finish_reason_raw", "error", "abort_message", "derived"}
)
_EXTRA_TEXT = frozenset({"error", "abort_message"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function", "ipython"})


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


def build_record(seq: TracedRequest, info: ReplicaInfo, redact: Redact = "none") -> Request:
    """The contract record for one finished request, redacted as asked."""
    t = seq.timing()
    text_ok = redact == "none"
    ids_ok = redact != "all"
    messages = seq.messages
    sampling = seq.sampling()
    if not text_ok:
        if messages is not None:
            messages = [{"role": _role(m.get("role"))} for m in messages]
        sampling = {k: _no_text(v) for k, v in sampling.items()}
    rec = Request(
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
        output_text=seq.output_text if text_ok else None,
        output_ids=list(seq.output_ids) if ids_ok else None,
        output_logprobs=list(lps) if ids_ok and (lps := seq.output_logprobs) else None,
        cached_prompt_tokens=seq.cached_tokens,
        finish_reason=_FINISH.get(seq.finish_reason or ""),
        sampling=sampling,
        error="engine step failed" if seq.finish_reason == "error" else None,
        prompt_tokens=len(seq.prompt_ids),
        output_tokens=len(seq.output_ids),
    )
    extra = {k: v for k, v in seq.extra().items() if v is not None and k in _EXTRA}
    if not text_ok:  # an engine's error or abort message may quote the prompt
        extra = {k: REDACTED if k in _EXTRA_TEXT else v for k, v in extra.items()}
    return msgspec.structs.replace(rec, **extra) if extra else rec


def _role(role: Any) -> str | None:
    return role if role is None or (isinstance(role, str) and role in ROLES) else REDACTED


def _no_text(v: Any) -> Any:
    """``v`` with every string in it replaced (numbers, booleans and shapes kept)."""
    if isinstance(v, str):
        return REDACTED
    if isinstance(v, list | tuple):
        return [_no_text(x) for x in v]
    if isinstance(v, dict):
        return {f"{REDACTED}{i}": _no_text(x) for i, x in enumerate(v.values())}
    return v


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
        self._q: DropOldestQueue[TracedRequest] = DropOldestQueue(max_queue, on_drop)
        self._progress = Progress(self._q)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="infdebug-tracer", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self._q.dropped

    # -- engine thread -------------------------------------------------------------------
    # admitted / scheduled / prefill_done / step_tokens: the engine already stamps the
    # times and appends token IDs and times to the sequence; nothing more to do here.

    def finished(self, seq: TracedRequest) -> None:
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
            if batch:
                self._progress.done(len(batch))
            elif self._q.closed:
                return

    def _export(self, seq: TracedRequest) -> None:
        try:
            rec = build_record(seq, self.info, self.redact)
        except Exception:
            _log.exception("could not build the trace record of %s", seq.request_id)
            self._count_error()
            return
        for ex in self.exporters:
            try:
                ex.export(rec)
            except Exception:
                _log.exception("exporter %s failed on %s", type(ex).__name__, seq.request_id)
                self._count_error()
        self.exported += 1

    def _count_error(self) -> None:
        self.errors += 1
        if self._on_error is not None:
            with contextlib.suppress(Exception):
                self._on_error(1)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export every request finished before this call, then flush every exporter; False
        when that did not finish within the timeout."""
        deadline = time.monotonic() + timeout_millis / 1000
        if not self._progress.wait_for(self._q.puts, timeout_millis / 1000):
            return False
        ok = True
        for ex in self.exporters:
            left = int(max(0.0, deadline - time.monotonic()) * 1000)
            try:
                ok = ex.force_flush(left) and ok
            except Exception:
                _log.exception("flushing exporter %s failed", type(ex).__name__)
                self._count_error()
                ok = False
        return ok

    def close(self, timeout: float = 30.0) -> None:
        """Export everything queued, then shut every exporter down (they flush and fsync)."""
        if self._closed:
            return
        self._closed = True
        self._q.close()
        self._thread.join(timeout=timeout)
        for ex in self.exporters:
            try:
                ex.shutdown()
            except Exception:
                _log.exception("shutting down exporter %s failed", type(ex).__name__)
                self._count_error()
