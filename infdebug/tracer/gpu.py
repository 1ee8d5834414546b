"""GPU sampler: polls every GPU visible to a replica and emits ``gpu`` records + gauges.

The seam is :class:`GpuProbe`: :class:`~infdebug.tracer.gpu_nvml.NvmlProbe` reads real GPUs
through NVML (nvidia-ml-py), :class:`~infdebug.tracer.gpu_sim.SimulatedProbe` produces a
clearly labelled synthetic signal (``simulated=True``) that follows the engine's load, for
demos on machines without a GPU. :class:`GpuSampler` runs a probe on a daemon thread at
``hz`` and never raises into the caller: every failure is counted in ``errors`` and logged
once per kind. :func:`make_probe` picks the probe and says once when there is no GPU.

XID errors the probe reports (NVML's ``nvmlEventTypeXidCriticalError`` event set, polled
without blocking after each sweep) are written beside the samples as contract ``event``
records named ``gpu_xid`` with ``detail`` {xid, gpu_index, uuid, simulated}: an additive
use of the event kind, no schema change.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

from infdebug.schema import Event, GpuSample

log = logging.getLogger(__name__)

XID_EVENT = "gpu_xid"  # the name of the event records XID errors are written as

NO_GPU_MESSAGE = (
    "no NVIDIA GPU/NVML here: GPU telemetry off "
    "(use --simulate-gpu for a labelled synthetic signal)"
)

# DCGM names of NVML's clock event ("throttle") reasons, in bit order. Decoding lives in
# gpu_nvml.py, against the bit values of the installed pynvml module.
DCGM_THROTTLE_REASONS: tuple[str, ...] = (
    "gpu_idle",
    "applications_clocks_setting",
    "power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal",
    "hw_thermal",
    "hw_power_brake",
    "display_clocks_setting",
)


@dataclass(frozen=True)
class DeviceInfo:
    """One GPU a probe can sample; ``index`` is NVML's (PCI bus order), stable per host."""

    index: int
    uuid: str | None
    name: str | None = None


@dataclass(frozen=True)
class XidEvent:
    """An XID error NVML reported for one GPU (``xid`` is the XID number, e.g. 79)."""

    t: float  # unix seconds when the sampler saw it
    gpu_index: int | None
    uuid: str | None
    xid: int
    simulated: bool = False  # reported by the simulated GPU (a fault injected on purpose)


class GpuReading(TypedDict, total=False):
    """What a probe measures for one GPU: the GpuSample fields except t/replica/gpu_index.
    A field the device does not support is ``None``."""

    uuid: str | None
    power_w: float | None
    power_limit_w: float | None
    temp_c: float | None
    sm_clock_mhz: float | None
    mem_clock_mhz: float | None
    util_pct: float | None
    mem_used_bytes: int | None
    throttle_reasons: list[str] | None
    energy_j: float | None
    simulated: bool


class GpuProbe(Protocol):
    """Reads GPUs. Implementations guard every call: unsupported fields come back None."""

    def devices(self) -> list[DeviceInfo]: ...

    def sample(self, index: int) -> GpuReading: ...

    def poll_xids(self) -> list[XidEvent]:
        """XID errors since the last poll (non-blocking); [] where NVML reports none."""
        ...

    def close(self) -> None: ...


# --- probe selection ----------------------------------------------------------------------

_warn_lock = threading.Lock()
_warned_no_gpu = False


def _warn_no_gpu_once(detail: str) -> None:
    global _warned_no_gpu
    with _warn_lock:
        if _warned_no_gpu:
            log.debug("%s (%s)", NO_GPU_MESSAGE, detail)
            return
        _warned_no_gpu = True
    log.warning("%s (%s)", NO_GPU_MESSAGE, detail)


