"""The embedded store: chDB (ClickHouse in-process), persisted under ``$INFDEBUG_HOME``.

chDB locks its data directory, so one process owns the store at a time. We take our own
advisory lock first (``fcntl.flock`` on ``HOME/lock``) and record who holds it in
``HOME/owner.json``, so a second process gets one clear line naming the holder instead of
chDB's initialisation error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from infdebug.store.base import Params, StoreBusy, StoreError, as_rows, insert_select
from infdebug.store.ddl import Table

# chDB allows one data path per process; remember which store holds it.
_OPEN: dict[str, EmbeddedStore] = {}


def _fmt_settings(settings: Params) -> dict[str, Any]:
    return dict(settings or {})


class EmbeddedStore:
    def __init__(self, home: str) -> None:
        self.home = os.path.abspath(home)
        self.description = f"chDB at {self.home}"
        os.makedirs(self.home, exist_ok=True)
        self._lock_fh: IO[str] | None = None
        self._acquire_lock()
        if _OPEN:
            other = next(iter(_OPEN.values()))
            if other.home != self.home:
                other.close()
        try:
            from chdb import session as chs
        except ImportError as e:  # pragma: no cover - chdb is a core dependency
            self._release_lock()
            raise StoreError("chdb is not installed: pip install chdb") from e
        try:
            self._sess: Any = chs.Session(os.path.join(self.home, "clickhouse"))
        except Exception as e:
            self._release_lock()
            raise StoreError(f"cannot open the embedded ClickHouse store at {self.home}: {e}") from e
        _OPEN[self.home] = self

    # -- locking -------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        path = os.path.join(self.home, "lock")
        fh = open(path, "a+")  # noqa: SIM115 - the lock lives as long as the store
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise StoreBusy(self._busy_message()) from None
        self._lock_fh = fh
        owner = {"pid": os.getpid(), "argv": sys.argv, "since": time.time()}
        with open(os.path.join(self.home, "owner.json"), "w") as f:
            json.dump(owner, f)

    def _busy_message(self) -> str:
        who = "another process"
        try:
            with open(os.path.join(self.home, "owner.json")) as f:
                o = json.load(f)
            cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(o.get("argv", [])))
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(o.get("since", 0)))
            who = f"process {o.get('pid')} ({cmd[:80]}) since {since}"
        except (OSError, ValueError):
            pass
        return (
            f"the embedded store {self.home} is in use by {who}; wait for it to finish, or "
            "share one ClickHouse server between processes with --clickhouse URL"
        )

    def _release_lock(self) -> None:
        if self._lock_fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # -- Store protocol ------------------------------------------------------------------
    def _run(self, sql: str, fmt: str, params: Params, settings: Params) -> Any:
        if settings:
            sql = sql + " SETTINGS " + ", ".join(f"{k} = {_literal(v)}" for k, v in settings.items())
        try:
            return self._sess.query(sql, fmt, params={k: _param(v) for k, v in (params or {}).items()})
        except Exception as e:
            raise StoreError(_clean(str(e))) from None

    def command(self, sql: str, params: Params = None, settings: Params = None) -> None:
        self._run(sql, "CSV", params, settings)

    def query(self, sql: str, params: Params = None, settings: Params = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        res = self._run(sql, "ArrowTable", params, settings)
        return as_rows(res.column_names, res)

    def query_arrow(self, sql: str, params: Params = None) -> Any:
        return self._run(sql, "ArrowTable", params, None)

    def insert_jsonl(
        self, table: Table, path: str, file_tag: str, batch: int, settings: Mapping[str, Any], *, guarded: bool
    ) -> None:
        src = "file({path:String}, 'JSONEachRow', {structure:String})"
        s = dict(settings)
        s.setdefault("storage_file_read_method", "pread")  # RSS stays bounded for large files
        self._run(
            insert_select(table, src, guarded=guarded),
            "CSV",
            {"path": os.path.abspath(path), "structure": table.structure(), "file_tag": file_tag, "batch": batch},
            s,
        )

    def close(self) -> None:
        if getattr(self, "_sess", None) is not None:
            with contextlib.suppress(Exception):
                self._sess.close()
            self._sess = None
        _OPEN.pop(self.home, None)
        self._release_lock()

    def __enter__(self) -> EmbeddedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _literal(v: Any) -> str:
    """A SETTINGS value; settings come from our own code, never from user input."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int | float):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{s}'"


def _param(v: Any) -> Any:
    """chDB binds a parameter from its text form: a list becomes a ClickHouse array literal
    (strings quoted and escaped), still bound as a value, never spliced into the SQL."""
    if isinstance(v, list | tuple):
        parts = []
        for x in v:
            if isinstance(x, str):
                parts.append("'" + x.replace("\\", "\\\\").replace("'", "\\'") + "'")
            elif isinstance(x, bool):
                parts.append("1" if x else "0")
            else:
                parts.append(repr(x))
        return "[" + ",".join(parts) + "]"
    return v


def _clean(msg: str) -> str:
    """ClickHouse errors carry a stack trace in some builds; keep the first sentence."""
    msg = msg.strip()
    for cut in ("\nStack trace", ". Stack trace"):
        if cut in msg:
            msg = msg.split(cut, 1)[0]
    return msg
