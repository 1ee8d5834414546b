"""Generated fleets with GPU telemetry and known ground truth: ``request``, ``gpu`` and
lifecycle ``event`` records as a healthy fleet writes them, plus faults on one replica.

The healthy signal is realistic rather than clean: every replica runs its own load (so a
busier replica is hotter and draws more power: the analyzers must compare at like
utilisation), every GPU has its own temperature offset, power efficiency (±2 %) and boost
clock (1965 or 1980 MHz), and utilisation, power and temperature are noisy. With
``power_limit_w`` under the demand at full load the whole fleet power-caps at its peaks,
alike (normal operation, not a fault). Requests decode more slowly under more load and in
proportion to the SM clock lost while their GPU throttles.

Faults (``FleetGen.faults``: replica → ``Fault``), from ``start_s`` into the run on:
``power_cap`` (a lowered limit: the clock drops to ``clock_mhz`` with power_cap),
``sw_thermal`` / ``hw_thermal`` (a cooling failure: hotter, clock at ``clock_mhz``),
``clock_low`` (clock at ``clock_mhz`` and no reason reported: locked application clocks).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Event, GpuSample, Record, Request, encode_records
from infdebug.store import Store

T0 = 1_790_000_000.0
IDLE_W = 80.0
W_PER_UTIL = 5.5


@dataclass(frozen=True)
class Fault:
    kind: str  # power_cap | sw_thermal | hw_thermal | clock_low
    start_s: float = 0.0
    clock_mhz: float = 1580.0


@dataclass
class FleetGen:
    replicas: int = 4
    gpus: int = 1
    duration_s: float = 300.0
    hz: float = 1.0
    seed: int = 0
    t0: float = T0
    deployment: str | None = "prod"
    power_limit_w: float = 700.0
    simulated: bool = False
    energy_counter: bool = True
    loads: dict[str, float] | None = None  # replica → mean load 0..1 (default: random)
    faults: dict[str, Fault] = field(default_factory=dict)
    names: list[str] | None = None
    rate_per_load: float = 2.0  # requests/s at load 1

    def replica_names(self) -> list[str]:
        return self.names or [f"r{i}" for i in range(self.replicas)]


@dataclass
class _Gpu:
    offset_c: float
    eff: float
    boost: float
    energy: float = 0.0


def _state(spec: FleetGen, rep: str, g: _Gpu, util: float, ts: float) -> dict[str, Any]:
    """One GPU's reading at util (%) and seconds-into-run ts."""
    demand = (IDLE_W + W_PER_UTIL * util) * g.eff
    power, clock, reasons, hot = demand, g.boost, [], 0.0
    if demand > spec.power_limit_w:
        power = spec.power_limit_w
        clock = g.boost * spec.power_limit_w / demand
        reasons.append("power_cap")
    f = spec.faults.get(rep)
    if f is not None and ts >= f.start_s and util >= 5:
        if f.kind == "power_cap":
            clock = min(clock, f.clock_mhz)
            power = min(power, demand * f.clock_mhz / g.boost)
            reasons = ["power_cap"]
        elif f.kind in ("sw_thermal", "hw_thermal"):
            clock = min(clock, f.clock_mhz)
            hot = 22.0
            reasons = sorted({*reasons, f.kind})
        elif f.kind == "clock_low":
            clock = min(clock, f.clock_mhz)
    return {
        "power": power,
        "clock": float(round(clock / 15.0) * 15),
        "reasons": reasons,
        "hot": hot,
    }


