"""The log tailer behind ``infdebug collect logs``: files that are still being written (trace
and engine logs, rotated as they go) loaded into the store over and over, each line once.

Every poll reads what changed through ``ingest_paths`` (collectors/ingest.py), so what was
read of each file is checkpointed in the store's ``ingest_state`` with the rows themselves,
and a tailer that is stopped, or killed half way through a load (whose batch the next load
rolls back), resumes exactly where the store says it got. Nothing is buffered in between:
the files are the spool.

Which files: the paths given (files, directories, globs), expanded again every poll, and
the files log rotation makes of any file read: ``app.jsonl.1``, ``app.jsonl.1.gz``,
``app.jsonl-20251201`` beside ``app.jsonl`` (``RotatedLogs``). A file is known by its first
line, not its name (collectors/ingestor.py), so:

- rotation by rename (``app.jsonl`` → ``app.jsonl.1``, a new ``app.jsonl``): the old file
  is read on from where it stopped under its new name, including what the writer still
  finishes there; the new file is a new file;
- gzip on rotate (``app.jsonl.1`` → ``app.jsonl.1.gz``): the same content, read on from the
  same offset (a ``.gz`` still being compressed is tried again once it stops changing);
- copytruncate (``app.jsonl`` copied to ``app.jsonl.1``, then truncated and written again):
  the copy is read on from where the original stopped, and a copy shorter than what was
  read of the original (read between the copy and the truncation) adds nothing. A line
  half written at the copy ends the copy unterminated, and its other half starts the
  truncated file: that half is loaded joined to the first, which the copy then passes over
  (no reject, no double). The writer must append (``O_APPEND``, as logrotate says), or the
  truncated file starts with a hole of NUL bytes.

A last line without its newline is still being written: while following, it is held back
silently and read once it ends (``hold_partial``); a one-pass run rejects it with a note, as
``infdebug ingest`` does, and reads it again when the file grows.

Between polls only files whose size, time or inode changed are read, so an idle tailer does
not touch the store. What a plain file holds past its offset is loaded on the ingestor's
fast path from a snapshot of its complete lines (``fast_tail``): ClickHouse reading a file
as it grows would see it change and send it down the careful path, line by line in Python.
An engine log in another format (vLLM, SGLang…) is converted again whole each time it
changes, and only what is new is loaded.

The embedded store (chDB) admits one process at a time. By default the tailer opens it for
each poll that has something to load and releases it in between (opening it again costs
about 0.1 s), so ``infdebug analyze`` or ``query`` can run while it follows: that is what a
user at the store wants, and reopening costs the tailer little. ``hold=True`` keeps it
open (nobody else can open it then). A ClickHouse server is shared, so there it is held by
default. When the store is busy (another process holds it) or unreachable, the tailer says
so once, waits with exponential backoff (0.5 s doubling to 30 s), says so once when it is
back, and loads what was written meanwhile.

``Tailer.stop`` (the CLI calls it on SIGINT / SIGTERM) lets the file being loaded finish
and ends the run; the only waits here are the poll interval and the backoff.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from infdebug.collectors.ingest import IngestReport, ingest_paths, is_log_name, scan_paths
from infdebug.collectors.ingestor import FileResult
from infdebug.collectors.sniff import unrotated
from infdebug.collectors.timing import max_latency_s
from infdebug.schema import open_bytes
from infdebug.store.base import Store, StoreBusy, StoreError, StoreFull, StoreUnwritable
from infdebug.store.ingest_state import MARK_BYTES, IngestState, mark

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
TAIL_LIMIT = 64 << 20  # the longest cut line looked for at the end of a rotated file

Say = Callable[[str], None]


# --- the files of one log -----------------------------------------------------------------


def log_base(name: str) -> str:
    """The name of the log a file belongs to: ``app.jsonl.1.gz`` → ``app.jsonl``."""
    return unrotated(os.path.basename(name)).removesuffix(".gz")


class RotatedLogs:
    """The ``Rotation`` of collectors/ingestor.py: the other files of a file's log are those
    in its directory with the same ``log_base`` (its rotated copies, or the file they were
    rotated from)."""

    def others(self, path: str) -> list[str]:
        d, name = os.path.split(path)
        base = log_base(name)
        try:
            names = os.listdir(d or ".")
        except OSError:
            return []
        return [
            os.path.join(d, n)
            for n in sorted(names)
            if n != name
            and not n.startswith(".")
            and log_base(n) == base
            and is_log_name(n)
            and os.path.isfile(os.path.join(d, n))
        ]

    def related(self, path: str, other: str) -> bool:
        same_dir = os.path.dirname(os.path.abspath(path)) == os.path.dirname(os.path.abspath(other))
        return same_dir and log_base(path) == log_base(other)

    def joined(
        self, path: str, line: bytes, decodes: Callable[[bytes], bool]
    ) -> tuple[str, bytes] | None:
        for other in self.others(path):
            tail = cut_tail(other)
            if tail.strip() and decodes(tail + line):
                return other, tail + line
        return None

    def continued(self, path: str, line: bytes, decodes: Callable[[bytes], bool]) -> str | None:
        for other in self.others(path):
            first = opening_line(other)
            if first.strip() and decodes(line + first):
                return other
        return None

    def copy_of(self, path: str, label: str, states: list[IngestState]) -> IngestState | None:
        longer = [
            s
            for s in states
            if s.offset > 0 and s.head_hash and s.path != label and self.related(label, s.path)
        ]
        if not longer:
            return None
        size, head = _size_and_head(path)
        for s in longer:
            if size >= s.offset:
                continue  # as long as what was read: identify said it is other content
            if size < MARK_BYTES or mark(head) == s.head_hash:
                return s
        return None


def cut_tail(path: str) -> bytes:
    """What follows the last newline of the file (decompressed): b"" when it ends with one."""
    try:
        if path.endswith(".gz"):
            tail = b""
            with open_bytes(path) as fh:
                while block := fh.read(1 << 20):
                    cut = block.rfind(b"\n")
                    tail = block[cut + 1 :] if cut >= 0 else tail + block
                    if len(tail) > TAIL_LIMIT:
                        return b""
            return tail
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            tail, pos = b"", end
            while pos > 0 and len(tail) <= TAIL_LIMIT:
                step = min(pos, 1 << 16)
                pos -= step
                fh.seek(pos)
                tail = fh.read(step) + tail
                cut = tail.rfind(b"\n")
                if cut >= 0:
                    return tail[cut + 1 :]
            return tail if pos == 0 else b""
    except (OSError, EOFError):
        return b""


def opening_line(path: str) -> bytes:
    """The file's first line (decompressed), without its newline."""
    try:
        with open_bytes(path) as fh:
            return fh.readline(TAIL_LIMIT).rstrip(b"\n")
    except (OSError, EOFError):
        return b""


