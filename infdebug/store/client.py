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

Opening the embedded store mends what would stop chDB from starting: a mutation file that a
full disk left empty or cut short is moved to ``HOME/quarantine/`` (store/health.py). A
store directory that cannot be written (read-only, or on a read-only file system) cannot
be started by chDB at all (it writes its ``status`` file and ``tmp/`` first), so it is read
through a private chDB in a temporary directory, each table attached from the store's own
files on a read-only disk: queries work, any write is refused with ``StoreReadOnly``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote, urlparse

from infdebug.lineblocks import line_blocks
from infdebug.schema import open_bytes
from infdebug.store.base import (
    Params,
    StoreBusy,
    StoreError,
    StoreFull,
    StoreReadOnly,
    as_rows,
    disk_full,
    insert_select,
)
from infdebug.store.ddl import JSONL_READ_SETTINGS, SELECT_STAR_SETTINGS, Table
from infdebug.store.filepath import literal_path

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

log = logging.getLogger(__name__)


class ClickHouseStore:
    """The ``Store`` over a clickhouse-connect ``Client`` (chDB when ``home`` is given)."""

    def __init__(
        self,
        client: Any,
        description: str,
        *,
        home: str | None = None,
        lock: IO[str] | None = None,
        read_only: str | None = None,
        scratch: str | None = None,
    ) -> None:
        self._client = client
        self.description = description
        self.home = home
        self._lock = lock
        self.read_only = read_only  # why the store cannot be written (None: it can)
        self._scratch = scratch  # the private chDB directory a read-only store is read through
        self._session = (
            {k: _setting_str(v) for k, v in CHDB_SESSION_SETTINGS.items()} if home else {}
        )
        self._readonly: Any = None  # chDB: a second session with readonly = 1 (query_readonly)

    # -- Store protocol ------------------------------------------------------------------
    def command(self, sql: str, params: Params = None, settings: Params = None) -> None:
        if self.read_only and _WRITE_RE.match(sql):
            raise self._read_only_error()
        try:
            self._client.command(
                sql, parameters=_bound(sql, params), settings=self._per_call(settings)
            )
        except Exception as e:
            raise self._error(e) from None

    def query(
        self, sql: str, params: Params = None, settings: Params = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        tbl = self.query_arrow(sql, params, settings)
        return as_rows(tbl.column_names, tbl)

    def query_arrow(self, sql: str, params: Params = None, settings: Params = None) -> Any:
        try:
            return self._client.query_arrow(
                sql, parameters=_bound(sql, params), settings=self._per_call(settings)
            )
        except Exception as e:
            raise StoreError(_clean(str(e))) from None

    # -- read-only SQL (infdebug query; see store/user_sql.py) ---------------------------
    def query_readonly(
        self, sql: str, params: Params = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """``query`` under ClickHouse's ``readonly = 1``: no writes, no settings changes, no
        table function that is not a local computation. chDB keeps a per-query setting in
        the session (readonly cannot be turned off again), so there it is a second session
        of its own; a server takes it with the query. ``SELECT *`` gives the ALIAS columns
        too (``token_times_s``), as it gave that column before it became one."""
        client, settings = self._readonly_session()
        try:
            tbl = client.query_arrow(sql, parameters=_bound(sql, params), settings=settings)
        except Exception as e:
            raise StoreError(_clean(str(e))) from None
        return as_rows(tbl.column_names, tbl)

    def text(self, sql: str, params: Params = None, *, readonly: bool = False) -> str:
        """What a statement prints (``EXPLAIN AST …``) as TabSeparated text; ``readonly``:
        on the read-only session."""
        client, settings = self._readonly_session() if readonly else (self._client, {})
        try:
            out = client.command(sql, parameters=_bound(sql, params), settings=settings)
        except Exception as e:
            raise StoreError(_clean(str(e))) from None
        if isinstance(out, str | int):
            return str(out)
        if isinstance(out, list | tuple):
            return "\t".join(str(x) for x in out)
        return ""  # a summary: the statement printed nothing

    def placeholders(self, sql: str) -> dict[str, set[str]]:
        """The ``{name:Type}`` parameters clickhouse-connect binds in ``sql``: name → types."""
        return placeholder_types(sql)

    def _readonly_session(self) -> tuple[Any, dict[str, Any]]:
        if self._client is None:
            raise StoreError(f"{self.description} is closed")
        if self.home is None:
            current = getattr(self._client, "server_settings", {}).get("readonly")
            already = current is not None and str(getattr(current, "value", "0")) != "0"
            # A user that is read-only already may not change settings: its profile says
            # whether ``SELECT *`` has the ALIAS columns.
            return self._client, {} if already else {**SELECT_STAR_SETTINGS, "readonly": 1}
        if self._readonly is None:
            import clickhouse_connect

            try:
                self._readonly = clickhouse_connect.get_client(
                    interface="chdb",
                    path=getattr(self._client, "path", os.path.join(self.home, "clickhouse")),
                    settings={**SELECT_STAR_SETTINGS, "readonly": 1},  # readonly last
                )
            except Exception as e:
                raise StoreError(
                    f"cannot open a read-only session on {self.description}: {_clean(str(e))}"
                ) from None
        return self._readonly, {}

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
        params = {
            **(params or {}),
            "structure": table.structure(),
            "file_tag": file_tag,
            "batch": batch,
        }
        if self.read_only:
            raise self._read_only_error()
        if self.home is not None:
            # chDB reads the file itself (never through ``data=``, which it decodes to text).
            src = "file({path:String}, 'JSONEachRow', {structure:String})"
            s = {"storage_file_read_method": "pread", **settings}
            with literal_path(path) as literal:
                self.command(
                    insert_select(table, src, guarded=guarded), {**params, "path": literal}, s
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
                raise self._error(e) from None

    def close(self) -> None:
        if self._readonly is not None:
            with contextlib.suppress(Exception):
                self._readonly.close()
            self._readonly = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self.home is not None and _OPEN.get(self.home) is self:
            del _OPEN[self.home]
        _unlock(self._lock)
        self._lock = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> ClickHouseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, e: Exception) -> StoreError:
        """ClickHouse's error as a ``StoreError``: ``StoreFull`` when it says the disk is
        full, ``StoreReadOnly`` when a read-only store's files refused a write."""
        msg = _clean(str(e))
        if disk_full(msg):
            return StoreFull(f"no space left on the disk of {self.description}: {msg}")
        if self.read_only and re.search(r"Permission denied|Read-only file system", msg):
            return self._read_only_error()
        return StoreError(msg)

    def _read_only_error(self) -> StoreReadOnly:
        return StoreReadOnly(
            f"the store {self.home} is read-only ({self.read_only}): it can be queried, not "
            f"written; make it writable (chmod -R u+w {self.home}, or mount it read-write), "
            "or use a writable --home (INFDEBUG_HOME)"
        )

    def _per_call(self, settings: Params) -> dict[str, Any]:
        """The settings this call must send: on chDB, those the session does not have."""
        if not settings:
            return {}
        return {k: v for k, v in settings.items() if self._session.get(k) != _setting_str(v)}


# Statements that write; refused up front on a read-only store (a mutation there would hang).
_WRITE_RE = re.compile(
    r"\s*(?:INSERT|ALTER|DELETE|UPDATE|DROP|TRUNCATE|OPTIMIZE|RENAME|EXCHANGE|ATTACH|DETACH"
    r"|UNDROP|SYSTEM|KILL\s+MUTATION|CREATE\s+(?!TEMPORARY\b))",
    re.IGNORECASE,
)


# -- opening -----------------------------------------------------------------------------
def open_embedded(home: str, *, mend: bool = True) -> ClickHouseStore:
    """The embedded chDB store under ``home`` (created if missing), locked for this process.

    ``mend``: first move aside the mutation files a full disk left broken (they stop chDB
    from starting). A directory that cannot be written opens read-only (see the module)."""
    import clickhouse_connect

    from infdebug.store.health import broken_mutation_files, quarantine
    from infdebug.store.readonly import open_read_only, unwritable

    home = os.path.abspath(home)
    try:
        os.makedirs(home, exist_ok=True)
    except OSError as e:
        raise _cannot_create(home, e) from None
    why = unwritable(home)
    if why is not None:
        return open_read_only(home, why)
    lock = _lock(home)
    for other in list(_OPEN.values()):
        if other.home != home:
            other.close()  # chDB hosts one data path per process
    broken = broken_mutation_files(home)
    if broken and mend:
        try:
            moved = quarantine(home, broken)
        except OSError as e:
            _unlock(lock)
            raise StoreError(
                f"the embedded store at {home} has a broken mutation file ({broken[0]}) "
                f"that cannot be moved aside: {e}"
            ) from None
        log.warning(
            "%s: moved %d broken mutation file(s) (left by a full disk) to %s",
            home,
            len(moved),
            os.path.commonpath([dst for _, dst in moved]),
        )
    try:
        client = clickhouse_connect.get_client(
            interface="chdb",
            path=os.path.join(home, "clickhouse"),
            settings=CHDB_SESSION_SETTINGS,
        )
    except Exception as e:
        _unlock(lock)
        msg = _clean(str(e))
        if disk_full(msg):
            raise StoreFull(
                f"cannot open the embedded ClickHouse store at {home}: no space left: {msg}"
            ) from None
        raise StoreError(
            f"cannot open the embedded ClickHouse store at {home}: {msg}; "
            "`infdebug store check` looks for what is wrong with it"
        ) from None
    store = ClickHouseStore(client, f"chDB at {home}", home=home, lock=lock)
    _OPEN[home] = store
    return store


def _cannot_create(home: str, e: OSError) -> StoreError:
    parent = os.path.dirname(home)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreReadOnly(
            f"cannot create the store directory {home}: {e.strerror} (its parent {parent} "
            "cannot be written); choose a writable directory with --home DIR (INFDEBUG_HOME)"
        )
    if disk_full(e):
        return StoreFull(f"cannot create the store directory {home}: {e.strerror}")
    return StoreError(f"cannot create the store directory {home}: {e.strerror or e}")


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
    try:
        fh = open(os.path.join(home, "lock"), "a+")  # noqa: SIM115 - the lock lives as long as the store
    except OSError as e:
        raise StoreError(
            f"cannot take the lock of the embedded store {home}: {e.strerror or e} "
            f"({os.path.join(home, 'lock')}); the store directory must be writable"
        ) from None
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


def placeholder_types(sql: str) -> dict[str, set[str]]:
    """The ``{name:Type}`` parameters in ``sql`` that clickhouse-connect binds server-side, by
    its own pattern (with none, it would format the values into the SQL with ``%``)."""
    from clickhouse_connect.driver.binding import external_bind_re

    out: dict[str, set[str]] = {}
    for m in external_bind_re.finditer(sql):
        out.setdefault(m.group(1), set()).add(m.group(2).strip())
    return out


def placeholder_names(sql: str) -> set[str]:
    return set(placeholder_types(sql))


@dataclass(frozen=True)
class ParamText:
    """A parameter value written as ClickHouse writes its type (``['a', 'b']`` for an
    ``Array(String)``, ``2025-01-31`` for a ``Date``), sent as it is; a ``str`` is a string's
    value itself, which clickhouse-connect escapes so that ClickHouse gets exactly it."""

    text: str

    def __str__(self) -> str:  # clickhouse-connect sends an unknown type's str() unescaped
        return self.text


def _bound(sql: str, params: Params) -> dict[str, Any]:
    """The parameters to send with ``sql``: none when it has no ``{name:Type}`` placeholder,
    so that clickhouse-connect never formats values into the SQL (``%`` formatting)."""
    if not params:
        return {}
    return dict(params) if placeholder_names(sql) else {}


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
