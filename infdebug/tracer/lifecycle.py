"""Replica lifecycle: ``event`` records for process start, weights loaded, warm-up done,
ready, drain and shutdown, each with the duration of the phase it ends.

Events are rare, so they are written synchronously (and fsynced) to
``TRACE_DIR/<replica>-<time>-<pid>.events.jsonl``; a replica without a trace dir keeps them
in memory only (``events``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import IO, Any

from infdebug.schema import Event, encode_record

PHASES = ("process_start", "weights_loaded", "warmup_done", "ready", "drain", "shutdown")


def process_start_time() -> float:
    """Unix time this process started (from /proc where there is one)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat: starttime, in clock ticks after boot
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time() - time.process_time()


class Lifecycle:
    def __init__(
        self, replica: str, *, deployment: str | None = None, trace_dir: str | None = None
    ) -> None:
        self.replica, self.deployment = replica, deployment
        self.t_start = process_start_time()
        self._last = self.t_start
        self.events: list[Event] = []
        self._fh: IO[bytes] | None = None
        self._lock = threading.Lock()
        self.path: str | None = None
        if trace_dir:
            os.makedirs(trace_dir, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            self.path = os.path.join(trace_dir, f"{replica}-{stamp}-{os.getpid()}.events.jsonl")
            self._fh = open(self.path, "ab")  # noqa: SIM115 - closed at shutdown
        self._emit("process_start", self.t_start, None)

    def mark(self, name: str, **detail: Any) -> Event:
        """Record that a phase ended now; its duration runs from the previous mark."""
        now = time.time()
        return self._emit(name, now, now - self._last, detail or None)

    def _emit(
        self, name: str, t: float, duration: float | None, detail: dict[str, Any] | None = None
    ) -> Event:
        ev = Event(
            t=t,
            replica=self.replica,
            name=name,
            duration_s=duration,
            since_start_s=t - self.t_start,
            deployment=self.deployment,
            pid=os.getpid(),
            detail=detail,
        )
        with self._lock:
            self._last = t
            self.events.append(ev)
            if self._fh is not None:
                with contextlib.suppress(OSError):
                    self._fh.write(encode_record(ev))
                    self._fh.flush()
                    os.fsync(self._fh.fileno())
                    if name == "shutdown":
                        self._fh.close()
                        self._fh = None
        return ev
