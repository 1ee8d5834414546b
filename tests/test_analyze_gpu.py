"""GPU analyzers (throttling, XID errors, energy per output token) on a real chDB store, with
fleets generated here with known ground truth (``gpufleet``), the simulated GPU of the
tracer, and the sample logs."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from conftest import REPO
from gpufleet import T0, Fault, FleetGen, generate, load

from infdebug.analyzers.base import AnalysisContext, run_all
from infdebug.analyzers.gpu_judge import MIN_BUSY
from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Event, Finding, GpuSample, Request
from infdebug.store import Store, open_store
from infdebug.tracer.gpu import XID_EVENT, GpuSampler
from infdebug.tracer.gpu_sim import SimulatedProbe

GPU = ["gpu_health", "gpu_errors"]


def run(store: Store, names: list[str] = GPU, **kw: Any) -> list[Finding]:
    found, failed = run_all(AnalysisContext(store=store, **kw), names)
    assert failed == {}
    return found


def bad(fs: list[Finding]) -> list[Finding]:
    return [f for f in fs if f.severity in ("warning", "error")]


def window(spec: FleetGen) -> dict[str, float]:
    return {"since": spec.t0 - 100, "until": spec.t0 + spec.duration_s + 100}


def of_kind(fs: list[Finding], kind: str) -> list[Finding]:
    return [f for f in fs if f.kind == kind]


# --- throttling ---------------------------------------------------------------------------------

POWER_CAP = FleetGen(replicas=4, seed=11, faults={"r2": Fault("power_cap", 150.0, 1580.0)})


def test_power_cap_throttling_is_found_with_clock_drop_reason_and_latency(
    store: Store, tmp_path: Any
) -> None:
    reqs, samples, events = generate(POWER_CAP)
    load(store, str(tmp_path), [*reqs, *samples, *events])
    found = run(store)
    [f] = bad(found)
    assert f.kind == "replica.gpu_throttling" and f.severity == "warning"
    assert f.scope == {
        "replica": "r2",
        "deployment": "prod",
        "t_start": pytest.approx(T0 + 150, abs=1.5),
        "t_end": pytest.approx(T0 + 299, abs=2),
    }
    v = f.values or {}
    assert v["simulated"] is False and v["signals"] == ["sm_clock", "throttle_reasons"]
    [g] = v["gpus"]
    boost = g["sm_clock_unthrottled_mhz"]
    assert boost in (1965.0, 1980.0) and g["sm_clock_unthrottled_from"].startswith("own")
    assert g["sm_clock_throttled_mhz"] == 1575.0  # 1580 on the 15 MHz grid
    assert g["clock_drop"] == pytest.approx(1 - 1575 / boost, abs=1e-4)
    assert 0.4 < g["throttled_share"] < 0.6 and g["reason_shares"]["power_cap"] > 0.4
    assert g["fleet_throttled_share"] == 0.0
    # The requests that decoded while it throttled are slower by the clock lost.
    assert v["latency_regression_coincides"] is True and v["itl_against"] == "unthrottled"
    assert v["itl_change"] == pytest.approx(boost / 1575 - 1, abs=0.06)
    assert v["requests_throttled"] >= 100 and v["requests_unthrottled"] >= 100
    assert v["itl_p_value"] < 1e-6
    assert v["itl_p50_throttled_s"] > v["itl_p50_unthrottled_s"]
    since = time.strftime("%H:%M", time.gmtime(T0 + 150))
    drop = round((1 - 1575 / boost) * 100)
    assert f.summary.startswith(
        f"r2 (prod) GPU 0: SM clock {boost:.0f} → 1575 MHz (−{drop}%) at power_cap on "
    )
    assert f"since {since} UTC" in f.summary
    assert "coincides with a latency regression: inter-token p50 +" in f.summary
    ev = f.evidence or {}
    assert ev["gpu_uuids"] == ["GPU-0011-002-0"] and len(ev["request_ids"]) == 10
    assert all(i.startswith("req-11-r2-") for i in ev["request_ids"])
    assert ev["first_seen"] == pytest.approx(T0 + 150, abs=1.5)
    # Energy is reported for every replica, as information.
    [e] = of_kind(found, "replica.energy_per_token")
    assert e.severity == "info" and set((e.values or {})["replicas"]) == {
        f"r{i} (prod)" for i in range(4)
    }


def test_findings_do_not_depend_on_replica_names_or_order(store: Store, tmp_path: Any) -> None:
    reqs, samples, events = generate(POWER_CAP)
    mapping = {f"r{i}": n for i, n in enumerate(["pod-zz", "pod-aa", "pod-mm", "pod-bb"])}
    recs: list[Any] = [*reqs, *samples, *events]
    random.Random(3).shuffle(recs)
    renamed = [msgspec.structs.replace(r, replica=mapping[r.replica]) for r in recs]
    load(store, str(tmp_path), [*reqs, *samples, *events])
    a = run(store, since=T0 - 100, until=T0 + 1000)
    store.command("TRUNCATE TABLE requests")
    store.command("TRUNCATE TABLE gpu_samples")
    store.command("TRUNCATE TABLE events")
    store.command("TRUNCATE TABLE ingest_state")
    load(store, str(tmp_path), renamed, "renamed.jsonl")
    b = run(store, since=T0 - 100, until=T0 + 1000)

    def canon(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: canon(x) for k, x in sorted(v.items())}
        if isinstance(v, list):
            items = [canon(x) for x in v]
            return sorted(items) if all(isinstance(x, str) for x in items) else items
        return v

    def norm(fs: list[Finding], back: dict[str, str]) -> list[str]:
        out = []
        for f in fs:
            d = msgspec.to_builtins(f)
            d.pop("t")
            d.pop("summary")
            s = msgspec.json.encode(d).decode()
            for new, old in back.items():
                s = s.replace(new, old)
            out.append(json.dumps(canon(json.loads(s)), sort_keys=True))
        return sorted(out)

    assert norm(a, {}) == norm(b, {v: k for k, v in mapping.items()})
    assert len(bad(a)) == 1


def test_hardware_thermal_slowdown_is_an_error(store: Store, tmp_path: Any) -> None:
    spec = FleetGen(replicas=5, gpus=2, seed=5, faults={"r1": Fault("hw_thermal", 60.0, 1200.0)})
    reqs, samples, events = generate(spec)
    load(store, str(tmp_path), [*reqs, *samples, *events])
    [f] = bad(run(store))
    assert f.severity == "error" and (f.scope or {})["replica"] == "r1"
    v = f.values or {}
    assert {g["gpu_index"] for g in v["gpus"]} == {0, 1}  # both GPUs of the replica
    assert {"throttle_reasons", "temperature", "sm_clock"} <= set(v["signals"])
    assert "hw_thermal" in f.summary and "°C vs fleet" in f.summary


def test_a_clock_low_without_a_reason_is_found_at_like_utilisation(
    store: Store, tmp_path: Any
) -> None:
    spec = FleetGen(replicas=5, seed=8, faults={"r4": Fault("clock_low", 0.0, 1710.0)})
    reqs, samples, events = generate(spec)
    load(store, str(tmp_path), [*reqs, *samples, *events])
    [f] = bad(run(store))
    assert (f.scope or {})["replica"] == "r4" and f.severity == "warning"
    assert (f.values or {})["signals"] == ["sm_clock"]
    [g] = (f.values or {})["gpus"]
    assert g["fleet_clock"]["value"] == pytest.approx(1710, abs=10)
    assert g["fleet_clock"]["rel"] < -0.1


def test_gpu_samples_belong_to_the_deployment_running_at_the_time(
    store: Store, tmp_path: Any
) -> None:
    """``r1`` of baseline, then ``r1`` of canary on the same host: the canary's throttling is
    the canary's, never the baseline's."""
    base = FleetGen(replicas=3, seed=21, deployment="baseline")
    canary = FleetGen(
        replicas=3,
        seed=22,
        deployment="canary",
        t0=T0 + 400,
        faults={"r1": Fault("power_cap", 0.0, 1500.0)},
    )
    recs: list[Any] = []
    for spec in (base, canary):
        reqs, samples, events = generate(spec)
        recs += [*reqs, *samples, *events]
    load(store, str(tmp_path), recs)
    [f] = bad(run(store))
    assert f.scope is not None and (f.scope["replica"], f.scope["deployment"]) == ("r1", "canary")
    # The baseline's samples of r1 are not counted with it.
    [g] = (f.values or {})["gpus"]
    assert g["busy_samples"] <= 300 and g["throttled_share"] > 0.9


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: Any) -> Iterator[tuple[Store, list[FleetGen]]]:
    """36 clean fleets in one store, each in its own time window: 3–8 replicas of 1–2 GPUs
    at their own loads; a third of them power-capped at their peaks, fleet-wide."""
    tmp = str(tmp_path_factory.mktemp("gpu_clean"))
    rng = random.Random(2024)
    specs = [
        FleetGen(
            replicas=rng.randint(3, 8),
            gpus=rng.randint(1, 2),
            duration_s=240.0,
            seed=100 + i,
            t0=T0 + 10_000 * i,
            power_limit_w=560.0 if i % 3 == 0 else 700.0,
            simulated=i % 4 == 0,
        )
        for i in range(36)
    ]
    recs: list[Any] = []
    for spec in specs:
        reqs, samples, events = generate(spec)
        recs += [*reqs, *samples, *events]
    st = open_store(home=os.path.join(tmp, "home"))
    load(st, tmp, recs)
    yield st, specs
    st.close()


def test_no_warning_on_clean_fleets_across_seeds(
    clean_store: tuple[Store, list[FleetGen]],
) -> None:
    st, specs = clean_store
    alarms, capped_infos = [], 0
    for spec in specs:
        found = run(st, **window(spec))
        alarms += [(spec.seed, f.summary) for f in bad(found)]
        capped_infos += any(
            f.kind == "replica.gpu_throttling" and f.severity == "info" for f in found
        )
        [e] = of_kind(found, "replica.energy_per_token")
        assert len((e.values or {})["replicas"]) == spec.replicas
        assert (e.values or {})["simulated"] is spec.simulated
        assert e.summary.startswith("[SIMULATED GPU] ") is spec.simulated
    assert alarms == []
    assert capped_infos >= 3  # the power-capped fleets are seen, as what they are


# --- XID errors ----------------------------------------------------------------------------------


def test_sampler_writes_xid_errors_as_events_and_the_analyzer_finds_them(
    store: Store, tmp_path: Any
) -> None:
    now = [0.0]
    got: list[Any] = []
    probe = SimulatedProbe(
        lambda: 0.5,
        xids=[(5.0, 79), (5.0, 13), (9.0, 79)],
        clock=lambda: now[0],
        wall_clock=lambda: T0 + now[0],
    )
    sampler = GpuSampler(probe, "r1", got.append, wall_clock=lambda: T0 + now[0])
    for i in range(12):
        now[0] = float(i)
        sampler.sample_once()
    xids = [r for r in got if isinstance(r, Event)]
    assert [(e.name, e.t, (e.detail or {})["xid"]) for e in xids] == [
        (XID_EVENT, T0 + 5, 79),
        (XID_EVENT, T0 + 5, 13),
        (XID_EVENT, T0 + 9, 79),
    ]
    assert xids[0].detail == {
        "xid": 79,
        "gpu_index": 0,
        "uuid": "GPU-SIMULATED-00000000-0000",
        "simulated": True,
    }
    assert xids[0].deployment is None and sampler.errors == 0
    # r1's requests name its deployment; the XID events (written without one) take it.
    reqs = [
        Request(request_id=f"q{i}", replica="r1", deployment="prod", t_arrival=T0 + i, e2e_s=0.5)
        for i in range(12)
    ]
    other = Event(t=T0 + 3, replica="r2", name=XID_EVENT, deployment="prod", detail={"xid": 13})
    load(store, str(tmp_path), [*got, *reqs, other])
    found = run(store, ["gpu_errors"])
    r1, r2 = sorted(found, key=lambda f: (f.scope or {})["replica"])
    assert r1.severity == "error" and r1.scope == {
        "replica": "r1",
        "deployment": "prod",
        "t_start": T0 + 5,
        "t_end": T0 + 9,
    }
    assert r1.summary == (
        "[SIMULATED GPU] r1 (prod): 3 XID errors on GPU 0: XID 79 (GPU has fallen off the bus) "
        f"×2, XID 13 (graphics engine exception) ×1; first at "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(T0 + 5))}"
    )
    v = r1.values or {}
    assert v["simulated"] is True and v["count"] == 3 and v["serious"] == 2
    assert v["xids"]["79"]["class"] == "serious" and v["xids"]["13"]["class"] == "other"
    assert (r1.evidence or {})["gpu_uuids"] == ["GPU-SIMULATED-00000000-0000"]
    assert r2.severity == "warning" and (r2.values or {})["simulated"] is False
    assert not r2.summary.startswith("[SIMULATED")


# --- energy per output token ---------------------------------------------------------------------


def test_joules_per_token_match_a_hand_calculation(store: Store, tmp_path: Any) -> None:
    """r1: two GPUs with an energy counter, one of which resets (its energy is then mean
    power × span); r2: no counter, mean power × span. Tokens: the requests that finished
    between the replica's first and last GPU sample."""

    def g(rep: str, idx: int, dt: float, power: float, energy: float | None) -> GpuSample:
        return GpuSample(
            t=T0 + dt, replica=rep, gpu_index=idx, power_w=power, energy_j=energy, util_pct=50.0
        )

    samples = [
        g("r1", 0, 0, 100, 1000),
        g("r1", 0, 1, 100, 1100),
        g("r1", 0, 2, 150, 1250),
        g("r1", 0, 3, 50, 1300),  # the counter rose by 300 J
        g("r1", 1, 0, 200, 5000),
        g("r1", 1, 1, 100, 5100),
        g("r1", 1, 2, 300, 10),  # counter reset: (200+100+300+100)/4 W × 3 s = 525 J
        g("r1", 1, 3, 100, 60),
        g("r2", 0, 0, 100, None),
        g("r2", 0, 2, 200, None),
        g("r2", 0, 4, 0, None),  # 100 W × 4 s = 400 J
    ]

    def q(rid: str, rep: str, arrive: float, e2e: float, tokens: int) -> Request:
        return Request(
            request_id=rid,
            replica=rep,
            deployment="prod",
            t_arrival=T0 + arrive,
            e2e_s=e2e,
            output_tokens=tokens,
        )

    reqs = [
        q("a", "r1", 0.0, 1.0, 100),
        q("b", "r1", 0.5, 2.0, 50),
        q("c", "r1", 2.5, 1.0, 999),  # finishes at 3.5: after the last sample
        q("d", "r2", 0.0, 4.0, 25),
        q("e", "r2", 1.0, 1.0, 25),
    ]
    load(store, str(tmp_path), [*samples, *reqs])
    [f] = run(store, ["gpu_health"])
    r = (f.values or {})["replicas"]
    assert r["r1 (prod)"]["energy_j"] == pytest.approx(300 + 525)
    assert r["r1 (prod)"]["output_tokens"] == 150 and r["r1 (prod)"]["method"] == "mixed"
    assert r["r1 (prod)"]["j_per_token"] == pytest.approx(825 / 150, rel=1e-5)
    assert r["r2 (prod)"]["energy_j"] == pytest.approx(400.0)
    assert r["r2 (prod)"]["method"] == "integrated_power"
    assert r["r2 (prod)"]["j_per_token"] == pytest.approx(8.0)
    assert (f.values or {})["fleet_j_per_token"] == pytest.approx((825 + 400) / 200, rel=1e-5)
    assert f.severity == "info" and (f.values or {})["simulated"] is False


