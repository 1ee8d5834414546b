"""Ingest bookkeeping: how far into each file ingest got, and the batches its loads are tagged with.

``ingest_state`` holds one row per file (``content_id``), replaced on every save
(``ReplacingMergeTree``, read ``FINAL``). A file is found by the hash of its first line
(``first_line_id``): its row's ``content_id`` is that hash, or, for a second file that
starts with the same line, the hash followed by ``.`` and a suffix of its own
(``load_states`` gives every row of one first line). ``head_hash`` and ``tail_hash`` hash
the first and the last ``MARK_BYTES`` of what was read (up to ``offset``), so the ingestor
can tell whether that is still the file's prefix.

Every row a load writes carries the load's batch number (``_batch``); the batch is saved as
``pending_batch`` before the load starts, so one that fails, or a process that dies half
way, is rolled back (``rollback_batch``) instead of leaving duplicates. ``batches`` keeps
the first and the latest batches that gave a file rows, so ``store check`` can tell a file
whose rows are gone (store/health.py).

A rollback is a mutation (``ALTER … DELETE``), which on a full disk hangs and can leave a
mutation file that stops the store from opening, and which waits for any earlier mutation
that keeps failing: ``rollback_batch`` checks for both first (``StoreFull``, ``StoreError``).

SQL and row shaping only: when to roll back and what counts as ingested is the ingestor's
(``collectors/ingestor.py``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from infdebug.store.base import Store, StoreError, StoreFull
from infdebug.store.cluster import mutation_target
from infdebug.store.ddl import TABLES, Table

MARK_BYTES = 64 << 10  # bytes hashed at each end of what was read of a file
KEEP_BATCHES = 16  # batches remembered per file: the first, and the latest others
MUTATION_MIN_FREE = 8 << 20  # no mutation is started with less free space than this


def first_line_id(first_line: bytes) -> str:
    """A file's identity: the hash of its first non-blank line."""
    return hashlib.sha256(first_line).hexdigest()[:32]


def mark(data: bytes | bytearray) -> str:
    """The hash ``head_hash`` / ``tail_hash`` keep of some bytes."""
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass
class IngestState:
    """What ``ingest_state`` remembers of one file (a new file: all zero)."""

    content_id: str
    size: int = 0
    mtime: float = 0.0
    offset: int = 0  # bytes of (decompressed) content loaded
    lines: int = 0  # lines of it (0: not counted yet; the fast path does not count them)
    rows: int = 0
    rejected: int = 0
    pending_batch: int = 0  # a load under way (or one that died): roll it back first
    path: str = ""  # where it was last read
    head_hash: str = ""  # mark() of content[:min(offset, MARK_BYTES)] ("" before migration 6)
    tail_hash: str = ""  # mark() of content[max(0, offset - MARK_BYTES):offset]
    batches: list[int] = field(default_factory=list)  # loads that gave it rows

    def add_batch(self, batch: int) -> None:
        """Remember ``batch`` (it gave rows): the first batch and the latest others."""
        if batch not in self.batches:
            self.batches.append(batch)
        if len(self.batches) > KEEP_BATCHES:
            self.batches = [self.batches[0], *self.batches[-(KEEP_BATCHES - 1) :]]


_COLUMNS = (
    "content_id, size, mtime, offset, lines, rows, rejected, pending_batch, path, "
    "head_hash, tail_hash, batches"
)


def _state(row: tuple[Any, ...]) -> IngestState:
    cid, size, mtime, offset, lines, nrows, rejected, pending, path, head, tail, batches = row
    return IngestState(
        str(cid),
        int(size),
        float(mtime),
        int(offset),
        int(lines),
        int(nrows),
        int(rejected),
        int(pending),
        str(path),
        str(head),
        str(tail),
        [int(b) for b in batches],
    )


def load_state(store: Store, content_id: str) -> IngestState:
    """The saved state of the file with this ``content_id``; a fresh one if there is none."""
    _, rows = store.query(
        f"SELECT {_COLUMNS} FROM ingest_state FINAL WHERE content_id = {{cid:String}}",
        {"cid": content_id},
    )
    return _state(rows[0]) if rows else IngestState(content_id)


def load_states(store: Store, first_id: str) -> list[IngestState]:
    """Every saved state of files whose first line has the identity ``first_id`` (the one
    keyed by ``first_id`` itself first)."""
    _, rows = store.query(
        f"SELECT {_COLUMNS} FROM ingest_state FINAL WHERE content_id = {{cid:String}} "
        "OR startsWith(content_id, {prefix:String}) ORDER BY content_id != {cid:String}, "
        "updated_at",
        {"cid": first_id, "prefix": first_id + "."},
    )
    return [_state(r) for r in rows]


