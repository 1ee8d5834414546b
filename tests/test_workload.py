"""``infdebug workload``: the real traces' published numbers, a store of generated requests
whose arrivals, lengths, prefixes, latencies and start-ups are known, SLO attainment on a
handmade set, and the command's JSON and errors."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_request

from infdebug.cli import cli
from infdebug.cli.workload import sparkline
from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Event, Request, encode_records
from infdebug.store import Store
from infdebug.workload import (
    Budgets,
    MinuteBin,
    WorkloadInputError,
    WorkloadOptions,
    arrivals,
    judge_slo,
    mean_tpot,
    minute_bins,
    parse_duration,
    prefix_reuse_from_hash_ids,
)
from infdebug.workload.fleet import UnitLoad, derive_capacity, startup_summary, startups
from infdebug.workload.store import store_report

T0 = 1_764_000_000.0
REQUIRED_KEYS = {
    "requests",
    "duration_s",
    "qps",
    "prompt_tokens",
    "output_tokens",
    "prefix_reuse",
    "replicas_needed",
}


def invoke(tmp_path: Path, *args: str) -> Any:
    home = str(tmp_path / "home")
    return CliRunner().invoke(cli, ["--home", home, "workload", *args], catch_exceptions=False)


def _trace(shared_data: str, *parts: str) -> str:
    path = os.path.join(shared_data, "traces", *parts)
    if not os.path.isfile(path):
        pytest.skip(f"trace {path} is absent")
    return path


# --- real traces ----------------------------------------------------------------------------


def test_azure_code_trace_reproduces_its_means(shared_data: str, tmp_path: Path) -> None:
    path = _trace(shared_data, "azure_llm_2023", "AzureLLMInferenceTrace_code.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    prompt = [int(r["ContextTokens"]) for r in rows]
    output = [int(r["GeneratedTokens"]) for r in rows]
    res = invoke(tmp_path, "--trace", path, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["requests"] == len(rows)
    want_p, want_o = sum(prompt) / len(prompt), sum(output) / len(output)
    assert doc["prompt_tokens"]["mean"] == pytest.approx(want_p, rel=0.01)
    assert doc["output_tokens"]["mean"] == pytest.approx(want_o, rel=0.01)
    # the published means of the code trace: about 2048 prompt and 28 output tokens
    assert doc["prompt_tokens"]["mean"] == pytest.approx(2048, rel=0.03)
    assert doc["output_tokens"]["mean"] == pytest.approx(28, rel=0.03)
    assert doc["prompt_tokens"]["p50"] == pytest.approx(float(np.median(prompt)))
    assert doc["prefix_reuse"] is None  # an Azure trace has nothing to hash
    assert doc["source"]["format"] == "azure"
    assert "slo" not in doc
    assert doc["replicas_needed"] == {"peak": None, "median": None, "overprovision": None}


def test_mooncake_conversation_prefix_reuse(shared_data: str, tmp_path: Path) -> None:
    path = _trace(shared_data, "mooncake_fast25", "conversation_trace.jsonl")
    seen: set[int] = set()
    reused = total = 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            n = r["input_length"]
            total += n
            for i, h in enumerate(r["hash_ids"]):
                if h in seen:
                    reused += max(0, min(512, n - 512 * i))
            seen.update(r["hash_ids"])
    res = invoke(tmp_path, "--trace", path, "--json", "--replica-capacity", "1.5", "--ttft", "1s")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["slo"] is None and any("no latencies" in n for n in doc["notes"])
    assert doc["prefix_reuse"] == pytest.approx(reused / total, rel=1e-12)
    assert doc["prefix"]["reused_tokens"] == reused
    assert 0.2 < doc["prefix_reuse"] < 0.6
    peak, median = doc["qps"]["peak_1m"], doc["qps"]["median_1m"]
    assert doc["replicas_needed"]["peak"] == math.ceil(peak / 1.5 - 1e-9)
    assert doc["replicas_needed"]["median"] == math.ceil(median / 1.5 - 1e-9)


def test_mooncake_terminal_view(shared_data: str, tmp_path: Path) -> None:
    path = _trace(shared_data, "mooncake_fast25", "synthetic_trace.jsonl")
    res = invoke(tmp_path, "--trace", path)
    assert res.exit_code == 0, res.output
    for word in ("arrivals", "burstiness", "prompt", "prefix reuse", "replicas needed"):
        assert word in res.stdout
    assert any(ch in res.stdout for ch in "▁▂▃▄▅▆▇█")


# --- a store of generated requests ----------------------------------------------------------

COUNTS = [12, 24, 36, 24, 12]  # arrivals in each whole minute; one more 10 s into minute 5
SLOW_MINUTE = 2  # every request of the busiest minute misses the budgets


def _prompt(i: int) -> list[int]:
    """Families of prompts: A shares 2 blocks, B shares A's first block, C is unique and
    short, D repeats one exact 512-token prompt."""
    block_a1 = [1000 + k for k in range(512)]
    block_a2 = [5000 + k for k in range(512)]
    block_b2 = [9000 + k for k in range(512)]
    tail = [20000 + (i * 131 + k) % 90000 for k in range(50 + i % 7)]
    fam = i % 4
    if fam == 0:
        return block_a1 + block_a2 + tail
    if fam == 1:
        return block_a1 + block_b2 + tail
    if fam == 2:
        return tail[:40] + [i]
    return [3 + k for k in range(512)]


def _generated() -> tuple[list[Request], list[Event]]:
    times = [T0 + 60 * m + j * 60 / c for m, c in enumerate(COUNTS) for j in range(c)]
    times.append(T0 + 310.0)
    recs = []
    for i, t in enumerate(times):
        minute = int((t - T0) // 60)
        slow = minute == SLOW_MINUTE
        n_out = 1 + (i % 5) * 10
        ttft = 2.0 if slow else 0.2
        tpot = 0.06 if slow else 0.03
        ids = _prompt(i)
        kw: dict[str, Any] = dict(
            replica=f"r{i % 3}",
            t_arrival=t,
            ttft_s=ttft,
            e2e_s=ttft + tpot * (n_out - 1),
            token_times_s=[],
            output_ids=[7] * n_out,
            prompt_ids=ids,
            cached_prompt_tokens=512 if i % 2 == 0 else None,
        )
        if i % 13 == 5:  # redacted: the engine's count, no IDs
            kw.update(prompt_ids=[], prompt_tokens=len(ids))
        if i in (3, 4):  # latencies not logged
            kw.update(ttft_s=None, e2e_s=None)
        if i == 100:
            kw.update(error="CUDA error", finish_reason="error")
        recs.append(make_request(i, **kw))
    events = [
        Event(t=T0 - 100, replica="r0", name="process_start", deployment="stable"),
        Event(t=T0 - 95, replica="r0", name="weights_loaded", duration_s=5.0, deployment="stable"),
        Event(t=T0 - 93, replica="r0", name="warmup_done", duration_s=2.0, deployment="stable"),
        Event(
            t=T0 - 92.5,
            replica="r0",
            name="ready",
            duration_s=0.5,
            since_start_s=7.5,
            deployment="stable",
        ),
        Event(t=T0 - 80, replica="r1", name="process_start", deployment="stable"),
        Event(t=T0 - 62, replica="r1", name="weights_loaded", duration_s=18.0, deployment="stable"),
        Event(
            t=T0 - 60,
            replica="r1",
            name="ready",
            duration_s=2.0,
            since_start_s=20,
            deployment="stable",
        ),
    ]
    return recs, events


def _fill(store: Store, tmp_path: Path, recs: list[Any]) -> None:
    f = tmp_path / "fleet.jsonl"
    f.write_bytes(encode_records(recs))
    report = ingest_paths(store, [str(f)], rejects_path=str(tmp_path / "rejects.jsonl"))
    assert report.rejected == 0


def _hand_reuse(recs: list[Request]) -> tuple[int, int, int]:
    """(requests, tokens, reused tokens) with prefixes as tuples: no hashing."""
    seen: set[tuple[int, ...]] = set()
    n = tokens = reused = 0
    for r in sorted(recs, key=lambda r: (r.t_arrival, r.request_id)):
        ids = r.prompt_ids or []
        if not ids:
            continue
        n += 1
        tokens += len(ids)
        keys = [tuple(ids[: 512 * k]) for k in range(1, len(ids) // 512 + 1)]
        reused += 512 * sum(1 for k in keys if k in seen)
        seen.update(keys)
    return n, tokens, reused


def test_store_of_generated_requests_matches_hand_computation(store: Store, tmp_path: Path) -> None:
    recs, events = _generated()
    _fill(store, tmp_path, [*recs, *events])
    opts = WorkloadOptions(Budgets(1.0, 0.05), weights_gb=16.0, peak_bandwidth_gbs=2000.0)
    rep = store_report(store, opts, {"kind": "store"})
    doc = rep.to_json()
    n = len(recs)
    assert doc["requests"] == n == sum(COUNTS) + 1
    assert doc["duration_s"] == pytest.approx(310.0)
    q = doc["qps"]
    assert q["mean"] == pytest.approx(n / 310.0)
    assert q["peak_1m"] == pytest.approx(36 / 60)
    assert q["median_1m"] == pytest.approx(24 / 60)
    assert q["per_minute"] == COUNTS
    gaps = np.diff(sorted(r.t_arrival for r in recs))
    assert q["cv_interarrival"] == pytest.approx(gaps.std() / gaps.mean(), rel=1e-6)

    prompt_lens = [len(r.prompt_ids) if r.prompt_ids else r.prompt_tokens for r in recs]
    out_lens = [len(r.output_ids or []) for r in recs]
    for key, lens in (("prompt_tokens", prompt_lens), ("output_tokens", out_lens)):
        got = doc[key]
        assert got["mean"] == pytest.approx(sum(lens) / len(lens))
        for p, level in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            assert got[p] == pytest.approx(float(np.quantile(lens, level)))

    hashed, tokens, reused = _hand_reuse(recs)
    assert doc["prefix"]["requests"] == hashed
    assert doc["prefix"]["tokens"] == tokens
    assert doc["prefix"]["reused_tokens"] == reused
    assert doc["prefix_reuse"] == pytest.approx(reused / tokens)

    cached = [(r.cached_prompt_tokens, p) for r, p in zip(recs, prompt_lens, strict=True)]
    cached = [(c, p) for c, p in cached if c is not None]
    assert doc["cache_hit_rate"] == pytest.approx(
        sum(c for c, _ in cached) / sum(p for _, p in cached)
    )

    # SLO: minute 2 misses both budgets, requests 3 and 4 logged no latency, 100 failed
    slow = [r for r in recs if int((r.t_arrival - T0) // 60) == SLOW_MINUTE]
    slo = doc["slo"]
    assert slo["judged"] == n - 2
    assert slo["failed"] == 1
    assert slo["met"] == n - 2 - len(slow) - (0 if recs[100] in slow else 1)
    assert slo["goodput_rps"] == pytest.approx(slo["met"] / 310.0)

    # capacity: the busiest replica minute that met the goal (minute 2 did not): 24 / 3 replicas
    per_unit_minute = Counter(
        (r.replica, int((r.t_arrival - T0) // 60)) for r in recs if r not in slow
    )
    best = max(c for (_, m), c in per_unit_minute.items() if m < 5)
    assert doc["capacity"]["source"] == "observed_slo"
    assert doc["capacity"]["rps"] == pytest.approx(best / 60)
    assert doc["replicas_needed"]["peak"] == _need(36 / 60, best / 60) == 5
    assert doc["replicas_needed"]["median"] == _need(24 / 60, best / 60) == 3

    # start-up: r0 7.5 s, r1 20 s
    su = doc["startup"]
    assert su["starts"] == 2 and su["ready"] == 2
    assert su["total_s"]["max"] == pytest.approx(20.0)
    assert su["total_s"]["median"] == pytest.approx(13.75)
    assert su["slowest"]["replica"] == "r1"
    assert su["phases_s"]["weights_loaded"] == pytest.approx(11.5)

    # decode bandwidth: Σ(e2e − ttft) / Σ(n − 1) per replica
    bw = {b["replica"]: b for b in doc["bandwidth"]["replicas"]}
    for rep_name in ("r0", "r1", "r2"):
        mine = [
            r
            for r in recs
            if r.replica == rep_name
            and r.e2e_s is not None
            and not r.error
            and len(r.output_ids or []) >= 2
        ]
        dec = sum(r.e2e_s - r.ttft_s for r in mine)  # type: ignore[operator]
        steps = sum(len(r.output_ids or []) - 1 for r in mine)
        got = bw[f"{rep_name} (stable)"]
        assert got["decode_steps"] == steps
        assert got["mean_step_s"] == pytest.approx(dec / steps)
        assert got["utilisation"] == pytest.approx(16.0 / (dec / steps) / 2000.0)


def test_window_limits_the_requests(store: Store, tmp_path: Path) -> None:
    recs, events = _generated()
    _fill(store, tmp_path, [*recs, *events])
    window = {"since": T0 + 60, "until": T0 + 180, "replicas": ["r0"]}
    doc = store_report(store, WorkloadOptions(Budgets(1.0)), {}, window).to_json()
    mine = [r for r in recs if r.replica == "r0" and T0 + 60 <= r.t_arrival < T0 + 180]
    assert doc["requests"] == len(mine) == 8 + 12
    assert doc["slo"]["met"] == 8  # minute 2 misses the TTFT budget
    assert doc["prefix"]["requests"] == sum(1 for r in mine if r.prompt_ids)
    assert doc["startup"] is None  # the replicas started before the window


def test_replica_names_and_order_do_not_change_the_report(store: Store, tmp_path: Path) -> None:
    recs, _ = _generated()
    rename = {"r0": "zeta", "r1": "alpha", "r2": "mid"}
    renamed = [
        make_request(
            i,
            **{f: getattr(r, f) for f in r.__struct_fields__ if f not in ("replica", "kind")},
            replica=rename[r.replica],
        )
        for i, r in enumerate(reversed(recs))
    ]
    _fill(store, tmp_path, renamed)
    doc = store_report(store, WorkloadOptions(Budgets(1.0, 0.05)), {}).to_json()
    want = _report_without_store(recs)
    assert doc["requests"] == want["requests"]
    assert doc["replicas_needed"] == want["replicas_needed"]
    for key in ("duration_s", "prefix_reuse", "cache_hit_rate"):
        assert doc[key] == pytest.approx(want[key]), key
    assert doc["qps"]["cv_interarrival"] == pytest.approx(want["cv_interarrival"])
    assert doc["capacity"]["rps"] == pytest.approx(want["capacity_rps"])


def _need(rate: float, capacity: float) -> int:
    return math.ceil(rate / capacity - 1e-9)


def _report_without_store(recs: list[Request]) -> dict[str, Any]:
    """The figures the generated fleet must give, whatever its replicas are called."""
    _, tokens, reused = _hand_reuse(recs)
    gaps = np.diff(sorted(r.t_arrival for r in recs))
    cached = [
        (r.cached_prompt_tokens, len(r.prompt_ids) if r.prompt_ids else r.prompt_tokens or 0)
        for r in recs
        if r.cached_prompt_tokens is not None
    ]
    minutes = Counter(
        (r.replica, int((r.t_arrival - T0) // 60))
        for r in recs
        if int((r.t_arrival - T0) // 60) != SLOW_MINUTE
    )
    best = max(c for (_, m), c in minutes.items() if m < 5) / 60
    peak, median = _need(36 / 60, best), _need(24 / 60, best)
    return {
        "requests": len(recs),
        "duration_s": 310.0,
        "prefix_reuse": reused / tokens,
        "cache_hit_rate": sum(c for c, _ in cached) / sum(p for _, p in cached),
        "replicas_needed": {"peak": peak, "median": median, "overprovision": peak / median},
        "cv_interarrival": float(gaps.std() / gaps.mean()),
        "capacity_rps": best,
    }


# --- SLO on a handmade set ------------------------------------------------------------------

# (ttft, e2e, output tokens, token times, error, finish reason, met under TTFT ≤ 1 s and
# TPOT ≤ 62.5 ms, met under TTFT only); None: not judged
HANDMADE: list[tuple[Any, ...]] = [
    (0.5, 0.5 + 0.04 * 9, 10, [], None, "stop", True, True),
    (1.2, 1.2 + 0.04 * 9, 10, [], None, "stop", False, False),  # TTFT over
    (0.5, 0.5 + 0.07 * 9, 10, [], None, "stop", False, True),  # TPOT over
    (1.0, 1.5, 9, [], None, "stop", True, True),  # both exactly on the budget: (1.5-1)/8
    (0.3, 0.3, 1, [], None, "stop", True, True),  # one token: TPOT undefined, not checked
    (3.0, 3.0, 1, [], None, "length", False, False),
    (0.2, 0.4, 5, [], "boom", "error", False, False),  # failed
    (None, None, 5, [], None, "stop", None, None),  # nothing logged: not judged
    (0.5, None, 4, [0.5, 0.55, 0.6, 0.65], None, "stop", True, True),  # TPOT from token times
    (None, None, 3, [0.4, 0.45, 0.5], None, "stop", True, True),  # TTFT from token times too
    (0.1, 0.2, 3, [], None, "abort", False, False),  # aborted: failed
]


def _handmade_records() -> list[Request]:
    recs = []
    for i, (ttft, e2e, n, times, err, fin, _, _) in enumerate(HANDMADE):
        recs.append(
            make_request(
                i,
                replica="r0",
                t_arrival=T0 + i,
                ttft_s=ttft,
                e2e_s=e2e,
                output_ids=[9] * n,
                token_times_s=times,
                error=err,
                finish_reason=fin,
            )
        )
    return recs


def test_slo_judgement_on_a_handmade_set() -> None:
    ttft = [h[0] if h[0] is not None else h[3][0] if h[3] else np.nan for h in HANDMADE]
    e2e = [np.nan if h[1] is None else h[1] for h in HANDMADE]
    n = [h[2] for h in HANDMADE]
    tpot = mean_tpot(e2e, ttft, n)
    for i, h in enumerate(HANDMADE):
        if h[1] is None and len(h[3]) >= 2:
            tpot[i] = (h[3][-1] - h[3][0]) / (len(h[3]) - 1)
    failed = [h[4] is not None or h[5] in ("error", "abort") for h in HANDMADE]
    for budgets, col in ((Budgets(1.0, 0.0625), 6), (Budgets(1.0, None), 7)):
        judged, met = judge_slo(budgets, ttft_s=ttft, tpot_s=tpot, output_tokens=n, failed=failed)
        assert judged.tolist() == [h[col] is not None for h in HANDMADE]
        assert met.tolist() == [bool(h[col]) for h in HANDMADE]


@pytest.mark.parametrize(
    ("flags", "col"), [(("--ttft", "1s", "--tpot", "0.0625"), 6), (("--ttft", "1000ms"), 7)]
)
def test_slo_through_the_command(tmp_path: Path, flags: tuple[str, ...], col: int) -> None:
    log = tmp_path / "handmade.jsonl"
    log.write_bytes(encode_records(list(_handmade_records())))
    res = invoke(tmp_path, str(log), *flags, "--json", "--rejects", str(tmp_path / "rej.jsonl"))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc) >= REQUIRED_KEYS
    judged = sum(1 for h in HANDMADE if h[col] is not None)
    met = sum(1 for h in HANDMADE if h[col])
    assert doc["slo"]["judged"] == judged
    assert doc["slo"]["met"] == met
    assert doc["slo"]["failed"] == 2
    assert doc["slo"]["attainment"] == pytest.approx(met / judged)
    assert doc["slo"]["goodput_rps"] == pytest.approx(met / (len(HANDMADE) - 1))
    assert doc["ingest"]["rejected"] == 0


# --- the command's JSON, terminal view and errors -------------------------------------------


def test_json_keys_and_terminal_view_on_logs(tmp_path: Path) -> None:
    recs, events = _generated()
    log = tmp_path / "fleet.jsonl"
    log.write_bytes(encode_records([*recs, *events]))
    rej = str(tmp_path / "rej.jsonl")
    res = invoke(tmp_path, str(log), "--json", "--ttft", "1s", "--tpot", "50ms", "--rejects", rej)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert REQUIRED_KEYS | {"slo", "startup", "cache_hit_rate"} <= set(doc)
    assert set(doc["qps"]) >= {"mean", "peak_1m", "cv_interarrival"}
    for key in ("prompt_tokens", "output_tokens"):
        assert set(doc[key]) >= {"mean", "p50", "p90", "p99"}
    assert set(doc["replicas_needed"]) >= {"peak", "median"}
    assert 0.0 <= doc["prefix_reuse"] <= 1.0

    res = invoke(
        tmp_path,
        str(log),
        "--ttft",
        "1s",
        "--weights-gb",
        "16",
        "--peak-bandwidth-gbs",
        "2000",
        "--rejects",
        rej,
    )
    assert res.exit_code == 0, res.output
    for word in (
        "SLO",
        "attainment",
        "start-up",
        "r1 (stable)",
        "decode bandwidth",
        "over-provisioning",
    ):
        assert word in res.stdout, word


def test_bad_trace_is_one_error_line_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:04.0319600,lots,8\n"
    )
    res = invoke(tmp_path, "--trace", str(bad))
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert f"{bad}:3" in lines[0] and "ContextTokens" in lines[0]
    res = invoke(tmp_path, "--trace", str(bad), "--json")
    assert res.exit_code == 2
    assert f"{bad}:3" in json.loads(res.stdout)["error"]

    jl = tmp_path / "bad.jsonl"
    jl.write_text(
        '{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n{oops\n'
    )
    res = invoke(tmp_path, "--trace", str(jl))
    assert res.exit_code == 2
    assert f"{jl}:2" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--ttft", "fast"), "--ttft"),
        (("--tpot", "0"), "--tpot"),
        (("--weights-gb", "16"), "--peak-bandwidth-gbs"),
        (("--replica-capacity", "-1"), "--replica-capacity"),
        (("--slo-goal", "1.5"), "--slo-goal"),
    ],
)
def test_bad_flags_are_one_line(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    res = invoke(tmp_path, "--trace", "nowhere.csv", *args)
    assert res.exit_code == 2
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_help_teaches_with_examples(tmp_path: Path) -> None:
    res = invoke(tmp_path, "--help")
    assert res.exit_code == 0
    assert "Examples:" in res.stdout and "--trace" in res.stdout and "50ms" in res.stdout


def test_empty_store_fails_with_a_reason(tmp_path: Path) -> None:
    res = invoke(tmp_path, "--json")
    assert res.exit_code == 2
    assert "no requests" in json.loads(res.stdout)["error"]


# --- the pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("50ms", 0.05),
        ("0.2", 0.2),
        ("250us", 250e-6),
        ("2min", 120.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        (" 1.5 s", 1.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "-1s", "0", "1d", "1hr", "1e400", "nan"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(WorkloadInputError):
        parse_duration(text, "--ttft")


def test_arrivals_edge_cases() -> None:
    empty = arrivals(0, None, None, [])
    assert empty.requests == 0 and empty.mean_qps is None
    one = arrivals(1, T0, T0, minute_bins([T0]))
    assert one.duration_s == 0 and one.mean_qps is None and one.cv_interarrival is None
    short = arrivals(5, T0, T0 + 10, minute_bins([T0 + x for x in (0, 1, 2, 5, 10)]))
    assert short.whole_minutes == 0 and short.peak_1m == short.median_1m == pytest.approx(0.5)
    # quiet minutes count as zeros in the median
    t = [T0 + x for x in (0, 1, 2, 3, 200, 250)]
    sparse = arrivals(len(t), t[0], t[-1], minute_bins(t))
    assert sparse.per_minute == [4, 0, 0, 1] and sparse.median_1m == pytest.approx(0.5 / 60)
    metronome = [T0 + 0.5 * k for k in range(400)]
    assert arrivals(400, metronome[0], metronome[-1], minute_bins(metronome)).cv_interarrival == (
        pytest.approx(0.0, abs=1e-6)
    )
    poisson = np.cumsum(np.random.default_rng(7).exponential(0.1, 50_000))
    cv = arrivals(len(poisson), poisson[0], poisson[-1], minute_bins(poisson)).cv_interarrival
    assert cv == pytest.approx(1.0, abs=0.02)
    assert isinstance(minute_bins(t)[0], MinuteBin)


def test_prefix_reuse_from_hash_ids_counts_partial_blocks() -> None:
    got = prefix_reuse_from_hash_ids([1000, 700, 100], [[1, 2], [1, 3], []])
    assert got is not None
    assert (got.requests, got.tokens, got.reused_tokens) == (2, 1700, 512)
    assert prefix_reuse_from_hash_ids([10], [[]]) is None


def test_capacity_derivation_is_order_invariant() -> None:
    units = [UnitLoad("b", 100, 100, 95, 30, 4), UnitLoad("a", 100, 100, 99, 30, 2)]
    for order in (units, units[::-1]):
        cap = derive_capacity(order, whole_minutes=10, span_s=600, slo_given=True, goal=0.9)
        assert cap is not None and cap.replica == "a" and cap.rps == pytest.approx(0.5)
    assert derive_capacity([], whole_minutes=10, span_s=600, slo_given=False, goal=0.9) is None


def test_startups_split_on_process_start_and_pid() -> None:
    rows = [
        ("r0", None, 11, "process_start", 0.0, None, 0.0),
        ("r0", None, 11, "weights_loaded", 4.0, 4.0, 4.0),
        ("r0", None, 11, "ready", 5.0, 1.0, 5.0),
        ("r0", None, 12, "weights_loaded", 100.0, 6.0, 6.0),  # its process_start was lost
        ("r0", None, 12, "shutdown", 101.0, None, 7.0),
        ("r1", "canary", 5, "process_start", 0.0, None, 0.0),
        ("r1", "canary", 5, "ready", 9.0, 9.0, None),
    ]
    got = startups(rows)
    assert [(s.replica, s.total_s) for s in got] == [("r0", 5.0), ("r0", None), ("r1", 9.0)]
    assert got[1].t_start == pytest.approx(94.0)
    summary = startup_summary(got)
    assert summary is not None and summary["starts"] == 3 and summary["ready"] == 2


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == " ▂▃▄▅▆▇█"
    assert len(sparkline(list(range(1000)), width=60)) <= 60
    assert sparkline([0, 0]) == "▁▁"
