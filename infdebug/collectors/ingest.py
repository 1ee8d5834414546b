"""``ingest_paths``: what ``infdebug ingest`` runs — expand paths, tell each file's format
(the log-format registry, collectors/readers.py), convert engine logs and Prometheus
snapshots to contract records, load every file through ``Ingestor`` (ingestor.py), and report
rows, rejects, notes and errors.

A file that is empty, a JSON array or binary is named for what it is (collectors/sniff.py);
a latency that cannot be true is dropped with a note (collectors/timing.py), under the
ceiling given as ``max_latency`` (else ``INFDEBUG_MAX_LATENCY_S``, else one day).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infdebug.collectors.ingestor import (
    JSONL_SUFFIXES,
    FileResult,
    Ingestor,
    Progress,
    Reject,
    RejectSink,
)
from infdebug.collectors.readers import (
    UNKNOWN,
    convert_to_contract,
    detect_format,
    not_recognised,
    reader,
    specs,
)
from infdebug.collectors.sniff import sniff
from infdebug.collectors.timing import latency_ceiling, max_latency_s
from infdebug.schema import KINDS
from infdebug.store.base import Store, StoreError

LOG_SUFFIXES = (".log", ".log.gz")  # engine logs, read when their format is recognised


def scanned_suffixes() -> tuple[str, ...]:
    """File names a directory is searched for: JSONL, logs, and each format's own suffixes."""
    return JSONL_SUFFIXES + LOG_SUFFIXES + tuple(x for sp in specs() for x in sp.suffixes)


def expand_paths(args: list[str]) -> tuple[list[str], list[str]]:
    """Files to ingest from files, directories and globs; plus one error line per bad arg."""
    import glob

    files: list[str] = []
    errors: list[str] = []
    for a in args:
        if os.path.isdir(a):
            found = sorted(
                os.path.join(d, n)
                for d, _, names in os.walk(a)
                for n in names
                if n.endswith(scanned_suffixes()) and not n.startswith(".")
            )
            if not found:
                errors.append(f"{a}: directory has no .jsonl, .jsonl.gz, .log or .prom files")
            files.extend(found)
        elif os.path.exists(a):
            files.append(a)
        elif any(c in a for c in "*?["):
            found = sorted(p for p in glob.glob(a, recursive=True) if os.path.isfile(p))
            if not found:
                errors.append(f"{a}: no file matches")
            files.extend(found)
        else:
            errors.append(f"{a}: no such file or directory")
    seen: set[str] = set()
    unique = []
    for f in files:
        rp = os.path.realpath(f)
        if rp not in seen:
            seen.add(rp)
            unique.append(f)
    return unique, errors


@dataclass
class IngestReport:
    files: list[FileResult]
    errors: list[str]
    rejects_file: str | None
    seconds: float
    max_latency_s: float | None = None  # the latency ceiling applied

    def notes(self) -> list[str]:
        """One line per file and reason: ``path: reason (N requests)``."""
        return [
            f"{f.path}: {what} ({n} request{'s' if n != 1 else ''})"
            for f in self.files
            for what, n in sorted(f.notes.items())
        ]

    @property
    def rows(self) -> Counter[str]:
        c: Counter[str] = Counter({k: 0 for k in KINDS})
        for f in self.files:
            c.update(f.rows)
        return c

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def exit_code(self) -> int:
        loaded_any = any(f.status != "error" for f in self.files)
        if not loaded_any:
            return 2
        if self.rejected or self.errors or any(f.status == "error" for f in self.files):
            return 3
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "rows": dict(self.rows),
            "rejected": self.rejected,
            "rejects_file": self.rejects_file,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.bytes / 1e6 / self.seconds, 1) if self.seconds > 0 else None,
            "errors": self.errors + [f.message for f in self.files if f.status == "error"],
            "notes": self.notes(),
            "max_latency_s": self.max_latency_s,
            "per_file": [
                {
                    "path": f.path,
                    "status": f.status,
                    "rows": dict(f.rows),
                    "rejected": f.rejected,
                    "bytes": f.bytes,
                    "via": f.path_taken or None,
                    "message": f.message or None,
                    "notes": dict(f.notes),
                }
                for f in self.files
            ],
        }


