"""Ingest bookkeeping: how far into each file ingest got, and the batches its loads are tagged with.

``ingest_state`` holds one row per file identity (``content_id``: the hash of its first
line), replaced on every save (``ReplacingMergeTree``, read ``FINAL``). Every row a load
writes carries the load's batch number (``_batch``); the batch is saved as
``pending_batch`` before the load starts, so one that fails, or a process that dies half
way, is rolled back (``rollback_batch``) instead of leaving duplicates.

SQL and row shaping only: when to roll back and what counts as ingested is the ingestor's
(``collectors/ingestor.py``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from infdebug.store.base import Store
from infdebug.store.ddl import TABLES, Table


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


def load_state(store: Store, content_id: str) -> IngestState:
    """The saved state of the file with this identity; a fresh one if it was never seen."""
    _, rows = store.query(
        "SELECT size, mtime, offset, lines, rows, rejected, pending_batch FROM ingest_state FINAL "
        "WHERE content_id = {cid:String}",
        {"cid": content_id},
    )
    if not rows:
        return IngestState(content_id)
    size, mtime, offset, lines, nrows, rejected, pending = rows[0]
    return IngestState(content_id, size, mtime, offset, lines, nrows, rejected, pending)


def save_state(store: Store, state: IngestState, path: str) -> None:
    """Record ``state`` (replacing the file's previous row); ``path`` names where it was read."""
    store.command(
        "INSERT INTO ingest_state (content_id, path, size, mtime, offset, lines, rows, rejected, "
        "pending_batch, updated_at) VALUES ({cid:String}, {path:String}, {size:UInt64}, "
        "{mtime:Float64}, {offset:UInt64}, {lines:UInt64}, {rows:UInt64}, {rej:UInt64}, "
        "{pending:UInt64}, now64(6))",
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
        },
    )


def next_batch() -> int:
    """A new load's batch number: 63 random bits, never 0 (0 is "no batch pending")."""
    return random.getrandbits(63) or 1


def rollback_batch(store: Store, batch: int, tables: Iterable[Table] | None = None) -> None:
    """Delete the rows of ``batch`` from ``tables`` (default: every record table), waiting
    for the deletes to finish."""
    for t in TABLES.values() if tables is None else tables:
        store.command(
            f"ALTER TABLE {t.name} DELETE WHERE _batch = {{b:UInt64}}",
            {"b": batch},
            {"mutations_sync": 2},
        )


def batch_rows(store: Store, table: Table, batch: int) -> int:
    """Rows of ``batch`` in ``table``."""
    _, rows = store.query(
        f"SELECT count() FROM {table.name} WHERE _batch = {{b:UInt64}}", {"b": batch}
    )
    return int(rows[0][0])