# --- the tracer's simulated GPU and the sample logs -----------------------------------------------


def test_the_simulated_throttle_fault_is_found_and_labelled(store: Store, tmp_path: Any) -> None:
    """Four replicas on SimulatedProbe at 80 % load, one with ``--inject throttle``."""
    recs: list[Any] = []
    for i in range(4):
        now = [0.0]
        probe = SimulatedProbe(lambda: 0.8, throttle=i == 3, seed=i, clock=lambda n=now: n[0])
        for k in range(1600):  # 400 s at 4 Hz, as the sampler reads it
            now[0] = k / 4
            recs.append(GpuSample(t=T0 + now[0], replica=f"r{i}", gpu_index=0, **probe.sample(0)))
    load(store, str(tmp_path), recs)
    [f] = bad(run(store))
    assert (f.scope or {}).get("replica") == "r3" and f.severity == "warning"
    assert f.summary.startswith("[SIMULATED GPU] r3 GPU 0: SM clock 1980 → ")
    assert "sw_thermal" in f.summary and (f.values or {})["simulated"] is True
    [g] = (f.values or {})["gpus"]
    assert g["busy_samples"] >= MIN_BUSY and g["reason_shares"]["sw_thermal"] > 0.3
    assert "temperature" in (f.values or {})["signals"]


def test_sample_logs_have_nothing_false_to_say(store: Store, tmp_path: Any) -> None:
    logs = os.path.join(REPO, "sample_logs")
    rep = ingest_paths(
        store,
        [os.path.join(logs, "baseline"), os.path.join(logs, "canary")],
        rejects_path=os.path.join(str(tmp_path), "rejects.jsonl"),
    )
    assert rep.rejected == 0
    found = run(store)
    assert bad(found) == []
    [e] = found
    assert e.kind == "replica.energy_per_token" and e.summary.startswith("[SIMULATED GPU] ")
    both = (e.values or {})["replicas"]
    assert (e.values or {})["simulated"] is True and len(both) == 6
    # r1..r3 of baseline and of canary are other pods under the same names: each
    # deployment's energy and tokens are its own, as when it is analysed alone.
    t_canary = 1796163937.0  # between the baseline's last record and the canary's first
    for since, until in ((0.0, t_canary), (t_canary, 1e11)):
        [alone] = run(store, since=since, until=until)
        for label, v in (alone.values or {})["replicas"].items():
            assert both[label] == v
