"""The store seam: one Protocol over ClickHouse (chDB in-process or a server), the same SQL on
both."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from infdebug import settings
from infdebug.errors import StoreBusy, StoreError
from infdebug.store.ddl import MIGRATIONS, MIGRATIONS_DDL, TABLES, Table

Params = Mapping[str, Any] | None


__all__ = [
    "Params",
    "Store",
    "StoreBusy",
    "StoreError",
    "insert_select",
    "migrate",
    "query_dicts",
    "schema_version",
]


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
    ) -> None:
        """Load a JSONL file of one record kind into ``table`` through ClickHouse's own parser
        (``guarded``: with the fast-path checks of ``Table.guard``)."""
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


def migrate(store: Store) -> list[int]:
    """Apply pending migrations in order; returns the versions applied."""
    store.command(MIGRATIONS_DDL)
    _, rows = store.query("SELECT max(version) FROM schema_migrations")
    current = int(rows[0][0] or 0) if rows else 0
    applied = []
    retention = settings.retention_days()
    for m in MIGRATIONS:
        if m.version <= current:
            continue
        for stmt in m.sql(retention):
            store.command(stmt)
        store.command(
            "INSERT INTO schema_migrations (version, name) VALUES ({v:UInt32}, {n:String})",
            {"v": m.version, "n": m.name},
        )
        applied.append(m.version)
    return applied


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
