"""The JSONL exporter: contract ``request`` records written by a background thread.

``export`` (called on the tracer's background thread, never the engine's) encodes the record
and puts the line on a bounded queue (the oldest line is dropped and counted when it is
full), so encoding overlaps the writer's system calls, which release the GIL. The writer
thread writes each drained batch and flushes it to the OS, so a process that is killed loses
nothing it had finished writing;
``force_flush`` waits until what was queued before it is written and flushed to the OS;
``shutdown`` drains, flushes and fsyncs. Files rotate by size (``max_bytes``) and age
(``max_age_s``); a rotated file is gzipped by the writer thread
(``NAME.requests.jsonl`` → ``NAME.requests.jsonl.gz``). Writing never raises into the caller.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from typing import IO

from infdebug.schema import Record, Request, encode_record
from infdebug.tracer.exporters import DropOldestQueue, Progress

_log = logging.getLogger(__name__)


class JsonlExporter:
    def __init__(
        self,
        trace_dir: str,
        *,
        replica: str,
        max_queue: int = 10_000,
        max_bytes: int | None = 256 * 1024 * 1024,
        max_age_s: float | None = None,
        on_drop: Callable[[int], None] | None = None,
        start: bool = True,
        suffix: str = "requests",
    ) -> None:
        os.makedirs(trace_dir, exist_ok=True)
        self.trace_dir = trace_dir
        self.replica = replica
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.written = 0
        self.write_errors = 0
        self.rotated: list[str] = []  # gzipped files, oldest first
        self.suffix = suffix  # NAME.<suffix>.jsonl: requests, gpu
        self._stem = f"{replica}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
        self._segment = 0
        self._q: DropOldestQueue[bytes] = DropOldestQueue(max_queue, on_drop)
        self._progress = Progress(self._q)
        self.path = ""
        self._fh: IO[bytes] | None = None
        self._opened = 0.0
        self._size = 0
        self._open_segment()
        self._thread: threading.Thread | None = None
        self._closed = False
        if start:
            self.start()

    @property
    def dropped(self) -> int:
        return self._q.dropped

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="infdebug-jsonl-writer", daemon=True
            )
            self._thread.start()

    # -- producer side -------------------------------------------------------------------
    def export(self, record: Request) -> None:
        self._q.put(encode_record(record))

    def put(self, record: Record) -> None:
        """Queue any contract record (GPU samples use this, from the sampler's thread)."""
        self._q.put(encode_record(record))

    # -- writer thread -------------------------------------------------------------------
    def _open_segment(self) -> None:
        seg = "" if self._segment == 0 else f".{self._segment}"
        name = f"{self._stem}{seg}.{self.suffix}.jsonl"
        self.path = os.path.join(self.trace_dir, name)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - closed by _rotate()/shutdown()
        self._size = self._fh.tell()
        self._opened = time.monotonic()

    def _run(self) -> None:
        wait = min(1.0, self.max_age_s) if self.max_age_s else 1.0
        while True:
            batch = self._q.get_batch(timeout=wait)
            if batch:
                self._write(batch)
                self._progress.done(len(batch))
            elif self._q.closed:
                return
            if self._due_by_age():
                self._rotate()

    def _write(self, batch: list[bytes]) -> None:
        data = b"".join(batch)
        try:
            assert self._fh is not None
            self._fh.write(data)
            self._fh.flush()  # per drained batch: a killed process loses at most the queue
            self._size += len(data)
            self.written += len(batch)
        except (OSError, ValueError):
            _log.exception("could not write %d trace records to %s", len(batch), self.path)
            self.write_errors += len(batch)
            return
        if self.max_bytes is not None and self._size >= self.max_bytes:
            self._rotate()

    def _due_by_age(self) -> bool:
        return (
            self.max_age_s is not None
            and self._size > 0
            and time.monotonic() - self._opened >= self.max_age_s
        )

    def _rotate(self) -> None:
        old = self.path
        try:
            self._close_file()
            self._segment += 1
            self._open_segment()
        except OSError:
            _log.exception("could not rotate the trace file %s", old)
            return
        try:
            self.rotated.append(_gzip_file(old))
        except OSError:
            _log.exception("could not gzip the rotated trace file %s (left uncompressed)", old)

    def _close_file(self) -> None:
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        with contextlib.suppress(OSError, ValueError):
            fh.flush()
            os.fsync(fh.fileno())
        fh.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until every record queued before this call is written and flushed to the OS
        (not fsynced; ``shutdown`` does that). False on timeout, or when records are queued
        and no writer thread runs (``start=False``)."""
        if self._thread is None or not self._thread.is_alive():
            return len(self._q) == 0
        return self._progress.wait_for(self._q.puts, timeout_millis / 1000)

    def shutdown(self) -> None:
        """Write what is queued, flush, fsync, close. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._q.close()
        if self._thread is not None:
            self._thread.join(timeout=30)
        else:  # never started: write what is queued here
            batch = self._q.get_batch(timeout=0)
            if batch:
                self._write(batch)
        with contextlib.suppress(OSError):
            self._close_file()


def _gzip_file(path: str) -> str:
    """Compress ``path`` to ``path.gz`` (written under a temporary name, then renamed) and
    remove the original."""
    out = path + ".gz"
    tmp = out + ".tmp"
    with open(path, "rb") as src, open(tmp, "wb") as raw:
        with gzip.GzipFile(
            fileobj=raw, mode="wb", compresslevel=6, filename=os.path.basename(path)
        ) as gz:
            shutil.copyfileobj(src, gz, 1 << 20)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, out)
    os.remove(path)
    return out
