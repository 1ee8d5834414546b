"""The engine's trace: one contract ``request`` record per finished request, written as
JSONL by a background thread.

The engine thread only builds the record and puts it on a bounded queue; when the queue
is full the oldest record is dropped and counted. Writing never raises into the engine.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from typing import Any

from infdebug.schema import FinishReason, Request, encode_record
from infdebug.tracer.engine.engine import NoHooks, Sequence

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}


class JsonlTraceWriter(NoHooks):
    """Engine hooks that write one ``request`` record per finished request."""

    def __init__(
        self,
        trace_dir: str,
        *,
        replica: str,
        deployment: str | None,
        model: str,
        engine_version: str,
        tokenizer_fp: str | None,
        template_fp: str | None,
        max_queue: int = 10_000,
    ) -> None:
        os.makedirs(trace_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.path = os.path.join(trace_dir, f"{replica}-{stamp}-{os.getpid()}.requests.jsonl")
        self.replica, self.deployment, self.model = replica, deployment, model
        self.engine_version = engine_version
        self.tokenizer_fp, self.template_fp = tokenizer_fp, template_fp
        self.dropped = 0
        self.written = 0
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=max_queue)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._thread = threading.Thread(target=self._run, name="infdebug-trace-writer", daemon=True)
        self._thread.start()

    def finished(self, seq: Sequence) -> None:
        try:
            line = encode_record(self.record(seq))
        except Exception:
            self.dropped += 1
            return
        while True:
            try:
                self._q.put_nowait(line)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._q.get_nowait()
                    self.dropped += 1

    def record(self, seq: Sequence) -> Request:
        t = seq.timing()
        p = seq.params
        sampling: dict[str, Any] = p.to_json()
        sampling["stop_ids"] = sorted(seq.stop_ids)
        return Request(
            request_id=seq.request_id,
            replica=self.replica,
            t_arrival=t["t_arrival"],
            deployment=self.deployment,
            model=self.model,
            engine="infdebug",
            engine_version=self.engine_version,
            tokenizer_fp=self.tokenizer_fp,
            template_fp=self.template_fp,
            queue_s=t["queue_s"],
            prefill_s=t["prefill_s"],
            ttft_s=t["ttft_s"],
            e2e_s=t["e2e_s"],
            token_times_s=t["token_times_s"],
            messages=seq.messages,
            prompt_text=seq.prompt_text,
            prompt_ids=seq.prompt_ids,
            output_text=seq.text,
            output_ids=seq.output_ids,
            cached_prompt_tokens=seq.cached_tokens,
            finish_reason=_FINISH.get(seq.finish_reason or ""),
            sampling=sampling,
        )

    def _run(self) -> None:
        while True:
            line = self._q.get()
            if line is None:
                return
            try:
                self._fh.write(line)
                # flush each batch the queue holds, so a killed process loses at most that
                if self._q.empty():
                    self._fh.flush()
                self.written += 1
            except OSError:
                self.dropped += 1

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
