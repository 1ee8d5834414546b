"""The store seam: one Protocol over ClickHouse (chDB in-process or a server), the same SQL on
both; the errors a store raises, and its migrations.

A store that cannot be written is a ``StoreUnwritable``: ``StoreFull`` when its disk is full
(``disk_full`` tells one from ClickHouse's message or an ``OSError``), ``StoreReadOnly``
when its directory is read-only. Ingest stops on either (the next file would fail the same
way), where any other ``StoreError`` fails only the file it came from.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from infdebug import settings
from infdebug.errors import StoreBusy, StoreError
from infdebug.store.ddl import MIGRATIONS, MIGRATIONS_DDL, TABLES, Table

Params = Mapping[str, Any] | None

log = logging.getLogger(__name__)

__all__ = [
    "Params",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreFull",
    "StoreReadOnly",
    "StoreUnwritable",
    "apply_statement",
    "disk_full",
    "insert_select",
    "migrate",
    "missing_tables",
    "query_dicts",
    "schema_version",
]


class StoreUnwritable(StoreError):
    """The store cannot be written at all (a full disk, a read-only directory): nothing
    that writes can go on, so ingest stops instead of failing every file in turn."""


class StoreFull(StoreUnwritable):
    """No space left on the disk the store (or a file ingest writes) is on."""


class StoreReadOnly(StoreUnwritable):
    """The store's directory is read-only: it can be queried, not written."""


# ClickHouse's ways of saying the disk is full: ENOSPC through its errno messages,
# NOT_ENOUGH_SPACE (code 243) when a reservation fails, EDQUOT for a quota.
_FULL_RE = re.compile(
    r"No space left on device|NOT_ENOUGH_SPACE|Cannot reserve .* not enough space"
    r"|errno: (?:28|122)\b|Disk quota exceeded",
    re.IGNORECASE,
)


def disk_full(e: BaseException | str) -> bool:
    """Whether ``e`` (an exception or a ClickHouse message) says a disk is full."""
    if isinstance(e, StoreFull):
        return True
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return bool(_FULL_RE.search(e if isinstance(e, str) else str(e)))


