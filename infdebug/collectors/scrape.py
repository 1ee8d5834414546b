"""The Prometheus scraper: GETs each target's ``/metrics`` every interval and spools what it got.

A scrape is parsed by prometheus_client's parser (collectors/prom_snapshot.py: a malformed
line is set aside, counted and named, the rest kept) into contract ``metrics`` records under
the target's name; DCGM exporter fields that are GPU state (prom_vocab.GPU_FIELDS) become
``gpu`` records instead, one per GPU, its replica the ``pod`` label DCGM puts on a GPU a pod
holds, else the target's name. The records of one scrape are one spool frame (fsync'd), and
collectors/record_spool.py loads them, so a store that is away loses nothing.

Names are stored as the engine exposes them; collectors/prom_vocab.py maps them onto one
vocabulary when they are read (``infdebug stats --from-metrics``), so a better mapping applies
to what was scraped before it.

A target that times out, answers an HTTP error or garbage is counted (by reason) and
tried again at the next interval; it never delays or stops the others (each round scrapes
every target concurrently, each under ``timeout``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from infdebug.collectors.prom_snapshot import parse_exposition
from infdebug.collectors.spool import Spool, SpoolFull
from infdebug.errors import InputError
from infdebug.schema import GpuSample, MetricSample, Record, encode_records

Say = Callable[[str], None]
ACCEPT = "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"  # the text format, never protobuf
MAX_BODY_BYTES = 64 << 20


@dataclass(frozen=True)
class Target:
    name: str  # the replica the samples are stored under
    url: str

    @classmethod
    def parse(cls, spec: str) -> Target:
        """``r1=http://host:8000/metrics`` (``/metrics`` is added to a bare host:port URL)."""
        name, sep, url = spec.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise InputError(f"expected NAME=URL for a scrape target, found {spec!r}")
        url = url.strip()
        if "://" not in url:
            url = "http://" + url
        if not url.partition("://")[2].partition("/")[2]:
            url = url.rstrip("/") + "/metrics"
        return cls(name.strip(), url)


@dataclass
class TargetState:
    """What the scraper knows of one target (the status line and ``/metrics`` show it)."""

    target: Target
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # by reason: timeout, http_503 …
    consecutive_failures: int = 0
    last_error: str = ""
    last_duration_s: float = 0.0
    last_success: float = 0.0
    samples: int = 0
    rejected_lines: int = 0


def gpu_records(samples: list[MetricSample], default_replica: str) -> list[Record]:
    """DCGM exporter samples that are GPU state, as one ``gpu`` record per GPU and time."""
    from infdebug.collectors.prom_vocab import GPU_FIELDS

    per: dict[tuple[str, int, float], dict[str, Any]] = {}
    for s in samples:
        spec = GPU_FIELDS.get(s.name)
        if spec is None or s.value is None:
            continue
        labels = s.labels or {}
        replica = labels.get("pod") or default_replica
        try:
            index = int(labels.get("gpu", "0"))
        except ValueError:
            index = 0
        row = per.setdefault((replica, index, s.t), {"uuid": labels.get("UUID") or None})
        fld, scale = spec
        value = s.value * scale
        row[fld] = int(value) if fld == "mem_used_bytes" else value
    return [
        GpuSample(t=t, replica=replica, gpu_index=index, **row)
        for (replica, index, t), row in per.items()
    ]


def to_records(data: bytes, target: Target, t: float) -> tuple[list[Record], int]:
    """The records of one scrape's body and how many of its lines were set aside
    (``ValueError`` when the parser refuses the whole text)."""
    from infdebug.collectors.prom_vocab import GPU_FIELDS

    samples, rejects = parse_exposition(data, target.name, t, target.url)
    gpu = gpu_records(samples, target.name)
    if gpu:
        samples = [s for s in samples if s.name not in GPU_FIELDS]
    return [*samples, *gpu], len(rejects)