def make_probe(
    simulate: bool,
    load_fn: Callable[[], float] | None = None,
    throttle: bool = False,
    *,
    seed: int = 0,
    nvml: Any = None,
    xids: Sequence[tuple[float, int]] = (),
) -> GpuProbe | None:
    """The probe a replica should sample, or None when it has no GPU to read.

    ``simulate=True``: a :class:`SimulatedProbe` following ``load_fn`` (0..1), throttling
    when ``throttle`` and reporting the XID errors ``xids`` ((seconds after start, XID) on
    GPU 0, an injected fault). Otherwise real NVML when it initialises and sees a GPU; else
    None, after one warning per process. ``nvml`` replaces the ``pynvml`` module (tests).
    """
    if simulate:
        from infdebug.tracer.gpu_sim import SimulatedProbe

        return SimulatedProbe(load_fn or (lambda: 0.0), throttle=throttle, seed=seed, xids=xids)
    from infdebug.tracer.gpu_nvml import NvmlProbe, NvmlUnavailable

    try:
        probe = NvmlProbe(nvml=nvml)
    except NvmlUnavailable as e:
        _warn_no_gpu_once(str(e))
        return None
    if not probe.devices():
        probe.close()
        _warn_no_gpu_once("NVML sees no GPU visible to this process")
        return None
    return probe


# --- Prometheus gauges ----------------------------------------------------------------------


