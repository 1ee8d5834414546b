"""``ingest_paths``: what ``infdebug ingest`` runs — expand paths, tell each file's format,
convert engine logs to contract records, load every file through ``Ingestor`` (jsonl.py),
and report rows, rejects and errors."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infdebug.collectors.jsonl import JSONL_SUFFIXES, FileResult, Ingestor, Progress, RejectSink
from infdebug.schema import KINDS
from infdebug.store.base import Store

LOG_SUFFIXES = (".log", ".log.gz")  # engine logs, read when their format is recognised


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
                if n.endswith(JSONL_SUFFIXES + LOG_SUFFIXES) and not n.startswith(".")
            )
            if not found:
                errors.append(f"{a}: directory has no .jsonl or .jsonl.gz files")
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
            "per_file": [
                {
                    "path": f.path,
                    "status": f.status,
                    "rows": dict(f.rows),
                    "rejected": f.rejected,
                    "bytes": f.bytes,
                    "via": f.path_taken or None,
                    "message": f.message or None,
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
) -> IngestReport:
    """Ingest files of contract JSONL, or engine logs (vLLM, SGLang, OpenAI request/response
    JSONL; ``fmt`` auto-detected per file) converted to contract records on the way."""
    t0 = time.perf_counter()
    files, errors = expand_paths(paths)
    sink = RejectSink(rejects_path)
    ing = Ingestor(store, strict=strict, rejects=sink, progress=progress)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="infdebug-convert-") as tmp:
            for i, f in enumerate(files):
                if on_file:
                    with contextlib.suppress(OSError):
                        on_file(f, os.path.getsize(f))
                res = _ingest_one(ing, f, fmt, replica, sink, os.path.join(tmp, f"{i}.jsonl"))
                if res.status == "error" and f not in paths and f.endswith(LOG_SUFFIXES):
                    res.status = "unchanged"  # a log found in a directory that is not an engine log
                    res.message = "skipped: not an engine request log"
                results.append(res)
    finally:
        sink.close()
    return IngestReport(results, errors, sink.path if sink.count else None, time.perf_counter() - t0)


def _ingest_one(ing: Ingestor, path: str, fmt: str, replica: str | None, sink: RejectSink, tmp: str) -> FileResult:
    from infdebug.collectors.readers import convert_to_contract, detect_format

    kind = fmt
    if fmt == "auto":
        try:
            kind = detect_format(path)
        except (OSError, EOFError) as e:
            return FileResult(path, status="error", message=f"cannot read {path}: {e}")
        if kind == "unknown" and path.endswith(JSONL_SUFFIXES):
            kind = "contract"  # its lines are judged one by one (and rejected with reasons)
    if kind == "contract":
        return ing.ingest_file(path)
    if kind == "unknown":
        return FileResult(path, status="error", message=(
            f"{path}: not contract JSONL, and no vLLM, SGLang or OpenAI request/response log lines in its "
            "first lines; pass --format"))
    report = convert_to_contract(path, tmp, kind, replica, rejects=sink)
    if report.error:
        return FileResult(path, status="error", message=report.error)
    res = ing.ingest_file(tmp, label=path)
    res.rejected += len(report.rejects)
    res.path_taken = f"{kind} log → {res.path_taken or 'contract'}"
    return res
