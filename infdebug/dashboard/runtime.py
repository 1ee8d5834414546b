"""The dashboard's process-wide state: one store shared by every page and browser session,
the log tailer that follows directories inside this process, and the analyses that run in
the background so that a page never waits for them.

The embedded store (chDB) admits one process, so the dashboard opens it once and every
Streamlit session's script thread, the tailer and the analysis worker use it through
``SharedStore``, which runs one call at a time. ``configure`` is called by ``infdebug
dashboard`` before Streamlit starts (same process); pages call ``get``, which builds the
runtime from the ``INFDEBUG_*`` environment when nothing configured it (tests, ``streamlit
run`` by hand).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from infdebug import settings
from infdebug.errors import StoreBusy, StoreError
from infdebug.schema import Finding
from infdebug.store.base import Params, Store

log = logging.getLogger(__name__)

FOLLOW_ENV = "INFDEBUG_DASHBOARD_FOLLOW"  # directories, os.pathsep between them
TOKENIZER_ENV = "INFDEBUG_DASHBOARD_TOKENIZER"  # a tokenizer or model directory
SERVER_EPOCH_S = 30.0
_SERIALS = itertools.count(1)
ALL: dict[str, Any] = {
    "since": 0.0,
    "until": 1e11,
    "replicas": [],
}  # the default window  # a shared server changes under us: its data counts as new this often


class SharedStore:
    """A store that several threads use one call at a time (chDB's connection, and a
    clickhouse-connect session, each run one query at a time). ``close`` is the runtime's:
    a tailer or analyzer that closes it closes nothing."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.RLock()
        self.description = store.description
        self.server = getattr(store, "home", None) is None  # a server: others write to it too

    def command(self, sql: str, params: Params = None, settings: Params = None) -> None:
        with self._lock:
            self._store.command(sql, params, settings)

    def query(
        self, sql: str, params: Params = None, settings: Params = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._lock:
            return self._store.query(sql, params, settings)

    def insert_jsonl(self, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self._store.insert_jsonl(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # query_arrow, text, … : one at a time too
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def locked(*a: Any, **k: Any) -> Any:
            with self._lock:
                return attr(*a, **k)

        return locked

    def close(self) -> None:
        """Nothing: the runtime closes the store it opened (``really_close``)."""

    def really_close(self) -> None:
        with self._lock:
            self._store.close()


@dataclass
class Config:
    clickhouse: str | None = None
    home: str | None = None
    follow: list[str] = field(default_factory=list)
    interval: float = 1.0
    tokenizer: str | None = None  # a tokenizer (or model) directory: token pieces

    @classmethod
    def from_env(cls) -> Config:
        follow = [p for p in (settings.env(FOLLOW_ENV) or "").split(os.pathsep) if p]
        return cls(
            clickhouse=settings.clickhouse_url(None),
            home=settings.home(None),
            follow=follow,
            tokenizer=settings.env(TOKENIZER_ENV),
        )


def finding_id(f: Finding) -> str:
    """A short, stable name for a finding (its kind, analyzer, scope and summary): the
    detail page's address."""
    doc = json.dumps([f.kind, f.analyzer, f.scope, f.summary], sort_keys=True, default=str)
    return hashlib.sha1(doc.encode()).hexdigest()[:12]


@dataclass
class Analysis:
    """One background run of every analyzer over a window."""

    window: dict[str, Any]
    started: float
    future: Future[Any]
    seconds: float | None = None

    @property
    def done(self) -> bool:
        return self.future.done()


class Runtime:
    """The store, the tailer and the analyses of one dashboard process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: SharedStore | None = None
        self.error: str | None = None  # why there is no store
        self.busy = False  # the error is another process holding the store
        self.version = 0  # bumped whenever the tailer loads rows
        self.serial = next(_SERIALS)  # tells this runtime's cached results from another's
        self.tail_lines: deque[str] = deque(maxlen=50)
        self.tailer: Any = None
        self._tail_thread: threading.Thread | None = None
        self._analyses: dict[tuple[Any, ...], Analysis] = {}
        self._findings: dict[str, Finding] = {}  # every finding shown, by finding_id
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infdebug-analyze")
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._tokenizer_error: str | None = None
        self._open()

    # -- the store ---------------------------------------------------------------------------
    def _open(self) -> None:
        from infdebug.store import open_store

        try:
            self.store = SharedStore(open_store(self.config.clickhouse, self.config.home))
        except StoreBusy as e:
            self.error, self.busy = str(e), True
        except StoreError as e:
            self.error = str(e)

    def epoch(self) -> tuple[int, int, int]:
        """Changes whenever the data may have: another runtime (store), a load by our tailer,
        and (on a server other processes write to) every ``SERVER_EPOCH_S``. Every cached
        query is keyed on it."""
        tick = int(time.time() // SERVER_EPOCH_S) if self.store and self.store.server else 0
        return self.serial, self.version, tick

    # -- following logs ----------------------------------------------------------------------
    def start_following(self) -> None:
        if not self.config.follow or self.store is None or self._tail_thread is not None:
            return
        from infdebug.cli.base import default_rejects_path
        from infdebug.collectors.tail import Tailer

        shared = self.store
        home = self.config.home or settings.home(None)
        self.tailer = Tailer(
            self.config.follow,
            open_store=lambda: shared,
            rejects_path=default_rejects_path(home, self.config.clickhouse, "dashboard"),
            follow=True,
            interval=self.config.interval,
            hold=True,
            server=shared.server,
            exclude=[home],
            say=self._said,
        )
        self._loaded_seen = 0
        self._tail_thread = threading.Thread(
            target=self._follow, name="infdebug-follow", daemon=True
        )
        self._tail_thread.start()

    def _follow(self) -> None:
        try:
            self.tailer.run()
        except Exception as e:  # said on the page; the dashboard goes on with what it has
            self._said(f"following stopped: {type(e).__name__}: {e}")
            log.exception("the log tailer stopped")

    def _said(self, line: str) -> None:
        self.tail_lines.append(f"{time.strftime('%H:%M:%S')} {line}")
        if self.tailer is not None and self.tailer.loaded != self._loaded_seen:
            self._loaded_seen = self.tailer.loaded
            self.version += 1

    @property
    def following(self) -> bool:
        return self._tail_thread is not None and self._tail_thread.is_alive()

    # -- analyses ----------------------------------------------------------------------------
    def analysis(self, window: Mapping[str, Any]) -> Analysis | None:
        """The run of every analyzer over ``window`` for the current data: started in the
        background on first ask, the same object until it is done and the data changes. A
        newer window's run does not wait for an older one's (one worker; the newest asked
        runs next)."""
        if self.store is None:
            return None
        replicas = [str(r) for r in window.get("replicas") or []]
        w: dict[str, Any] = {
            "since": float(window.get("since", 0.0)),
            "until": float(window.get("until", 1e11)),
            "replicas": replicas,
        }
        key: tuple[Any, ...] = (w["since"], w["until"], tuple(replicas), self.epoch())
        with self._lock:
            a = self._analyses.get(key)
            if a is None:
                a = Analysis(w, time.time(), self._pool.submit(self._analyze, w))
                self._analyses[key] = a
                for old in list(self._analyses)[:-8]:  # a few recent windows are kept
                    if self._analyses[old].done:
                        del self._analyses[old]
            return a

    def _analyze(self, window: dict[str, Any]) -> Any:
        from infdebug.analyzers.base import AnalysisContext, analyze

        t = time.perf_counter()
        assert self.store is not None
        ctx = AnalysisContext(
            store=self.store,
            since=window["since"] or None,
            until=window["until"] if window["until"] < 1e11 else None,
            replicas=window["replicas"] or None,
            tokenizer=self.tokenizer(),
        )
        res = analyze(ctx)
        with self._lock:
            for f in res.findings:
                self._findings[finding_id(f)] = f
        res.seconds["(total)"] = time.perf_counter() - t
        return res

    def warm(self) -> None:
        """In the background: import what the first page needs (charts, frames, the
        analyzers) and analyse the whole store, so the first visitor finds it done."""

        def run() -> None:
            try:
                import altair  # noqa: F401
                import pandas  # noqa: F401

                from infdebug.analyzers.base import discover

                discover()
                self.analysis(ALL)
            except Exception:  # warming is an optimisation: the page does it again
                log.debug("warming the dashboard failed", exc_info=True)

        threading.Thread(target=run, name="infdebug-warm", daemon=True).start()

    def finding(self, fid: str) -> Finding | None:
        with self._lock:
            return self._findings.get(fid)

    # -- token pieces ------------------------------------------------------------------------
    def tokenizer(self) -> Any:
        """The tokenizer named by ``--tokenizer`` (None without one, or when it fails to
        load: ``tokenizer_error`` says why)."""
        if self._tokenizer is None and self._tokenizer_error is None and self.config.tokenizer:
            from infdebug.text.tokenizer import load_tokenizer

            try:
                self._tokenizer = load_tokenizer(self.config.tokenizer)
            except Exception as e:
                self._tokenizer_error = f"{self.config.tokenizer}: {e}"
        return self._tokenizer

    @property
    def tokenizer_error(self) -> str | None:
        return self._tokenizer_error

    def close(self) -> None:
        if self.tailer is not None:
            self.tailer.stop()
        if self._tail_thread is not None:
            self._tail_thread.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.really_close()
            self.store = None


_RUNTIME: Runtime | None = None
_GUARD = threading.Lock()


def configure(config: Config) -> Runtime:
    """Open the dashboard's store and start following (``infdebug dashboard`` calls this in
    the process Streamlit then runs in). Replaces a runtime configured before."""
    global _RUNTIME
    with _GUARD:
        if _RUNTIME is not None:
            _RUNTIME.close()
        _RUNTIME = Runtime(config)
        _RUNTIME.start_following()
        return _RUNTIME


def get() -> Runtime:
    """This process's runtime (built from the environment on first use)."""
    global _RUNTIME
    with _GUARD:
        if _RUNTIME is None:
            _RUNTIME = Runtime(Config.from_env())
            _RUNTIME.start_following()
        return _RUNTIME


def reset() -> None:
    """Close and forget the runtime (tests)."""
    global _RUNTIME
    with _GUARD:
        if _RUNTIME is not None:
            _RUNTIME.close()
        _RUNTIME = None