@runtime_checkable
class Store(Protocol):
    """What every part of infdebug needs from ClickHouse.

    Parameters are bound (``{name:Type}`` placeholders), never formatted into SQL.
    """

    description: str

    def command(self, sql: str, params: Params = None, settings: Params = None) -> None: ...

    def query(
        self, sql: str, params: Params = None, settings: Params = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows (Python values)."""
        ...

    def insert_jsonl(
        self,
        table: Table,
        path: str,
        file_tag: str,
        batch: int,
        settings: Mapping[str, Any],
        *,
        guarded: bool,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Load a JSONL file of one record kind into ``table`` through ClickHouse's own parser
        (``guarded``: with the fast-path checks of ``Table.guard``; ``params``: those of the
        table's ``assign`` expressions)."""
        ...

    def close(self) -> None: ...


def query_dicts(store: Store, sql: str, params: Params = None) -> list[dict[str, Any]]:
    cols, rows = store.query(sql, params)
    return [dict(zip(cols, r, strict=True)) for r in rows]


FAST_PATH_DOUBT = "INFDEBUG_FAST_PATH_DOUBT"


def insert_select(table: Table, source: str, *, guarded: bool) -> str:
    """``INSERT INTO table … SELECT … FROM source`` with provenance columns bound as params.

    ``guarded`` adds the table's fast-path checks: the first row that fails them aborts the
    insert with ``FAST_PATH_DOUBT`` in the message.
    """
    batch = "{batch:UInt64}"
    if guarded:
        batch += f" + throwIf(NOT ifNull({table.guard()}, 0), '{FAST_PATH_DOUBT}')"
    return (
        f"INSERT INTO {table.name} ({table.insert_columns()}) "
        f"SELECT {table.select_list()}, {{file_tag:String}}, {batch} FROM {source}"
    )


def migrate(store: Store, *, restore: bool = True) -> list[int]:
    """Apply pending migrations in order; returns the versions applied.

    ``restore``: re-create the tables of applied migrations that are missing (dropped by
    hand, or lost), by re-running those migrations' statements for them (``missing_tables``).
    A read-only store cannot be migrated: it is read as it is (a warning says so when its
    schema is behind, as queries of newer columns then fail)."""
    if getattr(store, "read_only", None):
        version = _version_or_zero(store)
        latest = MIGRATIONS[-1].version
        if version < latest:
            log.warning(
                "%s is read-only and its schema is at version %d, not %d: it is read as it "
                "is; open it once where it can be written to migrate it",
                store.description,
                version,
                latest,
            )
        return []
    store.command(MIGRATIONS_DDL)
    _, rows = store.query("SELECT max(version) FROM schema_migrations")
    current = int(rows[0][0] or 0) if rows else 0
    applied = []
    retention = settings.retention_days()
    for m in MIGRATIONS:
        if m.version <= current:
            continue
        for stmt in m.sql(retention, settings.trace_retention_days()):
            apply_statement(store, stmt)
        store.command(
            "INSERT INTO schema_migrations (version, name) VALUES ({v:UInt32}, {n:String})",
            {"v": m.version, "n": m.name},
        )
        applied.append(m.version)
    if restore:
        gone = missing_tables(store)
        if gone:
            restore_tables(store, gone)
            log.warning(
                "%s: re-created missing table(s) %s (empty); `infdebug store check` says "
                "whether ingest state still lists files whose rows were in them",
                store.description,
                ", ".join(gone),
            )
    return applied


_RENAME_RE = re.compile(
    r"^\s*ALTER TABLE (?:(\w+)\.)?(\w+)(?: ON CLUSTER \w+)? "
    r"RENAME COLUMN (?:IF EXISTS )?\w+ TO (\w+)\s*$",
    re.I,
)


def apply_statement(store: Store, stmt: str) -> None:
    """Run one migration statement. ``RENAME COLUMN a TO b`` is skipped where the table has
    ``b`` already: a migration that stopped after its rename, before it was recorded, then
    runs again to its end, as its other statements (``IF [NOT] EXISTS``) let it."""
    m = _RENAME_RE.match(stmt)
    if m:
        db, table, to = m.groups()
        params = {"t": table, "c": to, **({"db": db} if db else {})}
        where_db = "{db:String}" if db else "currentDatabase()"
        _, rows = store.query(
            f"SELECT count() FROM system.columns WHERE database = {where_db} "
            "AND table = {t:String} AND name = {c:String}",
            params,
        )
        if rows and int(rows[0][0]):
            return
    store.command(stmt)


_TARGET_RE = re.compile(r"^\s*(?:CREATE TABLE IF NOT EXISTS|ALTER TABLE)\s+`?(\w+)`?", re.I)


def _statements_by_table(version: int) -> dict[str, list[str]]:
    """The statements of migrations up to ``version``, in order, by the table they act on."""
    out: dict[str, list[str]] = {}
    retention = settings.retention_days()
    for m in MIGRATIONS:
        if m.version > version:
            break
        for stmt in m.sql(retention, settings.trace_retention_days()):
            hit = _TARGET_RE.match(stmt)
            if hit:
                out.setdefault(hit.group(1), []).append(stmt)
    return out


def missing_tables(store: Store) -> list[str]:
    """Tables the applied migrations created that the store does not have (in creation
    order)."""
    expected = _statements_by_table(_version_or_zero(store))
    _, rows = store.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
    have = {r[0] for r in rows}
    return [t for t in expected if t not in have]


def restore_tables(store: Store, tables: Sequence[str]) -> None:
    """Re-create ``tables`` (empty) with every applied migration's statements for them."""
    by_table = _statements_by_table(_version_or_zero(store))
    for t in tables:
        for stmt in by_table.get(t, []):
            apply_statement(store, stmt)


def _version_or_zero(store: Store) -> int:
    try:
        return schema_version(store)
    except StoreError:
        return 0  # no schema_migrations table (yet)


def schema_version(store: Store) -> int:
    _, rows = store.query("SELECT max(version) FROM schema_migrations")
    return int(rows[0][0] or 0)


def table_for_kind(kind: str) -> Table:
    return TABLES[kind]


def as_rows(names: Sequence[str], table: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Convert a pyarrow Table into names and Python row tuples."""
    cols = [_pylist(table.column(i)) for i in range(table.num_columns)]
    return list(names), list(zip(*cols, strict=True)) if cols else []


def _pylist(col: Any) -> list[Any]:
    try:
        out: list[Any] = col.to_pylist()
        return out
    except UnicodeDecodeError:
        # Bytes that are not UTF-8 (written by something other than infdebug's ingest):
        # show them with replacement characters rather than fail the query.
        import pyarrow as pa

        out = []
        for v in col.cast(pa.large_binary()).to_pylist():
            out.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
        return out