def _size_and_head(path: str) -> tuple[int, bytes]:
    """(content bytes, its first ``MARK_BYTES``): a ``.gz`` is decompressed to the end."""
    with open_bytes(path) as fh:
        head = fh.read(MARK_BYTES)
        if not path.endswith(".gz"):
            return os.fstat(fh.fileno()).st_size, head
        size = len(head)
        while block := fh.read(1 << 20):
            size += len(block)
    return size, head


# --- the tailer ---------------------------------------------------------------------------


class StoreUnavailable(StoreError):
    """The store cannot be had for now (held by another process, unreachable, its disk
    full): the tailer waits for it."""


@dataclass
class Poll:
    """What one pass loaded."""

    results: list[FileResult] = field(default_factory=list)
    read: int = 0  # files that had changed

    @property
    def rows(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for r in self.results:
            c.update(r.rows)
        return c


@dataclass
class TailReport:
    """The run's summary: the ingest report of every file read (each file once, its results
    summed), with how the run went."""

    report: IngestReport
    follow: bool
    polls: int
    store_waits: int
    waited_s: float
    held: dict[str, int]  # unterminated last lines still held back: path → bytes
    unavailable: str | None = None  # the store was never had (why)

    def exit_code(self) -> int:
        """Following: 0 (stopped cleanly); once: as ``ingest``, and 2 when the store stayed
        unavailable until the run was stopped."""
        if self.follow:
            return 0
        return 2 if self.unavailable is not None else self.report.exit_code()

    def to_json(self) -> dict[str, Any]:
        doc = self.report.to_json()
        doc.update(
            follow=self.follow,
            polls=self.polls,
            store_waits=self.store_waits,
            waited_s=round(self.waited_s, 3),
            held=self.held,
        )
        if self.unavailable is not None:
            doc["error"] = self.unavailable
        return doc


class Tailer:
    """Load ``paths`` into the store, once (``follow=False``) or every ``interval`` seconds
    until ``stop()``. ``open_store`` opens the store (it raises ``StoreBusy`` / ``StoreError``
    when it cannot); ``say`` gets the progress lines; ``exclude``: files and directories
    never read (the rejects file, the store's own directory); ``assign`` / ``assign_params``:
    as ``ingest_paths``' (trace sampling, collectors/sampling.py)."""

    def __init__(
        self,
        paths: Iterable[str],
        *,
        open_store: Callable[[], Store],
        rejects_path: str,
        follow: bool = False,
        interval: float = 1.0,
        hold: bool = False,
        server: bool = False,
        strict: bool = False,
        fmt: str = "auto",
        replica: str | None = None,
        max_latency: float | None = None,
        exclude: Iterable[str] = (),
        say: Say = lambda line: None,
        assign: dict[str, dict[str, str]] | None = None,
        assign_params: dict[str, Any] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.follow = follow
        self.interval = interval
        self.hold = hold
        self.server = server  # a StoreError opening it is "unreachable": wait
        self._open_store = open_store
        self._ingest: dict[str, Any] = dict(
            rejects_path=rejects_path,
            strict=strict,
            fmt=fmt,
            replica=replica,
            max_latency=max_latency_s(max_latency),
            hold_partial=follow,
            rotation=RotatedLogs(),
            fast_tail=True,
            named=self.paths,
            assign=assign,
            assign_params=assign_params,
        )
        self.ceiling = float(self._ingest["max_latency"])
        self.rejects_path = rejects_path
        self._exclude = [os.path.realpath(p) for p in exclude]
        self._say = say
        self._stop = threading.Event()
        self._store: Store | None = None
        self._seen: dict[str, tuple[int, ...]] = {}  # path → stat when read (unchanged: skip)
        self._failed: dict[str, tuple[int, ...]] = {}  # path → stat when it last failed
        self._logs: set[tuple[str, str]] = set()  # (directory, log base) of files read
        self._told: set[str] = set()  # lines said once
        self._merged: dict[str, FileResult] = {}
        self._errors: list[str] = []
        self._skipped: list[str] = []
        self._rejected = 0
        self.loaded = 0  # rows loaded by this run
        self.polls = 0

    def stop(self) -> None:
        """End the run once the file being loaded is (safe from a signal handler)."""
        self._stop.set()

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> TailReport:
        t0 = time.perf_counter()
        delay, waits, waited, since = BACKOFF_MIN_S, 0, 0.0, None
        unavailable: str | None = None
        idle = False
        try:
            while not self._stop.is_set():
                try:
                    poll = self.poll()
                except StoreUnavailable as e:
                    if since is None:
                        since, waits = time.monotonic(), waits + 1
                        self._say(
                            f"waiting for the store: {e} (trying again, every {BACKOFF_MAX_S:.0f}"
                            " s at most; nothing is lost: what is written meanwhile is read "
                            "when it is back)"
                        )
                    unavailable = str(e)
                    self._stop.wait(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                if since is not None:
                    gap = time.monotonic() - since
                    waited += gap
                    self._say(f"the store is back after {gap:.1f} s: loading what was written")
                    since, delay, unavailable = None, BACKOFF_MIN_S, None
                if poll.rows:
                    idle = False
                    self._tell_poll(poll)
                elif self.follow and not idle:
                    idle = True
                    self._say(
                        f"up to date: {self.loaded:,} rows loaded, following "
                        f"{len(self._seen)} file(s)"
                    )
                if not self.follow:
                    break
                self._stop.wait(self.interval)
        finally:
            self._release(force=True)
        if since is not None:
            waited += time.monotonic() - since
        return self._report(time.perf_counter() - t0, waits, waited, unavailable)

    def poll(self) -> Poll:
        """One pass: read every file that changed since it was last read."""
        self.polls += 1
        out = Poll()
        changed = [(f, k) for f, k in self._files() if self._seen.get(f) != k]
        if not changed:
            return out
        store = self._acquire()
        try:
            for f, key in changed:
                if self._stop.is_set():
                    break  # stopping: the files not read yet stay for the next run
                out.read += 1
                try:
                    rep = ingest_paths(store, [f], **self._ingest)
                except (StoreFull, StoreBusy) as e:
                    raise StoreUnavailable(str(e)) from None
                self._rejected += sum(r.rejected for r in rep.files)
                for r in rep.files:
                    if r.status == "error" and self._unreachable(store, r):
                        raise StoreUnavailable(r.message)
                    self._record(f, key, r)
                    out.results.append(r)
                    self.loaded += sum(r.rows.values())
        finally:
            self._release()
        return out

    # -- the store -----------------------------------------------------------------------
    def _acquire(self) -> Store:
        if self._store is None:
            try:
                with _quiet("clickhouse_connect"):  # it logs every failed attempt: said once
                    self._store = self._open_store()
            except (StoreBusy, StoreFull) as e:
                raise StoreUnavailable(str(e)) from None
            except StoreUnwritable:
                raise  # read-only: waiting would not help
            except StoreError as e:
                if self.server:
                    raise StoreUnavailable(str(e)) from None
                raise
        return self._store

    def _release(self, *, force: bool = False) -> None:
        if self._store is not None and (force or not self.hold):
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None

    def _unreachable(self, store: Store, r: FileResult) -> bool:
        """Whether the store (not the file) failed this file's load: it answers no query."""
        if "the store refused it" not in r.message:
            return False
        try:
            store.query("SELECT 1")
        except StoreError:
            self._release(force=True)
            return True
        return False

    # -- the files -----------------------------------------------------------------------
    def _files(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(path, stat key)`` of every file to follow, the oldest first."""
        found = scan_paths(self.paths)
        for line in found.errors:
            if not self.follow:
                self._errors.append(line)
            elif self.polls == 1:  # (later, a name can be missing between rotation steps)
                self._say(f"{line} (yet): read when it appears")
        if self.polls == 1:  # (what a directory holds besides logs is told once)
            self._skipped = found.skipped
            for line in found.skipped:
                self._say(line)
        files = set(found.files)
        by_dir: dict[str, set[str]] = {}
        for d, base in self._logs | {_log_of(f) for f in files}:
            by_dir.setdefault(d, set()).add(base)
        for d, bases in by_dir.items():
            with contextlib.suppress(OSError):
                for n in os.listdir(d):
                    if not n.startswith(".") and is_log_name(n) and log_base(n) in bases:
                        files.add(os.path.join(d, n))
        keyed = []
        for f in files:
            rp = os.path.realpath(f)
            if any(rp == x or rp.startswith(x + os.sep) for x in self._exclude):
                continue
            try:
                st = os.stat(f)
            except OSError:
                continue  # gone since it was listed (rotated away): found again by its new name
            if not os.path.isfile(f):
                continue
            keyed.append((st.st_mtime_ns, f, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)))
        keyed.sort()
        return [(f, k) for _, f, k in keyed]

    def _record(self, path: str, key: tuple[int, ...], r: FileResult) -> None:
        if r.status == "error" and self.follow and self._failed.get(path) != key:
            self._failed[path] = key  # maybe mid-rotation or mid-compression: once more
            return
        self._failed.pop(path, None)
        self._seen[path] = key
        self._logs.add(_log_of(path))
        if r.status == "error":
            self._once(f"not loaded: {r.message}")
        for w in r.warnings:
            self._once(f"note: {r.path}: {w}")
        m = self._merged.get(r.path)
        if m is None:
            self._merged[r.path] = dataclasses.replace(
                r, rows=Counter(r.rows), notes=Counter(r.notes), warnings=list(r.warnings)
            )
            return
        m.rows.update(r.rows)
        m.notes.update(r.notes)
        m.rejected += r.rejected
        m.bytes += r.bytes
        m.warnings += [w for w in r.warnings if w not in m.warnings]
        m.path_taken = r.path_taken or m.path_taken
        if r.status != "unchanged" or m.status == "error":
            m.status, m.message, m.held = r.status, r.message, r.held

    @property
    def rejected_lines(self) -> int:
        """Lines rejected by this run."""
        return self._rejected

    def tell(self, poll: Poll) -> None:
        """Say what ``poll`` loaded (one progress line)."""
        self._tell_poll(poll)

    def _tell_poll(self, poll: Poll) -> None:
        rows = poll.rows
        kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(rows.items()) if n)
        files = sum(1 for r in poll.results if sum(r.rows.values()))
        line = (
            f"+{sum(rows.values()):,} rows ({kinds}) from {files} file(s): {self.loaded:,} in all"
        )
        rejected = sum(r.rejected for r in poll.results)
        if rejected:
            line += f"; {rejected} line(s) rejected, written to {self.rejects_path}"
        self._say(line)

    def _once(self, line: str) -> None:
        if line not in self._told:
            self._told.add(line)
            self._say(line)

    def _report(
        self, seconds: float, waits: int, waited: float, unavailable: str | None
    ) -> TailReport:
        files = sorted(self._merged.values(), key=lambda r: r.path)
        rejects = self.rejects_path if self._rejected else None
        report = IngestReport(files, self._errors, rejects, seconds, self.ceiling, self._skipped)
        held = {r.path: r.held for r in files if r.held}
        return TailReport(report, self.follow, self.polls, waits, waited, held, unavailable)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _log_of(path: str) -> tuple[str, str]:
    return os.path.dirname(path), log_base(path)
