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
    p = subprocess.run(
        [sys.executable, "-m", "infdebug.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
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
    assert (
        s["files"] == 1
        and s["rows"]["request"] == 20
        and s["rejected"] == 0
        and s["rejects_file"] is None
    )

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        encode_record(make_request(100)) + b"{oops\n" + encode_record(make_request(101))
    )
    p = run(home, "ingest", str(bad), "--json", check=3)
    s = json.loads(p.stdout)
    assert s["rows"]["request"] == 2 and s["rejected"] == 1
    with open(s["rejects_file"], encoding="utf-8") as fh:
        rej = [json.loads(x) for x in fh]
    assert (
        rej[0]["file"] == str(bad) and rej[0]["line"] == 2 and "malformed JSON" in rej[0]["reason"]
    )

    p = run(home, "ingest", str(bad), check=0)  # already ingested: nothing new, nothing rejected
    assert "unchanged" in p.stdout

    p = run(home, "ingest", str(tmp_path / "missing.jsonl"), check=2)
    assert "no such file" in p.stderr and "Traceback" not in p.stderr


def test_human_ingest_names_rejected_lines(home: str, tmp_path: Any) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        encode_record(make_request(1))
        + b'{"kind":"request","request_id":"z","replica":"r","t_arrival":"x"}\n'
    )
    p = run(home, "ingest", str(bad), check=3)
    assert f"{bad}:2: field t_arrival:" in p.stderr.replace("\n", "")


def test_query_json_and_bound_params(home: str, tmp_path: Any) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(encode_records([make_request(i) for i in range(9)]))
    run(home, "ingest", str(f))
    out = json.loads(
        run(
            home,
            "query",
            "SELECT replica, count() AS n FROM requests GROUP BY replica ORDER BY replica",
            "--json",
        ).stdout
    )
    assert out == [{"replica": "r0", "n": 3}, {"replica": "r1", "n": 3}, {"replica": "r2", "n": 3}]
    out = json.loads(
        run(
            home,
            "query",
            "SELECT request_id, prompt_ids FROM requests WHERE replica = {r:String} "
            "ORDER BY t_arrival",
            "-p",
            "r=r1",
            "--json",
        ).stdout
    )
    assert [o["request_id"] for o in out] == ["req-1", "req-4", "req-7"]
    assert out[0]["prompt_ids"] == [1, 22, 334]
    p = run(home, "query", "SELEKT nonsense", check=2)
    assert "query failed" in p.stderr and "Traceback" not in p.stderr
    table = run(
        home, "query", "SELECT replica, count() FROM requests GROUP BY replica ORDER BY replica"
    ).stdout
    assert "r0" in table and "r2" in table


def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, math.floor(q * len(s)))]


def test_stats_percentiles_match_the_data(home: str, tmp_path: Any) -> None:
    recs = [
        make_request(
            i,
            token_times_s=[
                0.01 * (i % 5 + 1),
                0.01 * (i % 5 + 1) + 0.002 * (i % 4 + 1),
                0.01 * (i % 5 + 1) + 0.003 * (i % 4 + 2),
            ],
            e2e_s=0.05 + 0.01 * i,
        )
        for i in range(60)
    ]
    f = tmp_path / "a.jsonl"
    f.write_bytes(encode_records(recs))
    run(home, "ingest", str(f))
    out = json.loads(run(home, "stats", "--json").stdout)["replicas"]
    assert [r["replica"] for r in out] == ["r0", "r1", "r2"]
    for r in out:
        mine = [x for x in recs if x.replica == r["replica"]]
        assert r["requests"] == len(mine)
        ttft = [x.ttft_s for x in mine]
        gaps = [
            b - a for x in mine for a, b in zip(x.token_times_s, x.token_times_s[1:], strict=False)
        ]
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
    assert {(r["replica"], r["deployment"]) for r in reps} == {
        (f"r{i}", d) for i in (1, 2, 3) for d in ("baseline", "canary")
    }  # two fleets, same replica names


# --- in process, through click's CliRunner (output is not a terminal there, as when piped) ---


def _load(home: str, tmp_path: Any, recs: list[Any]) -> None:
    from infdebug.collectors.ingest import ingest_paths
    from infdebug.store import open_store

    f = tmp_path / "recs.jsonl"
    f.write_bytes(encode_records(recs))
    st = open_store(home=home)
    try:
        ingest_paths(st, [str(f)], rejects_path=str(tmp_path / "rejects.jsonl"))
    finally:
        st.close()


