"""Many collectors in one process: producers spool, one pump loads (``infdebug collect``).

The embedded store has one owner, so the collectors of one process share it this way:

* producers never touch the store: the OTLP receiver, the Prometheus scraper and the GPU
  sampler each append to a spool of their own (collectors/spool.py), durably;
* one pump thread, every ``interval``, opens the store (or keeps it, ``hold``), runs each
  spool's loader (collectors/spool_loader.py) and the log tailer's poll (collectors/tail.py)
  in turn, and releases it, so ``infdebug query`` and ``analyze`` get their turn in between.
  A round that loaded something is followed by the next at once, on the same open store
  (for at most ``HOLD_BUSY_S``): under a steady stream the pump neither sleeps nor reopens.

While the store is held by another process or a server is unreachable, the pump says so
once and waits with backoff; the spools (and, for logs, the files) keep everything.

``status()`` is what the status line on the terminal and the collector's own ``/metrics``
(``serve_metrics``) show: per source its rates and totals, the spools' bytes and backlog,
the lag (seconds since the pump last left nothing behind), errors.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infdebug.collectors.spool_loader import SpoolLoader
from infdebug.store.base import Store, StoreBusy, StoreError, StoreFull

Say = Callable[[str], None]
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.25, 30.0
HOLD_BUSY_S = 5.0  # the longest the pump keeps the embedded store between busy rounds


class _Borrowed:
    """The pump's open store lent to a loader: ``close()`` is the pump's business."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@dataclass
class Source:
    """One collector: what it is called, how to stop it, what it counts, what it loads."""

    name: str  # otlp, prometheus, gpu, logs
    stats: Callable[[], dict[str, Any]]
    stop: Callable[[], None] = lambda: None
    loader: SpoolLoader | None = None
    tailer: Any = None  # collectors.tail.Tailer
    rate_key: str = ""  # the counter the status line shows a rate of
    describe: str = ""  # what the start-up line says of it
    _last: tuple[float, float] = field(default=(0.0, 0.0))  # (time, counter) at the last status

    def rate(self, now: float, value: float) -> float:
        t0, v0 = self._last
        self._last = (now, value)
        return (value - v0) / (now - t0) if t0 and now > t0 else 0.0


