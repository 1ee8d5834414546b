"""Log-shipper framing: engine log lines out of container-runtime and log-shipper wrappings.

An engine's stdout rarely reaches a file as it was printed. What is undone here, per line:

- CRI (containerd, CRI-O: ``/var/log/pods/…``): ``2026-02-27T05:35:45.999662386Z stdout F msg``.
  The runtime splits a line longer than its buffer (16 KiB in containerd) into ``P`` (partial)
  lines ended by an ``F`` line; those are rejoined per stream, numbered by their first line.
- Docker json-file: ``{"log": "msg\\n", "stream": "stderr", "time": "…"}``; a line Docker split
  (16 KiB) comes as entries whose ``log`` has no trailing newline; rejoined per stream.
- ``kubectl logs --timestamps`` / ``docker logs -t``: ``2026-02-27T05:35:45.999662386Z msg``.
  Older kubelets write the split parts of a long line one after the other, each with its own
  timestamp, so the next part's ``<timestamp> `` lands *inside* the line. Such a stamp is cut
  out where it sits exactly at a runtime split (a multiple of 8 KiB of message bytes: 16 KiB
  containerd / Docker, 8 KiB conmon); one anywhere else is left as it is and counted in the
  notes (a value it lands in is then rejected by the reader, never stored as garbage).

The shipper's own timestamp (UTC) comes with each line: a line without an engine timestamp
takes it, and it dates lines that have no year (``year_anchors``).
"""

from __future__ import annotations

import calendar
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import NamedTuple

from infdebug.schema import open_bytes

_STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)"
_CRI_RE = re.compile(rf"(?P<ts>{_STAMP}) (?P<stream>stdout|stderr) (?P<tag>[PF](?::[A-Z])*)(?: |$)")
_TS_ONLY_RE = re.compile(rf"(?P<ts>{_STAMP}) ")
# what a runtime writes mid-line: RFC 3339 with fractional seconds (kubelet, Docker: RFC3339Nano)
_NANO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,9}(?:Z|[+-]\d\d:\d\d)"
_MID_STR_RE = re.compile(rf"{_NANO} ")
_MID_RE = re.compile(rf"{_NANO}(?: (?:stdout|stderr) [PF])? ".encode())
_ISO_RE = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d\d)-(?P<d>\d\d)[T ]"
    r"(?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)(?:[.,](?P<f>\d{1,9}))?"
    r"(?P<z>Z|[+-]\d\d:?\d\d)?"
)
_ANCHOR_RE = re.compile(rb"(?<!\d)(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)")
SPLIT_UNIT = (
    8192  # runtime split sizes are multiples of this (containerd/Docker 16 KiB, conmon 8 KiB)
)
ANCHOR_EVERY = 1000  # lines between kept year anchors (one is always kept where the year changes)

NOTE_MIDLINE = (
    "a log shipper's timestamp inside a long line, not at a runtime split: left as is "
    "(a value it lands in is rejected)"
)


class Frame(NamedTuple):
    line: int  # number of the (first) raw line
    text: str  # the engine's line, wrappings removed, split parts rejoined
    t_ship: float | None  # the shipper's timestamp, unix seconds (UTC)


def iso_seconds(s: str) -> float | None:
    """Unix seconds of an RFC 3339 / ISO 8601 time (no zone: UTC); None if it is not one."""
    m = _ISO_RE.match(s)
    if m is None:
        return None
    try:
        t = float(
            calendar.timegm(
                (
                    int(m["y"]),
                    int(m["mo"]),
                    int(m["d"]),
                    int(m["h"]),
                    int(m["mi"]),
                    int(m["s"]),
                    0,
                    0,
                    0,
                )
            )
        )
    except (ValueError, OverflowError):
        return None
    if m["f"]:
        t += int(m["f"]) / 10 ** len(m["f"])
    z = m["z"]
    if z and z != "Z":
        sign = 1 if z[0] == "+" else -1
        hh, mm = int(z[1:3]), int(z[-2:])
        t -= sign * (hh * 3600 + mm * 60)
    return t


