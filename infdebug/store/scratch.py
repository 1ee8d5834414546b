"""Temporary tables one analysis run shares: an intermediate result several analyzers read
(the sampled requests' latency rows with their load, ``q_ranks.sample_source``) is built
once as a session ``TEMPORARY`` Memory table and dropped when the run ends.

A store that refuses to create one (read-only, or a server without a session) gets
``None`` back, and the caller reads the same rows through its subquery instead: slower,
never different. Table names are generated here (``scratch_<n>_<hex>``), never taken from
input; the SELECT a table is built from is the caller's fixed SQL with bound parameters.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from infdebug.store.base import Store, StoreError

log = logging.getLogger(__name__)


class Scratch:
    """The temporary tables of one run, by key (the SELECT and its parameters)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._tables: dict[str, str | None] = {}

    def table(self, select: str, params: Mapping[str, Any]) -> str | None:
        """The name of a temporary table holding ``select``'s rows (built on first call),
        or None when the store cannot hold one."""
        key = repr((select, sorted((k, repr(v)) for k, v in params.items())))
        if key in self._tables:
            return self._tables[key]
        name: str | None = f"scratch_{len(self._tables)}_{secrets.token_hex(4)}"
        try:
            self._store.command(
                f"CREATE TEMPORARY TABLE {name} ENGINE = Memory AS {select}", dict(params)
            )
        except StoreError as e:
            log.debug("no scratch table (%s): reading through the subquery", e)
            name = None
        self._tables[key] = name
        return name

    def close(self) -> None:
        """Drop every table built (a store already closed has dropped them with its session)."""
        for name in self._tables.values():
            if name is None:
                continue
            try:
                self._store.command(f"DROP TEMPORARY TABLE IF EXISTS {name}")
            except StoreError as e:  # the session went with the store: so did the table
                log.debug("scratch table %s not dropped: %s", name, e)
        self._tables.clear()
