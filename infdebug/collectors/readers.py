"""The log-format registry and the public reading API: real vLLM / SGLang / OpenAI-style logs
into contract ``Request`` records.

The registry is built here, once, from every ``readers_*`` module of this package that declares
``READER = ReaderSpec(...)`` (readers_base.py says what a spec holds): ``readers_vllm``,
``readers_sglang``, ``readers_openai``, ``readers_batch`` (OpenAI Batch API input / output
files), ``readers_contract`` and ``readers_prometheus`` (exposition snapshots, metrics records).
A new format is one new ``readers_<name>.py`` file; ``register(spec)`` adds one at run time.
Everything that names formats comes from the registry: ``format_names()`` (``ingest
--format``), ``detect_line`` / ``detect_format``, and ``not_recognised`` (the "expected …"
message).

``read_engine_log(path)`` yields ``(line_number, Request | LineError)`` for one file, in line
order; ``detect_format(path)`` says which reader fits (from the file's name, its first line or
the first lines that tell); ``convert_to_contract`` writes contract JSONL and reports what it
read, ignored and rejected. Lines come through ``readers_shipper`` (CRI / Docker json-file /
``kubectl --timestamps`` wrappings removed, split lines rejoined).

A hostile line is one line's problem, not the file's: a line nested too deeply for Python's
JSON parser (``too_deep``) is rejected before any reader parses it, and is never asked of
detection; a UTF-8 byte-order mark before the first line is dropped. A rotated log's
name tells its format as the name it was rotated from does (``sniff.unrotated``).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from infdebug.collectors.readers_base import (
    Context,
    ReaderSpec,
    ReadStats,
    build_request,
    parse_timestamp,
    replica_from_path,
)
from infdebug.collectors.readers_shipper import frames
from infdebug.collectors.rejects import Reject, RejectSink
from infdebug.collectors.sniff import unrotated
from infdebug.schema import LineError, Request, encode_record

# Context, ReadStats, build_request, parse_timestamp, replica_from_path: from readers_base
__all__ = [
    "DETECT_LINES",
    "READERS",
    "ConvertReport",
    "Context",
    "EngineLogReader",
    "ReadStats",
    "ReaderSpec",
    "build_request",
    "convert_to_contract",
    "detect_format",
    "detect_line",
    "format_names",
    "not_recognised",
    "parse_timestamp",
    "read_engine_log",
    "reader",
    "register",
    "replica_from_path",
]

DETECT_LINES = 2000  # lines looked at to detect a file's format
UNKNOWN = "unknown"
# Python's json (and msgspec) parse nesting by recursion, and give up near 1000 levels
# less the stack already in use; a line nested deeper than this is rejected unparsed.
MAX_JSON_DEPTH = 500
TOO_DEEP = f"JSON nested too deeply to read (over {MAX_JSON_DEPTH} levels of objects and arrays)"
_JSON_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]+")


def too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests JSON objects and arrays more than ``limit`` deep (brackets in
    strings do not count). Cheap for ordinary lines: only one with more than ``limit``
    brackets in all is looked at closer."""
    if text.count("{") + text.count("[") <= limit:
        return False
    depth = 0
    for ch in _NOT_BRACKET_RE.sub("", _JSON_STRING_RE.sub("", text)):
        depth += 1 if ch in "[{" else -1
        if depth > limit:
            return True
    return False


# --- the registry ------------------------------------------------------------------------------

READERS: dict[str, ReaderSpec] = {}


def register(spec: ReaderSpec) -> ReaderSpec:
    """Add a format to the registry (a second spec under a taken name is an error)."""
    if spec.name in READERS and READERS[spec.name] is not spec:
        raise ValueError(f"log format {spec.name!r} registered twice")
    if spec.name in ("auto", UNKNOWN):
        raise ValueError(f"{spec.name!r} cannot name a log format")
    READERS[spec.name] = spec
    return spec


def _discover() -> None:
    """Register the ``READER`` of every ``readers_*`` module of this package."""
    pkg = __name__.rpartition(".")[0]
    for mod in pkgutil.iter_modules(importlib.import_module(pkg).__path__):
        if mod.name.startswith("readers_"):
            spec = getattr(importlib.import_module(f"{pkg}.{mod.name}"), "READER", None)
            if isinstance(spec, ReaderSpec):
                register(spec)


def specs() -> list[ReaderSpec]:
    """Every registered format, in detection order."""
    return sorted(READERS.values(), key=lambda s: (s.order, s.name))


def format_names() -> list[str]:
    """The ``--format`` values (besides ``auto``), in detection order."""
    return [s.name for s in specs()]


def reader(name: str) -> ReaderSpec:
    """The spec of format ``name`` (ValueError naming the known ones if there is none)."""
    spec = READERS.get(name)
    if spec is None:
        raise ValueError(f"unknown format {name!r} (expected auto, {', '.join(format_names())})")
    return spec


