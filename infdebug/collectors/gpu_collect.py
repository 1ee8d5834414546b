"""``infdebug collect gpu``: NVML samples of this host's GPUs, for engines without a tracer.

The tracer's own sampler (tracer/gpu.py ``GpuSampler`` on an NVML probe, or the simulated
probe under ``--simulate-gpu``, whose records say ``simulated``) emits ``gpu`` records and
``gpu_xid`` events; they are buffered and appended to a spool about once a second
(collectors/record_spool.py loads it), so a store that is away loses nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from infdebug.collectors.spool import Spool, SpoolFull
from infdebug.errors import UnavailableError
from infdebug.schema import Event, GpuSample, Record, encode_records
from infdebug.tracer.gpu import GpuSampler, make_probe

Say = Callable[[str], None]


class NoGpu(UnavailableError):
    """NVML sees no GPU here (and ``--simulate-gpu`` was not asked for)."""


class GpuCollector:
    """Sample every visible GPU at ``hz`` as ``replica`` into ``spool``."""

    def __init__(
        self,
        spool: Spool,
        replica: str,
        *,
        hz: float = 1.0,
        simulate: bool = False,
        flush_s: float = 1.0,
        say: Say = lambda line: None,
        nvml: Any = None,
    ) -> None:
        probe = make_probe(simulate, lambda: 0.0, nvml=nvml)
        if probe is None:
            raise NoGpu(
                "no GPU to sample: NVML did not initialise or sees no GPU visible to this "
                "process (pip install 'infdebug[gpu]' for nvidia-ml-py; check "
                "CUDA_VISIBLE_DEVICES). --simulate-gpu samples a labelled synthetic signal."
            )
        self.spool = spool
        self.flush_s = flush_s
        self._say = say
        self._buf: list[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused = 0
        self.simulated = simulate
        self.sampler = GpuSampler(probe, replica, self._emit, hz=hz)

    def _emit(self, rec: GpuSample | Event) -> None:
        with self._lock:
            self._buf.append(rec)

    def flush(self) -> int:
        """Spool what was sampled since the last flush; records spooled."""
        with self._lock:
            buf, self._buf = self._buf, []
        if not buf:
            return 0
        try:
            self.spool.append(encode_records(buf))
        except SpoolFull as e:
            self.refused += len(buf)
            if self.refused == len(buf):
                self._say(f"warning: {e}: GPU samples are dropped (counted) until it drains")
            return 0
        return len(buf)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()
        self.flush()

    def start(self) -> GpuCollector:
        self.sampler.start()
        self._thread = threading.Thread(target=self._run, name="infdebug-gpu-flush", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.sampler.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def stats(self) -> dict[str, Any]:
        return {
            "gpu_samples": self.sampler.samples,
            "gpu_errors": self.sampler.errors,
            "gpu_refused": self.refused,
        }
