"""The infdebug command line, run as a user runs it: a separate process per command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import REPO, make_request

from infdebug.schema import encode_record, encode_records


def run(home: str, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFDEBUG_HOME": home, "COLUMNS": "120"}
    env.pop("INFDEBUG_CLICKHOUSE_URL", None)
    p = subprocess.run([sys.executable, "-m", "infdebug.cli", *args], env=env, capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    if check is not None:
        assert p.returncode == check, p.stdout + p.stderr
    return p


@pytest.fixture
def home(tmp_path: Any) -> str:
    return str(tmp_path / "home")


def test_help_teaches_every_command(home: str) -> None:
    top = run(home, "--help").stdout
    for cmd in ("ingest", "query", "stats"):
        assert cmd in top
        h = run(home, cmd, "--help").stdout
        assert "--json" in h
    assert "Exit code" in run(home, "ingest", "--help").stdout


def test_ingest_exit_codes_and_json_summary(home: str, tmp_path: Any) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(encode_records([make_request(i) for i in range(20)]))
    s = json.loads(run(home, "ingest", str(good), "--json").stdout)
    assert s["files"] == 1 and s["rows"]["request"] == 20 and s["rejected"] == 0 and s["rejects_file"] is None

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(encode_record(make_request(100)) + b"{oops\n" + encode_record(make_request(101)))
    p = run(home, "ingest", str(bad), "--json", check=3)
    s = json.loads(p.stdout)
    assert s["rows"]["request"] == 2 and s["rejected"] == 1
    with open(s["rejects_file"], encoding="utf-8") as fh:
        rej = [json.loads(x) for x in fh]
    assert rej[0]["file"] == str(bad) and rej[0]["line"] == 2 and "malformed JSON" in rej[0]["reason"]

    p = run(home, "ingest", str(bad), check=0)  # already ingested: nothing new, nothing rejected
    assert "unchanged" in p.stdout

    p = run(home, "ingest", str(tmp_path / "missing.jsonl"), check=2)
    assert "no such file" in p.stderr and "Traceback" not in p.stderr


def test_human_ingest_names_rejected_lines(home: str, tmp_path: Any) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(encode_record(make_request(1)) + b'{"kind":"request","request_id":"z","replica":"r","t_arrival":"x"}\n')
    p = run(home, "ingest", str(bad), check=3)
    assert f"{bad}:2: field t_arrival:" in p.stderr.replace("\n", "")


def test_query_json_and_bound_params(home: str, tmp_path: Any) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(encode_records([make_request(i) for i in range(9)]))
    run(home, "ingest", str(f))
    out = json.loads(run(home, "query", "SELECT replica, count() AS n FROM requests GROUP BY replica ORDER BY replica",
                         "--json").stdout)
    assert out == [{"replica": "r0", "n": 3}, {"replica": "r1", "n": 3}, {"replica": "r2", "n": 3}]
    out = json.loads(run(home, "query", "SELECT request_id, prompt_ids FROM requests WHERE replica = {r:String} "
                         "ORDER BY t_arrival", "-p", "r=r1", "--json").stdout)
    assert [o["request_id"] for o in out] == ["req-1", "req-4", "req-7"]
    assert out[0]["prompt_ids"] == [1, 22, 334]
    p = run(home, "query", "SELEKT nonsense", check=2)
    assert "query failed" in p.stderr and "Traceback" not in p.stderr
    table = run(home, "query", "SELECT replica, count() FROM requests GROUP BY replica ORDER BY replica").stdout
    assert "r0" in table and "r2" in table


def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, math.floor(q * len(s)))]


def test_stats_percentiles_match_the_data(home: str, tmp_path: Any) -> None:
    recs = [make_request(i, token_times_s=[0.01 * (i % 5 + 1), 0.01 * (i % 5 + 1) + 0.002 * (i % 4 + 1),
                                           0.01 * (i % 5 + 1) + 0.003 * (i % 4 + 2)], e2e_s=0.05 + 0.01 * i)
            for i in range(60)]
    f = tmp_path / "a.jsonl"
    f.write_bytes(encode_records(recs))
    run(home, "ingest", str(f))
    out = json.loads(run(home, "stats", "--json").stdout)["replicas"]
    assert [r["replica"] for r in out] == ["r0", "r1", "r2"]
    for r in out:
        mine = [x for x in recs if x.replica == r["replica"]]
        assert r["requests"] == len(mine)
        ttft = [x.ttft_s for x in mine]
        gaps = [b - a for x in mine for a, b in zip(x.token_times_s, x.token_times_s[1:], strict=False)]
        e2e = [x.e2e_s for x in mine]
        for key, vals in (("ttft_s", ttft), ("itl_s", gaps), ("e2e_s", e2e)):
            assert r[key]["n"] == len(vals)
            for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
                assert r[key][name] == pytest.approx(_q(vals, q), abs=1e-12), (key, name)
    table = run(home, "stats").stdout
    assert "r1" in table and "n=20" in table


def test_stats_on_an_empty_store_says_what_to_do(home: str) -> None:
    p = run(home, "stats")
    assert "infdebug ingest" in p.stderr


def test_sample_logs_load_cleanly(home: str) -> None:
    s = json.loads(run(home, "ingest", os.path.join(REPO, "sample_logs"), "--json").stdout)
    assert s["rejected"] == 0
    assert s["rows"]["request"] >= 100 and s["rows"]["gpu"] > 0 and s["rows"]["event"] > 0
    reps = json.loads(run(home, "stats", "--json").stdout)["replicas"]
    assert len(reps) == 3