def generate(spec: FleetGen) -> tuple[list[Request], list[GpuSample], list[Event]]:
    rng = random.Random(spec.seed)
    reqs: list[Request] = []
    samples: list[GpuSample] = []
    events: list[Event] = []
    dep = spec.deployment
    for ri, rep in enumerate(spec.replica_names()):
        load = (spec.loads or {}).get(rep, rng.uniform(0.45, 0.9))
        phase = rng.uniform(0, 2 * math.pi)
        gpus = [
            _Gpu(rng.gauss(0, 2.5), rng.gauss(1.0, 0.02), rng.choice((1965.0, 1980.0)))
            for _ in range(spec.gpus)
        ]
        n_ticks = int(spec.duration_s * spec.hz)
        clocks: list[float] = []  # the replica's slowest GPU clock per tick, for its requests
        for i in range(n_ticks):
            ts = i / spec.hz
            base = load + 0.08 * math.sin(2 * math.pi * ts / 120 + phase)
            slowest = 1e9
            for gi, g in enumerate(gpus):
                util = min(100.0, max(0.0, 100 * (base + rng.gauss(0, 0.04))))
                st = _state(spec, rep, g, util, ts)
                power = st["power"] + rng.gauss(0, 4.0)
                g.energy += power / spec.hz
                slowest = min(slowest, st["clock"] / g.boost)
                samples.append(
                    GpuSample(
                        t=spec.t0 + ts + 0.001 * gi,
                        replica=rep,
                        gpu_index=gi,
                        uuid=f"GPU-{spec.seed:04d}-{ri:03d}-{gi}",
                        power_w=round(power, 1),
                        power_limit_w=spec.power_limit_w,
                        temp_c=round(
                            35 + g.offset_c + 0.07 * power + st["hot"] + rng.gauss(0, 0.5), 1
                        ),
                        sm_clock_mhz=st["clock"],
                        mem_clock_mhz=2619.0,
                        util_pct=round(util, 1),
                        mem_used_bytes=60 * 2**30,
                        throttle_reasons=st["reasons"],
                        energy_j=round(g.energy, 3) if spec.energy_counter else None,
                        simulated=spec.simulated,
                    )
                )
            clocks.append(slowest)
        t = rng.expovariate(spec.rate_per_load * load)
        k = 0
        while t < spec.duration_s - 10:
            n = rng.randint(20, 150)
            ttft = 0.05 * math.exp(rng.gauss(0, 0.3))
            tpot = 0.025 * math.exp(rng.gauss(0, 0.12)) * (1 + 0.3 * load)
            mid = t + ttft + tpot * n / 2
            tick = min(len(clocks) - 1, int(mid * spec.hz))
            tpot /= clocks[tick]
            e2e = ttft + tpot * (n - 1)
            reqs.append(
                Request(
                    request_id=f"req-{spec.seed}-{rep}-{k}",
                    replica=rep,
                    deployment=dep,
                    t_arrival=spec.t0 + t,
                    model="m",
                    engine="gen",
                    engine_version="1",
                    queue_s=0.001,
                    prefill_s=ttft * 0.9,
                    ttft_s=ttft,
                    e2e_s=e2e,
                    output_tokens=n,
                    prompt_tokens=rng.randint(50, 500),
                    finish_reason="stop",
                )
            )
            k += 1
            t += rng.expovariate(spec.rate_per_load * load)
        events.extend(lifecycle(rep, dep, spec.t0 - 40.0, rng))
    return reqs, samples, events


def lifecycle(
    rep: str,
    dep: str | None,
    t_start: float,
    rng: random.Random,
    *,
    weights_s: float | None = None,
    warmup_s: float | None = None,
    ready_s: float | None = None,
    pid: int = 1000,
) -> list[Event]:
    """process_start → weights_loaded → warmup_done → ready, with realistic durations."""
    phases = [
        ("weights_loaded", weights_s if weights_s is not None else rng.gauss(20.0, 0.8)),
        ("warmup_done", warmup_s if warmup_s is not None else rng.gauss(3.0, 0.2)),
        ("ready", ready_s if ready_s is not None else abs(rng.gauss(0.05, 0.01))),
    ]
    out = [
        Event(
            t=t_start, replica=rep, name="process_start", since_start_s=0.0, deployment=dep, pid=pid
        )
    ]
    t = t_start
    for name, d in phases:
        t += d
        out.append(
            Event(
                t=t,
                replica=rep,
                name=name,
                duration_s=d,
                since_start_s=t - t_start,
                deployment=dep,
                pid=pid,
            )
        )
    return out


def load(store: Store, tmp: str, records: list[Any], name: str = "fleet.jsonl") -> None:
    """Write ``records`` (any kinds) to one JSONL file and ingest it; nothing may be rejected."""
    path = os.path.join(tmp, name)
    recs: list[Record] = list(records)
    with open(path, "wb") as f:
        f.write(encode_records(recs))
    rep = ingest_paths(store, [path], rejects_path=os.path.join(tmp, name + ".rejects"))
    assert rep.rejected == 0 and not rep.errors, (rep.rejected, rep.errors)