def cut_split_stamps(msg: str) -> tuple[str, int, int]:
    """``msg`` without the shipper timestamps that sit exactly at a runtime split; how many
    were cut, and how many others there are past the first split unit (left in place)."""
    if len(msg) < SPLIT_UNIT // 4 or not _MID_STR_RE.search(msg, SPLIT_UNIT // 4):
        return msg, 0, 0  # a split needs SPLIT_UNIT bytes before it (a character is at most 4)
    b = msg.encode("utf-8", errors="replace")
    parts: list[bytes] = []
    start = removed = other = (
        0  # start: where the kept text resumes; removed: stamp bytes cut so far
    )
    for m in _MID_RE.finditer(b, SPLIT_UNIT):
        at = m.start() - removed  # message bytes before this stamp
        if at % SPLIT_UNIT == 0 and m.start() >= start:
            parts.append(b[start : m.start()])
            start = m.end()
            removed += m.end() - m.start()
        else:
            other += 1
    if not parts:
        return msg, 0, other
    parts.append(b[start:])
    return b"".join(parts).decode("utf-8", errors="replace"), len(parts) - 1, other


def frames(path: str, notes: Counter[str]) -> Iterator[Frame]:
    """The engine's lines of ``path`` (possibly gzipped), unwrapped and rejoined; bad UTF-8
    replaced."""
    pending: dict[str, tuple[int, list[str], float | None]] = {}  # stream -> (first line, parts, t)
    with open_bytes(path) as fh:
        for n, raw in enumerate(fh, 1):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            m = _CRI_RE.match(text) if text[:1].isdigit() else None
            if m is not None:
                stream, msg = m["stream"], text[m.end() :]
                first, parts, t = pending.pop(stream, (n, [], iso_seconds(m["ts"])))
                parts.append(msg)
                if "P" in m["tag"].split(":"):
                    pending[stream] = (first, parts, t)
                    continue
                if len(parts) > 1:
                    notes["CRI partial (P) lines rejoined with their final (F) line"] += 1
                yield _frame(first, "".join(parts), t, notes)
                continue
            if text.startswith('{"log":'):
                d = _docker(text)
                if d is not None:
                    msg, stream, t = d
                    first, parts, t0 = pending.pop("docker-" + stream, (n, [], t))
                    parts.append(msg)
                    if not msg.endswith("\n"):
                        pending["docker-" + stream] = (first, parts, t0)
                        continue
                    if len(parts) > 1:
                        notes["Docker json-file partial entries rejoined"] += 1
                    yield _frame(first, "".join(parts).rstrip("\r\n"), t0, notes)
                    continue
            k = _TS_ONLY_RE.match(text) if text[:1].isdigit() else None
            if k is not None:
                yield _frame(n, text[k.end() :], iso_seconds(k["ts"]), notes)
                continue
            yield _frame(n, text, None, notes)
    for first, parts, t in sorted(pending.values(), key=lambda p: p[0]):
        notes[
            "a split line's last part is missing (the file ends in a partial line): read as it is"
        ] += 1
        yield _frame(first, "".join(parts).rstrip("\r\n"), t, notes)


def _frame(n: int, msg: str, t: float | None, notes: Counter[str]) -> Frame:
    msg, cut, other = cut_split_stamps(msg)
    if cut:
        notes["a long line split by the container runtime: the next part's timestamp cut out"] += 1
    if other:
        notes[NOTE_MIDLINE] += 1
    return Frame(n, msg, t)


def _docker(text: str) -> tuple[str, str, float | None] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("log"), str)
        or not isinstance(obj.get("stream"), str)
    ):
        return None
    t = obj.get("time")
    return obj["log"], obj["stream"], iso_seconds(t) if isinstance(t, str) else None


def year_anchors(path: str) -> list[tuple[int, float]]:
    """``(line, unix seconds)`` of dated lines (a 4-digit year near the start of the line, or a
    Docker entry's time): one where the year changes and one every ``ANCHOR_EVERY`` lines."""
    out: list[tuple[int, float]] = []
    last_year, last_n = -1, -ANCHOR_EVERY
    with open_bytes(path) as fh:
        for n, raw in enumerate(fh, 1):
            m = _ANCHOR_RE.search(raw, 0, 64)
            if m is None and raw.startswith(b'{"log":'):
                m = _ANCHOR_RE.search(raw, max(0, len(raw) - 80))
            if m is None:
                continue
            y = int(m.group(1))
            if y == last_year and n - last_n < ANCHOR_EVERY:
                continue
            try:
                t = float(calendar.timegm((y, *(int(g) for g in m.groups()[1:]), 0, 0, 0)))
            except (ValueError, OverflowError):
                continue
            out.append((n, t))
            last_year, last_n = y, n
    return out
