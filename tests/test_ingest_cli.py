"""``ingest --json`` and ``analyze --json`` print JSON on stdout whatever happens; ``analyze``
on log files reports rejected lines and notes the way ``ingest`` does."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import REPO, make_request

from infdebug.schema import encode_record, encode_records
from infdebug.store import open_store


def run(
    home: str,
    *args: str,
    check: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, "INFDEBUG_HOME": home, "COLUMNS": "200", **(env or {})}
    e.pop("INFDEBUG_CLICKHOUSE_URL", None)
    if not env or "INFDEBUG_MAX_LATENCY_S" not in env:
        e.pop("INFDEBUG_MAX_LATENCY_S", None)
    p = subprocess.run(
        [sys.executable, "-m", "infdebug.cli", *args],
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    if check is not None:
        assert p.returncode == check, p.stdout + p.stderr
    return p


def as_json(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc = json.loads(p.stdout)  # the whole of stdout is one JSON document
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def home(tmp_path: Any) -> str:
    return str(tmp_path / "home")


def test_ingest_json_on_failure(home: str, tmp_path: Any) -> None:
    doc = as_json(run(home, "ingest", str(tmp_path / "missing.jsonl"), "--json", check=2))
    assert "no such file" in doc["error"] and doc["errors"] and doc["files"] == 0
    doc = as_json(run(home, "ingest", str(tmp_path), "--max-latency", "soon", "--json", check=2))
    assert "--max-latency" in doc["error"]
    doc = as_json(
        run(home, "ingest", str(tmp_path), "--format", "xml", "--json", check=2)
    )  # click refuses it
    assert "xml" in doc["error"]
    doc = as_json(
        run(home, "ingest", str(tmp_path), "--json", env={"INFDEBUG_MAX_LATENCY_S": "-1"}, check=2)
    )
    assert "INFDEBUG_MAX_LATENCY_S" in doc["error"]
    good = tmp_path / "good.jsonl"
    good.write_bytes(encode_records([make_request(i) for i in range(3)]))
    held = open_store(home=home)  # another process holds the embedded store
    try:
        doc = as_json(run(home, "ingest", str(good), "--json", check=2))
    finally:
        held.close()
    assert doc["error"]


def test_ingest_reports_dropped_latencies_and_odd_files(home: str, tmp_path: Any) -> None:
    p = tmp_path / "clock.jsonl"
    p.write_bytes(encode_records([make_request(0), make_request(1, e2e_s=30.0, ttft_s=0.5)]))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    doc = as_json(
        run(
            home,
            "ingest",
            str(p),
            str(tmp_path / "empty.jsonl"),
            "--json",
            env={"INFDEBUG_MAX_LATENCY_S": "10"},
            check=0,
        )
    )
    assert doc["notes"] == [f"{p}: e2e_s 30 s past the 10 s ceiling: dropped (1 request)"]
    assert doc["max_latency_s"] == 10.0 and doc["rows"]["request"] == 2
    assert [f["status"] for f in doc["per_file"]] == ["loaded", "empty"]
    q = tmp_path / "clock2.jsonl"
    q.write_bytes(encode_record(make_request(2, ttft_s=1.7e9)))
    out = run(
        home, "ingest", str(q), str(tmp_path / "empty.jsonl"), "--max-latency", "86400", check=0
    )
    text = out.stdout + out.stderr
    assert f"{q}: ttft_s 1.7e9 s past the 86400 s ceiling: dropped (1 request)" in text.replace(
        "\n", ""
    )
    assert "empty file" in text and "unchanged" not in text


def test_analyze_logs_reports_rejects_with_file_and_line(home: str, tmp_path: Any) -> None:
    log = tmp_path / "incident.jsonl"
    log.write_bytes(
        encode_records([make_request(i) for i in range(30)])
        + b'{"kind": "request", "replica": 5}\n'
        + encode_record(make_request(31, ttft_s=-3.0))
    )
    p = run(home, "analyze", str(log), "--only", "stop", check=0)
    assert f"{log}:31:" in p.stderr.replace("\n", "")
    assert "queue_s" not in p.stderr and "ttft_s negative: dropped (1 request)" in p.stderr
    written = glob.glob(os.path.join(home, "rejects", "analyze-*.jsonl"))
    assert len(written) == 1 and written[0] in p.stderr.replace("\n", "")
    with open(written[0], encoding="utf-8") as fh:
        rej = [json.loads(line) for line in fh]
    assert [(r["file"], r["line"]) for r in rej] == [(str(log), 31)]
    assert not os.path.exists(os.path.join(home, "clickhouse"))  # the user's store was not touched

    doc = as_json(
        run(
            home,
            "analyze",
            str(log),
            "--only",
            "stop",
            "--json",
            "--rejects",
            str(tmp_path / "r.jsonl"),
            check=0,
        )
    )
    assert doc["ingest"]["rejected"] == 1 and doc["ingest"]["rejects_file"] == str(
        tmp_path / "r.jsonl"
    )
    assert doc["ingest"]["notes"] == [f"{log}: ttft_s negative: dropped (1 request)"]


def test_analyze_json_on_failure(home: str, tmp_path: Any) -> None:
    doc = as_json(run(home, "analyze", str(tmp_path / "missing.jsonl"), "--json", check=2))
    assert doc["error"].startswith("nothing could be loaded") and "no such file" in doc["error"]
    assert doc["findings"] == [] and doc["ingest"]["errors"]
    doc = as_json(run(home, "analyze", "--since", "yesterday", "--json", check=2))
    assert "--since" in doc["error"] and "ISO-8601" in doc["error"]
    doc = as_json(run(home, "analyze", "--only", "nope", "--json", check=2))
    assert "unknown analyzer nope" in doc["error"]
    doc = as_json(run(home, "analyze", "--bogus-flag", "--json", check=2))
    assert "--bogus-flag" in doc["error"]
    (tmp_path / "blob.jsonl").write_bytes(bytes(range(256)) * 8)
    doc = as_json(run(home, "analyze", str(tmp_path / "blob.jsonl"), "--json", check=2))
    assert "a binary file" in doc["error"] and doc["ingest"]["per_file"][0]["status"] == "error"
