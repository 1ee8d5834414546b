"""GPU sampler: NVML decoding against a fake NVML module, the simulated probe, the thread."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from infdebug.schema import GpuSample, decode_record, encode_record
from infdebug.tracer import gpu
from infdebug.tracer.gpu import DCGM_THROTTLE_REASONS, GpuSampler, make_probe
from infdebug.tracer.gpu_nvml import (
    NvmlProbe,
    decode_throttle_reasons,
    throttle_reason_bits,
    visible_filter,
)
from infdebug.tracer.gpu_sim import SimulatedProbe

pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")


class FakeNvml:
    """A fake of the pynvml module (test-only): the real module's constants and exception
    classes, with devices described by dicts. A field listed in a device's ``unsupported``
    raises the real NVMLError_NotSupported; ``failing`` fields raise NVMLError_Unknown."""

    def __init__(self, devices: list[dict[str, Any]], *, init_error: int | None = None) -> None:
        for name in dir(pynvml):
            if name.startswith(("NVML_", "NVMLError", "nvmlClocks", "nvmlEventType")):
                setattr(self, name, getattr(pynvml, name))
        self.devices = devices
        self.init_error = init_error
        self.initialised = False
        self.xid_queue: list[tuple[int, int]] = []  # (device index, xid)
        self.registered: list[tuple[int, int]] = []

    def _dev(self, h: int, field: str) -> Any:
        d = self.devices[h]
        if field in d.get("unsupported", ()):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if field in d.get("failing", ()):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        return d[field]

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return str(self._dev(h, "uuid"))

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"  # older pynvml returned bytes

    def nvmlDeviceGetIndex(self, h: int) -> int:
        return h

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return int(self._dev(h, "power_mw"))

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return int(self._dev(h, "limit_mw"))

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return int(self._dev(h, "temp"))

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        field = {pynvml.NVML_CLOCK_SM: "sm", pynvml.NVML_CLOCK_MEM: "mem"}[clock]
        return int(self._dev(h, field))

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=self._dev(h, "util"), memory=10)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(used=self._dev(h, "mem_used"), total=80 * 2**30)

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        return int(self._dev(h, "energy_mj"))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        return int(self._dev(h, "reasons"))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: int) -> int:
        return int(self._dev(h, "reasons_old"))

    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, h: int, types: int, es: str) -> None:
        self._dev(h, "xid")  # NotSupported on devices that list it
        self.registered.append((h, types))

    def nvmlEventSetWait(self, es: str, timeout_ms: int) -> Any:
        assert timeout_ms == 0
        if not self.xid_queue:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        dev, xid = self.xid_queue.pop(0)
        return SimpleNamespace(
            device=dev, eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=xid
        )

    def nvmlEventSetFree(self, es: str) -> None:
        pass


def h100(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "uuid": "GPU-1b2c3d4e-0000-1111-2222-333344445555",
        "power_mw": 312_500,
        "limit_mw": 700_000,
        "temp": 61,
        "sm": 1980,
        "mem": 2619,
        "util": 87,
        "mem_used": 70 * 2**30,
        "energy_mj": 123_456_789,
        "reasons": 0,
        "reasons_old": 0,
        "xid": True,
    }
    d.update(over)
    return d


# --- throttle decoding ------------------------------------------------------------------------


def test_throttle_bits_come_from_the_real_module_and_decode_to_dcgm_names() -> None:
    bits = throttle_reason_bits(pynvml)
    assert set(DCGM_THROTTLE_REASONS) <= set(bits.values())
    expected = {
        "gpu_idle": pynvml.nvmlClocksThrottleReasonGpuIdle,
        "applications_clocks_setting": pynvml.nvmlClocksThrottleReasonApplicationsClocksSetting,
        "power_cap": pynvml.nvmlClocksThrottleReasonSwPowerCap,
        "hw_slowdown": pynvml.nvmlClocksThrottleReasonHwSlowdown,
        "sync_boost": pynvml.nvmlClocksThrottleReasonSyncBoost,
        "sw_thermal": pynvml.nvmlClocksThrottleReasonSwThermalSlowdown,
        "hw_thermal": pynvml.nvmlClocksThrottleReasonHwThermalSlowdown,
        "hw_power_brake": pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown,
        "display_clocks_setting": pynvml.nvmlClocksThrottleReasonDisplayClockSetting,
    }
    for name, bit in expected.items():
        assert decode_throttle_reasons(bit, bits) == [name]
    assert decode_throttle_reasons(0, bits) == []
    both = (
        pynvml.nvmlClocksThrottleReasonSwPowerCap | pynvml.nvmlClocksThrottleReasonHwThermalSlowdown
    )
    assert decode_throttle_reasons(both, bits) == ["power_cap", "hw_thermal"]
    # A bit this pynvml does not know is reported, not dropped.
    assert decode_throttle_reasons(1 << 40 | 4, bits) == ["power_cap", "unknown_0x10000000000"]


def test_nvml_probe_reads_and_scales_every_field() -> None:
    reasons = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonSwThermalSlowdown
    fake = FakeNvml([h100(reasons=reasons)])
    probe = NvmlProbe(nvml=fake, visible="")
    assert probe.devices() == []  # CUDA_VISIBLE_DEVICES="" hides every GPU
    probe = NvmlProbe(nvml=fake, visible=None)
    [dev] = probe.devices()
    assert dev.uuid and dev.uuid.startswith("GPU-1b2c") and dev.name == "NVIDIA H100 80GB HBM3"
    r = probe.sample(0)
    assert r["power_w"] == pytest.approx(312.5) and r["power_limit_w"] == pytest.approx(700.0)
    assert r["energy_j"] == pytest.approx(123_456.789)
    assert (r["temp_c"], r["sm_clock_mhz"], r["mem_clock_mhz"], r["util_pct"]) == (
        61,
        1980,
        2619,
        87,
    )
    assert r["mem_used_bytes"] == 70 * 2**30
    assert r["throttle_reasons"] == ["power_cap", "sw_thermal"]
    assert r["simulated"] is False
    assert probe.errors == 0
    probe.close()
    assert not fake.initialised


def test_nvml_not_supported_fields_become_none_and_are_not_asked_again() -> None:
    dev = h100(unsupported=("power_mw", "energy_mj", "reasons", "temp", "xid"), reasons_old=8)
    fake = FakeNvml([dev])
    probe = NvmlProbe(nvml=fake)
    for _ in range(2):
        r = probe.sample(0)
        assert r["power_w"] is None and r["energy_j"] is None and r["temp_c"] is None
        assert r["throttle_reasons"] == ["hw_slowdown"]  # fell back to ...ThrottleReasons
        assert r["sm_clock_mhz"] == 1980
    assert probe.errors == 0  # NotSupported is not an error
    assert probe.poll_xids() == []  # no device registered for XID events
    # Other NVML errors also become None, and are counted.
    fake2 = FakeNvml([h100(failing=("util",))])
    probe2 = NvmlProbe(nvml=fake2)
    assert probe2.sample(0)["util_pct"] is None and probe2.errors == 1
    # A whole record still validates.
    s = GpuSample(t=1.0, replica="r1", gpu_index=0, **probe.sample(0))
    assert decode_record(encode_record(s), strict=True) == s


def test_nvml_xid_events_are_polled_without_blocking() -> None:
    fake = FakeNvml([h100(), h100(uuid="GPU-second")])
    probe = NvmlProbe(nvml=fake)
    xid = pynvml.nvmlEventTypeXidCriticalError
    assert fake.registered == [(0, xid), (1, xid)]
    assert probe.poll_xids() == []
    fake.xid_queue += [(1, 79), (0, 48)]
    got = probe.poll_xids()
    assert [(e.gpu_index, e.uuid, e.xid) for e in got] == [
        (1, "GPU-second", 79),
        (0, h100()["uuid"], 48),
    ]
    assert probe.poll_xids() == []


def test_visible_devices_filter() -> None:
    f = visible_filter("1,GPU-abc")
    assert [f(i, u) for i, u in [(0, "GPU-x"), (1, "GPU-y"), (2, "GPU-abcdef")]] == [
        False,
        True,
        True,
    ]
    assert visible_filter(None)(5, None)


# --- make_probe -------------------------------------------------------------------------------


def test_make_probe_without_nvml_returns_none_and_warns_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu, "_warned_no_gpu", False)
    no_lib = FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with caplog.at_level(logging.WARNING, logger="infdebug.tracer.gpu"):
        assert make_probe(False, None, False, nvml=no_lib) is None
        assert make_probe(False, None, False, nvml=FakeNvml([])) is None  # NVML but no GPU
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert gpu.NO_GPU_MESSAGE in warnings[0].getMessage()
    assert isinstance(make_probe(False, None, False, nvml=FakeNvml([h100()])), NvmlProbe)
    sim = make_probe(True, lambda: 0.5, True)
    assert isinstance(sim, SimulatedProbe) and sim.throttle


def test_make_probe_on_this_machine_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "_warned_no_gpu", False)
    probe = make_probe(False)  # the real pynvml: None here, an NvmlProbe on a GPU machine
    if probe is not None:
        assert all(d.uuid for d in probe.devices())
        probe.close()


# --- the simulated probe ----------------------------------------------------------------------


class StepClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run_sim(load: float, throttle: bool = False, steps: int = 240, dt: float = 0.25) -> list[Any]:
    clock = StepClock()
    probe = SimulatedProbe(lambda: load, throttle=throttle, seed=1, clock=clock)
    out = []
    for _ in range(steps):
        out.append(probe.sample(0))
        clock.t += dt
    return out


def test_simulated_probe_follows_load_with_thermal_lag() -> None:
    low, high = run_sim(0.1), run_sim(0.9)
    assert high[-1]["power_w"] > low[-1]["power_w"] + 100
    assert high[-1]["util_pct"] > 80 > 20 > low[-1]["util_pct"]
    assert high[-1]["temp_c"] > low[-1]["temp_c"] + 10
    temps = [r["temp_c"] for r in high]
    assert temps[4] < temps[40] < temps[-1]  # heats gradually, not in one step
    assert high[-1]["energy_j"] > low[-1]["energy_j"] > 0
    for r in low + high:
        assert r["simulated"] is True and r["uuid"].startswith("GPU-SIMULATED-")
        assert "sw_thermal" not in r["throttle_reasons"]
    assert run_sim(0.0, steps=2)[-1]["throttle_reasons"] == ["gpu_idle"]


def test_simulated_throttle_drops_the_clock() -> None:
    healthy, hot = run_sim(1.0), run_sim(1.0, throttle=True)
    late = hot[-40:]
    assert all("sw_thermal" in r["throttle_reasons"] for r in late)
    assert all("power_cap" in r["throttle_reasons"] for r in late)
    assert max(r["sm_clock_mhz"] for r in late) < 0.8 * healthy[-1]["sm_clock_mhz"]
    assert late[-1]["temp_c"] > 83
    assert all(r["simulated"] is True for r in hot)
    # At low load even the failing GPU stays below the slowdown threshold.
    assert all("sw_thermal" not in r["throttle_reasons"] for r in run_sim(0.2, throttle=True))


# --- the sampler thread -----------------------------------------------------------------------


def test_sampler_thread_emits_records_and_stop_joins() -> None:
    got: list[GpuSample] = []
    lock = threading.Lock()

    def emit(s: GpuSample) -> None:
        with lock:
            got.append(s)

    sampler = GpuSampler(SimulatedProbe(lambda: 0.5, gpus=2), "r1", emit, hz=4.0)
    sampler.start()
    deadline = time.monotonic() + 30
    while True:  # ≥ 2 ticks × 2 GPUs
        with lock:
            if len(got) >= 4:
                break
        assert time.monotonic() < deadline, f"{len(got)} samples"
        time.sleep(0.02)
    sampler.stop()
    n = len(got)
    assert n >= 4  # ≥ 2 ticks × 2 GPUs
    assert sampler._thread is None and sampler.errors == 0
    assert {s.gpu_index for s in got} == {0, 1}
    for s in got:
        assert s.replica == "r1" and s.simulated and decode_record(encode_record(s)) == s
    time.sleep(0.3)
    assert len(got) == n  # nothing after stop()


def test_sampler_never_raises_into_the_caller() -> None:
    class BrokenProbe(SimulatedProbe):
        def sample(self, index: int) -> Any:
            raise RuntimeError("boom")

    def bad_emit(s: GpuSample) -> None:
        raise OSError("disk full")

    s1 = GpuSampler(BrokenProbe(lambda: 0.5), "r1", lambda s: None).start()
    assert s1.sample_once() == []
    s1.stop()
    assert s1.errors >= 1
    s2 = GpuSampler(SimulatedProbe(lambda: 1 / 0), "r2", bad_emit).start()
    s2.sample_once()
    s2.stop()
    assert s2.errors >= 1
    with pytest.raises(ValueError, match="hz > 0"):
        GpuSampler(SimulatedProbe(lambda: 0.0), "r3", bad_emit, hz=0)


def test_sampler_updates_prometheus_gauges() -> None:
    prom = pytest.importorskip("prometheus_client")
    reg = prom.CollectorRegistry()
    probe = SimulatedProbe(lambda: 1.0, throttle=True)
    a = GpuSampler(probe, "r1", lambda s: None, gauges=reg)
    b = GpuSampler(SimulatedProbe(lambda: 0.0), "r2", lambda s: None, gauges=reg)  # shares gauges
    a.start(), b.start()
    a.sample_once(), b.sample_once()
    a.stop(), b.stop()
    val = reg.get_sample_value
    assert val("infdebug_gpu_power_watts", {"replica": "r1", "gpu": "0"}) > 100
    assert 0.9 <= val("infdebug_gpu_utilization_ratio", {"replica": "r1", "gpu": "0"}) <= 1.0
    assert val("infdebug_gpu_throttle", {"replica": "r1", "gpu": "0", "reason": "power_cap"}) == 1
    assert val("infdebug_gpu_throttle", {"replica": "r2", "gpu": "0", "reason": "power_cap"}) == 0
    assert val("infdebug_gpu_throttle", {"replica": "r2", "gpu": "0", "reason": "gpu_idle"}) == 1
    for name in (
        "infdebug_gpu_temperature_celsius",
        "infdebug_gpu_sm_clock_mhz",
        "infdebug_gpu_memory_used_bytes",
    ):
        assert val(name, {"replica": "r2", "gpu": "0"}) is not None
