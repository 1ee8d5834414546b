"""Reading an embedded store that cannot be written: a read-only directory, or one on a
read-only file system.

chDB cannot start on such a directory at all: it writes its ``status`` file and ``tmp/``
before anything else, in read-only mode (``mode=ro``) too. So the store is read through a
private chDB in a temporary directory, whose ``custom_local_disks_base_directory`` is the
store's: each table is attached from its own metadata file, with the same UUID, on a local
disk marked read-only that is the store's ClickHouse directory, so it reads the store's own
parts where they are. Queries work; ``ClickHouseStore`` refuses every write up front
(``StoreReadOnly``). A writer that holds the store's lock (another user, who can write it)
keeps this from reading it half way: a shared lock is taken on the lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from typing import IO, Any

from infdebug.store.base import StoreBusy, StoreReadOnly
from infdebug.store.client import (
    _OPEN,
    CHDB_SESSION_SETTINGS,
    ClickHouseStore,
    _busy_message,
    _clean,
    _unlock,
)
from infdebug.store.ddl import SELECT_STAR_SETTINGS
from infdebug.store.health import broken_mutation_files


def unwritable(home: str) -> str | None:
    """Why the store's directories cannot be written (None if they can): the home, chDB's
    directory under it, and each table's directory."""
    root = os.path.join(home, "clickhouse")
    for d in [home, root, os.path.join(root, "store"), *_table_dirs(root)]:
        if os.path.isdir(d) and not os.access(d, os.W_OK):
            try:
                if os.statvfs(d).f_flag & os.ST_RDONLY:
                    return f"{d} is on a read-only file system"
            except OSError:
                pass
            return f"no permission to write {d}"
    return None


def _table_dirs(root: str) -> list[str]:
    store = os.path.join(root, "store")
    try:
        return sorted(
            os.path.join(store, a, b)
            for a in os.listdir(store)
            if os.path.isdir(os.path.join(store, a))
            for b in os.listdir(os.path.join(store, a))
        )
    except OSError:
        return []


def open_read_only(home: str, why: str) -> ClickHouseStore:
    """A store that cannot be written, read through a private chDB (see the module)."""
    import clickhouse_connect

    root = os.path.realpath(os.path.join(home, "clickhouse"))
    meta = os.path.realpath(os.path.join(root, "metadata", "default"))
    if not os.path.isdir(meta):
        raise StoreReadOnly(
            f"the store directory {home} cannot be written ({why}) and holds no store yet: "
            "choose a writable directory with --home DIR (INFDEBUG_HOME), or make it writable"
        )
    broken = broken_mutation_files(home)
    if broken:
        raise StoreReadOnly(
            f"the store {home} has a broken mutation file ({broken[0]}, left by a full disk) "
            f"and cannot be written ({why}): make it writable and run `infdebug store repair`"
        )
    lock = _shared_lock(home)
    for other in list(_OPEN.values()):
        other.close()  # chDB hosts one data path per process
    scratch = tempfile.mkdtemp(prefix="infdebug-readonly-")
    clients: list[Any] = []
    try:
        clients.append(
            clickhouse_connect.get_client(
                interface="chdb",
                path=scratch,
                settings=CHDB_SESSION_SETTINGS,
                chdb_options={"custom_local_disks_base_directory": root},
            )
        )
        disk = f"disk(type = 'local', path = {_literal(root + '/')}, readonly = 1)"
        for name in sorted(os.listdir(meta)):
            if name.endswith(".sql"):
                clients[0].command(_attach(os.path.join(meta, name), disk))
        # ``query_readonly``'s session: on the same private chDB, not the store's path.
        clients.append(
            clickhouse_connect.get_client(
                interface="chdb", path=scratch, settings={**SELECT_STAR_SETTINGS, "readonly": 1}
            )
        )
    except Exception as e:
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()
        _unlock(lock)
        shutil.rmtree(scratch, ignore_errors=True)
        raise StoreReadOnly(
            f"the store {home} cannot be written ({why}), and reading it as it is failed: "
            f"{_clean(str(e))}"
        ) from None
    store = ClickHouseStore(
        clients[0],
        f"chDB at {home} (read-only)",
        home=home,
        lock=lock,
        read_only=why,
        scratch=scratch,
    )
    store._readonly = clients[1]
    _OPEN[home] = store
    return store


def _attach(sql_file: str, disk: str) -> str:
    """The table's ``ATTACH`` statement from its metadata file, on the read-only ``disk``."""
    name = os.path.basename(sql_file)[: -len(".sql")]
    with open(sql_file, encoding="utf-8") as f:
        sql = f.read().strip()
    sql = re.sub(r"^ATTACH TABLE _ ", f"ATTACH TABLE `{name.replace('`', '')}` ", sql, count=1)
    if re.search(r"\bSETTINGS\b", sql.split("ENGINE =", 1)[-1]):
        return f"{sql}, disk = {disk}"
    return f"{sql} SETTINGS disk = {disk}"


def _literal(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _shared_lock(home: str) -> IO[str] | None:
    """A shared lock on a read-only store's lock file, so that a process writing it (one
    that can) is not read half way; None if there is no lock file to hold."""
    try:
        fh = open(os.path.join(home, "lock"))  # noqa: SIM115 - the lock lives as long as the store
    except OSError:
        return None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StoreBusy(_busy_message(home)) from None
    except OSError:
        pass  # a file system without locks: read it anyway
    return fh
