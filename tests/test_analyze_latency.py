"""Latency analyzers (``latency``: replica.latency_regression, ``change_point``:
replica.change_point, ``version_skew``: replica.version_skew) on a real chDB store.

The fleets are generated here with known truth, from a small serving model: Poisson arrivals
per replica; a prompt length, cached share and output length per request; queue time and
prefill growing with the requests already in flight; inter-token latency growing with the
batch (requests in flight) and the context; TTFT = queue + prefill, e2e = TTFT + decode. A
replica's knobs make it slower per token, give it longer prompts, a burst of traffic of its
own, an engine upgrade that slows it down mid-window, or another build.

Then: the slow replica is found with its shift; 30+ clean fleets raise no warning and the
raw tests hold their nominal level; longer prompts or a burst absorbed alone are not a
regression; renaming and reordering change nothing; the change point is found at the
upgrade and tied to it; build skew is found; and the reference engine's sample logs: the slow
canary replica is named, the baseline is quiet.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any

import msgspec
import numpy as np
import pytest

from infdebug.analyzers.base import AnalysisContext, run_all
from infdebug.analyzers.change_point import candidates
from infdebug.analyzers.latency_regression import comparisons, parse_tolerance, time_width
from infdebug.analyzers.stats import benjamini_hochberg
from infdebug.collectors.ingest import ingest_paths
from infdebug.errors import InputError
from infdebug.schema import Finding, Request, encode_records
from infdebug.store import Store
from infdebug.store import q_change as qc
from infdebug.store import q_latency as q
from infdebug.store import q_ranks as qr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1_765_000_000.0
MINE = ["latency", "change_point", "version_skew"]


# --- a fleet with known truth --------------------------------------------------------------


@dataclass(frozen=True)
class Rep:
    name: str
    deployment: str = "stable"
    rate: float = 2.0  # requests/s
    itl: float = 1.0  # × inter-token time
    prompt: float = 1.0  # × median prompt length
    version: str = "0.6.3"
    tokenizer_fp: str = "tok-aaaa"
    burst: tuple[float, float, float] | None = None  # (start offset s, length s, extra req/s)
    change: tuple[float, float, str] | None = None  # (offset s, × itl after, version after)


def fleet(reps: list[Rep], seconds: float, seed: int, times: bool = False) -> list[Request]:
    """The fleet's requests, by arrival (``times``: with per-token times).

    Per replica, a fixed point of the serving model (three rounds): queue time and prefill
    grow with the requests in flight at arrival, inter-token latency with the batch it
    decoded in (the time-averaged number of requests in flight over its lifetime) — which
    depends on everyone's lifetimes in turn."""
    out: list[Request] = []
    for k, rep in enumerate(reps):
        rng = random.Random(seed * 7919 + k)
        arrivals = _poisson(rng, rep.rate, 0.0, seconds)
        if rep.burst:
            start, length, extra = rep.burst
            arrivals = sorted(arrivals + _poisson(rng, extra, start, start + length))
        t = np.asarray(arrivals)
        n = len(t)
        plen = np.array(
            [
                int(min(6000, max(8, rng.lognormvariate(math.log(300 * rep.prompt), 0.7))))
                for _ in range(n)
            ]
        )
        cached = np.array(
            [int(p * rng.uniform(0.3, 0.9)) if rng.random() < 0.3 else 0 for p in plen]
        )
        nout = np.array(
            [int(min(1024, max(2, rng.lognormvariate(math.log(100), 0.8)))) for _ in range(n)]
        )
        q_draw = np.array([rng.expovariate(1.0) for _ in range(n)])
        p_noise = np.array([rng.lognormvariate(0, 0.1) for _ in range(n)])
        i_noise = np.array([rng.lognormvariate(0, 0.08) for _ in range(n)])
        itl_x = np.full(n, rep.itl)
        versions = [rep.version] * n
        if rep.change:
            after = t >= rep.change[0]
            itl_x[after] *= rep.change[1]
            versions = [rep.change[2] if a else rep.version for a in after]
        e2e = np.full(n, 1.0)
        for _ in range(3):
            end = t + e2e
            started = t[None, :] < t[:, None]
            c_arr = (started & (end[None, :] > t[:, None])).sum(axis=1)
            overlap = np.clip(
                np.minimum(end[:, None], end[None, :]) - np.maximum(t[:, None], t[None, :]), 0, None
            )
            np.fill_diagonal(overlap, 0.0)
            c_avg = 1 + overlap.sum(axis=1) / e2e
            queue = q_draw * 0.002 * (1 + 0.5 * c_arr)
            prefill = (
                (0.005 + 4e-5 * (plen - cached) + 2e-6 * cached) * (1 + 0.05 * c_arr) * p_noise
            )
            itl = (
                0.012
                * (1 + 0.05 * (c_avg - 1))
                * (1 + 0.2 * (plen + nout) / 4000)
                * itl_x
                * i_noise
            )
            ttft = queue + prefill
            e2e = ttft + (nout - 1) * itl
        for i in range(n):
            out.append(
                Request(
                    request_id=f"req-{seed}-{k}-{i:05d}",
                    replica=rep.name,
                    deployment=rep.deployment,
                    t_arrival=round(T0 + float(t[i]), 4),
                    model="m",
                    engine="vllm",
                    engine_version=versions[i],
                    tokenizer_fp=rep.tokenizer_fp,
                    template_fp="tpl-aaaa",
                    queue_s=float(queue[i]),
                    prefill_s=float(prefill[i]),
                    ttft_s=float(ttft[i]),
                    e2e_s=float(e2e[i]),
                    token_times_s=[float(ttft[i] + j * itl[i]) for j in range(int(nout[i]))]
                    if times
                    else None,
                    prompt_tokens=int(plen[i]),
                    output_tokens=int(nout[i]),
                    cached_prompt_tokens=int(cached[i]),
                    finish_reason="stop",
                )
            )
    return sorted(out, key=lambda r: (r.t_arrival, r.request_id))


