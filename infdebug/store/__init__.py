"""The store: ClickHouse, embedded (chDB) by default or a server through clickhouse-connect.

``open_store()`` resolves configuration as flag, then ``INFDEBUG_*`` environment, then
default, opens the backend and applies pending schema migrations.
"""

from __future__ import annotations

import os

from infdebug.store.base import (
    Store,
    StoreBusy,
    StoreError,
    migrate,
    query_dicts,
    schema_version,
)
from infdebug.store.ddl import TABLES, Table

__all__ = [
    "TABLES",
    "Store",
    "StoreBusy",
    "StoreError",
    "Table",
    "default_home",
    "open_store",
    "query_dicts",
    "schema_version",
]


def default_home() -> str:
    return os.environ.get("INFDEBUG_HOME") or os.path.join(os.getcwd(), ".infdebug")


def open_store(clickhouse: str | None = None, home: str | None = None) -> Store:
    """Open the store named by ``clickhouse`` (a server URL) or the embedded one at ``home``."""
    url = clickhouse or os.environ.get("INFDEBUG_CLICKHOUSE_URL") or None
    store: Store
    if url:
        from infdebug.store.server import ServerStore

        store = ServerStore(url)
    else:
        from infdebug.store.embedded import EmbeddedStore

        store = EmbeddedStore(home or default_home())
    try:
        migrate(store)
    except Exception:
        store.close()
        raise
    return store