class Scraper:
    """Scrape ``targets`` every ``interval`` seconds into ``spool`` until ``stop()``."""

    def __init__(
        self,
        targets: Iterable[Target],
        spool: Spool,
        *,
        interval: float = 10.0,
        timeout: float = 5.0,
        say: Say = lambda line: None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.targets = [TargetState(t) for t in targets]
        names = [s.target.name for s in self.targets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"scrape target names must differ; given twice: {', '.join(dup)}")
        self.spool = spool
        self.interval = interval
        self.timeout = timeout
        self._say = say
        self._headers = {"Accept": ACCEPT, **(headers or {})}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._told: set[str] = set()
        self.rounds = 0
        self.refused = 0  # scrapes the full spool could not take
        self._lock = threading.Lock()

    # -- one round -------------------------------------------------------------------------
    def scrape_once(self) -> int:
        """Scrape every target once, concurrently; records spooled."""
        import httpx

        self.rounds += 1
        with (
            httpx.Client(timeout=self.timeout, headers=self._headers) as client,
            ThreadPoolExecutor(max_workers=min(16, len(self.targets)) or 1) as pool,
        ):
            return sum(pool.map(lambda s: self._scrape(client, s), self.targets))

    def _scrape(self, client: Any, st: TargetState) -> int:
        import httpx

        t0 = time.perf_counter()
        t = time.time()
        try:
            with client.stream("GET", st.target.url) as resp:
                if resp.status_code != 200:
                    return self._failed(st, f"http_{resp.status_code}", f"HTTP {resp.status_code}")
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        return self._failed(st, "too_large", f"body over {MAX_BODY_BYTES:,} bytes")
        except httpx.TimeoutException:
            return self._failed(st, "timeout", f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as e:
            return self._failed(st, "unreachable", f"{type(e).__name__}: {e}")
        try:
            records, rejected = to_records(bytes(body), st.target, t)
        except ValueError as e:
            return self._failed(st, "garbage", str(e))
        except Exception as e:  # noqa: BLE001 - a body that breaks the parser: that target's
            return self._failed(st, "garbage", f"{type(e).__name__}: {e}")
        if not records and body.strip():
            why = f" ({rejected} unreadable line(s))" if rejected else ""
            return self._failed(st, "garbage", f"no Prometheus samples in the answer{why}")
        if rejected and st.rejected_lines == 0:
            self._say(
                f"scrape {st.target.name} ({st.target.url}): {rejected} malformed line(s) set "
                "aside, the rest kept"
            )
        try:
            if records:
                self.spool.append(encode_records(records))
        except SpoolFull as e:
            with self._lock:
                self.refused += 1
            self._once("full", f"warning: {e}: scrapes are dropped (counted) until it drains")
            return 0
        with self._lock:
            st.ok += 1
            st.samples += len(records)
            st.rejected_lines += rejected
            if st.consecutive_failures:
                self._say(f"scrape {st.target.name}: answering again")
            st.consecutive_failures = 0
            st.last_duration_s = time.perf_counter() - t0
            st.last_success = t
        return len(records)

    def _failed(self, st: TargetState, reason: str, detail: str) -> int:
        with self._lock:
            st.failed[reason] += 1
            st.consecutive_failures += 1
            st.last_error = detail
            first = st.consecutive_failures == 1
        if first:
            self._say(
                f"scrape {st.target.name} ({st.target.url}) failed: {detail} (counted as "
                f"{reason}; tried again every {self.interval:g} s; the other targets go on)"
            )
        return 0

    def _once(self, key: str, line: str) -> None:
        if key not in self._told:
            self._told.add(key)
            self._say(line)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Scrape every ``interval`` (from the start of one round to the next) until stopped."""
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.scrape_once()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def start(self) -> Scraper:
        self._thread = threading.Thread(target=self.run, name="infdebug-scrape", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "scrapes_ok": sum(s.ok for s in self.targets),
                "scrapes_failed": sum(sum(s.failed.values()) for s in self.targets),
                "scrape_samples": sum(s.samples for s in self.targets),
                "scrape_rejected_lines": sum(s.rejected_lines for s in self.targets),
                "scrapes_refused": self.refused,
                "targets_down": sum(1 for s in self.targets if s.consecutive_failures),
            }
