"""Rejected lines: one JSON object each (file, line, field, reason, the raw line) in a rejects
file opened on first use. A rejects file that cannot be written stops the run: a line set aside
where nobody can find it would be a line lost."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
from dataclasses import dataclass
from typing import IO, Any

from infdebug.store.base import StoreFull, StoreUnwritable, disk_full


@dataclass
class Reject:
    file: str
    line: int
    reason: str
    field: str | None
    raw: bytes

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "reason": self.reason,
        }
        raw = self.raw.rstrip(b"\r\n")
        try:
            d["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            d["raw"] = None
            d["raw_base64"] = base64.b64encode(raw).decode("ascii")
        return d


class RejectSink:
    """Writes rejected lines, one JSON object each, to a file opened on first use."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self.first: list[Reject] = []  # the first few, for the terminal
        self._fh: IO[str] | None = None
        self._lock = threading.Lock()

    def add(self, r: Reject) -> None:
        """Write ``r``; a rejects file that cannot be written stops the run
        (``RejectsUnwritable``, ``StoreFull`` when the disk is full): a line set aside
        where nobody can find it would be a line lost."""
        with self._lock:
            try:
                if self._fh is None:
                    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                    self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open across adds
                self._fh.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
                self._fh.flush()
            except OSError as e:
                if self._fh is not None:
                    with contextlib.suppress(OSError):
                        self._fh.close()  # what it still buffers cannot be written either
                    self._fh = None
                raise self._unwritable(e) from None
            self.count += 1
            if len(self.first) < 20:
                self.first.append(r)

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError as e:
                raise self._unwritable(e) from None

    def _unwritable(self, e: OSError) -> StoreUnwritable:
        if disk_full(e):
            return StoreFull(f"no space left on device for the rejects file {self.path}")
        return RejectsUnwritable(
            f"cannot write the rejects file {self.path}: {e.strerror or e}; "
            "pass --rejects FILE where it can be written"
        )


class RejectsUnwritable(StoreUnwritable):
    """The rejects file cannot be written (it lives under the store's home by default)."""
