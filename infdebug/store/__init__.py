"""The store: ClickHouse through one clickhouse-connect client, chDB in-process by default
or a server named by ``--clickhouse URL`` (``store/client.py``).

``open_store()`` resolves configuration as flag, then ``INFDEBUG_*`` environment, then
default, opens the store and applies pending schema migrations.
"""

from __future__ import annotations

from infdebug import settings
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
    return settings.home()


def open_store(clickhouse: str | None = None, home: str | None = None) -> Store:
    """Open the store named by ``clickhouse`` (a server URL) or the embedded one at ``home``."""
    url = settings.clickhouse_url(clickhouse)
    from infdebug.store.client import open_embedded, open_server

    store: Store = open_server(url) if url else open_embedded(home or default_home())
    try:
        migrate(store)
    except Exception:
        store.close()
        raise
    return store
