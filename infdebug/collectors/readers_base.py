"""What every log-format reader shares, and the shape of one: ``ReaderSpec``.

A format module (``readers_<name>.py``) imports this module, never ``readers``, and declares
its format in one module-level ``READER = ReaderSpec(...)``: the ``--format`` name, how its
lines (or its first line, or its file name) are recognised, a one-line description for
"expected …" messages, and the reader. ``readers`` finds every ``readers_*`` module and builds
the registry from their specs, so the arrows run one way: readers → readers_<format> →
readers_base (a module with no ``READER``, such as ``readers_fields``, is a helper).

Shared here: the per-file ``Context`` and ``ReadStats``, log timestamps, and the step that
turns the fields a reader found into a validated ``Request`` (``build_request``, with
``as_ids`` / ``as_text`` / ``plain`` / ``sampling_from`` for the values of Python-repr logs).

Log timestamps carry no time zone: they are read as UTC. Where a timestamp has no year
(vLLM's ``05-14 10:23:45``) the year comes from the dated lines of the same file (another
logger's ``2025-05-14 10:20:01``, a CRI prefix): the year that puts the line nearest the
nearest dated line, so a ``12-31`` line before a ``2026-01-01`` one is in 2025. A file with no
dated line takes the year of its mtime (the year before, if that would put the line after the
file was last written).
"""

from __future__ import annotations

import bisect
import calendar
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from infdebug.collectors.pyrepr import Call, Truncated
from infdebug.collectors.readers_fields import check_sampling
from infdebug.collectors.readers_shipper import frames, year_anchors
from infdebug.collectors.rejects import Reject
from infdebug.collectors.timing import sanitize_timing
from infdebug.schema import LineError, Request, decode_record, encode_record

# --- timestamps ------------------------------------------------------------------------------

_TS_RE = re.compile(
    r"(?:(?P<y>\d{4})-)?(?P<mo>\d\d)-(?P<d>\d\d)[ T]"
    r"(?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)(?:[.,](?P<f>\d{1,9}))?"
)


def parse_timestamp(
    prefix: str, default_year: int, not_after: float | None = None, near: float | None = None
) -> float | None:
    """Unix seconds (read as UTC) of the first log timestamp in ``prefix``, or None. A timestamp
    without a year takes the year that puts it nearest ``near`` (a dated line's time) when
    given, else ``default_year`` (the year before, if that is more than a day after
    ``not_after``)."""
    m = _TS_RE.search(prefix)
    if m is None:
        return None
    year_given = m.group("y") is not None
    year = int(m.group("y")) if year_given else default_year
    parts = (
        int(m.group("mo")),
        int(m.group("d")),
        int(m.group("h")),
        int(m.group("mi")),
        int(m.group("s")),
    )
    try:
        if not year_given and near is not None:
            t = _nearest_year(parts, near)
        else:
            t = float(calendar.timegm((year, *parts, 0, 0, 0)))
            if not year_given and not_after is not None and t > not_after + 86400:
                t = float(
                    calendar.timegm((year - 1, *parts, 0, 0, 0))
                )  # a December line in a January file
    except (ValueError, OverflowError):
        return None
    f = m.group("f")
    return t + (int(f) / 10 ** len(f) if f else 0.0)


def _nearest_year(parts: tuple[int, int, int, int, int], near: float) -> float:
    y = time.gmtime(near).tm_year
    best: float | None = None
    for year in (y - 1, y, y + 1):
        try:
            t = float(calendar.timegm((year, *parts, 0, 0, 0)))
        except (ValueError, OverflowError):
            continue
        if best is None or abs(t - near) < abs(best - near):
            best = t
    if best is None:
        raise ValueError("no year fits")
    return best


# --- what the format readers share ---------------------------------------------------------


@dataclass
class ReadStats:
    lines: int = 0  # non-blank lines read
    requests: int = 0  # requests yielded
    ignored: int = 0  # other log output, skipped without a word
    errors: int = 0  # lines reported as unparseable
    notes: Counter[str] = field(default_factory=Counter)  # things worth knowing, counted


