"""Engine log readers: real vLLM / SGLang / OpenAI-style logs into contract ``Request`` records.

``read_engine_log(path)`` yields ``(line_number, Request | LineError)`` for one file, in line
order; ``detect_format(path)`` says which reader fits (from the first matching lines);
``convert_to_contract`` writes contract JSONL and reports what it read, ignored and rejected.

The format readers live in ``readers_vllm``, ``readers_sglang`` and ``readers_openai``; this
module holds what they share: the Python-repr parser (engines log ``repr()`` of their
dataclasses, so a prompt is a Python string literal that may contain ``', params:``), log
timestamps, and the step that turns the fields a reader found into a validated ``Request``.

Log timestamps carry no time zone: they are read as UTC. Where a timestamp has no year
(vLLM's ``05-14 10:23:45``) the year of the file's mtime is used (the year before, if that
would put the line after the file was last written).
"""

from __future__ import annotations

import calendar
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from infdebug.collectors.jsonl import Reject, RejectSink
from infdebug.collectors.pyrepr import Call, Truncated
from infdebug.schema import (
    LineError,
    Request,
    decode_record,
    encode_record,
    open_bytes,
    read_records,
)

FORMATS = ("vllm", "sglang", "openai", "contract")
DETECT_LINES = 2000  # lines looked at to detect a file's format

# --- timestamps ---------------------------------------------------------------------------

_TS_RE = re.compile(
    r"(?:(?P<y>\d{4})-)?(?P<mo>\d\d)-(?P<d>\d\d)[ T](?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)(?:[.,](?P<f>\d{1,9}))?"
)


def parse_timestamp(prefix: str, default_year: int, not_after: float | None = None) -> float | None:
    """Unix seconds (read as UTC) of the first log timestamp in ``prefix``, or None."""
    m = _TS_RE.search(prefix)
    if m is None:
        return None
    year_given = m.group("y") is not None
    year = int(m.group("y")) if year_given else default_year
    try:
        parts = (int(m.group("mo")), int(m.group("d")), int(m.group("h")), int(m.group("mi")), int(m.group("s")))
        t = float(calendar.timegm((year, *parts, 0, 0, 0)))
        if not year_given and not_after is not None and t > not_after + 86400:
            t = float(calendar.timegm((year - 1, *parts, 0, 0, 0)))  # a December line in a January file
    except (ValueError, OverflowError):
        return None
    f = m.group("f")
    return t + (int(f) / 10 ** len(f) if f else 0.0)


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

    def timestamp(self, prefix: str) -> float | None:
        return parse_timestamp(prefix, self.year, self.mtime or None)


