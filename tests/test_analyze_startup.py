"""``slow_start`` on lifecycle events written here (and by the reference engine: the sample
logs), on a real chDB store: the slow replica and the phase that carried it are named, a
tight fleet's hair's breadth is not a finding, clean fleets are quiet across seeds."""

from __future__ import annotations

import os
import random
from typing import Any

import msgspec
import pytest
from conftest import REPO
from gpufleet import T0, lifecycle, load

from infdebug.analyzers.base import AnalysisContext, run_all
from infdebug.analyzers.startup import build_starts
from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Event, Finding
from infdebug.store import Store, open_store
from infdebug.store.q_startup import LifecycleEvent


def run(store: Store, **kw: Any) -> list[Finding]:
    found, failed = run_all(AnalysisContext(store=store, **kw), ["slow_start"])
    assert failed == {}
    return found


def fleet(n: int, seed: int, dep: str = "prod", t0: float = T0, **slow: Any) -> list[Event]:
    """``n`` replicas starting within a minute; ``slow`` = {replica: {phase_s kwargs}}."""
    rng = random.Random(seed)
    out: list[Event] = []
    for i in range(n):
        rep = f"r{i}"
        out += lifecycle(rep, dep, t0 + rng.uniform(0, 60), rng, pid=4000 + i, **slow.get(rep, {}))
    return out


def test_the_slow_replica_is_named_with_the_phase_that_carried_it(
    store: Store, tmp_path: Any
) -> None:
    events = fleet(6, 1, r4={"weights_s": 45.0}, r1={"warmup_s": 15.0})
    load(store, str(tmp_path), events)
    found = sorted(run(store), key=lambda f: (f.scope or {})["replica"])
    assert [(f.scope or {})["replica"] for f in found] == ["r1", "r4"]
    r1, r4 = found
    v = r4.values or {}
    assert r4.severity == "warning" and r4.kind == "replica.slow_start"
    assert v["carried_by"] == "weights_loaded" and v["carried_share"] > 0.9
    assert v["excess_s"] == pytest.approx(45.0 - 20.0, abs=2.5)
    assert v["phases"]["weights_loaded"]["duration_s"] == 45.0
    assert v["phases"]["weights_loaded"]["fleet_median_s"] == pytest.approx(20.0, abs=1.5)
    assert v["starts_compared"] == 6 and v["z"] >= 3.5
    assert r4.summary.startswith("r4 (prod) took ") and "weights_loaded carried it: 45.0 s" in (
        r4.summary
    )
    assert (r4.evidence or {})["pid"] == 4004
    assert (r1.values or {})["carried_by"] == "warmup_done"
    assert (r1.values or {})["phases"]["warmup_done"]["excess_s"] == pytest.approx(12.0, abs=0.8)


def test_a_hairs_breadth_is_not_a_finding(store: Store, tmp_path: Any) -> None:
    """A tight fleet (every start 2.0 s) and one at 2.1 s, another at 2.6 s: robust z is
    huge, the effect is not (under the 1 s and 25 % floor)."""
    rng = random.Random(0)
    events: list[Event] = []
    for i, w in enumerate([1.95] * 8 + [2.05, 2.55]):
        events += lifecycle(
            f"r{i}", "prod", T0 + i, rng, weights_s=w, warmup_s=0.04, ready_s=0.01, pid=10 + i
        )
    load(store, str(tmp_path), events)
    assert run(store) == []


def test_restarts_are_separate_starts_and_events_without_since_start_are_placed(
    store: Store, tmp_path: Any
) -> None:
    rng = random.Random(5)
    events = fleet(5, 5)
    # r2 crashes and comes back twice; its second start is slow in the warm-up and its
    # events carry no since_start_s (another engine's lifecycle writer).
    events += lifecycle("r2", "prod", T0 + 600, rng, pid=7001)
    slow = lifecycle("r2", "prod", T0 + 900, rng, warmup_s=30.0, pid=7002)
    events += [slow[0]] + [msgspec.structs.replace(e, since_start_s=None) for e in slow[1:]]
    load(store, str(tmp_path), events)
    [f] = run(store)
    assert (f.scope or {})["replica"] == "r2" and (f.values or {})["carried_by"] == "warmup_done"
    assert f.scope is not None and f.scope["t_start"] == pytest.approx(T0 + 900)
    assert (f.values or {})["starts_compared"] == 7 and (f.evidence or {})["pid"] == 7002