@dataclass
class Context:
    """One file being read: where it is, what year its timestamps are in, the counters."""

    path: str
    replica: str
    engine: str
    stats: ReadStats
    mtime: float = 0.0
    year: int = 1970
    meta: dict[str, Any] = field(default_factory=dict)  # model / engine_version from startup lines
    line: int = 0  # the line being read (set by ``lines()``)
    t_ship: float | None = None  # its log shipper's timestamp (CRI / Docker / kubectl prefix)
    anchors: list[tuple[int, float]] | None = (
        None  # dated lines of the file, read when first needed
    )

    def lines(self) -> Iterator[tuple[int, str]]:
        """The file's lines through ``readers_shipper.frames``, keeping ``line`` / ``t_ship``
        current."""
        for fr in frames(self.path, self.stats.notes):
            self.line, self.t_ship = fr.line, fr.t_ship
            yield fr.line, fr.text

    def timestamp(self, prefix: str) -> float | None:
        """The line's time from its engine timestamp in ``prefix``, else its shipper's timestamp."""
        m = _TS_RE.search(prefix)
        if m is None:
            return self.t_ship
        near = None if m.group("y") is not None else self.t_ship or self._dated_near()
        return parse_timestamp(prefix, self.year, self.mtime or None, near)

    def _dated_near(self) -> float | None:
        if self.anchors is None:
            try:
                self.anchors = year_anchors(self.path)
            except (OSError, EOFError):
                self.anchors = []
        if not self.anchors:
            return None
        i = bisect.bisect_left(self.anchors, (self.line, float("-inf")))
        near = [self.anchors[j] for j in (i - 1, i) if 0 <= j < len(self.anchors)]
        return min(near, key=lambda a: abs(a[0] - self.line))[1]


def replica_from_path(path: str) -> str:
    """``logs/replica-a.log.gz`` -> ``replica-a``."""
    name = os.path.basename(path)
    for suffix in (".gz", ".jsonl", ".ndjson", ".json", ".log", ".txt", ".out", ".err"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name or "unknown"


def as_ids(v: Any, what: str, ctx: Context | None = None) -> list[int] | None:
    """Token IDs from a list / tuple / array; None for None; LineError for anything else.
    IDs a logger shortened are left out (noted in ``ctx``), or an error without one."""
    if v is None:
        return None
    if isinstance(v, Truncated):
        if ctx is not None:
            ctx.stats.notes[f"{what} truncated by the engine's logger: left out"] += 1
            return None
        raise LineError(
            f"{what} were truncated by the engine's logger (… in the list); "
            "raise its max log length"
        )
    if isinstance(v, list | tuple) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in v
    ):
        return list(v)
    raise LineError(f"{what}: expected a list of token IDs, found {str(v)[:60]!r}", what)


def as_text(v: Any, what: str, ctx: Context) -> str | None:
    if v is None:
        return None
    if isinstance(v, Truncated):
        ctx.stats.notes[f"{what} truncated by the engine's logger: left out"] += 1
        return None
    if isinstance(v, str):
        return v
    raise LineError(f"{what}: expected a string, found {str(v)[:60]!r}", what)


def plain(v: Any) -> Any:
    """A parsed repr value as JSON-able data (calls become dicts with their ``__type__``)."""
    if isinstance(v, Call):
        d = {k: plain(x) for k, x in v.kwargs.items()}
        d["__type__"] = v.name
        if v.args:
            d["__args__"] = [plain(a) for a in v.args]
        return d
    if isinstance(v, Truncated):
        return None
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, float) and v != v:
        return None
    return v


