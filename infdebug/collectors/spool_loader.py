"""The spool loader: replays a spool's frames into the store, in order, exactly once.

Every collector that receives or samples data (the OTLP receiver, the Prometheus scraper,
the GPU sampler) appends it to a spool (collectors/spool.py) first; a ``SpoolLoader`` with
that collector's ``SpoolSink`` loads it. The protocol that makes it exactly-once: before a
chunk of frames is inserted, its last sequence number is saved as pending in
``ingest_state`` (``pending_batch``), after, as loaded (``offset``). A loader that died in
between finds the pending chunk and has the sink undo it (``undo``) before loading it again.

``load_once(store)`` is one pass on a store the caller opened (the one-process ``infdebug
collect`` pump calls it for every spool in turn); ``run(stop)`` is a loop of its own that
opens the store for each pass and waits with backoff, saying so once, while the store is
held or unreachable: nothing is lost meanwhile, the frames stay in the spool.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from infdebug.collectors.spool import Corruption, Spool
from infdebug.store.base import Store, StoreBusy, StoreError, StoreFull
from infdebug.store.ingest_state import IngestState, load_state, save_state

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 5.0
CHUNK_FRAMES = 64
Say = Callable[[str], None]


class SpoolSink(Protocol):
    """What a spool's frames are and where they go."""

    label: str  # names the spool's ingest_state row: "<label>-spool:<hash of its directory>"

    def load(self, store: Store, payloads: list[bytes], batch: int) -> Counter[str]:
        """Insert the frames' rows, tagging what can be rolled back with ``batch``; what was
        loaded, counted by kind (``spans``, ``requests``, ``metrics`` …). A frame that cannot
        be decoded is said and skipped (they are checked on receipt)."""
        ...

    def undo(self, store: Store, payloads: list[bytes], batch: int) -> None:
        """Delete what ``load`` of these frames with this ``batch`` may have inserted."""
        ...


def batch_of(content_id: str, seq: int) -> int:
    """The ``_batch`` the rows of the chunk ending at frame ``seq`` carry (never 0)."""
    h = hashlib.sha256(f"{content_id}:{seq}".encode()).digest()
    return (int.from_bytes(h[:8], "big") >> 1) or 1


class SpoolLoader:
    """Load ``spool``'s frames through ``sink`` into the store opened by ``open_store``."""

    def __init__(
        self,
        spool: Spool,
        open_store: Callable[[], Store],
        sink: SpoolSink,
        *,
        say: Say = lambda line: None,
        server: bool = False,
        interval: float = 0.2,
    ) -> None:
        self.spool = spool
        self.sink = sink
        self._open = open_store
        self._say = say
        self.server = server
        self.interval = interval
        self.loaded_frames = 0
        self.loaded: Counter[str] = Counter()
        self.corrupt: list[Corruption] = []
        self.waits = 0
        self.last_load = 0.0  # time.time() of the last pass that loaded something
        self._cid = (
            f"{sink.label}-spool:"
            + hashlib.sha256(os.path.realpath(spool.directory).encode()).hexdigest()[:24]
        )

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loaded_frames": self.loaded_frames}
        out.update({f"loaded_{k}": v for k, v in sorted(self.loaded.items())})
        out.update(corrupt_frames=len(self.corrupt), store_waits=self.waits)
        return out

    def backlog(self) -> int:
        """Frames appended by this process and not loaded yet (a lower bound after a restart)."""
        return max(0, self.spool.appended - self.loaded_frames)

    def _report(self, c: Corruption) -> None:
        if c not in self.corrupt:
            self.corrupt.append(c)
            self._say(f"spool: unreadable frame skipped: {c}")

    def load_once(self, store: Store) -> int:
        """Load every frame not loaded yet; rows loaded."""
        state = load_state(store, self._cid)
        if state.pending_batch:
            self._undo(store, state)
        n = 0
        chunk: list[tuple[int, bytes]] = []
        for seq, payload in self.spool.frames(state.offset, self._report):
            chunk.append((seq, payload))
            if len(chunk) >= CHUNK_FRAMES:
                n += self._load(store, state, chunk)
                chunk = []
        if chunk:
            n += self._load(store, state, chunk)
        self.spool.release(state.offset)
        return n

    def _load(self, store: Store, state: IngestState, chunk: list[tuple[int, bytes]]) -> int:
        state.pending_batch = chunk[-1][0]
        save_state(store, state, self.spool.directory)
        got = self.sink.load(store, [p for _, p in chunk], batch_of(self._cid, chunk[-1][0]))
        rows = sum(got.values())
        state.offset, state.pending_batch = chunk[-1][0], 0
        state.rows += rows
        save_state(store, state, self.spool.directory)
        self.loaded_frames += len(chunk)
        self.loaded.update(got)
        self.last_load = time.time()
        return rows

    def _undo(self, store: Store, state: IngestState) -> None:
        """Undo the chunk a loader died loading (pending, not loaded)."""
        chunk = [(s, p) for s, p in self.spool.frames(state.offset) if s <= state.pending_batch]
        if chunk:
            self._say(
                f"spool {self.spool.directory}: a load was cut short (frames up to "
                f"{state.pending_batch}): undoing it before loading it again"
            )
            self.sink.undo(store, [p for _, p in chunk], batch_of(self._cid, state.pending_batch))
        state.pending_batch = 0
        save_state(store, state, self.spool.directory)

    def run(self, stop: threading.Event) -> None:
        """Load until ``stop`` is set (and once more then), waiting for the store as needed."""
        delay, since = BACKOFF_MIN_S, None
        while True:
            final = stop.is_set()
            try:
                store = self._open()
            except (StoreBusy, StoreFull, StoreError) as e:
                if not self.server and not isinstance(e, (StoreBusy, StoreFull)):
                    raise
                if since is None:
                    since, self.waits = time.monotonic(), self.waits + 1
                    self._say(
                        f"waiting for the store: {e} (trying again, every {BACKOFF_MAX_S:.0f} s "
                        "at most; nothing is lost: what is received meanwhile stays in the "
                        "spool and is loaded when it is back)"
                    )
                if final:
                    return
                stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            try:
                if since is not None:
                    self._say(f"the store is back after {time.monotonic() - since:.1f} s")
                    since, delay = None, BACKOFF_MIN_S
                self.load_once(store)
            finally:
                store.close()
            if final:
                return
            stop.wait(self.interval)
