"""``ingest_paths``: what ``infdebug ingest`` runs — expand paths, tell each file's format
(the log-format registry, collectors/readers.py), convert engine logs and Prometheus
snapshots to contract records, load every file through ``Ingestor`` (ingestor.py), and report
rows, rejects, notes and errors.

A file that is empty, a JSON array or binary is named for what it is (collectors/sniff.py);
a latency that cannot be true is dropped with a note (collectors/timing.py), under the
ceiling given as ``max_latency`` (else ``INFDEBUG_MAX_LATENCY_S``, else one day).

One file stops nothing: whatever goes wrong reading it (a truncated or corrupt ``.gz``, a
file rotated away while it was read, a line nested too deeply to parse) is that file's
error in the report, and the other files load. Only a store that cannot be written (a full
disk, a read-only store: ``StoreUnwritable``) stops the run, in one line. A directory is
searched for logs by name, rotated names included (``app.jsonl.1.gz``, ``app.log-20251201``);
what it holds that is not read is reported, per reason (``IngestReport.skipped``).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from infdebug.collectors.ingestor import (
    JSONL_SUFFIXES,
    FileResult,
    Ingestor,
    Progress,
    Rotation,
)
from infdebug.collectors.readers import (
    UNKNOWN,
    convert_to_contract,
    detect_format,
    not_recognised,
    reader,
    specs,
)
from infdebug.collectors.rejects import Reject, RejectSink
from infdebug.collectors.sniff import sniff, unrotated
from infdebug.collectors.timing import latency_ceiling, max_latency_s
from infdebug.schema import KINDS
from infdebug.store.base import Store, StoreError, StoreFull, StoreUnwritable, disk_full

LOG_SUFFIXES = (".log", ".log.gz")  # engine logs, read when their format is recognised


def scanned_suffixes() -> tuple[str, ...]:
    """File names a directory is searched for: JSONL, logs, and each format's own suffixes."""
    return JSONL_SUFFIXES + LOG_SUFFIXES + tuple(x for sp in specs() for x in sp.suffixes)


def is_log_name(name: str) -> bool:
    """Whether a file so named is read when found in a directory (as named before a log
    rotation renamed it: ``app.jsonl.1.gz`` is ``app.jsonl.gz``)."""
    return unrotated(name).endswith(scanned_suffixes())


@dataclass
class Expanded:
    """What ``scan_paths`` found: files to read, one error per argument that gave none, and
    one line per directory and reason for the files in it that are not read."""

    files: list[str]
    errors: list[str]
    skipped: list[str]


def expand_paths(args: list[str]) -> tuple[list[str], list[str]]:
    """Files to ingest from files, directories and globs; plus one error line per bad arg."""
    found = scan_paths(args)
    return found.files, found.errors


def scan_paths(args: list[str]) -> Expanded:
    """Files to ingest from files, directories and globs (see ``Expanded``)."""
    import glob

    files: list[str] = []
    errors: list[str] = []
    skipped: list[str] = []
    for a in args:
        if os.path.isdir(a):
            found, passed = _scan_dir(a)
            if not found:
                errors.append(f"{a}: directory has no .jsonl, .jsonl.gz, .log or .prom files")
            files.extend(found)
            skipped.extend(passed)
        elif os.path.exists(a):
            if _regular(a):
                files.append(a)
            else:
                errors.append(f"{a}: not a regular file (a pipe, socket or device): not read")
        elif os.path.islink(a):
            errors.append(f"{a}: a broken symbolic link (to {os.readlink(a)})")
        elif any(c in a for c in "*?["):
            matched = sorted(p for p in glob.glob(a, recursive=True) if os.path.isfile(p))
            if not matched:
                errors.append(f"{a}: no file matches")
            files.extend(matched)
        else:
            errors.append(f"{a}: no such file or directory")
    seen: set[str] = set()
    unique = []
    for f in files:
        rp = os.path.realpath(f)
        if rp not in seen:
            seen.add(rp)
            unique.append(f)
    return Expanded(unique, errors, skipped)


_SKIP_REASONS = {
    "suffix": "with unknown suffixes",
    "hidden": "hidden (their names start with a dot)",
    "special": "that are not regular files (pipes, sockets, devices, broken links)",
}