def not_recognised(path: str) -> str:
    """The one "format not recognised" message: what each registered format looks like."""
    described = [s.describe for s in specs()]
    expected = ", ".join(described[:-1]) + (" or " if len(described) > 1 else "") + described[-1]
    return (
        f"{path}: format not recognised in its first {DETECT_LINES} lines "
        f"(expected {expected}); pass --format"
    )


# --- detection -----------------------------------------------------------------------------------


def detect_line(text: str) -> str | None:
    """The format one line belongs to: a line that is a JSON object is asked of each format's
    ``json_line``, any other line of each ``text_line`` (in detection order); None."""
    s = text.lstrip().lstrip("\ufeff")
    if s.startswith("{"):
        if too_deep(s):
            return None
        try:
            obj = json.loads(s)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
        return next(
            (sp.name for sp in specs() if sp.json_line is not None and sp.json_line(obj)), None
        )
    return next(
        (sp.name for sp in specs() if sp.text_line is not None and sp.text_line(text)), None
    )


def detect_format(path: str) -> str:
    """A registered format's name, from the file's name (``suffixes``), its first non-blank
    line (``first_line``) or the first of its first ``DETECT_LINES`` lines that tells (inside
    any CRI / Docker wrapping); ``unknown``."""
    ordered = specs()
    name = unrotated(os.path.basename(path))
    for sp in ordered:
        if sp.suffixes and name.endswith(sp.suffixes):
            return sp.name
    first = True
    for n, text, _ in frames(path, Counter()):
        if first and text.strip():
            first = False
            head = text.lstrip("\ufeff").strip()
            hit = next(
                (sp.name for sp in ordered if sp.first_line is not None and sp.first_line(head)),
                None,
            )
            if hit is not None:
                return hit
        fmt = detect_line(text)
        if fmt is not None:
            return fmt
        if n >= DETECT_LINES:
            break
    return UNKNOWN


# --- reading -------------------------------------------------------------------------------------


class EngineLogReader:
    """Reads one request log file; ``stats`` holds the counts once it has been iterated."""

    def __init__(self, path: str, fmt: str = "auto", replica: str | None = None) -> None:
        if fmt == "auto":
            fmt = detect_format(path)
            if fmt == UNKNOWN:
                raise ValueError(not_recognised(path))
        else:
            detected = [s for s in specs() if s.variant_of == fmt]
            if detected and (found := detect_format(path)) in {s.name for s in detected}:
                fmt = found  # --format openai on a Batch API file: its own reader
        spec = reader(fmt)
        if spec.read is None:
            raise ValueError(
                f"{path}: {spec.describe}, not a request log; `infdebug ingest` loads it"
            )
        self.path, self.fmt, self.spec = path, fmt, spec
        self.stats = ReadStats()
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            mtime = time.time()
        self.ctx = Context(
            path=path,
            replica=replica or replica_from_path(path),
            engine=spec.engine or fmt,
            stats=self.stats,
            mtime=mtime,
            year=time.gmtime(mtime).tm_year,
        )

    def __iter__(self) -> Iterator[tuple[int, Request | LineError]]:
        assert self.spec.read is not None
        deep: list[tuple[int, Request | LineError]] = []
        for n, item in self.spec.read(self._lines(deep), self.ctx):
            yield from self._count(deep)
            deep.clear()
            yield from self._count([(n, item)])
        yield from self._count(deep)

    def _lines(self, deep: list[tuple[int, Request | LineError]]) -> Iterator[tuple[int, str]]:
        """The file's lines for the reader: a byte-order mark off the first; a line nested
        too deeply given as blank, its error put in ``deep`` for ``__iter__`` to yield."""
        first = True
        for n, text in self.ctx.lines():
            if first:
                text, first = text.lstrip("\ufeff"), False
            if too_deep(text):
                self.stats.lines += 1
                deep.append((n, LineError(TOO_DEEP)))
                text = ""
            yield n, text

    def _count(
        self, items: list[tuple[int, Request | LineError]]
    ) -> Iterator[tuple[int, Request | LineError]]:
        for n, item in items:
            if isinstance(item, LineError):
                self.stats.errors += 1
            else:
                self.stats.requests += 1
            yield n, item


def read_engine_log(
    path: str, fmt: str = "auto", replica: str | None = None
) -> Iterator[tuple[int, Request | LineError]]:
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
        except (OSError, EOFError) as e:
            report.error = f"{path}: {e}"
        except RecursionError:
            report.error = f"{path}: a line is nested too deeply to parse: not loaded"
    if bad:
        wanted = {n for n, _ in bad}
        try:
            raw_lines = {n: t.encode() for n, t, _ in frames(path, Counter()) if n in wanted}
        except (OSError, EOFError):
            raw_lines = {}  # gone since (rotated away): the rejects keep no raw line
    for n, err in bad:
        r = Reject(path, n, err.reason, err.field, raw_lines.get(n, b""))
        report.rejects.append(r)
        if rejects is not None:
            rejects.add(r)
    st = reader.stats
    report.lines, report.requests, report.ignored = st.lines, st.requests, st.ignored
    report.notes = dict(st.notes)
    return report


_discover()
