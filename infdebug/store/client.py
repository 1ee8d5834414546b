"""The store over one clickhouse-connect client: chDB in-process, or a ClickHouse server.

``clickhouse_connect.get_client(interface="chdb", path=…)`` gives in-process chDB the same
``Client`` that ``http[s]://`` gives against a server, so both run the same code: queries
and commands with bound ``{name:Type}`` parameters and per-call settings, results as Arrow.
Only a file load differs: chDB reads the file itself through ``file()``; a server cannot,
and gets the body through ``input()``, streamed in pieces cut at line ends.

The embedded store lives under ``$INFDEBUG_HOME``. chDB locks its data directory, so one
process owns it at a time: we take our own advisory lock first (``fcntl.flock`` on
``HOME/lock``) and record the holder in ``HOME/owner.json``, so a second process gets one
line naming the holder instead of chDB's initialisation error.

A server is named by ``http[s]://user:password@host:8123/database``; the database is
created if missing. Many processes may share one server, which is the way to run the
dashboard, collectors and CLI side by side.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any
from urllib.parse import unquote, urlparse

from infdebug.lineblocks import line_blocks
from infdebug.schema import open_bytes
from infdebug.store.base import Params, StoreBusy, StoreError, as_rows, insert_select
from infdebug.store.ddl import JSONL_READ_SETTINGS, Table

# Rows are streamed to a server in pieces of about this many bytes, cut at line ends.
UPLOAD_CHUNK_BYTES = 32 << 20

# clickhouse-connect gives chDB a call's settings with a SELECT from system.settings, a SET
# per setting before the statement and one after (100 small files: 4,200 statements instead
# of 500, +2 s), so the settings every load passes are the chDB session's own and a call
# sends only those that differ. A server takes them with each request. ``pread``: reading a
# file through ``file()`` does not map it into memory (RSS stays bounded for large files).
CHDB_SESSION_SETTINGS: dict[str, Any] = {
    **JSONL_READ_SETTINGS,
    "input_format_skip_unknown_fields": 1,
    "storage_file_read_method": "pread",
}

# chDB allows one data path per process; remember which store holds it.
_OPEN: dict[str, ClickHouseStore] = {}


class ClickHouseStore:
    """The ``Store`` over a clickhouse-connect ``Client`` (chDB when ``home`` is given)."""

    def __init__(
        self, client: Any, description: str, *, home: str | None = None, lock: IO[str] | None = None
    ) -> None:
        self._client = client
        self.description = description
        self.home = home
        self._lock = lock
        self._session = (
            {k: _setting_str(v) for k, v in CHDB_SESSION_SETTINGS.items()} if home else {}
        )

    # -- Store protocol ------------------------------------------------------------------
    def command(self, sql: str, params: Params = None, settings: Params = None) -> None:
        try:
            self._client.command(
                sql, parameters=dict(params or {}), settings=self._per_call(settings)
            )
        except Exception as e:
            raise StoreError(_clean(str(e))) from None

    def query(
        self, sql: str, params: Params = None, settings: Params = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        tbl = self.query_arrow(sql, params, settings)
        return as_rows(tbl.column_names, tbl)

    def query_arrow(self, sql: str, params: Params = None, settings: Params = None) -> Any:
        try:
            return self._client.query_arrow(
                sql, parameters=dict(params or {}), settings=self._per_call(settings)
            )
        except Exception as e:
            raise StoreError(_clean(str(e))) from None

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
        params = {"structure": table.structure(), "file_tag": file_tag, "batch": batch}
        if self.home is not None:
            # chDB reads the file itself (never through ``data=``, which it decodes to text).
            src = "file({path:String}, 'JSONEachRow', {structure:String})"
            s = {"storage_file_read_method": "pread", **settings}
            self.command(
                insert_select(table, src, guarded=guarded),
                {**params, "path": os.path.abspath(path)},
                s,
            )
            return
        # A server cannot read our files: stream them as the body of INSERT … FROM input().
        sql = (
            insert_select(table, "input({structure:String})", guarded=guarded)
            + " FORMAT JSONEachRow"
        )
        for piece in _pieces(path, UPLOAD_CHUNK_BYTES):
            try:
                self._client.command(sql, parameters=params, data=piece, settings=dict(settings))
            except Exception as e:
                raise StoreError(_clean(str(e))) from None

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self.home is not None and _OPEN.get(self.home) is self:
            del _OPEN[self.home]
        _unlock(self._lock)
        self._lock = None

    def __enter__(self) -> ClickHouseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _per_call(self, settings: Params) -> dict[str, Any]:
        """The settings this call must send: on chDB, those the session does not have."""
        if not settings:
            return {}
        return {k: v for k, v in settings.items() if self._session.get(k) != _setting_str(v)}


# -- opening -----------------------------------------------------------------------------
def open_embedded(home: str) -> ClickHouseStore:
    """The embedded chDB store under ``home`` (created if missing), locked for this process."""
    import clickhouse_connect

    home = os.path.abspath(home)
    os.makedirs(home, exist_ok=True)
    lock = _lock(home)
    for other in list(_OPEN.values()):
        if other.home != home:
            other.close()  # chDB hosts one data path per process
    try:
        client = clickhouse_connect.get_client(
            interface="chdb",
            path=os.path.join(home, "clickhouse"),
            settings=CHDB_SESSION_SETTINGS,
        )
    except Exception as e:
        _unlock(lock)
        raise StoreError(
            f"cannot open the embedded ClickHouse store at {home}: {_clean(str(e))}"
        ) from None
    store = ClickHouseStore(client, f"chDB at {home}", home=home, lock=lock)
    _OPEN[home] = store
    return store


def open_server(url: str) -> ClickHouseStore:
    """A ClickHouse server or cluster at ``url``; its database is created if missing."""
    import clickhouse_connect

    cfg = parse_url(url)
    db = cfg.pop("database")
    try:
        admin = clickhouse_connect.get_client(**cfg)
        admin.command(f"CREATE DATABASE IF NOT EXISTS `{db.replace('`', '')}`")
        admin.close()
        client = clickhouse_connect.get_client(database=db, **cfg)
    except Exception as e:
        raise StoreError(
            f"cannot reach ClickHouse at {redact_url(url)}: {_clean(str(e))}"
        ) from None
    return ClickHouseStore(client, f"ClickHouse server {redact_url(url)}")


def parse_url(url: str) -> dict[str, Any]:
    u = urlparse(url)
    if u.scheme not in ("http", "https", "clickhouse"):
        raise StoreError(
            "--clickhouse expects http[s]://user:pass@host:8123/db, "
            f"got scheme {u.scheme!r} in {url!r}"
        )
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


# -- the embedded store's lock -----------------------------------------------------------
def _lock(home: str) -> IO[str]:
    fh = open(os.path.join(home, "lock"), "a+")  # noqa: SIM115 - the lock lives as long as the store
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StoreBusy(_busy_message(home)) from None
    owner = {"pid": os.getpid(), "argv": sys.argv, "since": time.time()}
    with open(os.path.join(home, "owner.json"), "w") as f:
        json.dump(owner, f)
    return fh


def _busy_message(home: str) -> str:
    who = "another process"
    try:
        with open(os.path.join(home, "owner.json")) as f:
            o = json.load(f)
        cmd = " ".join(
            os.path.basename(a) if i == 0 else a for i, a in enumerate(o.get("argv", []))
        )
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(o.get("since", 0)))
        who = f"process {o.get('pid')} ({cmd[:80]}) since {since}"
    except (OSError, ValueError):
        pass
    return (
        f"the embedded store {home} is in use by {who}; wait for it to finish, or "
        "share one ClickHouse server between processes with --clickhouse URL"
    )


def _unlock(fh: IO[str] | None) -> None:
    if fh is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


# -- helpers -----------------------------------------------------------------------------
def _pieces(path: str, size: int) -> Iterator[bytes]:
    """The file's bytes in pieces of about ``size``, each ending at a line end (the last
    one at the end of the file)."""
    with open_bytes(path) as fh:
        for piece, _complete in line_blocks(fh, size):
            yield piece


def _setting_str(v: Any) -> str:
    """A setting value as clickhouse-connect sends it (booleans as 1/0)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _clean(msg: str) -> str:
    """The ClickHouse message without the client's preamble or a stack trace."""
    msg = msg.strip()
    at = msg.find("Code: ")
    if at > 0:
        msg = msg[at:]  # "Received ClickHouse exception, code: 62, server response: Code: 62. …"
    for cut in ("\nStack trace", ". Stack trace"):
        if cut in msg:
            msg = msg.split(cut, 1)[0]
    return msg.strip()
