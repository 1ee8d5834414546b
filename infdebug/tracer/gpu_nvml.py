"""NvmlProbe: real GPUs through NVML (``pynvml`` from the nvidia-ml-py package).

Every NVML call is guarded: a field the device does not support (NVMLError_NotSupported,
or a function the driver lacks) becomes None and is not asked for again on that device;
any other NVML error also becomes None for that sample and is counted in ``errors``.
Throttle ("clock event") reasons are decoded bit by bit to DCGM names with the bit values
of the installed pynvml module, never hard-coded ones.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from infdebug.errors import UnavailableError
from infdebug.tracer.gpu import DeviceInfo, GpuReading, XidEvent

log = logging.getLogger(__name__)

T = TypeVar("T")

# NVML constant suffix -> DCGM name. pynvml >= 12.535 names them nvmlClocksEventReason*,
# older ones nvmlClocksThrottleReason*; both are looked up.
_REASON_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("GpuIdle", "gpu_idle"),
    ("ApplicationsClocksSetting", "applications_clocks_setting"),
    ("SwPowerCap", "power_cap"),
    ("HwSlowdown", "hw_slowdown"),
    ("SyncBoost", "sync_boost"),
    ("SwThermalSlowdown", "sw_thermal"),
    ("HwThermalSlowdown", "hw_thermal"),
    ("HwPowerBrakeSlowdown", "hw_power_brake"),
    ("DisplayClockSetting", "display_clocks_setting"),
    # Not DCGM reasons, but NVML reports them on some boards: keep them, named.
    ("BoardLimit", "board_limit"),
    ("Reliability", "reliability"),
)


class NvmlUnavailable(UnavailableError):
    """NVML cannot be used here: pynvml missing, no driver/library, or init failed."""


def throttle_reason_bits(nvml: Any) -> dict[int, str]:
    """Bit value -> DCGM name, from the constants of the given pynvml module."""
    bits: dict[int, str] = {}
    for suffix, name in _REASON_SUFFIXES:
        for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
            value = getattr(nvml, prefix + suffix, None)
            if isinstance(value, int) and value > 0 and value not in bits:
                bits[value] = name
                break
    return bits


def decode_throttle_reasons(mask: int, bits: dict[int, str]) -> list[str]:
    """DCGM names of the bits set in ``mask``, in bit order; an unknown bit is reported as
    ``unknown_0x…`` rather than dropped."""
    out: list[str] = []
    rest = mask
    for bit in sorted(bits):
        if mask & bit:
            out.append(bits[bit])
            rest &= ~bit
    b = 1
    while rest:
        if rest & b:
            out.append(f"unknown_0x{b:x}")
            rest &= ~b
        b <<= 1
    return out


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def visible_filter(spec: str | None) -> Callable[[int, str | None], bool]:
    """Which NVML devices a replica sees, from CUDA_VISIBLE_DEVICES (indices or UUID
    prefixes). Indices are taken as NVML (PCI bus) order, i.e. CUDA_DEVICE_ORDER=PCI_BUS_ID.
    Unset: all devices. MIG entries are not resolved: all devices, with a note in the log."""
    if spec is None:
        return lambda i, u: True
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if any(e.startswith("MIG") for e in entries):
        log.info("CUDA_VISIBLE_DEVICES=%r names MIG instances: sampling every GPU", spec)
        return lambda i, u: True
    indices: set[int] = set()
    uuids: list[str] = []
    for e in entries:
        if e.lstrip("-").isdigit():
            if int(e) < 0:  # CUDA stops at the first invalid index
                break
            indices.add(int(e))
        else:
            uuids.append(e if e.startswith("GPU-") else "GPU-" + e)
    return lambda i, u: i in indices or (u is not None and any(u.startswith(p) for p in uuids))


class NvmlProbe:
    """Reads the GPUs visible to this process through NVML. Raises NvmlUnavailable from the
    constructor when NVML cannot initialise; never raises from sample()/poll_xids()."""

    def __init__(self, nvml: Any = None, visible: str | None = None) -> None:
        if nvml is None:
            try:
                import pynvml  # type: ignore[import-untyped, import-not-found, unused-ignore]
            except ImportError as e:
                raise NvmlUnavailable(
                    f"pynvml is not installed ({e}); pip install nvidia-ml-py"
                ) from e
            nvml = pynvml
        self.nvml = nvml
        self._error_cls: type[BaseException] = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
        except self._error_cls as e:
            raise NvmlUnavailable(f"nvmlInit failed: {e}") from e
        self._lock = threading.Lock()  # NVML is thread-safe; this guards our own state
        self.errors = 0
        self._logged: set[str] = set()
        self._unsupported: set[tuple[int, str]] = set()
        self._bits = throttle_reason_bits(nvml)
        self._handles: dict[int, Any] = {}
        self._devices: list[DeviceInfo] = []
        self._closed = False
        spec = visible if visible is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
        keep = visible_filter(spec)
        count = self._call(-1, "count", nvml.nvmlDeviceGetCount) or 0
        for i in range(count):
            h = self._call(i, "handle", nvml.nvmlDeviceGetHandleByIndex, i)
            if h is None:
                continue
            uuid = _text(self._call(i, "uuid", nvml.nvmlDeviceGetUUID, h))
            if not keep(i, uuid):
                continue
            name = _text(self._call(i, "name", nvml.nvmlDeviceGetName, h))
            self._handles[i] = h
            self._devices.append(DeviceInfo(index=i, uuid=uuid, name=name))
        self._events = self._register_xid_events()

    # -- guarded calls -------------------------------------------------------------------

    def _call(self, index: int, field: str, fn: Callable[..., T], *args: Any) -> T | None:
        """fn(*args), or None when NVML does not support it or fails (counted, logged once)."""
        if (index, field) in self._unsupported:
            return None
        try:
            return fn(*args)
        except self._error_cls as e:
            if type(e).__name__ in ("NVMLError_NotSupported", "NVMLError_FunctionNotFound"):
                self._unsupported.add((index, field))
                log.debug("NVML: %s not supported on GPU %d", field, index)
                return None
            self._count_error(index, field, e)
            return None
        except Exception as e:  # ctypes or pynvml bugs: still never into the engine
            self._count_error(index, field, e)
            return None

    def _count_error(self, index: int, field: str, e: BaseException) -> None:
        with self._lock:
            self.errors += 1
            key = f"{index}:{field}:{type(e).__name__}"
            if key in self._logged:
                return
            self._logged.add(key)
        log.warning("NVML: reading %s of GPU %d failed: %s: %s", field, index, type(e).__name__, e)

    # -- GpuProbe ------------------------------------------------------------------------

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    def sample(self, index: int) -> GpuReading:
        n = self.nvml
        h = self._handles.get(index)
        if h is None:
            raise KeyError(
                f"GPU {index} is not one of this probe's devices {sorted(self._handles)}"
            )

        def scaled(v: float | int | None, by: float) -> float | None:
            return None if v is None else v / by

        util = self._call(index, "util", n.nvmlDeviceGetUtilizationRates, h)
        mem = self._call(index, "memory", n.nvmlDeviceGetMemoryInfo, h)
        sm = self._call(index, "sm_clock", n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM)
        memclk = self._call(index, "mem_clock", n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM)
        temp = self._call(
            index, "temperature", n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU
        )
        mask = self._throttle_mask(index, h)
        return GpuReading(
            uuid=self._devices_uuid(index),
            power_w=scaled(self._call(index, "power", n.nvmlDeviceGetPowerUsage, h), 1000.0),
            power_limit_w=scaled(
                self._call(index, "power_limit", n.nvmlDeviceGetEnforcedPowerLimit, h), 1000.0
            ),
            temp_c=None if temp is None else float(temp),
            sm_clock_mhz=None if sm is None else float(sm),
            mem_clock_mhz=None if memclk is None else float(memclk),
            util_pct=None if util is None else float(util.gpu),
            mem_used_bytes=None if mem is None else int(mem.used),
            throttle_reasons=None if mask is None else decode_throttle_reasons(mask, self._bits),
            energy_j=scaled(
                self._call(index, "energy", n.nvmlDeviceGetTotalEnergyConsumption, h), 1000.0
            ),
            simulated=False,
        )

    def _devices_uuid(self, index: int) -> str | None:
        for d in self._devices:
            if d.index == index:
                return d.uuid
        return None

    def _throttle_mask(self, index: int, h: Any) -> int | None:
        for fn_name in (
            "nvmlDeviceGetCurrentClocksEventReasons",  # drivers >= 535
            "nvmlDeviceGetCurrentClocksThrottleReasons",  # older drivers / pynvml
        ):
            fn = getattr(self.nvml, fn_name, None)
            if fn is None or (index, fn_name) in self._unsupported:
                continue
            mask = self._call(index, fn_name, fn, h)
            if mask is not None:
                return int(mask)
        return None

    # -- XID errors ----------------------------------------------------------------------

    def _register_xid_events(self) -> Any:
        n = self.nvml
        xid_type = getattr(n, "nvmlEventTypeXidCriticalError", None)
        if xid_type is None or not self._handles:
            return None
        es = self._call(-1, "event_set", n.nvmlEventSetCreate)
        if es is None:
            return None
        registered = 0
        for i, h in self._handles.items():
            ok = self._call(i, "xid_events", self._register, h, xid_type, es)
            registered += ok is not None
        if not registered:
            self._call(-1, "event_set_free", n.nvmlEventSetFree, es)
            return None
        return es

    def _register(self, h: Any, types: int, es: Any) -> bool:
        self.nvml.nvmlDeviceRegisterEvents(h, types, es)
        return True

    def poll_xids(self, max_events: int = 64) -> list[XidEvent]:
        """XID errors since the last poll (nvmlEventSetWait with a 0 ms timeout)."""
        if self._events is None or self._closed:
            return []
        n = self.nvml
        timeout_cls = getattr(n, "NVMLError_Timeout", None)
        out: list[XidEvent] = []
        for _ in range(max_events):
            try:
                data = n.nvmlEventSetWait(self._events, 0)
            except Exception as e:
                if timeout_cls is None or not isinstance(e, timeout_cls):
                    self._count_error(-1, "xid_wait", e)
                break
            index = self._index_of(data.device)
            out.append(
                XidEvent(
                    t=time.time(),
                    gpu_index=index,
                    uuid=None if index is None else self._devices_uuid(index),
                    xid=int(data.eventData),
                )
            )
        return out

    def _index_of(self, device: Any) -> int | None:
        for i, h in self._handles.items():
            if h is device or _handle_value(h) == _handle_value(device):
                return i
        idx = self._call(-1, "event_device_index", self.nvml.nvmlDeviceGetIndex, device)
        return None if idx is None else int(idx)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._events is not None:
            self._call(-1, "event_set_free", self.nvml.nvmlEventSetFree, self._events)
            self._events = None
        self._call(-1, "shutdown", self.nvml.nvmlShutdown)


def _handle_value(h: Any) -> Any:
    """The pointer value of a ctypes device handle (two handle objects of one GPU compare
    equal by it); the object itself for anything else."""
    import ctypes

    if isinstance(h, ctypes._Pointer):
        return ctypes.cast(h, ctypes.c_void_p).value
    return h
