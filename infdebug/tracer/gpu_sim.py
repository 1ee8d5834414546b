"""SimulatedProbe: a clearly labelled synthetic GPU signal for demos on CPU machines.

Every reading says ``simulated=True`` and every uuid starts ``GPU-SIMULATED-``. The signal
follows the engine's real load (``load_fn`` returns 0..1, e.g. running requests / max
batch): utilisation and power track load at once, temperature follows power with a
first-order thermal lag (time constant ``tau_s``). ``throttle=True`` (``--inject
throttle``) models a GPU with failing cooling and a lowered power limit: under sustained
load its temperature climbs past the slowdown threshold, the SM clock drops and the reading
carries ``sw_thermal`` (and ``power_cap`` while demand exceeds the limit). The numbers are
H100-like, not a model of any real board. ``xids`` injects XID errors: each (seconds after
the probe was made, XID number) is reported once on GPU 0 by the first ``poll_xids`` after
its time, labelled simulated.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from infdebug.tracer.gpu import DeviceInfo, GpuReading, XidEvent

AMBIENT_C = 30.0
IDLE_W = 70.0
MAX_DEMAND_W = 300.0  # power demand at load 1.0
POWER_LIMIT_W = 350.0
THROTTLE_POWER_LIMIT_W = 250.0  # --inject throttle: lowered enforced limit
C_PER_W = 0.13  # steady-state degrees above ambient per watt (healthy cooling)
THROTTLE_C_PER_W = 0.3  # failing cooling
SLOWDOWN_C = 83.0  # sw_thermal slowdown threshold
SLOWDOWN_HYSTERESIS_C = 3.0
THERMAL_CLOCK_FACTOR = 0.65  # SM clock (and power) while in thermal slowdown
BOOST_MHZ = 1980.0
IDLE_MHZ = 345.0
MEM_MHZ = 2619.0
IDLE_LOAD = 0.02
MEM_BASE_BYTES = 8 * 2**30
MEM_PER_LOAD_BYTES = 40 * 2**30


@dataclass
class _GpuState:
    temp_c: float = AMBIENT_C + C_PER_W * IDLE_W
    last_t: float | None = None
    energy_j: float = 0.0
    thermal_slowdown: bool = False


class SimulatedProbe:
    """Synthetic GPUs that follow ``load_fn``; ``clock`` (monotonic seconds) can be driven
    by tests to step the thermal model deterministically."""

    def __init__(
        self,
        load_fn: Callable[[], float],
        throttle: bool = False,
        seed: int = 0,
        *,
        gpus: int = 1,
        tau_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        xids: Sequence[tuple[float, int]] = (),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.load_fn = load_fn
        self.throttle = throttle
        self.seed = seed
        self.tau_s = tau_s
        self.clock = clock
        self.load_errors = 0  # load_fn calls that raised (read as load 0)
        self._rng = random.Random(seed)
        self._devices = [
            DeviceInfo(index=i, uuid=f"GPU-SIMULATED-{seed:08x}-{i:04x}", name="simulated GPU")
            for i in range(gpus)
        ]
        self._state = [_GpuState() for _ in range(gpus)]
        self.wall_clock = wall_clock
        self._t0 = clock()
        self._xids = sorted(((float(a), int(x)) for a, x in xids), key=lambda ax: ax[0])

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    def _load(self) -> float:
        try:
            x = float(self.load_fn())
        except Exception:
            self.load_errors += 1
            return 0.0
        return 0.0 if math.isnan(x) else min(1.0, max(0.0, x))

    def sample(self, index: int) -> GpuReading:
        st = self._state[index]
        now = self.clock()
        dt = 0.0 if st.last_t is None else max(0.0, now - st.last_t)
        st.last_t = now
        load = self._load()
        limit = THROTTLE_POWER_LIMIT_W if self.throttle else POWER_LIMIT_W
        c_per_w = THROTTLE_C_PER_W if self.throttle else C_PER_W

        reasons: list[str] = []
        clock = BOOST_MHZ if load >= IDLE_LOAD else IDLE_MHZ
        if load < IDLE_LOAD:
            reasons.append("gpu_idle")
        demand = IDLE_W + (MAX_DEMAND_W - IDLE_W) * load
        power = demand
        if demand > limit:
            power = limit
            clock *= limit / demand
            reasons.append("power_cap")
        # Thermal slowdown with hysteresis, judged on the temperature reached so far.
        if st.temp_c >= SLOWDOWN_C:
            st.thermal_slowdown = True
        elif st.temp_c < SLOWDOWN_C - SLOWDOWN_HYSTERESIS_C:
            st.thermal_slowdown = False
        if st.thermal_slowdown:
            clock *= THERMAL_CLOCK_FACTOR
            power = IDLE_W + (power - IDLE_W) * THERMAL_CLOCK_FACTOR
            reasons.append("sw_thermal")
        power += self._rng.gauss(0.0, 2.0)
        power = min(max(power, IDLE_W * 0.8), limit)

        # First-order thermal lag towards the steady state of this power.
        target = AMBIENT_C + c_per_w * power
        st.temp_c += (target - st.temp_c) * (1.0 - math.exp(-dt / self.tau_s))
        st.energy_j += power * dt

        util = min(100.0, max(0.0, 100.0 * load + self._rng.gauss(0.0, 1.0))) if load else 0.0
        return GpuReading(
            uuid=self._devices[index].uuid,
            power_w=round(power, 1),
            power_limit_w=limit,
            temp_c=round(st.temp_c + self._rng.gauss(0.0, 0.2), 1),
            sm_clock_mhz=float(round(clock / 15.0) * 15),  # real SM clocks step by 15 MHz
            mem_clock_mhz=MEM_MHZ,
            util_pct=round(util, 1),
            mem_used_bytes=int(MEM_BASE_BYTES + MEM_PER_LOAD_BYTES * load),
            throttle_reasons=sorted(set(reasons), key=reasons.index),
            energy_j=round(st.energy_j, 3),
            simulated=True,
        )

    def poll_xids(self) -> list[XidEvent]:
        if not self._xids:
            return []
        elapsed = self.clock() - self._t0
        due = [x for x in self._xids if x[0] <= elapsed]
        self._xids = self._xids[len(due) :]
        dev = self._devices[0]
        return [
            XidEvent(
                t=self.wall_clock(), gpu_index=dev.index, uuid=dev.uuid, xid=xid, simulated=True
            )
            for _, xid in due
        ]

    def close(self) -> None:
        return None