def replica_from_path(path: str) -> str:
    """``logs/replica-a.log.gz`` -> ``replica-a``."""
    name = os.path.basename(path)
    for suffix in (".gz", ".jsonl", ".ndjson", ".json", ".log", ".txt", ".out", ".err"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name or "unknown"


def iter_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` for every line of a (possibly gzipped) file; bad UTF-8 replaced."""
    with open_bytes(path) as fh:
        for n, raw in enumerate(fh, 1):
            yield n, raw.decode("utf-8", errors="replace").rstrip("\r\n")


def as_ids(v: Any, what: str, ctx: Context | None = None) -> list[int] | None:
    """Token IDs from a list / tuple / array; None for None; LineError for anything else.
    IDs a logger shortened are left out (noted in ``ctx``), or an error without one."""
    if v is None:
        return None
    if isinstance(v, Truncated):
        if ctx is not None:
            ctx.stats.notes[f"{what} truncated by the engine's logger: left out"] += 1
            return None
        raise LineError(f"{what} were truncated by the engine's logger (… in the list); raise its max log length")
    if isinstance(v, list | tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
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
    """Sampling parameters under contract names (``stop_ids``, ``max_tokens``), Nones left out."""
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
    return out or None


_FINISH = {"stop": "stop", "length": "length", "abort": "abort", "error": "error", "eos": "stop",
           "tool_calls": "stop", "function_call": "stop"}


def finish_reason(v: Any) -> str | None:
    """A contract finish reason from what engines write: ``stop``, ``{'type': 'length', …}``,
    ``FINISH_LENGTH: 128`` (older SGLang), ``tool_calls`` (OpenAI)."""
    if isinstance(v, dict):
        v = v.get("type")
    if not isinstance(v, str) or not v:
        return None
    low = v.lower()
    if low in _FINISH:
        return _FINISH[low]
    for key in ("length", "abort", "stop", "matched", "error"):
        if key in low:
            return "stop" if key == "matched" else key
    return None


def build_request(ctx: Context, line: int, fields: dict[str, Any]) -> Request | LineError:
    """A validated contract Request from the fields a reader found (LineError if invalid)."""
    f = {k: v for k, v in fields.items() if v is not None}
    f.setdefault("replica", ctx.replica)
    f.setdefault("engine", ctx.engine)
    for k, v in ctx.meta.items():
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
    if no_time:
        ctx.stats.notes["no timestamp on the line: t_arrival set to 0"] += 1
    return decoded


# --- detection and the public API ----------------------------------------------------------

_VLLM_MARKS = ("Received request ", "RequestOutput(request_id=", "Generated response ")
_SGLANG_MARKS = ("Receive: obj=GenerateReqInput(", "Finish: obj=GenerateReqInput(", "in=GenerateReqInput(",
                 "Receive: obj=", "Finish: obj=")


def detect_line(text: str) -> str | None:
    s = text.lstrip()
    if s.startswith("{"):
        try:
            obj = json.loads(s)
        except ValueError:
            return None
        if isinstance(obj, dict):
            if isinstance(obj.get("kind"), str):
                return "contract"
            if isinstance(obj.get("request"), dict) or isinstance(obj.get("response"), dict):
                return "openai"
        return None
    if any(m in text for m in _SGLANG_MARKS):
        return "sglang"
    if any(m in text for m in _VLLM_MARKS):
        return "vllm"
    return None


def detect_format(path: str) -> str:
    """``vllm``, ``sglang``, ``openai`` or ``contract`` from the first lines that tell; ``unknown``."""
    for n, text in iter_lines(path):
        fmt = detect_line(text)
        if fmt is not None:
            return fmt
        if n >= DETECT_LINES:
            break
    return "unknown"


class EngineLogReader:
    """Reads one engine log file; ``stats`` holds the counts once it has been iterated."""

    def __init__(self, path: str, fmt: str = "auto", replica: str | None = None) -> None:
        if fmt == "auto":
            fmt = detect_format(path)
            if fmt == "unknown":
                raise ValueError(
                    f"{path}: format not recognised in its first {DETECT_LINES} lines (expected vLLM "
                    "'Received request' / RequestOutput lines, SGLang 'Receive:'/'Finish:' lines, "
                    "OpenAI-style {\"request\", \"response\"} JSONL or contract JSONL); pass --format"
                )
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r} (expected auto, {', '.join(FORMATS)})")
        self.path, self.fmt = path, fmt
        self.stats = ReadStats()
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            mtime = time.time()
        self.ctx = Context(
            path=path,
            replica=replica or replica_from_path(path),
            engine=fmt,
            stats=self.stats,
            mtime=mtime,
            year=time.gmtime(mtime).tm_year,
        )

    def __iter__(self) -> Iterator[tuple[int, Request | LineError]]:
        for n, item in self._raw():
            if isinstance(item, LineError):
                self.stats.errors += 1
            else:
                self.stats.requests += 1
            yield n, item

    def _raw(self) -> Iterator[tuple[int, Request | LineError]]:
        if self.fmt == "contract":
            yield from self._contract()
            return
        if self.fmt == "vllm":
            from infdebug.collectors.readers_vllm import read_vllm as read
        elif self.fmt == "sglang":
            from infdebug.collectors.readers_sglang import read_sglang as read
        else:
            from infdebug.collectors.readers_openai import read_openai as read
        yield from read(iter_lines(self.path), self.ctx)

    def _contract(self) -> Iterator[tuple[int, Request | LineError]]:
        for n, rec in read_records(self.path):
            self.stats.lines += 1
            if isinstance(rec, LineError | Request):
                yield n, rec
            else:
                self.stats.ignored += 1


def read_engine_log(path: str, fmt: str = "auto", replica: str | None = None) -> Iterator[tuple[int, Request | LineError]]:
    """``(line_number, Request | LineError)`` for every request in an engine log, in line order.

    A request seen on several lines (vLLM's Received + RequestOutput, SGLang's Receive +
    Finish) is one record, numbered by its first line. Other log output is skipped.
    """
    return iter(EngineLogReader(path, fmt, replica))


@dataclass
class ConvertReport:
    path: str
    out_path: str
    format: str
    lines: int = 0
    requests: int = 0
    ignored: int = 0
    rejects: list[Reject] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the file could not be read at all

    @property
    def rejected(self) -> int:
        return len(self.rejects)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "out_path": self.out_path,
            "format": self.format,
            "lines": self.lines,
            "requests": self.requests,
            "ignored": self.ignored,
            "rejected": self.rejected,
            "rejects": [f"{r.file}:{r.line}: {r.reason}" for r in self.rejects],
            "notes": self.notes,
            "error": self.error,
        }


def convert_to_contract(
    path: str,
    out_path: str,
    fmt: str = "auto",
    replica: str | None = None,
    *,
    rejects: RejectSink | None = None,
) -> ConvertReport:
    """Read an engine log and write its requests as contract JSONL to ``out_path``.

    Unparseable lines are reported (``report.rejects``, and ``rejects`` when given) and
    skipped; a file whose format cannot be told sets ``report.error`` and writes nothing.
    """
    report = ConvertReport(path, out_path, fmt)
    try:
        reader = EngineLogReader(path, fmt, replica)
    except (ValueError, OSError) as e:
        report.error = str(e)
        return report
    report.format = reader.fmt
    raw_lines: dict[int, bytes] = {}
    bad: list[tuple[int, LineError]] = []
    with open(out_path, "wb") as out:
        try:
            for n, item in reader:
                if isinstance(item, LineError):
                    bad.append((n, item))
                else:
                    out.write(encode_record(item))
        except OSError as e:
            report.error = f"{path}: {e}"
    if bad:
        wanted = {n for n, _ in bad}
        raw_lines = {n: t.encode() for n, t in iter_lines(path) if n in wanted}
    for n, err in bad:
        r = Reject(path, n, err.reason, err.field, raw_lines.get(n, b""))
        report.rejects.append(r)
        if rejects is not None:
            rejects.add(r)
    st = reader.stats
    report.lines, report.requests, report.ignored = st.lines, st.requests, st.ignored
    report.notes = dict(st.notes)
    return report