def _invoke(home: str, *args: str, code: int = 0) -> Any:
    from click.testing import CliRunner

    from infdebug.cli import cli

    res = CliRunner().invoke(cli, ["--home", home, *args], catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res


def test_stats_groups_by_replica_within_its_deployment(home: str, tmp_path: Any) -> None:
    # r3 of stable and r3 of canary are different pods: two rows, named as analyze names them.
    recs = [make_request(i, replica="r3", deployment="stable", ttft_s=0.010) for i in range(4)]
    recs += [
        make_request(10 + i, replica="r3", deployment="canary", ttft_s=0.050) for i in range(6)
    ]
    recs += [make_request(20 + i, replica="r1", deployment=None, ttft_s=0.020) for i in range(2)]
    _load(home, tmp_path, recs)
    out = json.loads(_invoke(home, "stats", "--json").stdout)["replicas"]
    assert [(r["replica"], r["deployment"], r["requests"]) for r in out] == [
        ("r1", None, 2),
        ("r3", "canary", 6),
        ("r3", "stable", 4),
    ]
    assert [r["ttft_s"]["p50"] for r in out] == pytest.approx([0.020, 0.050, 0.010])
    cells = [
        [c.strip() for c in line.split("│")][:2]
        for line in _invoke(home, "stats").stdout.splitlines()
    ]
    assert (
        ["r3 (canary)", "6"] in cells and ["r3 (stable)", "4"] in cells and ["r1", "2"] in cells
    ), cells
    only = json.loads(_invoke(home, "stats", "--deployment", "canary", "--json").stdout)["replicas"]
    assert [(r["replica"], r["deployment"]) for r in only] == [("r3", "canary")]


def test_piped_output_is_not_wrapped_and_keeps_ids_whole(home: str, tmp_path: Any) -> None:
    replica = "replica-" + "x" * 90
    deployment = "canary-2025-01-31-" + "d" * 40
    rid = "chatcmpl-" + "0123456789abcdef" * 6
    _load(home, tmp_path, [make_request(0, replica=replica, deployment=deployment, request_id=rid)])
    stats = _invoke(home, "stats").stdout
    row = next(line for line in stats.splitlines() if replica in line)
    assert f"{replica} ({deployment})" in row and "n=" not in row, stats  # whole, on one line
    table = _invoke(
        home, "query", "SELECT request_id, replica, prompt_text, output_ids FROM requests"
    ).stdout
    row = next(line for line in table.splitlines() if rid in line)
    assert replica in row and "[7, 8, 2]" in row and len(row) > 200


def test_text_output_rounds_numbers_one_way() -> None:
    from infdebug.console import fmt_ms, fmt_number, fmt_percent, fmt_rate, fmt_seconds

    assert [fmt_number(x) for x in (0.04123, 4.123, 41.23, 412.3, 4123.4, -5.678, 0.0)] == [
        "0.04",
        "4.12",
        "41.2",
        "412",
        "4123",
        "-5.68",
        "0.00",
    ]
    assert (fmt_ms(0.0123), fmt_ms(0.00042), fmt_ms(1.5), fmt_ms(None)) == (
        "12.3",
        "0.42",
        "1500",
        "—",
    )
    assert (
        fmt_seconds(59.71),
        fmt_seconds(float("nan")),
        fmt_percent(0.1234),
        fmt_percent(None),
    ) == ("59.7 s", "—", "12.3%", "—")
    assert fmt_rate(2.994) == "2.99/s"


def test_query_help_lists_every_table(home: str) -> None:
    from infdebug.store import open_store

    st = open_store(home=home)
    try:
        _, rows = st.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
    finally:
        st.close()
    tables = {r[0] for r in rows if not str(r[0]).startswith(".")}
    assert {"requests", "gpu_samples", "events", "profile_samples", "otel_traces"} <= tables
    help_text = " ".join(_invoke(home, "query", "--help").stdout.split())
    for t in sorted(tables):
        assert f" {t}," in help_text or f" {t}." in help_text, t


def test_serve_help_lists_every_fault_the_replica_accepts(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infdebug.tracer.engine.faults import FAULTS

    help_text = " ".join(_invoke(str(tmp_path / "home"), "serve", "--help").stdout.split())
    assert "throttle" in help_text
    for f in FAULTS:
        assert f.spec in help_text and f.what in help_text, f
    fleet_help = " ".join(_invoke(str(tmp_path / "home"), "fleet", "--help").stdout.split())
    assert all(f.spec in fleet_help for f in FAULTS)
    # and the registry is what the replica parses: each example is accepted, nothing else is
    pytest.importorskip("torch", reason="the replica needs torch (pip install -e '.[engine]')")
    from infdebug.tracer.engine.replica import InjectionError, Injections

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jinja").write_text("{{ messages }}")
    (tmp_path / "tok").mkdir()
    assert Injections.parse([f.example for f in FAULTS]).raw == [f.example for f in FAULTS]
    with pytest.raises(InjectionError) as e:
        Injections.parse(["melt"])
    assert all(f.spec in str(e.value) for f in FAULTS)


def test_profile_without_py_spy_names_the_install_command(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as after `make demo`, which installs the engine extra only: no py-spy beside Python or on PATH
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setattr(sys, "executable", str(bare / "python"))
    monkeypatch.setenv("PATH", str(bare))
    res = _invoke(str(tmp_path / "home"), "profile", "--replica", "r1", "--duration", "1", code=2)
    err = " ".join(res.stderr.split())
    assert "py-spy is not installed" in err and "pip install 'infdebug[profile]'" in err
    assert ".venv/bin/pip install -e '.[profile]'" in err and "Traceback" not in res.output