def ingest_paths(
    store: Store,
    paths: list[str],
    *,
    strict: bool = False,
    rejects_path: str,
    progress: Progress | None = None,
    on_file: Callable[[str, int], None] | None = None,
    fmt: str = "auto",
    replica: str | None = None,
    max_latency: float | None = None,
) -> IngestReport:
    """Ingest files of contract JSONL, engine logs (vLLM, SGLang, OpenAI request/response
    JSONL, OpenAI Batch API files) or Prometheus exposition snapshots — any registered format
    (``fmt``, auto-detected per file) — the others converted to contract records on the way.

    A file that cannot be read or loaded is a ``status="error"`` result with its reason;
    the other files still load. ``max_latency`` (seconds) overrides the latency ceiling;
    an invalid ``INFDEBUG_MAX_LATENCY_S`` raises ``timing.LatencyConfigError``."""
    t0 = time.perf_counter()
    ceiling = max_latency_s(max_latency)
    files, errors = expand_paths(paths)
    sink = RejectSink(rejects_path)
    ing = Ingestor(store, strict=strict, rejects=sink, progress=progress, max_latency=ceiling)
    results = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="infdebug-convert-") as tmp,
            latency_ceiling(ceiling),
        ):
            for i, f in enumerate(files):
                if on_file:
                    with contextlib.suppress(OSError):
                        on_file(f, os.path.getsize(f))
                found = f not in paths and f.endswith(LOG_SUFFIXES)  # a .log found in a directory
                try:
                    res = _ingest_one(
                        ing, f, fmt, replica, sink, os.path.join(tmp, f"{i}.jsonl"), found
                    )
                except StoreError as e:  # this file is not loaded (rolled back); the others may be
                    res = FileResult(f, status="error", message=f"{f}: the store refused it: {e}")
                results.append(res)
    finally:
        sink.close()
    return IngestReport(
        results, errors, sink.path if sink.count else None, time.perf_counter() - t0, ceiling
    )


def _ingest_one(
    ing: Ingestor,
    path: str,
    fmt: str,
    replica: str | None,
    sink: RejectSink,
    tmp: str,
    found_in_dir: bool,
) -> FileResult:
    try:
        what = sniff(path)
        kind = fmt
        if what.kind in ("empty", "blank"):
            return FileResult(path, status="empty", message=what.message)
        if what.kind in ("binary", "json_array"):
            return FileResult(path, status="error", message=what.message)
        if fmt == "auto":
            kind = detect_format(path)
            if kind == UNKNOWN and path.endswith(JSONL_SUFFIXES):
                kind = "contract"  # its lines are judged one by one (and rejected with reasons)
    except (OSError, EOFError) as e:
        return FileResult(path, status="error", message=f"cannot read {path}: {e}")
    if kind == UNKNOWN and found_in_dir:
        return FileResult(path, status="unchanged", message="skipped: not an engine request log")
    if kind == UNKNOWN:
        return FileResult(path, status="error", message=not_recognised(path))
    try:
        spec = reader(kind)
    except ValueError as e:
        return FileResult(path, status="error", message=f"{path}: {e}")
    if spec.native:
        return ing.ingest_file(path)
    if spec.convert is not None:
        conv = spec.convert(path, tmp, replica)
        if conv.error:
            return FileResult(path, status="error", message=conv.error)
        return _load_converted(ing, path, tmp, spec.what, conv.rejects, conv.notes, sink)
    report = convert_to_contract(path, tmp, kind, replica)
    if report.error:
        return FileResult(path, status="error", message=report.error)
    return _load_converted(ing, path, tmp, spec.what, report.rejects, report.notes, sink)


def _load_converted(
    ing: Ingestor,
    path: str,
    tmp: str,
    what: str,
    rejects: list[Reject],
    notes: dict[str, int],
    sink: RejectSink,
) -> FileResult:
    """Load the contract JSONL converted from ``path``, reported as ``path``; its rejects
    and notes count unless the file was loaded before (then it adds nothing)."""
    with contextlib.suppress(OSError):
        st = os.stat(path)
        os.utime(
            tmp, ns=(st.st_atime_ns, st.st_mtime_ns)
        )  # the same source converts the same: "unchanged"
    res = ing.ingest_file(tmp, label=path)
    if res.status == "empty":
        res.status, res.message = "loaded", f"no records in it ({what})"
    if res.status != "unchanged":
        for r in rejects:
            sink.add(r)
        res.rejected += len(rejects)
        res.notes.update(notes)
    res.path_taken = f"{what} → {res.path_taken or 'contract'}"
    return res