class Pump:
    """Loads every source's data into the store opened by ``open_store``."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        interval: float = 1.0,
        hold: bool = False,
        server: bool = False,
        say: Say = lambda line: None,
    ) -> None:
        self._open = open_store
        self.interval = interval
        self.hold = hold
        self.server = server
        self._say = say
        self.sources: list[Source] = []
        self._store: Store | None = None
        self._opened_at = 0.0
        self.rounds = 0
        self.errors = 0
        self.waits = 0
        self.waiting_since: float | None = None
        self.drained_at = time.time()  # the last time a round left nothing behind
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def add(self, source: Source) -> Source:
        self.sources.append(source)
        return source

    # -- the store ---------------------------------------------------------------------------
    def _acquire(self) -> Store:
        if self._store is None:
            self._store = self._open()
            self._opened_at = time.monotonic()
        return self._store

    def _release(self, *, force: bool = False) -> None:
        if self._store is not None and (force or not self.hold):
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None

    def borrow(self) -> Store:
        """The open store for a tailer's ``open_store`` (opened on first use in a round)."""
        return _Borrowed(self._acquire())

    # -- one round -----------------------------------------------------------------------------
    def _pending(self, src: Source) -> bool:
        if src.loader is not None:
            return bool(src.loader.spool.segments())
        return src.tailer is not None

    def round(self) -> int:
        """Load what every source has; rows loaded (``StoreUnavailable`` / ``StoreError``
        when the store cannot be had)."""
        from infdebug.collectors.tail import StoreUnavailable

        self.rounds += 1
        n = 0
        left = False
        try:
            for src in self.sources:
                if self._stop.is_set() and src.tailer is not None:
                    continue
                if not self._pending(src):
                    continue
                if src.loader is not None:
                    n += src.loader.load_once(self._acquire())
                    left = left or src.loader.backlog() > 0
                elif src.tailer is not None:
                    poll = src.tailer.poll()
                    if poll.rows:
                        src.tailer.tell(poll)
                        n += sum(poll.rows.values())
        except (StoreBusy, StoreFull) as e:
            self._release(force=True)
            raise StoreUnavailable(str(e)) from None
        except StoreError:
            self._release(force=True)
            raise
        finally:
            # busy (this round loaded something): keep the store for the next round, at most
            # HOLD_BUSY_S, so a steady stream does not pay chDB's reopening every round yet
            # other commands still get their turn
            busy = n > 0 and time.monotonic() - self._opened_at < HOLD_BUSY_S
            if not busy:
                self._release()
        if not left:
            self.drained_at = time.time()
        return n

    def run(self) -> None:
        """Rounds every ``interval`` until ``stop()``, then a last one; waits for the store."""
        from infdebug.collectors.tail import StoreUnavailable

        delay = BACKOFF_MIN_S
        while True:
            final = self._stop.is_set()
            try:
                loaded = self.round()
            except (StoreUnavailable, StoreError) as e:
                if not isinstance(e, StoreUnavailable) and not self.server:
                    raise
                if self.waiting_since is None:
                    self.waiting_since, self.waits = time.monotonic(), self.waits + 1
                    self._say(
                        f"waiting for the store: {e} (trying again, every {BACKOFF_MAX_S:.0f} s "
                        "at most; nothing is lost: what arrives meanwhile stays in the spools "
                        "and files and is loaded when it is back)"
                    )
                if final:
                    break
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if self.waiting_since is not None:
                self._say(
                    f"the store is back after {time.monotonic() - self.waiting_since:.1f} s: "
                    "loading what arrived meanwhile"
                )
                self.waiting_since, delay = None, BACKOFF_MIN_S
            if final:
                break
            if not loaded:  # something loaded: more may be waiting, go again at once
                self._stop.wait(self.interval)
        self._release(force=True)

    def stop(self) -> None:
        self._stop.set()

    # -- what it shows -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Per source its counters (and ``rate`` per second since the last call), plus the
        pump's: lag_s, spool_bytes, backlog_frames, store_waits, waiting."""
        now = time.time()
        out: dict[str, Any] = {}
        spool_bytes = backlog = 0
        for src in self.sources:
            doc = dict(src.stats())
            if src.loader is not None:
                doc.update(src.loader.stats())
                size = src.loader.spool.size()
                doc["spool_bytes"] = size
                doc["backlog_frames"] = src.loader.backlog()
                spool_bytes += size
                backlog += doc["backlog_frames"]
            if src.rate_key:
                doc["rate"] = round(src.rate(now, float(doc.get(src.rate_key, 0))), 1)
            out[src.name] = doc
        out["pump"] = {
            "rounds": self.rounds,
            "lag_s": round(max(0.0, now - self.drained_at), 3),
            "spool_bytes": spool_bytes,
            "backlog_frames": backlog,
            "store_waits": self.waits,
            "waiting": self.waiting_since is not None,
        }
        return out


def status_line(doc: dict[str, Any]) -> str:
    """One terminal line of ``Pump.status()``."""
    parts = []
    for name, d in doc.items():
        if name == "pump":
            continue
        bits = [f"{d.get('rate', 0):,.0f}/s"]
        if name == "otlp":
            bits.append(f"{d.get('loaded_requests', 0):,} requests, {d.get('spans', 0):,} spans")
            bad = d.get("malformed", 0) + d.get("refused", 0) + d.get("unauthorized", 0)
            if bad:
                bits.append(f"{bad:,} refused/malformed")
        elif name == "prometheus":
            up = d.get("targets", 0) - d.get("targets_down", 0)
            bits.append(f"{up}/{d.get('targets', 0)} targets up")
            if d.get("scrapes_failed"):
                bits.append(f"{d['scrapes_failed']:,} failed scrapes")
        elif name == "gpu":
            bits.append(f"{d.get('loaded_gpu', 0):,} samples")
        elif name == "logs":
            bits.append(f"{d.get('loaded', 0):,} rows")
            if d.get("rejected"):
                bits.append(f"{d['rejected']:,} rejected")
        parts.append(f"{name} " + ", ".join(bits))
    p = doc.get("pump", {})
    tail = f"lag {p.get('lag_s', 0):.1f} s, spool {p.get('spool_bytes', 0) / 1e6:.1f} MB"
    if p.get("waiting"):
        tail += ", WAITING for the store"
    return " · ".join([*parts, tail])