def sampling_from(params: dict[str, Any], renames: dict[str, str]) -> dict[str, Any] | None:
    """Sampling parameters under contract names (``stop_ids``, ``max_tokens``), Nones left out,
    each known one parsed to its type (``readers_fields.check_sampling``: LineError if not)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if k.startswith("__"):
            continue
        v = plain(v)
        if v is None or isinstance(v, dict) and v.get("__type__"):
            continue
        if isinstance(v, float) and v in (float("inf"), float("-inf")):
            v = None if k != "max_tokens" else v
            if v is None:
                continue
        out[renames.get(k, k)] = v
    return check_sampling(out)


def build_request(ctx: Context, line: int, fields: dict[str, Any]) -> Request | LineError:
    """A validated contract Request from the fields a reader found (LineError if invalid)."""
    f = {k: v for k, v in fields.items() if v is not None}
    f.setdefault("replica", ctx.replica)
    f.setdefault("engine", ctx.engine)
    for k, v in ctx.meta.items():
        if not k.startswith("_"):
            f.setdefault(k, v)
    no_time = f.get("t_arrival") is None
    if no_time:
        f["t_arrival"] = 0.0
    f["request_id"] = str(f.get("request_id") or f"{ctx.replica}:{line}")
    try:
        req = Request(**f)
        decoded = decode_record(encode_record(req))  # the contract's own checks (UInt32 IDs, …)
    except LineError as e:
        return LineError(f"not a valid request record: {e.reason}", e.field)
    except (TypeError, ValueError) as e:
        return LineError(f"not a valid request record: {e}")
    assert isinstance(decoded, Request)
    sane, dropped = sanitize_timing(
        decoded
    )  # the one latency rule (ingest's too): another clock, negative, absurd
    ctx.stats.notes.update(dropped)
    if no_time:
        ctx.stats.notes["no timestamp on the line: t_arrival set to 0"] += 1
    return sane


# --- the shape of a format -------------------------------------------------------------------

ReadFn = Callable[[Iterable[tuple[int, str]], Context], Iterator[tuple[int, Request | LineError]]]


def json_lines(lines: Iterable[tuple[int, str]], ctx: Context) -> Iterator[tuple[int, Any]]:
    """Each non-blank line parsed as JSON, counted in ``ctx.stats.lines``: ``(n, value)``, or
    ``(n, LineError)`` for a line that is not JSON (the caller yields it on to the rejects)."""
    for n, text in lines:
        if not text.strip():
            continue
        ctx.stats.lines += 1
        try:
            yield n, json.loads(text)
        except ValueError as e:
            yield n, LineError(f"malformed JSON: {e}")


class Converted(Protocol):
    """What converting a file that holds no requests (a metrics snapshot …) gave: ``error``
    when nothing could be read, the lines set aside, and notes (reason → count)."""

    error: str | None
    rejects: list[Reject]
    notes: dict[str, int]


ConvertFn = Callable[[str, str, str | None], Converted]  # (path, out_path, replica)


@dataclass(frozen=True)
class ReaderSpec:
    """One log format, as the registry (``readers``) knows it.

    ``read`` turns a request log's lines into ``(line, Request | LineError)``; a format of
    other records has ``convert`` instead, writing contract JSONL to ``out_path``.
    Detection asks, in ``order`` (lower first): ``suffixes`` (a file so named is this
    format), ``first_line`` (the file's first non-blank line tells), then each line in turn:
    ``json_line`` for a line that is a JSON object, ``text_line`` for any other line."""

    name: str  # the --format value, and what detection answers
    describe: str  # what it looks like, for "format not recognised (expected …)"
    read: ReadFn | None = None
    convert: ConvertFn | None = None
    json_line: Callable[[dict[str, Any]], bool] | None = None
    text_line: Callable[[str], bool] | None = None
    first_line: Callable[[str], bool] | None = None
    suffixes: tuple[str, ...] = ()
    order: int = 100
    engine: str | None = None  # the engine field of its requests (default: name)
    variant_of: str | None = (
        None  # --format <that> on a file detected as this one reads it with this one
    )
    native: bool = False  # contract records: loaded as they are, not converted
    label: str | None = None  # how the ingest report names what it read (default: "<name> log")

    @property
    def what(self) -> str:
        return self.label or f"{self.name} log"