def all_states(store: Store) -> list[IngestState]:
    """Every file ingest state remembers."""
    _, rows = store.query(f"SELECT {_COLUMNS} FROM ingest_state FINAL ORDER BY path")
    return [_state(r) for r in rows]


def save_state(store: Store, state: IngestState, path: str) -> None:
    """Record ``state`` (replacing the file's previous row); ``path`` names where it was read."""
    state.path = path
    store.command(
        "INSERT INTO ingest_state (content_id, path, size, mtime, offset, lines, rows, rejected, "
        "pending_batch, head_hash, tail_hash, batches, updated_at) VALUES ({cid:String}, "
        "{path:String}, {size:UInt64}, {mtime:Float64}, {offset:UInt64}, {lines:UInt64}, "
        "{rows:UInt64}, {rej:UInt64}, {pending:UInt64}, {head:String}, {tail:String}, "
        "{batches:Array(UInt64)}, now64(6))",
        {
            "cid": state.content_id,
            "path": path,
            "size": state.size,
            "mtime": state.mtime,
            "offset": state.offset,
            "lines": state.lines,
            "rows": state.rows,
            "rej": state.rejected,
            "pending": state.pending_batch,
            "head": state.head_hash,
            "tail": state.tail_hash,
            "batches": list(state.batches),
        },
    )


def forget_states(store: Store, content_ids: Iterable[str]) -> None:
    """Delete the saved states of these files: a later ingest reads them as new."""
    ids = list(content_ids)
    if ids:
        before_mutation(store, [])
        store.command(
            f"ALTER TABLE {mutation_target(store, 'ingest_state')} DELETE WHERE content_id IN "
            "{ids:Array(String)}",
            {"ids": ids},
            {"mutations_sync": 2},
        )


def next_batch() -> int:
    """A new load's batch number: 63 random bits, never 0 (0 is "no batch pending")."""
    return random.getrandbits(63) or 1


def rollback_batch(store: Store, batch: int, tables: Iterable[Table] | None = None) -> None:
    """Delete the rows of ``batch`` from ``tables`` (default: every record table), waiting
    for the deletes to finish (``before_mutation`` first)."""
    targets = list(TABLES.values() if tables is None else tables)
    before_mutation(store, [t.name for t in targets])
    for t in targets:
        store.command(
            f"ALTER TABLE {mutation_target(store, t.name)} DELETE WHERE _batch = {{b:UInt64}}",
            {"b": batch},
            {"mutations_sync": 2},
        )


def free_bytes(store: Store) -> int | None:
    """Unreserved space on the store's default disk (None where it cannot be asked)."""
    try:
        _, rows = store.query("SELECT unreserved_space FROM system.disks WHERE name = 'default'")
    except StoreError:
        return None
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


def failing_mutations(store: Store, tables: Iterable[str] = ()) -> list[tuple[str, str, str]]:
    """``(table, mutation_id, reason)`` of unfinished mutations that keep failing (of
    ``tables``; all when empty): a later mutation of the table waits behind them forever."""
    names = list(tables)
    _, rows = store.query(
        "SELECT table, mutation_id, latest_fail_reason FROM system.mutations "
        "WHERE database = currentDatabase() AND NOT is_done AND latest_fail_reason != '' "
        "AND (empty({t:Array(String)}) OR has({t:Array(String)}, table)) "
        "ORDER BY table, mutation_id",
        {"t": names},
    )
    return [(str(t), str(m), str(r)) for t, m, r in rows]


def before_mutation(store: Store, tables: list[str]) -> None:
    """Refuse to start a mutation that would hang: on a disk with less than
    ``MUTATION_MIN_FREE`` free (``StoreFull``), or behind a failing mutation of the same
    tables (``StoreError``)."""
    free = free_bytes(store)
    if free is not None and free < MUTATION_MIN_FREE:
        raise StoreFull(
            f"no space left on the disk of {store.description} ({free >> 10} KiB free): "
            "free some space and run it again (a half-done load is rolled back then)"
        )
    try:
        stuck = failing_mutations(store, tables)
    except StoreError:
        stuck = []  # system.mutations cannot be read here (a server's grants): go on
    if stuck:
        t, m, reason = stuck[0]
        raise StoreError(
            f"{store.description}: mutation {m} of table {t} keeps failing "
            f"({reason.splitlines()[0][:200]}), and every later one waits for it; "
            "run `infdebug store repair`"
        )


def batch_rows(store: Store, table: Table, batch: int) -> int:
    """Rows of ``batch`` in ``table``."""
    _, rows = store.query(
        f"SELECT count() FROM {table.name} WHERE _batch = {{b:UInt64}}", {"b": batch}
    )
    return int(rows[0][0])