def _poisson(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    out, t = [], start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return out
        out.append(t)


def stable(n: int = 4, canary: int = 2, **kw: Any) -> list[Rep]:
    return [Rep(f"r{i}", "stable" if i < n else "canary", **kw) for i in range(n + canary)]


def load(store: Store, tmp: Any, recs: list[Request], parts: int = 1, seed: int = 0) -> None:
    store.command("TRUNCATE TABLE requests")
    store.command("TRUNCATE TABLE ingest_state")
    recs = list(recs)
    if parts > 1:
        random.Random(seed).shuffle(recs)
    paths = []
    for k in range(parts):
        path = os.path.join(str(tmp), f"fleet-{seed}-{k}.jsonl")
        with open(path, "wb") as f:
            f.write(encode_records(recs[k::parts]))
        paths.append(path)
    rep = ingest_paths(store, paths, rejects_path=os.path.join(str(tmp), "rejects.jsonl"))
    assert rep.rejected == 0 and not rep.errors and rep.rows["request"] == len(recs)


def analyze(store: Store, names: list[str] = MINE, **options: Any) -> list[Finding]:
    found, failed = run_all(AnalysisContext(store=store, options=options), names)
    assert failed == {}
    return found


def alarms(found: list[Finding]) -> list[tuple[str, Any]]:
    return sorted(((f.kind, f.scope) for f in found if f.severity != "info"), key=repr)


def of_kind(found: list[Finding], kind: str) -> list[Finding]:
    return [f for f in found if f.kind == kind]


# --- the slow replica ---------------------------------------------------------------------------


def test_a_slow_replica_is_found_with_its_shift(store: Store, tmp_path: Any) -> None:
    reps = stable()
    reps[2] = replace(reps[2], itl=1.3)
    recs = fleet(reps, 240, seed=11, times=True)
    load(store, tmp_path, recs)
    found = analyze(store, ["latency"])
    assert [(f.kind, f.scope) for f in found] == [
        ("replica.latency_regression", {"replica": "r2", "deployment": "stable"})
    ]
    f = found[0]
    assert f.severity in ("warning", "error") and f.values is not None and f.evidence
    itl = f.values["metrics"]["itl_s"]
    lo, hi = itl["shift_ci"]
    assert lo < 0.3 < hi and 0.2 < itl["shift"] < 0.4 and lo > 0.1
    assert itl["q_value"] < 0.01 and itl["compared"] >= 30
    this, rest = itl["quantiles"]["this"], itl["quantiles"]["rest"]
    assert this["p50"]["s"] > 1.15 * rest["p50"]["s"]
    for side in (this, rest):
        for p in ("p50", "p90", "p99"):
            a, b = side[p]["ci"]
            assert a <= side[p]["s"] * 1.01 and side[p]["s"] <= b * 1.01
    assert f.values["tolerance"] == 0.1 and "+" in f.summary and "r2 (stable)" in f.summary
    # evidence: the slowest requests of r2, and the strata that carried the statistic
    r2 = {r.request_id: r for r in recs if r.replica == "r2"}
    ids = f.evidence["request_ids"]
    assert len(ids) == 5 and set(ids) <= set(r2)
    strata = f.evidence["strata"]["itl_s"]
    assert strata and all("batch" in s and s["requests"] > 0 for s in strata)
    # a larger tolerance lets the same shift through
    assert analyze(store, ["latency"], tolerance=0.6) == []


def test_the_tolerance_option_is_parsed() -> None:
    assert parse_tolerance(None) == 0.1
    assert parse_tolerance("25%") == 0.25 and parse_tolerance(0.05) == 0.05
    for bad in ("fast", "-5%", "0", "nan"):
        with pytest.raises(InputError, match="tolerance"):
            parse_tolerance(bad)


def test_a_slow_canary_deployment_is_found_as_a_whole(store: Store, tmp_path: Any) -> None:
    reps = stable(4, 3)
    reps = [replace(r, itl=1.25) if r.deployment == "canary" else r for r in reps]
    load(store, tmp_path, fleet(reps, 200, seed=5))
    found = analyze(store, ["latency"])
    scopes = {(f.scope or {}).get("replica") or (f.scope or {}).get("deployment") for f in found}
    assert "canary" in scopes and scopes <= {"canary", "r4", "r5", "r6"}
    dep = next(f for f in found if (f.scope or {}).get("replica") is None)
    assert dep.scope == {"deployment": "canary"} and dep.values is not None
    assert dep.values["level"] == "deployment" and 0.15 < dep.values["shift"] < 0.35


def test_the_demos_shape_one_slow_canary_replica_is_found(store: Store, tmp_path: Any) -> None:
    """``make demo``: two stable replicas and one canary, the canary 1.5× slower a step."""
    reps = [Rep("r1"), Rep("r2"), Rep("r3", "canary", itl=1.5)]
    load(store, tmp_path, fleet(reps, 120, seed=8))
    found = analyze(store, ["latency"])
    assert [(f.scope, f.severity) for f in found] == [
        ({"replica": "r3", "deployment": "canary"}, "error")
    ]
    assert found[0].values is not None and 0.4 < found[0].values["metrics"]["itl_s"]["shift"] < 0.6


def test_the_load_of_each_request_is_the_sweep_of_its_units_lifetimes(
    store: Store, tmp_path: Any
) -> None:
    """The load covariates computed in SQL against a brute-force O(n²) count, in full and
    under time-slice sampling (a sampled request's load still counts every request)."""
    reps = stable(2, 1, rate=3.0)
    reps[0] = replace(reps[0], burst=(20.0, 10.0, 8.0))
    recs = fleet(reps, 60, seed=71)
    load(store, tmp_path, recs)
    w = AnalysisContext(store=store).window()
    got = q.request_loads(store, w)
    assert set(got) == {r.request_id for r in recs}

    def life(x: Request) -> tuple[float, float]:  # from T0: exact enough to compare
        return x.t_arrival - T0, x.t_arrival - T0 + (x.e2e_s or 0)

    for r in recs:
        peers = [x for x in recs if (x.replica, x.deployment) == (r.replica, r.deployment)]
        start, end = life(r)
        c_arr = sum(1 for x in peers if life(x)[0] < start < life(x)[1])
        overlap = sum(
            max(0.0, min(end, life(x)[1]) - max(start, life(x)[0])) for x in peers if x is not r
        )
        assert got[r.request_id][0] == c_arr
        assert got[r.request_id][1] == pytest.approx(1 + overlap / (end - start), rel=1e-6)
    assert max(v[1] for v in got.values()) > 5  # the burst: real overlap to count
    sp = q.span(store, w)
    assert sp is not None
    sampled = q.request_loads(store, w, q.Sampling(300_000, 5.0, sp.max_e2e_s))
    assert 0.1 * len(recs) < len(sampled) < 0.6 * len(recs)
    assert all(sampled[k] == pytest.approx(got[k], abs=1e-6) for k in sampled)


def test_a_sampled_analysis_still_finds_the_slow_replica(store: Store, tmp_path: Any) -> None:
    reps = stable()
    reps[2] = replace(reps[2], itl=1.3)
    load(store, tmp_path, fleet(reps, 240, seed=11))
    found = analyze(store, ["latency", "change_point"], latency_sample=1200)
    assert [(f.kind, f.scope) for f in found] == [
        ("replica.latency_regression", {"replica": "r2", "deployment": "stable"})
    ]
    itl = (found[0].values or {})["metrics"]["itl_s"]
    assert itl["compared"] < 0.6 * 240 * 2 and 0.2 < itl["shift"] < 0.4
    with pytest.raises(InputError, match="latency_sample"):
        from infdebug.analyzers.latency_regression import latency_analyzer

        latency_analyzer(AnalysisContext(store=store, options={"latency_sample": "many"}))


# --- no false alarms ----------------------------------------------------------------------------


def test_clean_fleets_raise_no_warning_and_the_tests_hold_their_level(
    store: Store, tmp_path: Any
) -> None:
    """30 seeded clean fleets: no warning from any of the three analyzers, and the raw
    one-sided p-values (before the tolerance and the correction) reject at 5 % no more often
    than 5 % of the time, with a margin for their dependence."""
    p_lat: list[float] = []
    p_cp: list[float] = []
    flagged = []
    for seed in range(30):
        reps = stable(3, 2, rate=1.5)
        load(store, tmp_path, fleet(reps, 150, seed=100 + seed), seed=seed)
        found = analyze(store)
        flagged += [(seed, *a) for a in alarms(found)]
        w = AnalysisContext(store=store).window()
        sp = q.span(store, w)
        assert sp is not None
        cells = qr.strata_cells(store, w, origin=sp.t_min, tw=time_width(sp.t_min, sp.t_max))
        p_lat += [t.p for t in comparisons(cells)]
        width = (sp.t_max - sp.t_min) / 64 * (1 + 1e-9)
        p_cp += [c.p for c in candidates(qc.series(store, w, origin=sp.t_min, width=width))]
    assert flagged == []
    assert len(p_lat) >= 30 * 20 and len(p_cp) >= 30 * 15
    for ps in (p_lat, p_cp):
        rate = sum(p < 0.05 for p in ps) / len(ps)
        assert rate <= 0.08, (rate, len(ps))
        # BH at 1 % over all of them together: nothing
        assert min(benjamini_hochberg(ps)) > 0.01


def test_longer_prompts_at_the_same_speed_are_not_a_regression(store: Store, tmp_path: Any) -> None:
    reps = stable()
    reps[1] = replace(reps[1], prompt=3.0)
    recs = fleet(reps, 240, seed=21)
    r1 = [r.ttft_s or 0 for r in recs if r.replica == "r1"]
    rest = [r.ttft_s or 0 for r in recs if r.replica != "r1"]
    assert _median(r1) > 1.5 * _median(rest)  # raw TTFT: r1 looks much slower
    load(store, tmp_path, recs)
    assert alarms(analyze(store)) == []


def test_a_burst_absorbed_alone_is_not_a_regression(store: Store, tmp_path: Any) -> None:
    reps = stable()
    reps[3] = replace(reps[3], burst=(80.0, 40.0, 10.0))
    recs = fleet(reps, 240, seed=31)
    burst = [_itl(r) for r in recs if r.replica == "r3" and T0 + 80 <= r.t_arrival < T0 + 120]
    rest = [_itl(r) for r in recs if r.replica != "r3"]
    assert _median(burst) > 1.25 * _median(rest)  # raw: r3 is slower, in its burst
    assert sum(1 for r in recs if r.replica == "r3") > 1.5 * len(rest) / 5  # a busier share
    load(store, tmp_path, recs)
    assert alarms(analyze(store)) == []


def _itl(r: Request) -> float:
    return ((r.e2e_s or 0) - (r.ttft_s or 0)) / max((r.output_tokens or 2) - 1, 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


# --- invariance -------------------------------------------------------------------------------

NEW = ["pod-kq7", "pod-zb2", "pod-aa9", "pod-mm4", "pod-xy1", "pod-qq3"]


def _canon(v: Any, back: dict[str, str], rx: re.Pattern[str]) -> Any:
    if isinstance(v, str):
        return rx.sub(lambda m: back[m.group(0)], v)
    if isinstance(v, dict):
        return dict(sorted((_canon(k, back, rx), _canon(x, back, rx)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        items = [_canon(x, back, rx) for x in v]
        return sorted(items) if items and all(isinstance(x, str) for x in items) else items
    return v


def _normal(found: list[Finding], rename: dict[str, str]) -> list[str]:
    back = {new: old for old, new in rename.items()} or {"\x00": "\x00"}
    rx = re.compile("|".join(re.escape(n) for n in sorted(back, key=len, reverse=True)))
    out = []
    for f in found:
        d = msgspec.to_builtins(f)
        d.pop("t", None)
        d.pop("summary", None)
        out.append(repr(_canon(d, back, rx)))
    return sorted(out)


def test_findings_do_not_depend_on_replica_order_or_names(store: Store, tmp_path: Any) -> None:
    reps = stable()
    reps[2] = replace(reps[2], itl=1.35)
    reps[0] = replace(reps[0], change=(120.0, 1.5, "0.6.4"))
    reps[5] = replace(reps[5], version="0.6.2")
    recs = fleet(reps, 240, seed=41)
    load(store, tmp_path, recs)
    base = analyze(store)
    kinds = {f.kind for f in base if f.severity != "info"}
    assert {"replica.latency_regression", "replica.change_point", "replica.version_skew"} <= kinds
    want = _normal(base, {})
    rng = random.Random(3)
    for k in range(3):
        names = [r.name for r in reps]
        new = NEW[:]
        rng.shuffle(new)
        rename = dict(zip(names, new, strict=True))
        renamed = [msgspec.structs.replace(r, replica=rename[r.replica]) for r in recs]
        load(store, tmp_path, renamed, parts=3, seed=k)
        assert _normal(analyze(store), rename) == want


# --- change points and build skew ---------------------------------------------------------------


def test_a_change_point_is_found_at_the_upgrade_and_tied_to_it(store: Store, tmp_path: Any) -> None:
    reps = stable()
    reps[1] = replace(reps[1], change=(150.0, 1.4, "0.6.4"))
    recs = fleet(reps, 300, seed=51)
    load(store, tmp_path, recs)
    found = analyze(store, ["change_point"])
    assert [(f.kind, (f.scope or {}).get("replica")) for f in alarms_f(found)] == [
        ("replica.change_point", "r1")
    ]
    f = alarms_f(found)[0]
    assert f.values is not None and f.evidence is not None
    resolution = f.values["resolution_s"]
    t_change = next(r.t_arrival for r in recs if r.replica == "r1" and r.engine_version == "0.6.4")
    assert abs(f.values["t_split"] - t_change) <= 2 * resolution
    assert (f.scope or {})["t_start"] == f.values["t_split"]
    itl = f.values["metrics"]["itl_s"]
    lo, hi = itl["shift_ci"]
    assert lo < 0.4 < hi and 0.35 < itl["shift"] < 0.45
    ties = [c for c in f.values["coincides"] if c["what"] == "engine_version"]
    assert ties == [{"t": t_change, "what": "engine_version", "from": "0.6.3", "to": "0.6.4"}]
    assert "engine_version 0.6.3 → 0.6.4" in f.summary
    after = {r.request_id for r in recs if r.replica == "r1" and r.t_arrival >= t_change}
    assert f.evidence["request_ids"] and set(f.evidence["request_ids"]) <= after
    # version_skew says the replica changed build in the window
    skew = of_kind(analyze(store, ["version_skew"]), "replica.version_skew")
    moved = [f for f in skew if (f.values or {}).get("changes")]
    assert [(f.scope or {}).get("replica") for f in moved] == ["r1"]
    assert moved[0].severity == "info" and moved[0].values is not None
    assert moved[0].values["changes"][0]["engine_version"] == {"from": "0.6.3", "to": "0.6.4"}


def alarms_f(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.severity != "info"]


def test_version_skew_within_and_across_deployments(store: Store, tmp_path: Any) -> None:
    reps = stable(4, 3)
    reps[3] = replace(reps[3], version="0.6.2")  # a stable replica left behind
    reps = [replace(r, version="0.7.0") if r.deployment == "canary" else r for r in reps]
    reps[6] = replace(reps[6], tokenizer_fp="tok-bbbb")  # a canary replica: fingerprint only
    load(store, tmp_path, fleet(reps, 60, seed=61))
    found = of_kind(analyze(store, ["version_skew"]), "replica.version_skew")
    by = {
        ((f.scope or {}).get("replica"), (f.scope or {}).get("deployment"), f.severity): f
        for f in found
    }
    assert set(by) == {("r3", "stable", "warning"), ("r6", "canary", "info"), (None, None, "info")}
    left = by[("r3", "stable", "warning")]
    assert left.values is not None and left.values["fields"] == ["engine_version"]
    assert left.values["majority"]["engine_version"] == "0.6.3"
    assert left.values["majority_replicas"] == 3 and "0.6.2" in left.summary
    fp = by[("r6", "canary", "info")]
    assert fp.values is not None and fp.values["fields"] == ["tokenizer_fp"]
    across = by[(None, None, "info")]
    assert across.values is not None
    assert across.values["deployments"]["canary"]["engine_version"] == "0.7.0"
    assert across.values["deployments"]["stable"]["engine_version"] == "0.6.3"
    # one build everywhere: nothing
    load(store, tmp_path, fleet(stable(), 60, seed=62))
    assert of_kind(analyze(store, ["version_skew"]), "replica.version_skew") == []


# --- the reference engine's sample logs ---------------------------------------------------------


def _cli(home: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFDEBUG_HOME": home, "COLUMNS": "160"}
    env.pop("INFDEBUG_CLICKHOUSE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "infdebug.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_sample_logs_canary_names_the_slow_replica(tmp_path: Any) -> None:
    """sample_logs/canary: r2 runs ``--inject slow=1.5`` (every engine step 1.5× as long;
    sample_logs/README.md), r3 a doubled BOS. ``infdebug analyze`` names r2 with its shift,
    and no other replica's latency."""
    p = _cli(
        str(tmp_path / "home"), "analyze", os.path.join(REPO, "sample_logs", "canary"), "--json"
    )
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    doc = json.loads(p.stdout)
    lat = [f for f in doc["findings"] if f["kind"] == "replica.latency_regression"]
    assert [(f["scope"], f["severity"]) for f in lat] == [
        ({"replica": "r2", "deployment": "canary"}, "error")
    ]
    itl = lat[0]["values"]["metrics"]["itl_s"]
    assert itl["shift"] > 0.3 and itl["shift_ci"][0] > 0.2  # ≈ +55 %: slow=1.5 and more
    assert "r2 (canary): inter-token latency +" in lat[0]["summary"]
    others = [
        f
        for f in doc["findings"]
        if f["kind"].startswith("replica.") and f["severity"] != "info" and f not in lat
    ]
    assert others == []
    # the tolerance reaches the analyzer: at 100 % the shift is within it
    p = _cli(
        str(tmp_path / "home"),
        "analyze",
        os.path.join(REPO, "sample_logs", "canary"),
        "--json",
        "--only",
        "latency",
        "--tolerance",
        "100%",
    )
    assert p.returncode == 0 and json.loads(p.stdout)["findings"] == [], p.stdout[-2000:]
    p = _cli(str(tmp_path / "home"), "analyze", "--only", "latency", "--tolerance", "fast")
    assert p.returncode == 2 and "tolerance" in p.stderr


def test_sample_logs_baseline_raises_no_latency_warning(store: Store, tmp_path: Any) -> None:
    rep = ingest_paths(
        store,
        [os.path.join(REPO, "sample_logs", "baseline")],
        rejects_path=str(tmp_path / "rejects.jsonl"),
    )
    assert not rep.errors and rep.rows["request"] > 150
    assert alarms(analyze(store)) == []


def test_sample_logs_together_name_only_the_slow_canary_replica(
    store: Store, tmp_path: Any
) -> None:
    """Baseline and canary ran one after the other: no deployment comparison is made across
    the gap (no time bucket holds both), and only r2 (canary) is named."""
    rep = ingest_paths(
        store, [os.path.join(REPO, "sample_logs")], rejects_path=str(tmp_path / "rejects.jsonl")
    )
    assert not rep.errors
    assert alarms(analyze(store)) == [
        ("replica.latency_regression", {"replica": "r2", "deployment": "canary"})
    ]


# --- the SQL tests against the Python ones; the run's scratch table against the subquery --------


def test_rank_sums_in_sql_are_the_van_elteren_tests_of_the_cells(
    store: Store, tmp_path: Any
) -> None:
    """``q_latency.rank_sums`` (the first pass: one row per test) gives every test
    ``comparisons`` builds from the cells, with the same z, and no other; under sampling and
    through a run's scratch table the cells are those of the subquery."""
    from infdebug.analyzers.latency_regression import tests_of

    reps = stable(3, 3)
    reps[1] = replace(reps[1], itl=1.4)
    reps[4] = replace(reps[4], prompt=2.0)
    load(store, tmp_path, fleet(reps, 200, seed=5))
    ctx = AnalysisContext(store=store)
    w = ctx.window()
    sp = q.span(store, w)
    assert sp is not None
    tw = time_width(sp.t_min, sp.t_max)
    for sampling in (q.ALL, q.Sampling(400_000, 20.0, sp.max_e2e_s)):
        cells = qr.strata_cells(store, w, origin=sp.t_min, tw=tw, sampling=sampling)
        py = {(t.model, t.metric, t.level, t.name): t for t in comparisons(cells)}
        sql = {
            (t.model, t.metric, t.level, t.name): t
            for t in tests_of(qr.rank_sums(store, w, origin=sp.t_min, tw=tw, sampling=sampling))
        }
        assert len(py) >= 20 and set(sql) == set(py)
        for key, t in sql.items():
            assert t.z == pytest.approx(py[key].z, rel=1e-9, abs=1e-9), key
            assert t.units == py[key].units
        assert max(t.z for t in sql.values()) > 5  # r1's slowdown is among them
        with ctx.run_scope():
            inside = qr.strata_cells(
                store, w, origin=sp.t_min, tw=tw, sampling=sampling, scratch=ctx.scratch
            )
            assert ctx.scratch is not None and ctx.scratch._tables  # built, not skipped
        assert inside == cells
        # only the strata a unit served, with everyone's cells there
        unit = cells[0].unit
        mine = {(c.metric, c.stratum) for c in cells if c.unit == unit}
        some = qr.strata_cells(store, w, origin=sp.t_min, tw=tw, sampling=sampling, units=[unit])
        assert some == [c for c in cells if (c.metric, c.stratum) in mine]


def test_a_run_shares_its_scratch_table_and_drops_it(store: Store, tmp_path: Any) -> None:
    load(store, tmp_path, fleet(stable(2, 1), 60, seed=8))
    ctx = AnalysisContext(store=store)
    with ctx.run_scope():
        run_all(ctx, MINE)  # nested: the outer scope keeps its tables
        assert ctx.scratch is not None
        names = [n for n in ctx.scratch._tables.values() if n]
        assert len(names) == 2  # latency and change_point read one sample (and its requests)
        assert ctx.shared(("x",), lambda: 1) == ctx.shared(("x",), lambda: 2) == 1
    _, rows = store.query("EXISTS TEMPORARY TABLE " + names[0])
    assert rows == [(0,)]
    assert ctx.scratch is None and ctx.shared(("x",), lambda: 2) == 2