class GpuGauges:
    """The GPU gauges of one Prometheus registry, labelled by replica and gpu."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Gauge  # type: ignore[import-not-found, unused-ignore]

        labels = ["replica", "gpu"]
        kw: dict[str, Any] = {"registry": registry}
        self.power = Gauge("infdebug_gpu_power_watts", "GPU power draw (W)", labels, **kw)
        self.temp = Gauge("infdebug_gpu_temperature_celsius", "GPU temperature (C)", labels, **kw)
        self.sm_clock = Gauge("infdebug_gpu_sm_clock_mhz", "GPU SM clock (MHz)", labels, **kw)
        self.util = Gauge("infdebug_gpu_utilization_ratio", "GPU utilisation (0..1)", labels, **kw)
        self.mem_used = Gauge(
            "infdebug_gpu_memory_used_bytes", "GPU memory used (bytes)", labels, **kw
        )
        self.throttle = Gauge(
            "infdebug_gpu_throttle",
            "1 while a clock event (throttle) reason is active, DCGM names",
            [*labels, "reason"],
            **kw,
        )

    def update(self, s: GpuSample) -> None:
        lab = (s.replica, str(s.gpu_index))
        for gauge, value in (
            (self.power, s.power_w),
            (self.temp, s.temp_c),
            (self.sm_clock, s.sm_clock_mhz),
            (self.util, None if s.util_pct is None else s.util_pct / 100.0),
            (self.mem_used, s.mem_used_bytes),
        ):
            if value is not None:
                gauge.labels(*lab).set(value)
        active = set(s.throttle_reasons or ())
        for reason in (*DCGM_THROTTLE_REASONS, *sorted(active - set(DCGM_THROTTLE_REASONS))):
            self.throttle.labels(*lab, reason).set(1.0 if reason in active else 0.0)


_gauges_by_registry: weakref.WeakKeyDictionary[Any, GpuGauges] = weakref.WeakKeyDictionary()
_gauges_lock = threading.Lock()


def gauges_for(registry: Any) -> GpuGauges | None:
    """The GPU gauges of ``registry`` (made once, shared by samplers); None without
    prometheus_client."""
    with _gauges_lock:
        g = _gauges_by_registry.get(registry)
        if g is None:
            try:
                g = GpuGauges(registry)
            except ImportError:
                log.warning("prometheus_client is not installed: GPU gauges off")
                return None
            _gauges_by_registry[registry] = g
        return g


# --- the sampler ------------------------------------------------------------------------------


class GpuSampler:
    """Samples every GPU of ``probe`` at ``hz`` on a daemon thread.

    Each sample becomes a :class:`GpuSample` passed to ``emit`` (which must not block: hand
    it to the JSONL writer's queue) and, when ``gauges`` (a prometheus_client registry) is
    given, updates the ``infdebug_gpu_*`` gauges. XID errors are logged, passed to ``emit``
    as ``gpu_xid`` events (see the module docstring) and to ``on_xid``.
    Nothing raises into the caller: failures are counted in ``errors``. The sampler owns the
    probe: ``stop()`` joins the thread and closes the probe.
    """

    def __init__(
        self,
        probe: GpuProbe,
        replica: str,
        emit: Callable[[GpuSample | Event], None],
        hz: float = 4.0,
        gauges: Any = None,
        *,
        on_xid: Callable[[XidEvent], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        deployment: str | None = None,
    ) -> None:
        if not hz > 0:
            raise ValueError(f"GpuSampler: expected hz > 0, got {hz!r}")
        self.probe = probe
        self.replica = replica
        self.deployment = deployment
        self.emit = emit
        self.period_s = 1.0 / hz
        self.on_xid = on_xid
        self.wall_clock = wall_clock
        self.gauges = gauges_for(gauges) if gauges is not None else None
        self.samples = 0  # records emitted
        self.errors = 0  # failed probe reads, emits, gauge updates
        self.xids: list[XidEvent] = []  # last 100 XID errors seen
        self._logged: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._devices: list[DeviceInfo] = []

    def start(self) -> GpuSampler:
        if self._thread is not None:
            return self
        try:
            self._devices = list(self.probe.devices())
        except Exception as e:
            self._error("devices", e)
            self._devices = []
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"infdebug-gpu-{self.replica}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop sampling, join the thread, close the probe. Safe to call twice."""
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout_s)
            if t.is_alive():
                self._error(
                    "stop", TimeoutError(f"sampler thread still running after {timeout_s}s")
                )
        try:
            self.probe.close()
        except Exception as e:
            self._error("close", e)

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            next_t += self.period_s
            now = time.monotonic()
            if next_t < now:  # fell behind (slow NVML): skip missed ticks, don't burst
                next_t = now + self.period_s
            self._stop.wait(next_t - now)

    def sample_once(self) -> list[GpuSample]:
        """One pass over every device (the thread calls this; tests may too)."""
        out: list[GpuSample] = []
        for dev in self._devices:
            t = self.wall_clock()
            try:
                reading = self.probe.sample(dev.index)
                if reading.get("uuid") is None:
                    reading["uuid"] = dev.uuid
                rec = GpuSample(
                    t=t,
                    replica=self.replica,
                    gpu_index=dev.index,
                    deployment=self.deployment,
                    **reading,
                )
            except Exception as e:
                self._error(f"sample gpu {dev.index}", e)
                continue
            try:
                self.emit(rec)
                self.samples += 1
            except Exception as e:
                self._error("emit", e)
            if self.gauges is not None:
                try:
                    self.gauges.update(rec)
                except Exception as e:
                    self._error("gauges", e)
            out.append(rec)
        self._poll_xids()
        return out

    def _poll_xids(self) -> None:
        try:
            events = self.probe.poll_xids()
        except Exception as e:
            self._error("poll_xids", e)
            return
        for ev in events:
            log.error(
                "XID %d on GPU %s (%s) of replica %s", ev.xid, ev.gpu_index, ev.uuid, self.replica
            )
            self.xids = [*self.xids[-99:], ev]
            try:
                self.emit(xid_record(ev, self.replica))
            except Exception as e:
                self._error("emit xid", e)
            if self.on_xid is not None:
                try:
                    self.on_xid(ev)
                except Exception as e:
                    self._error("on_xid", e)

    def _error(self, where: str, e: BaseException) -> None:
        self.errors += 1
        key = f"{where}:{type(e).__name__}"
        if key not in self._logged:
            self._logged.add(key)
            log.warning(
                "GPU sampler of replica %s: %s failed: %s: %s (counted, further ones not logged)",
                self.replica,
                where,
                type(e).__name__,
                e,
            )


def xid_record(ev: XidEvent, replica: str) -> Event:
    """The contract record of one XID error: an ``event`` named ``gpu_xid``."""
    return Event(
        t=ev.t,
        replica=replica,
        name=XID_EVENT,
        pid=os.getpid(),
        detail={
            "xid": ev.xid,
            "gpu_index": ev.gpu_index,
            "uuid": ev.uuid,
            "simulated": ev.simulated,
        },
    )
