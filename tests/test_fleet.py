"""A real 2-replica fleet (separate `infdebug serve` processes, tiny model), started once for
the module, with replayed Mooncake-style load against it through `infdebug load`."""

from __future__ import annotations

import glob
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip(
    "torch", reason="the fleet serves the reference engine (pip install -e '.[engine]')"
)

from infdebug.fleet import Fleet, FleetError, parse_injections  # noqa: E402


def _free_base_port(n: int) -> int:
    for base in range(18100, 19000, 10):
        ok = True
        for p in range(base + 1, base + n + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


def _records(trace_dir: str, pattern: str) -> list[dict[str, Any]]:
    out = []
    for p in glob.glob(os.path.join(trace_dir, pattern)):
        with open(p) as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from infdebug.tracer.engine.make_model import make_model

    return make_model(str(tmp_path_factory.mktemp("m") / "tiny"), preset="tiny")


@pytest.fixture(scope="module")
def fleet(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    traces = tmp_path_factory.mktemp("traces")
    f = Fleet(
        tiny_model,
        2,
        injections=["r2:slow=2"],
        deployments=["r2=canary"],
        base_port=_free_base_port(2),
        trace_dir=str(traces),
        max_batch=8,
        max_model_len=512,
        device="cpu",
        startup_timeout_s=120,
    )
    with f:
        yield f
    assert all(r.proc is not None and r.proc.poll() is not None for r in f.replicas)


def test_injections_and_deployments_are_parsed_per_replica(tiny_model: str) -> None:
    assert parse_injections(
        ["r2:slow=1.3", "r3:double-bos", "all:dtype=float32"], ["r1", "r2", "r3"]
    ) == {
        "r1": ["dtype=float32"],
        "r2": ["slow=1.3", "dtype=float32"],
        "r3": ["double-bos", "dtype=float32"],
    }
    with pytest.raises(FleetError, match="expected a replica of r1, r2"):
        Fleet(tiny_model, 2, injections=["r5:slow=2"])
    with pytest.raises(FleetError, match="REPLICA:FAULT"):
        Fleet(tiny_model, 2, injections=["slow=2"])
    with pytest.raises(FleetError, match="not a directory"):
        Fleet("/nonexistent", 2)


def test_a_replica_that_dies_is_reported_with_its_stderr(tiny_model: str, tmp_path: Any) -> None:
    f = Fleet(
        tiny_model,
        1,
        injections=["r1:slow=0.5"],
        base_port=_free_base_port(1),
        log_dir=str(tmp_path),
    )
    with pytest.raises(FleetError) as e:
        f.start()
    assert "replica r1 exited with code 2" in str(e.value) and "slow=FACTOR must be >= 1" in str(
        e.value
    )
    assert f.replicas[0].proc is not None and f.replicas[0].proc.returncode == 2


def test_least_loaded_and_refusals(fleet: Fleet, tmp_path: Any) -> None:
    from infdebug.cli.fleet import load_cmd

    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
    )
    res = CliRunner().invoke(
        load_cmd, ["--trace", str(trace), "--url", "http://10.1.2.3:8000", "--rate", "1"]
    )
    assert res.exit_code == 2 and "not this machine" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,x,1\n")
    res = CliRunner().invoke(load_cmd, ["--trace", str(bad), "--url", fleet.urls[0]])
    assert res.exit_code == 2 and f"{bad}:2:" in res.output
    args = [
        "--trace",
        str(trace),
        "--rate",
        "4",
        "--duration",
        "1.5",
        "--length-scale",
        "0.1",
        "--policy",
        "least-loaded",
        "--json",
    ]
    for u in fleet.urls:
        args += ["--url", u]
    res = CliRunner().invoke(load_cmd, args)
    assert res.exit_code == 0, res.output
    s = json.loads(res.output.strip().splitlines()[-1])
    assert s["total"]["sent"] >= 4 and s["total"]["failed"] == 0 and s["policy"] == "least-loaded"


def test_fleet_serves_replayed_load_and_every_replica_traces(fleet: Fleet, tmp_path: Any) -> None:
    from infdebug.cli.fleet import load_cmd

    trace = tmp_path / "t.jsonl"  # Mooncake format: every request opens with the same block
    lines = [
        {
            "timestamp": 100 * i,
            "input_length": 900 + 37 * i,
            "output_length": 60,
            "hash_ids": [0, 1 + i % 3, 10 + i],
        }
        for i in range(12)
    ]
    trace.write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = [
        "--trace",
        str(trace),
        "--rate",
        "2",
        "--duration",
        "4",
        "--length-scale",
        "0.1",
        "--max-output-tokens",
        "8",
        "--json",
        "--seed",
        "1",
    ]
    for u in fleet.urls:
        args += ["--url", u]
    res = CliRunner().invoke(load_cmd, args)
    assert res.exit_code == 0, res.output
    s = json.loads(res.output.strip().splitlines()[-1])
    total = s["total"]
    assert total["sent"] >= 8 and total["ok"] == total["sent"] and total["failed"] == 0
    r1, r2 = s["replicas"]["r1"], s["replicas"]["r2"]
    assert abs(r1["sent"] - r2["sent"]) <= 1  # round-robin
    assert (
        total["ttft_p50_s"] > 0
        and total["itl_p50_s"] > 0
        and total["output_tokens"] == 6 * total["ok"]
    )  # 60 × 0.1, ignore_eos
    assert 0.7 < total["prompt_tokens_per_target"] < 1.4
    if (
        total["prefix_hit_rate"] is not None
    ):  # servers that report cached_tokens in the stream's usage
        assert total["prefix_hit_rate"] > 0.2
    assert total["output_tokens_per_s"] > 0

    # each replica wrote its own trace JSONL; records are written asynchronously, and every
    # finished request is there once the fleet has stopped (SIGTERM flushes the writer).
    # The earlier least-loaded run in this module adds its own records, hence >=.
    codes = fleet.stop()
    assert codes == {"r1": 0, "r2": 0}
    for r in fleet.replicas:
        recs = _records(str(fleet.trace_dir), f"{r.name}-*.requests.jsonl")
        assert len(recs) >= s["replicas"][r.name]["ok"] > 0, r.name
        assert {x["replica"] for x in recs} == {r.name}
    assert {x["deployment"] for x in _records(str(fleet.trace_dir), "r2-*.jsonl")} == {"canary"}
    # shared hash ids became shared prompt prefixes: the engines' prefix caches were hit
    cached = [
        x.get("cached_prompt_tokens") or 0
        for x in _records(str(fleet.trace_dir), "r*.requests.jsonl")
    ]
    assert (
        sum(c >= 32 for c in cached) >= 5
    )  # 7 of the 9 Mooncake-style requests (not the first per replica)
