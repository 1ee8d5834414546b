"""An incremental reader of a server-sent-events stream, fed the bytes a proxy passes on.

The proxy hands every chunk it forwards to :meth:`SseReader.feed`, which returns the events
completed by it (their ``data`` lines joined, as the SSE spec says) without holding the
chunk back: parsing is a tap beside the stream, never a stage in it. Lines end in ``\\n``,
``\\r\\n`` or ``\\r``; an event ends at a blank line; comments (``:``) and fields other than
``data`` are ignored. A stream that ends inside an event leaves it in ``pending``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_EVENT_BYTES = 16 << 20  # one event's data past this is a malformed stream


class SseError(ValueError):
    """The stream is not server-sent events the reader can follow."""


@dataclass
class SseReader:
    _buf: bytearray = field(default_factory=bytearray)
    _data: list[bytes] = field(default_factory=list)
    _size: int = 0
    events: int = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The ``data`` of every event ``chunk`` completes (``b"[DONE]"`` included)."""
        self._buf += chunk
        out: list[bytes] = []
        while True:
            i = _line_end(self._buf)
            if i < 0:
                if len(self._buf) > MAX_EVENT_BYTES:
                    raise SseError(f"a line of over {MAX_EVENT_BYTES} bytes without an end")
                return out
            line = bytes(self._buf[:i])
            nl = 2 if self._buf[i : i + 2] == b"\r\n" else 1
            if self._buf[i : i + 1] == b"\r" and i + 1 == len(self._buf):
                return out  # a lone \r at the end: maybe half of a \r\n
            del self._buf[: i + nl]
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data))
                    self.events += 1
                self._data, self._size = [], 0
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                value = value[1:] if value.startswith(b" ") else value
                self._size += len(value)
                if self._size > MAX_EVENT_BYTES:
                    raise SseError(f"an event of over {MAX_EVENT_BYTES} bytes")
                self._data.append(value)

    @property
    def pending(self) -> bool:
        """Bytes or data lines of an event that never ended."""
        return bool(self._data) or bool(self._buf.strip())


def _line_end(buf: bytearray) -> int:
    n, r = buf.find(b"\n"), buf.find(b"\r")
    if n < 0:
        return r
    if r < 0:
        return n
    return min(n, r)
