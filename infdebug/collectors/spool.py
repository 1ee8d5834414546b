"""An append-only, checksummed, segmented on-disk spool: accepted batches kept until loaded.

A spool is a directory of segment files ``seg-<first seq>.spool``. Each frame is
``MAGIC (4) | seq (u64) | length (u32) | crc32 of payload (u32) | payload``, big-endian.
``append`` writes one frame, flushes and ``fsync``\\ s the segment before it returns (and the
directory when a segment is created), so what it returned a sequence number for survives a
crash. A segment is closed at ``segment_bytes``; the loader deletes segments whose frames
are all loaded (``release``). ``max_bytes`` bounds the spool: an append that would pass it is
refused (``SpoolFull``) and counted. When the last segment is deleted, the last sequence
number is kept in ``last-seq``, so numbers never start again below what was loaded. A frame
whose header or checksum is wrong is reported (file, offset, why) by ``frames`` and the rest
of the segment is read from the next magic. Appends fsync every frame (one fsync a batch).
"""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from infdebug.errors import OperationError

MAGIC = b"IDSP"
HEADER = struct.Struct(">4sQII")
SEGMENT_BYTES = 8 << 20
MAX_FRAME = 256 << 20
FLOOR = "last-seq"  # kept when every segment is deleted
_NAME = re.compile(r"^seg-(\d{20})\.spool$")


class SpoolFull(OperationError):
    """The spool is at its size limit: the append was refused (try again later)."""


@dataclass(frozen=True)
class Corruption:
    """A frame the spool could not read: where and why."""

    path: str
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: offset {self.offset}: {self.reason}"


class Spool:
    """The spool under ``directory`` (created if absent); thread-safe appends."""

    def __init__(
        self, directory: str, *, max_bytes: int = 1 << 30, segment_bytes: int = SEGMENT_BYTES
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.refused = 0
        self.appended = 0
        self._lock = threading.Lock()
        os.makedirs(directory, exist_ok=True)
        self._fh: object | None = None
        last = 0
        for path in self.segments():
            for seq, _, _ in self._scan(path, lambda c: None):
                last = max(last, seq)
        self._next = max(last, self._floor()) + 1
        self._cur: str | None = None
        self._cur_bytes = 0  # the size of _cur
        # What the segments hold, kept by ``append`` and recounted by ``release``, so an
        # append does not list the directory (``size()`` still reads the disk).
        self._bytes = self.size()

    def _floor(self) -> int:
        """The last sequence number handed out before every segment was deleted."""
        try:
            with open(os.path.join(self.directory, FLOOR)) as fh:
                return int(fh.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _save_floor(self) -> None:
        path = os.path.join(self.directory, FLOOR)
        with open(path + ".tmp", "w") as fh:
            fh.write(str(self._next - 1))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(path + ".tmp", path)

    def segments(self) -> list[str]:
        """Segment paths in sequence order."""
        names = sorted(n for n in os.listdir(self.directory) if _NAME.match(n))
        return [os.path.join(self.directory, n) for n in names]

    def size(self) -> int:
        return sum(os.path.getsize(p) for p in self.segments() if os.path.exists(p))

    def append(self, payload: bytes) -> int:
        """Write ``payload`` durably; its sequence number. ``SpoolFull`` when over the limit."""
        frame_len = HEADER.size + len(payload)
        crc = zlib.crc32(payload)  # outside the lock: the other appends go on meanwhile
        with self._lock:
            if self._bytes + frame_len > self.max_bytes:
                self.refused += 1
                raise SpoolFull(
                    f"spool {self.directory} is full ({self.max_bytes:,} bytes, --spool-max-bytes)"
                )
            seq = self._next
            if self._cur is None or self._cur_bytes >= self.segment_bytes:
                self._cur = os.path.join(self.directory, f"seg-{seq:020d}.spool")
                new = True
            else:
                new = False
            head = HEADER.pack(MAGIC, seq, len(payload), crc)
            try:
                with open(self._cur, "ab") as fh:
                    fh.write(head)
                    fh.write(payload)
                    fh.flush()
                    os.fsync(fh.fileno())
                    self._cur_bytes = fh.tell()
            except BaseException:
                self._bytes = self.size()  # whatever part of the frame got written
                self._cur_bytes = os.path.getsize(self._cur) if os.path.exists(self._cur) else 0
                raise
            self._bytes += frame_len
            if new:
                dfd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            self._next = seq + 1
            self.appended += 1
            return seq

    def frames(
        self, after: int = 0, report: Callable[[Corruption], None] = lambda c: None
    ) -> Iterator[tuple[int, bytes]]:
        """``(seq, payload)`` of every readable frame with ``seq > after``, in order."""
        for path in self.segments():
            for seq, payload, _ in self._scan(path, report):
                if seq > after:
                    yield seq, payload

    def release(self, upto: int) -> int:
        """Delete segments whose frames all have ``seq <= upto`` (not the one being
        written); how many."""
        segs = self.segments()
        n = 0
        for i, path in enumerate(segs):
            nxt = _first_seq(segs[i + 1]) if i + 1 < len(segs) else None
            with self._lock:
                if path == self._cur and nxt is None:
                    if self._next - 1 > upto:
                        continue
                    self._cur = None
                if nxt is not None and nxt - 1 > upto:
                    continue
                if nxt is None and self._next - 1 > upto:
                    continue
                if nxt is None:
                    self._save_floor()  # numbers go on from here, not from 1 again
                os.unlink(path)
                n += 1
        with self._lock:
            self._bytes = self.size()  # once a pass: what the disk holds, whoever changed it
        return n

    @staticmethod
    def _scan(path: str, report: Callable[[Corruption], None]) -> Iterator[tuple[int, bytes, int]]:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return
        pos = 0
        while pos < len(data):
            if len(data) - pos < HEADER.size:
                report(Corruption(path, pos, "truncated frame header (a write cut short)"))
                return
            magic, seq, length, crc = HEADER.unpack_from(data, pos)
            why = ""
            if magic != MAGIC:
                why = "bad magic"
            elif length > MAX_FRAME or pos + HEADER.size + length > len(data):
                why = f"frame length {length} runs past the end of the segment"
            else:
                payload = data[pos + HEADER.size : pos + HEADER.size + length]
                if zlib.crc32(payload) != crc:
                    why = "checksum mismatch"
            if why:
                report(Corruption(path, pos, why))
                nxt = data.find(MAGIC, pos + 1)
                if nxt < 0:
                    return
                pos = nxt
                continue
            yield seq, payload, pos
            pos += HEADER.size + length


def _first_seq(path: str) -> int:
    m = _NAME.match(os.path.basename(path))
    return int(m.group(1)) if m else 0
