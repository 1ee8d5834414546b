"""A ClickHouse server or cluster through clickhouse-connect (HTTP), same SQL as chDB.

URL form: ``http[s]://user:password@host:8123/database``. The database is created if
missing. Many processes may share one server, which is the way to run the dashboard,
collectors and CLI side by side.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlparse

from infdebug.schema import open_bytes
from infdebug.store.base import Params, StoreError, as_rows, insert_select
from infdebug.store.ddl import Table

# Rows are streamed to the server in pieces of about this many bytes, cut at line ends.
UPLOAD_CHUNK_BYTES = 32 << 20


def parse_url(url: str) -> dict[str, Any]:
    u = urlparse(url)
    if u.scheme not in ("http", "https", "clickhouse"):
        raise StoreError(f"--clickhouse expects http[s]://user:pass@host:8123/db, got scheme {u.scheme!r} in {url!r}")
    if not u.hostname:
        raise StoreError(f"--clickhouse URL has no host: {url!r}")
    secure = u.scheme == "https"
    return {
        "host": u.hostname,
        "port": u.port or (8443 if secure else 8123),
        "username": unquote(u.username) if u.username else "default",
        "password": unquote(u.password) if u.password else "",
        "database": (u.path or "/").strip("/") or "default",
        "secure": secure,
    }


def redact_url(url: str) -> str:
    u = urlparse(url)
    if u.password:
        netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
        return u._replace(netloc=netloc).geturl()
    return url


class ServerStore:
    def __init__(self, url: str) -> None:
        try:
            import clickhouse_connect
        except ImportError as e:  # pragma: no cover - core dependency
            raise StoreError("clickhouse-connect is not installed") from e
        cfg = parse_url(url)
        self.description = f"ClickHouse server {redact_url(url)}"
        db = cfg.pop("database")
        try:
            admin = clickhouse_connect.get_client(**cfg)
            admin.command(f"CREATE DATABASE IF NOT EXISTS `{db.replace('`', '')}`")
            admin.close()
            self._client = clickhouse_connect.get_client(database=db, **cfg)
        except Exception as e:
            raise StoreError(f"cannot reach ClickHouse at {redact_url(url)}: {e}") from None

    def command(self, sql: str, params: Params = None, settings: Params = None) -> None:
        try:
            self._client.command(sql, parameters=dict(params or {}), settings=dict(settings or {}))
        except Exception as e:
            raise StoreError(str(e).strip()) from None

    def query(self, sql: str, params: Params = None, settings: Params = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        tbl = self.query_arrow(sql, params, settings)
        return as_rows(tbl.column_names, tbl)

    def query_arrow(self, sql: str, params: Params = None, settings: Params = None) -> Any:
        try:
            return self._client.query_arrow(sql, parameters=dict(params or {}), settings=dict(settings or {}))
        except Exception as e:
            raise StoreError(str(e).strip()) from None

    def insert_jsonl(
        self, table: Table, path: str, file_tag: str, batch: int, settings: Mapping[str, Any], *, guarded: bool
    ) -> None:
        # The server cannot read our files: stream them as the body of INSERT … FROM input().
        sql = insert_select(table, "input({structure:String})", guarded=guarded) + " FORMAT JSONEachRow"
        params = {"structure": table.structure(), "file_tag": file_tag, "batch": batch}
        for piece in _pieces(path):
            try:
                self._client.command(sql, parameters=params, data=piece, settings=dict(settings))
            except Exception as e:
                raise StoreError(str(e).strip()) from None

    def close(self) -> None:
        self._client.close()


def _pieces(path: str) -> Iterator[bytes]:
    with open_bytes(path) as fh:
        carry = b""
        while True:
            block = fh.read(UPLOAD_CHUNK_BYTES)
            if not block:
                if carry:
                    yield carry
                return
            block = carry + block
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                carry = block
                continue
            carry = block[cut:]
            yield block[:cut]


def env_url() -> str | None:
    return os.environ.get("INFDEBUG_CLICKHOUSE_URL") or None