def _scan_dir(top: str) -> tuple[list[str], list[str]]:
    """The log files under ``top``, and one line per reason for those skipped."""
    found: list[str] = []
    passed: dict[str, list[str]] = {k: [] for k in _SKIP_REASONS}
    for d, _, names in os.walk(top):
        for n in names:
            p = os.path.join(d, n)
            if n.startswith("."):
                passed["hidden"].append(p)
            elif not is_log_name(n):
                passed["suffix"].append(p)
            elif not _regular(p):
                passed["special"].append(p)
            else:
                found.append(p)
    lines = []
    for why, paths in passed.items():
        if paths:
            rel = sorted(os.path.relpath(p, top) for p in paths)
            shown = ", ".join(rel[:10]) + (f" … and {len(rel) - 10} more" if len(rel) > 10 else "")
            plural = "s" if len(rel) != 1 else ""
            lines.append(f"{top}: skipped {len(rel)} file{plural} {_SKIP_REASONS[why]}: {shown}")
    return sorted(found), lines


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@dataclass
class IngestReport:
    files: list[FileResult]
    errors: list[str]
    rejects_file: str | None
    seconds: float
    max_latency_s: float | None = None  # the latency ceiling applied
    skipped: list[str] = field(default_factory=list)  # files in directories not read, and why

    def notes(self) -> list[str]:
        """One line per file and reason: ``path: reason (N requests)``; then what a file
        as a whole was warned of, and the files of directories that were not read."""
        return (
            [
                f"{f.path}: {what} ({n} request{'s' if n != 1 else ''})"
                for f in self.files
                for what, n in sorted(f.notes.items())
            ]
            + [f"{f.path}: {w}" for f in self.files for w in f.warnings]
            + self.skipped
        )

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
            "skipped": self.skipped,
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
    assign: dict[str, dict[str, str]] | None = None,
    assign_params: dict[str, Any] | None = None,
    hold_partial: bool = False,
    rotation: Rotation | None = None,
    named: Collection[str] | None = None,
    fast_tail: bool = False,
) -> IngestReport:
    """Ingest files of contract JSONL, engine logs (vLLM, SGLang, OpenAI request/response
    JSONL, OpenAI Batch API files) or Prometheus exposition snapshots — any registered format
    (``fmt``, auto-detected per file) — the others converted to contract records on the way.

    A file that cannot be read or loaded is a ``status="error"`` result with its reason;
    the other files still load. ``max_latency`` (seconds) overrides the latency ceiling;
    an invalid ``INFDEBUG_MAX_LATENCY_S`` raises ``timing.LatencyConfigError``. ``assign``
    and ``assign_params``: columns stored as given, not as read (``Ingestor``);
    ``hold_partial``, ``rotation`` and ``fast_tail``, for files still being written, are the
    ``Ingestor``'s too. ``named``: the paths the user named, when ``paths`` are files found
    for them (a ``.log`` not named, in an unknown format, is skipped, not an error)."""
    t0 = time.perf_counter()
    ceiling = max_latency_s(max_latency)
    scanned = scan_paths(paths)
    files, errors = scanned.files, scanned.errors
    sink = RejectSink(rejects_path)
    ing = Ingestor(
        store,
        strict=strict,
        rejects=sink,
        progress=progress,
        max_latency=ceiling,
        assign=assign,
        assign_params=assign_params,
        hold_partial=hold_partial,
        rotation=rotation,
        fast_tail=fast_tail,
    )
    named = paths if named is None else named
    results: list[FileResult] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="infdebug-convert-") as tmp,
            latency_ceiling(ceiling),
        ):
            for i, f in enumerate(files):
                if on_file:
                    with contextlib.suppress(OSError):
                        on_file(f, os.path.getsize(f))
                # a .log found in a directory (not named on the command line)
                found = f not in named and unrotated(f).endswith(LOG_SUFFIXES)
                try:
                    res = _ingest_one(
                        ing, f, fmt, replica, sink, os.path.join(tmp, f"{i}.jsonl"), found
                    )
                except StoreUnwritable as e:  # every later file would fail the same way
                    raise _stopped(e, f, results) from None
                except StoreError as e:  # this file is not loaded (rolled back); the others may be
                    if disk_full(e):
                        raise _stopped(StoreFull(str(e)), f, results) from None
                    res = FileResult(f, status="error", message=f"{f}: the store refused it: {e}")
                except Exception as e:
                    if isinstance(e, OSError) and disk_full(e):
                        full = StoreFull(
                            f"no space left on device writing {e.filename or 'a temporary file'}"
                            ": free some space and run it again"
                        )
                        raise _stopped(full, f, results) from None
                    res = FileResult(f, status="error", message=file_error(f, e))
                results.append(res)
    finally:
        sink.close()
    return IngestReport(
        results,
        errors,
        sink.path if sink.count else None,
        time.perf_counter() - t0,
        ceiling,
        scanned.skipped,
    )


def file_error(path: str, e: BaseException) -> str:
    """Why ``path`` could not be read, in one line, from what reading it raised."""
    if isinstance(e, FileNotFoundError):
        return (
            f"{path}: gone while it was being read (deleted, or renamed by log rotation): "
            "not loaded; ingest it again under its new name"
        )
    if isinstance(e, EOFError):
        return (
            f"{path}: the gzip data is truncated ({e}): not loaded; if it is still being "
            "written or compressed, ingest it again once it is complete"
        )
    if isinstance(e, zlib.error | gzip.BadGzipFile):
        return f"{path}: corrupt gzip data ({e}): not loaded"
    if isinstance(e, RecursionError):
        return f"{path}: a line is nested too deeply to parse: not loaded"
    if isinstance(e, OSError):
        return f"cannot read {path}: {e.strerror or e}: not loaded"
    return f"{path}: not loaded: {type(e).__name__}: {e}"


def _stopped(e: StoreUnwritable, at: str, done: list[FileResult]) -> StoreUnwritable:
    """``e``, saying where ingest stopped and what was kept."""
    loaded = sum(1 for r in done if r.status == "loaded")
    kept = f"{loaded} file(s) before it were loaded and are kept" if loaded else "nothing loaded"
    return type(e)(f"{e} (ingest stopped at {at}: {kept})")


def _ingest_one(
    ing: Ingestor,
    path: str,
    fmt: str,
    replica: str | None,
    sink: RejectSink,
    tmp: str,
    found_in_dir: bool,
) -> FileResult:
    what = sniff(path)
    kind = fmt
    if what.kind in ("empty", "blank"):
        return FileResult(path, status="empty", message=what.message)
    if what.kind in ("binary", "json_array"):
        return FileResult(path, status="error", message=what.message)
    if fmt == "auto":
        kind = detect_format(path)
        if kind == UNKNOWN and unrotated(path).endswith(JSONL_SUFFIXES):
            kind = "contract"  # its lines are judged one by one (and rejected with reasons)
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