def test_build_starts_handles_missing_start_and_ready() -> None:
    u = "r1\x1fprod"
    ev = [
        LifecycleEvent(u, 1, 10.0, "weights_loaded", 5.0, 5.0),  # start implied at 5.0
        LifecycleEvent(u, 1, 12.0, "ready", None, 7.0),  # duration from the previous event
        LifecycleEvent(u, 2, 20.0, "process_start", None, 0.0),
        LifecycleEvent(u, 2, 30.0, "weights_loaded", 10.0, 10.0),  # never ready: incomplete
        LifecycleEvent(u, 3, 40.0, "weights_loaded", 3.0, None),  # no start known: skipped
    ]
    a, b = build_starts(ev)
    assert (a.t_start, a.phases, a.total_s) == (5.0, [("weights_loaded", 5.0), ("ready", 2.0)], 7.0)
    assert (b.t_start, b.total_s, b.phases) == (20.0, None, [("weights_loaded", 10.0)])


def test_no_finding_on_clean_fleets_across_seeds(tmp_path: Any) -> None:
    """40 clean fleets of 3–12 replicas with the spread of real starts (weights from a
    shared disk, ±4 %; warm-up ±7 %), each in its own window: never a finding."""
    events: list[Event] = []
    windows = []
    for seed in range(40):
        rng = random.Random(seed)
        t0 = T0 + 10_000 * seed
        base_w, base_u = rng.uniform(5, 60), rng.uniform(0.5, 8)
        for i in range(rng.randint(3, 12)):
            events += lifecycle(
                f"r{i}",
                "prod",
                t0 + rng.uniform(0, 120),
                rng,
                weights_s=base_w * rng.lognormvariate(0, 0.04),
                warmup_s=base_u * rng.lognormvariate(0, 0.07),
                pid=100 + i,
            )
        windows.append((t0 - 10, t0 + 1000))
    st = open_store(home=str(tmp_path / "home"))
    try:
        load(st, str(tmp_path), events)
        alarms = [f.summary for lo, hi in windows for f in run(st, since=lo, until=hi)]
        assert alarms == []
        # …and the same fleets with one replica's weights loading twice as long are found.
        extra = lifecycle("r99", "prod", T0 + 50, random.Random(1), weights_s=200.0, pid=9)
        load(st, str(tmp_path), extra, "slow.jsonl")
        [f] = run(st, since=windows[0][0], until=windows[0][1])
        assert (f.scope or {})["replica"] == "r99"
    finally:
        st.close()


def test_findings_do_not_depend_on_names_or_order(store: Store, tmp_path: Any) -> None:
    events = fleet(7, 3, r5={"weights_s": 40.0})
    names = {f"r{i}": f"pod-{c}" for i, c in enumerate("qwertyu")}
    shuffled = [msgspec.structs.replace(e, replica=names[e.replica]) for e in events]
    random.Random(2).shuffle(shuffled)
    load(store, str(tmp_path), events)
    [a] = run(store)
    store.command("TRUNCATE TABLE events")
    store.command("TRUNCATE TABLE ingest_state")
    load(store, str(tmp_path), shuffled, "renamed.jsonl")
    [b] = run(store)
    assert (b.scope or {})["replica"] == names[(a.scope or {})["replica"]]
    assert a.values == b.values and a.summary.replace("r5", "pod-y") == b.summary


def test_sample_logs_start_without_a_finding(store: Store, tmp_path: Any) -> None:
    logs = os.path.join(REPO, "sample_logs")
    rep = ingest_paths(
        store,
        [os.path.join(logs, "baseline"), os.path.join(logs, "canary")],
        rejects_path=os.path.join(str(tmp_path), "rejects.jsonl"),
    )
    assert rep.rejected == 0 and rep.rows["event"] == 36
    assert run(store) == []
