"""``infdebug analyze``, run as a user runs it: a separate process per command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import REPO, make_request

from infdebug.schema import encode_records

# Until cli.py registers the command, run it in a throwaway group the same way.
RUNNER = (
    "import click, sys\n"
    "from infdebug.cli import cli\n"
    "from infdebug.cli.analyze import register\n"
    "if 'analyze' not in cli.commands: register(cli)\n"
    "cli(prog_name='infdebug')\n"
)


def run(home: str, *args: str, check: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFDEBUG_HOME": home, "COLUMNS": "120"}
    env.pop("INFDEBUG_CLICKHOUSE_URL", None)
    p = subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    if check is not None:
        assert p.returncode == check, p.stdout + p.stderr
    return p


def write_log(path: str, *, faulty: bool) -> str:
    recs = []
    for i in range(300):
        out = [20 + (i * 7 + k) % 900 for k in range(12)] + [2]
        finish = "stop"
        if faulty and i % 3 == 1 and i % 2 == 0:
            out, finish = [20, 21, 2, 22, 23], "length"
        recs.append(make_request(i, output_ids=out, finish_reason=finish))
    with open(path, "wb") as f:
        f.write(encode_records(list(recs)))
        f.write(b'{"kind": "request", "replica": 5}\n')  # a bad line: reported, not fatal
    return path


@pytest.fixture
def home(tmp_path: Any) -> str:
    return str(tmp_path / "home")


def test_analyze_log_json_finds_ignored_eot(tmp_path: Any, home: str) -> None:
    log = write_log(str(tmp_path / "bad.jsonl"), faulty=True)
    p = run(home, "analyze", log, "--json", "--only", "stop", check=1)
    doc = json.loads(p.stdout)
    kinds = {(f["kind"], f["scope"]["replica"]) for f in doc["findings"]}
    assert ("stop.end_of_turn_ignored", "r1") in kinds
    f = next(f for f in doc["findings"] if f["kind"] == "stop.end_of_turn_ignored")
    assert set(f) >= {
        "kind",
        "analyzer",
        "severity",
        "summary",
        "scope",
        "values",
        "evidence",
        "v",
        "t",
    }
    assert f["evidence"]["request_ids"][0] == "req-4" and f["evidence"]["first_eot_position"] == 2
    assert "rejected" in p.stderr
    assert "failed" not in doc
    assert not os.path.exists(os.path.join(home, "clickhouse"))  # the user's store was not touched


def test_analyze_clean_log_exits_zero_and_prints(tmp_path: Any, home: str) -> None:
    log = write_log(str(tmp_path / "ok.jsonl"), faulty=False)
    p = run(home, "analyze", log, "--only", "stop", "--only", "repetition", check=0)
    assert "no findings" in p.stdout


def test_analyze_store_stores_findings_and_filters(tmp_path: Any, home: str) -> None:
    log = write_log(str(tmp_path / "bad.jsonl"), faulty=True)
    env = {**os.environ, "INFDEBUG_HOME": home}
    env.pop("INFDEBUG_CLICKHOUSE_URL", None)
    subprocess.run(
        [sys.executable, "-m", "infdebug.cli", "ingest", log],
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    p = run(home, "analyze", "--only", "stop", check=1)
    assert (
        "ERROR" in p.stdout and "stop.end_of_turn_ignored" in p.stdout and "request_ids" in p.stdout
    )
    p = run(
        home,
        "query",
        "SELECT count() AS n FROM findings WHERE kind LIKE 'stop.%'",
        "--json",
        check=0,
    )
    assert json.loads(p.stdout)[0]["n"] >= 1
    # Another replica, or a window before any request: nothing to report.
    run(home, "analyze", "--only", "stop", "--replica", "r0", "--no-store", check=0)
    p = run(home, "analyze", "--until", "2001-01-01T00:00:00Z", "--json", "--no-store", check=2)
    assert json.loads(p.stdout)["findings"] == []


def test_analyze_bad_arguments(tmp_path: Any, home: str) -> None:
    p = run(home, "analyze", "--only", "nope", check=2)
    assert "unknown analyzer nope" in p.stderr
    p = run(home, "analyze", "--since", "yesterday", check=2)
    assert "ISO-8601" in p.stderr
    p = run(home, "analyze", str(tmp_path / "missing.jsonl"), check=2)
    assert "nothing could be loaded" in p.stderr
    p = run(home, "analyze", "--help", check=0)
    assert "Exit code" in p.stdout and "--tokenizer" in p.stdout
