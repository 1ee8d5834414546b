"""Ingest contract JSONL files (plain or ``.gz``) into the store, fast and without losing lines.

How a file is loaded:

1. Its identity is the hash of its first line, so a file that is renamed, rotated or
   gzipped after it was ingested is recognised; ``ingest_state`` remembers how far into it
   we got (bytes and lines), so a file that grew is read from where it stopped and the
   same file twice adds nothing. What was read must still be the file's prefix: the hashes
   of its first and last 64 KiB read (``head_hash``, ``tail_hash``) are compared first, so
   another file that starts with the same line (or this one rewritten) is read as a new
   file, not from the other's offset. A UTF-8 byte-order mark before the first line is not
   part of it.
2. **Fast path** (a new file on the embedded store): ClickHouse first reads the raw lines
   (``LineAsString``) and checks each one is strict JSON, one object, every field of the
   type the contract says (``Table.line_guard``, store/line_check.py); then it parses and
   loads the original file itself (``file()``) with strict JSON settings and a check on
   every row (``Table.guard``: the kind, required fields, enums, token IDs in UInt32,
   finite numbers, valid UTF-8), and must store
   exactly one row per non-blank line. The checks may doubt a good line, never pass a bad
   one; one doubtful line sends the file down the careful path (a load already done is
   rolled back). Python never touches the rows here: on two cores, a Python validation
   pass beside ClickHouse halved the throughput; the line check adds about half the
   load's time (store/line_check.py). A ClickHouse server cannot run the line check yet
   (it would need the body streamed to it a second time), so there every file takes the
   careful path. ``Ingestor(fast_path=False)`` forces the careful path.
3. **Careful path** (a file with a bad line, mixed kinds, or a grown tail): every line is
   validated with the full contract decoder; bad lines go to the rejects file with file,
   line, field and reason; good lines are grouped by kind and loaded. Whatever ClickHouse
   still refuses is bisected down to the line and rejected with ClickHouse's reason.
   Request latencies that cannot be true (collectors/timing.py) are dropped here, with a
   note; the fast path's guard doubts every row that has one. A good line with a field
   named like a column in another case (``TTFT_S``), which ClickHouse would read as that
   column, is loaded re-encoded from the decoded record. A malformed line's reject names
   the field its syntax error is in (collectors/json_where.py).

Each load is tagged with a batch number, recorded as pending before it starts, so a load
that fails or a process that dies half way is rolled back instead of leaving duplicates.
The bookkeeping's SQL (``ingest_state``, batches) is the store's: store/ingest_state.py.

Following growing files (``infdebug collect logs --follow``, collectors/tail.py) asks two
things more: ``hold_partial`` holds back a last line without its newline silently (it is
still being written; it is read once it ends), where ``ingest`` rejects it with a note; and
``rotation`` (a ``Rotation``: the files a log rotation made of the same log) mends what a
rotation cut. A first line that is the end of a line begun at the end of a rotated copy
(copytruncate copies a half-written line, then the writer finishes it in the truncated
file) is loaded joined to that beginning, and that unterminated beginning, at the end of the
copy, is passed over without a reject; a rotated copy that is shorter than what was already
read of the file it was copied from (read before the truncation) adds nothing. And
``fast_tail`` takes a plain file that is being written, and what it grew by, down the fast
path too (its complete lines copied to a temporary file first), where ``ingest`` reads a
grown file on the careful path.

Not to be confused with tracer/jsonl.py, the exporter that writes these files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import msgspec

from infdebug.collectors.file_identity import REWRITTEN, identify, marks_at, set_marks
from infdebug.collectors.json_where import malformed_field
from infdebug.collectors.rejects import Reject, RejectSink
from infdebug.collectors.timing import (
    SPAN_TOLERANCE_REL,
    SPAN_TOLERANCE_S,
    max_latency_s,
    sanitize_timing,
)
from infdebug.errors import InputError
from infdebug.lineblocks import line_blocks
from infdebug.schema import LineError, RecordDecoder, encode_record, kind_of, open_bytes
from infdebug.store.base import Store, StoreError, StoreUnwritable
from infdebug.store.ddl import JSONL_READ_SETTINGS, TABLES, Table, request_latency_guard
from infdebug.store.ingest_state import (
    MARK_BYTES,
    IngestState,
    batch_rows,
    first_line_id,
    load_states,
    next_batch,
    rollback_batch,
    save_state,
)
from infdebug.store.line_check import check_lines, column_in_other_case

CHUNK_BYTES = 64 << 20
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json.gz")
BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark
TOO_DEEP = "JSON nested too deeply to read (over about 1000 levels of objects and arrays)"


class _FieldNamingDecoder(RecordDecoder):
    """The contract decoder, naming the field a malformed-JSON error is in as well
    (``"ttft_s":+1`` → ``ttft_s``; collectors/json_where.py). A finding-kind line that is
    malformed after its tag (``{"kind":"a.b",…}{…}``) escapes ``RecordDecoder`` as a
    msgspec ``DecodeError``; it is a ``LineError`` here, not the end of the file."""

    def decode(self, line: bytes | str) -> Any:
        try:
            return super().decode(line)
        except LineError as e:
            where = malformed_field(line, e.reason) if isinstance(line, bytes) else None
            if e.field is None and where is not None:
                raise LineError(e.reason, where) from None
            raise
        except msgspec.DecodeError as e:
            reason = f"malformed JSON: {e}"
            where = malformed_field(line, reason) if isinstance(line, bytes) else None
            raise LineError(reason, where) from None


_FULL = _FieldNamingDecoder()
_FULL_STRICT = _FieldNamingDecoder(strict=True)


class FileChanged(InputError):
    """A file was truncated or rewritten while it was read: nothing of it is loaded then."""


@dataclass
class FileResult:
    path: str
    rows: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    bytes: int = 0
    status: str = "loaded"  # loaded | unchanged | empty | error
    message: str = ""
    path_taken: str = ""  # fast | careful | ""
    notes: Counter[str] = field(default_factory=Counter)  # fields dropped, counted per reason
    warnings: list[str] = field(default_factory=list)  # about the file as a whole
    held: int = 0  # bytes of an unterminated last line held back (``hold_partial``)


Progress = Callable[[int], None]  # called with bytes just processed


class Rotation(Protocol):
    """What a log rotation made of a file: the other files of the same log (see the module;
    ``collectors/tail.py`` has the one there is). ``decodes`` tells a good line."""

    def joined(
        self, path: str, line: bytes, decodes: Callable[[bytes], bool]
    ) -> tuple[str, bytes] | None:
        """``(other file, whole line)``: ``line``, the first of ``path``, after the bytes at
        the end of another file of the log that it finishes; None if there are none."""
        ...

    def continued(self, path: str, line: bytes, decodes: Callable[[bytes], bool]) -> str | None:
        """The other file of the log whose first line finishes ``line``, the unterminated
        last line of ``path``; None if there is none."""
        ...

    def copy_of(self, path: str, label: str, states: list[IngestState]) -> IngestState | None:
        """The state, among ``states`` (same first line), of another file of the log that
        ``path`` is a shorter copy of the start of (a copytruncate copy); None if none."""
        ...


# --- reading ------------------------------------------------------------------------------


def _measure(
    path: str, limit: int | None = None, *, tail: bytearray | None = None
) -> tuple[int, int]:
    """(bytes, lines) of a file's (decompressed) content, or of its first ``limit`` bytes;
    ``tail`` is given the last ``MARK_BYTES`` of it."""
    size = lines = 0
    last = 10  # b"\n"
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    if tail is not None:
        tail.clear()
    with open_bytes(path) as fh:
        while n := fh.readinto(view if limit is None else view[: min(len(buf), limit - size)]):  # type: ignore[attr-defined]
            size += n
            lines += buf.count(b"\n", 0, n)
            last = buf[n - 1]
            if tail is not None:
                tail += view[max(0, n - MARK_BYTES) : n]
                del tail[:-MARK_BYTES]
            if limit is not None and size >= limit:
                break
    view.release()
    return size, lines + (0 if last == 10 else 1)


def _count_lines(path: str, limit: int) -> int:
    return _measure(path, limit)[1]


def _first_line(path: str) -> bytes:
    """The first non-blank line (its hash is the file's identity); b"" if there is none."""
    with open_bytes(path) as fh:
        while line := fh.readline(1 << 24):
            if line.strip():
                return line
    return b""


def _skip(fh: IO[bytes], n: int) -> None:
    """Move past the first ``n`` bytes (a gzip stream decompresses its way there)."""
    if n > 0:
        fh.seek(n)


def _decode(dec: RecordDecoder, line: bytes) -> Any:
    """``dec.decode``, with a line nested too deeply for the decoder as a ``LineError``."""
    try:
        return dec.decode(line)
    except RecursionError:
        raise LineError(TOO_DEEP) from None


# --- the ingestor -------------------------------------------------------------------------


class Ingestor:
    def __init__(
        self,
        store: Store,
        *,
        strict: bool = False,
        rejects: RejectSink,
        progress: Progress | None = None,
        tmp_dir: str | None = None,
        max_latency: float | None = None,
        fast_path: bool = True,
        assign: Mapping[str, Mapping[str, str]] | None = None,
        assign_params: Mapping[str, Any] | None = None,
        hold_partial: bool = False,
        rotation: Rotation | None = None,
        fast_tail: bool = False,
    ) -> None:
        self.store = store
        self.fast_tail = fast_tail  # what a file grew by: the fast path too (``_fast_tail``)
        self.hold_partial = hold_partial  # an unterminated last line: wait for its newline
        self.rotation = rotation  # mend lines cut by log rotation (see the module)
        # table name -> {column: SQL expression} stored instead of the lines' (Table.assign)
        self.assign = {t: tuple(a.items()) for t, a in (assign or {}).items()}
        self.assign_params = dict(assign_params or {})
        self.fast_path = fast_path  # False: every file down the careful path (tests, doubt)
        self.max_latency_s = max_latency_s(max_latency)  # read now: flag, ingest, env, default
        self.strict = strict
        self.rejects = rejects
        self.progress = progress or (lambda n: None)
        self.tmp_dir = tmp_dir
        # Unknown fields (and the kind tag) are skipped by ClickHouse; --strict is enforced
        # by the contract decoder on every line before ClickHouse sees it.
        self._settings = dict(JSONL_READ_SETTINGS)
        self._settings["input_format_skip_unknown_fields"] = 1
        self._label = ""
        self._tail = bytearray()  # the last MARK_BYTES the latest load read (ingest_state)

    def _table(self, kind: str) -> Table:
        table = TABLES[kind]
        given = self.assign.get(table.name)
        return dataclasses.replace(table, assign=given) if given else table

    def _insert(
        self, table: Table, path: str, batch: int, settings: Mapping[str, Any], *, guarded: bool
    ) -> None:
        self.store.insert_jsonl(
            table, path, self._label, batch, settings, guarded=guarded, params=self.assign_params
        )

    # -- one file ------------------------------------------------------------------------
    def ingest_file(self, path: str, label: str | None = None) -> FileResult:
        """Load one contract JSONL file; ``label`` names it in results and rows (``_file``)
        when ``path`` is a converted copy of another file."""
        res = FileResult(label or path)
        self._label = label or path
        self._tail.clear()
        try:
            st_os = os.stat(path)
            head = _first_line(path)
        except (OSError, EOFError) as e:
            res.status, res.message = "error", f"cannot read {path}: {e}"
            return res
        partial = not head.endswith(b"\n") and len(head) < 1 << 24  # (a line read whole)
        if self.hold_partial and partial and not path.endswith(".gz"):
            res.status, res.message = "unchanged", "its first line is still being written"
            return res
        if not head.strip():
            empty = not st_os.st_size or _measure(path, 1)[0] == 0
            res.status = "empty"
            res.message = (
                "empty file: nothing to load" if empty else "only blank lines: nothing to load"
            )
            return res
        states = load_states(self.store, first_line_id(head))
        for s in states:
            if s.pending_batch:
                rollback_batch(self.store, s.pending_batch)  # a previous load died half way
                s.pending_batch = 0
                save_state(self.store, s, s.path)
        state, unchanged, rewritten = identify(
            path, st_os, first_line_id(head), states, self._label
        )
        if rewritten:
            res.warnings.append(REWRITTEN)
        if unchanged:
            res.status, res.message = "unchanged", "already ingested"
            return res
        copied = None
        if state.offset == 0 and self.rotation is not None:
            copied = self.rotation.copy_of(path, self._label, states)
        if copied is not None:
            res.status = "unchanged"
            res.message = f"a copy of the start of {copied.path}, already ingested (copytruncate)"
            return res
        batch = next_batch()
        prev = dataclasses.replace(state, batches=list(state.batches))
        save_state(self.store, dataclasses.replace(prev, pending_batch=batch), self._label)
        state.size, state.mtime = st_os.st_size, st_os.st_mtime
        try:
            done = self._fast_tail(path, batch, state, res)
            if not done and state.offset == 0 and (not self.fast_tail or path.endswith(".gz")):
                kind = self._peek_kind(head) if self.fast_path else None
                done = kind is not None and self._fast(path, kind, batch, state, res)
            if not done:  # (``_fast`` rolled back what it loaded)
                res.rows.clear()
                self._careful(path, batch, state, res)
            set_marks(path, state, prev.offset, self._tail)
        except BaseException:
            # Roll back and forget the batch; if even that fails, the pending mark makes the
            # next run roll it back before reading the file again.
            with contextlib.suppress(Exception):
                rollback_batch(self.store, batch)
                save_state(self.store, prev, self._label)
            raise
        state.rows += sum(res.rows.values())
        state.rejected += res.rejected
        if sum(res.rows.values()):
            state.add_batch(batch)
        save_state(self.store, state, self._label)
        return res

    def _decodes(self, dec: RecordDecoder) -> Callable[[bytes], bool]:
        def decodes(line: bytes) -> bool:
            try:
                _decode(dec, line)
            except LineError:
                return False
            return True

        return decodes

    def _joined(
        self, dec: RecordDecoder, path: str, line: bytes, res: FileResult
    ) -> tuple[bytes, Any] | None:
        """``line``, this file's first, joined to the line it ends (cut by log rotation at
        the end of another file of the same log), with its record; None if it ends none."""
        assert self.rotation is not None
        found = self.rotation.joined(path, line, self._decodes(dec))
        if found is None:
            return None
        other, joined = found
        res.warnings.append(
            f"its first line ends a line begun at the end of {other} (cut by "
            "log rotation): loaded joined"
        )
        return joined, _decode(dec, joined)

    def _continued(self, dec: RecordDecoder, path: str, line: bytes, res: FileResult) -> bool:
        """Whether ``line``, this file's unterminated last line, goes on as the first line
        of another file of the same log (it is loaded from there, joined)."""
        other = self.rotation.continued(path, line, self._decodes(dec)) if self.rotation else None
        if other is not None:
            res.warnings.append(
                f"its last line was cut by log rotation and goes on in {other}: "
                "loaded from there, joined"
            )
        return other is not None

    def _peek_kind(self, head: bytes) -> str | None:
        try:
            return kind_of(_decode(_FULL, head.removeprefix(BOM)))
        except LineError:
            return None

    def _fast(self, path: str, kind: str, batch: int, state: IngestState, res: FileResult) -> bool:
        """Let ClickHouse check the raw lines (``Table.line_guard``), then parse and load the
        whole file with the checks of ``Table.guard`` on every row, one row per non-blank
        line. False when any line is in doubt, with whatever was loaded rolled back."""
        table = self._table(kind)
        if kind == "request":
            guard = request_latency_guard(self.max_latency_s, SPAN_TOLERANCE_S, SPAN_TOLERANCE_REL)
            table = dataclasses.replace(table, extra_guard=guard)
        settings = dict(self._settings)
        if self.strict:
            settings["input_format_skip_unknown_fields"] = 0
        before = os.stat(path)
        try:
            check = check_lines(self.store, table, path)
        except StoreUnwritable:
            raise
        except StoreError:
            check = None
        if check is None or check.doubtful:
            return False  # no line check here, or a line in doubt: nothing loaded, careful path
        try:
            self._insert(table, path, batch, settings, guarded=True)
            after = os.stat(path)
            loaded = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
            # not written to while ClickHouse read it, and one row a line, not otherwise split
            rows = batch_rows(self.store, table, batch) if loaded else -1
        except StoreUnwritable:
            raise  # a full disk, a read-only store: no other path would fare better
        except StoreError:
            rows = -1  # a bad line, another kind, an unknown field: the careful path names it
        if rows != check.lines:
            rollback_batch(self.store, batch, [table])  # a failed INSERT may have left parts
            return False
        if path.endswith(".gz"):
            size, lines = _measure(path, tail=self._tail)  # offsets count decompressed bytes
        else:
            size, lines = before.st_size, 0  # lines are counted only if the file ever grows
        res.rows[kind] = rows
        res.bytes += size
        res.path_taken = "fast"
        state.offset += size
        state.lines += lines
        self.progress(size)
        return True

    def _fast_tail(self, path: str, batch: int, state: IngestState, res: FileResult) -> bool:
        """The fast path for a plain file still being written, or what it grew by
        (``fast_tail``): its complete lines past the offset, copied to a temporary file (a
        snapshot: ClickHouse reading the file itself as it grows would see it change),
        loaded as a new file is. False, with nothing loaded, where a line is in doubt or a
        last line without its newline is to be judged (``hold_partial`` holds it back)."""
        if not (self.fast_tail and self.fast_path) or path.endswith(".gz"):
            return False
        with tempfile.NamedTemporaryFile(suffix=".jsonl", dir=self.tmp_dir, delete=False) as tmp:
            try:
                size, newlines, last = 0, 0, -1
                with open(path, "rb") as fh:
                    fh.seek(state.offset)
                    while block := fh.read(CHUNK_BYTES):
                        tmp.write(block)
                        cut = block.rfind(b"\n")
                        last = size + cut if cut >= 0 else last
                        newlines += block.count(b"\n")
                        size += len(block)
                rest = size - (last + 1)
                marks = (state.head_hash, state.tail_hash)  # still the file identify found?
                if state.offset and state.head_hash and marks_at(path, state.offset) != marks:
                    raise FileChanged(
                        "changed while it was read (truncated or rewritten, as by a "
                        "copytruncate rotation): not loaded this time"
                    )
                if last < 0 or (rest and not self.hold_partial):
                    return False
                tmp.truncate(last + 1)
                tmp.close()
                kind = self._peek_kind(_first_line(tmp.name))
                lines = state.lines
                if kind is None or not self._fast(tmp.name, kind, batch, state, res):
                    return False
                state.lines = lines + newlines if lines else 0  # (0: counted when needed)
                res.held = rest
                return True
            finally:
                tmp.close()
                os.unlink(tmp.name)

    def _careful(self, path: str, batch: int, state: IngestState, res: FileResult) -> None:
        res.path_taken = "careful"
        dec = _FULL_STRICT if self.strict else _FULL
        gz = path.endswith(".gz")
        spills: dict[str, IO[bytes]] = {}
        spill_lines: dict[str, list[int]] = {}
        if state.offset and not state.lines:
            state.lines = _count_lines(path, state.offset)  # loaded by the fast path
        line_no = state.lines
        consumed = 0
        first = state.offset == 0  # the next non-blank line is the file's first
        self._tail.clear()
        try:
            with open_bytes(path) as fh:
                _skip(fh, state.offset)
                for block, complete in line_blocks(fh, CHUNK_BYTES):
                    lines = block.split(b"\n")
                    if complete:
                        lines.pop()  # the empty piece after the final newline
                    if state.offset == consumed == 0 and lines and lines[0].startswith(BOM):
                        lines[0] = lines[0][len(BOM) :]  # a byte-order mark, not the line's
                    for i, line in enumerate(lines):
                        line_no += 1
                        last_partial = not complete and i == len(lines) - 1
                        if not line.strip():
                            continue
                        opening, first = first, False
                        try:
                            try:
                                obj = _decode(dec, line)
                            except LineError:
                                joined = None
                                if opening and self.rotation is not None:
                                    joined = self._joined(dec, path, line, res)
                                if joined is None:
                                    raise
                                line, obj = joined
                        except LineError as e:
                            if last_partial and self._continued(dec, path, line, res):
                                continue  # consumed here, loaded with the file it goes on in
                            if last_partial and not gz and self.hold_partial:
                                line_no -= 1  # still being written: read once it ends
                                res.held = len(line)
                                block = block[: len(block) - len(line)]
                                break
                            if last_partial and not gz:
                                # Maybe still being written: report it, leave it to be re-read.
                                self.rejects.add(
                                    Reject(
                                        self._label,
                                        line_no,
                                        "truncated last line (no newline at end of file): "
                                        f"{e.reason}; it is read again if the file grows",
                                        e.field,
                                        line,
                                    )
                                )
                                res.rejected += 1
                                line_no -= 1
                                block = block[: len(block) - len(line)]
                                break
                            reason = e.reason
                            if last_partial:
                                reason = (
                                    f"truncated last line (no newline at end of file): {reason}"
                                )
                            self.rejects.add(Reject(self._label, line_no, reason, e.field, line))
                            res.rejected += 1
                            continue
                        k = kind_of(obj)
                        if k == "request":
                            obj, notes = sanitize_timing(obj, self.max_latency_s)
                            if notes:
                                res.notes.update(notes)
                                line = encode_record(obj).rstrip(b"\n")
                        if column_in_other_case(line, k):  # ClickHouse would read it as one
                            line = encode_record(obj).rstrip(b"\n")
                        fh_k = spills.get(k)
                        if fh_k is None:
                            fh_k = spills[k] = tempfile.NamedTemporaryFile(  # noqa: SIM115
                                mode="wb", suffix=".jsonl", dir=self.tmp_dir, delete=False
                            )
                            spill_lines[k] = []
                        fh_k.write(line)
                        fh_k.write(b"\n")
                        spill_lines[k].append(line_no)
                        res.rows[k] += 1
                    consumed += len(block)
                    self._tail += block[-MARK_BYTES:]
                    del self._tail[:-MARK_BYTES]
                    self.progress(len(block))
            for k, f in spills.items():
                f.close()
                self._load_spill(path, k, f.name, spill_lines[k], batch, res)
        finally:
            for f in spills.values():
                f.close()
                with contextlib.suppress(OSError):
                    os.unlink(f.name)
        res.bytes += consumed
        state.offset += consumed
        state.lines = line_no

    def _load_spill(
        self, path: str, kind: str, spill: str, line_nos: list[int], batch: int, res: FileResult
    ) -> None:
        table = self._table(kind)
        try:
            self._insert(table, spill, batch, self._settings, guarded=False)
            return
        except StoreUnwritable:
            raise  # the disk is full (or read-only), not a line refused
        except StoreError:
            pass
        # ClickHouse refused something msgspec accepted (e.g. a duplicated key): roll this
        # kind back and bisect the lines down to the ones it refuses.
        rollback_batch(self.store, batch, [table])
        with open(spill, "rb") as fh:
            lines = fh.read().split(b"\n")[:-1]
        pairs = list(zip(line_nos, lines, strict=True))
        self._bisect(path, table.name, kind, pairs, batch, res)

    def _bisect(
        self,
        path: str,
        _table: str,
        kind: str,
        pairs: list[tuple[int, bytes]],
        batch: int,
        res: FileResult,
    ) -> None:
        if not pairs:
            return
        with tempfile.NamedTemporaryFile(
            mode="wb", suffix=".jsonl", dir=self.tmp_dir, delete=False
        ) as f:
            for _, line in pairs:
                f.write(line + b"\n")
        try:
            try:
                self._insert(self._table(kind), f.name, batch, self._settings, guarded=False)
                return
            except StoreUnwritable:
                raise  # the disk is full (or read-only), not a line refused
            except StoreError as e:
                if len(pairs) == 1:
                    n, line = pairs[0]
                    self.rejects.add(
                        Reject(
                            self._label,
                            n,
                            f"ClickHouse refused the line: {_first_sentence(str(e))}",
                            None,
                            line,
                        )
                    )
                    res.rejected += 1
                    res.rows[kind] -= 1
                    return
        finally:
            os.unlink(f.name)
        mid = len(pairs) // 2
        self._bisect(path, _table, kind, pairs[:mid], batch, res)
        self._bisect(path, _table, kind, pairs[mid:], batch, res)


def _first_sentence(msg: str) -> str:
    msg = msg.replace("\n", " ")
    return msg[:300]
