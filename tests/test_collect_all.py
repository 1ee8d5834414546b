"""``infdebug collect --otlp … --prometheus … --logs … --gpu``: several collectors in one
process on one embedded store, its status line and ``/metrics``; a store held by another
process (waited for, nothing lost or doubled) and a ``kill -9`` then restart."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import REPO, copy_home, make_request
from prometheus_client.parser import text_string_to_metric_families
from test_collect_prometheus import Engine, VllmV1
from test_spool import HOLDER, _batch

from infdebug.schema import encode_record
from infdebug.store import open_store

TIMEOUT = 90.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _eventually(cond: Any, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + TIMEOUT
    while not cond():
        assert proc is None or proc.poll() is None, f"collector exited waiting for {what}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _metrics(port: int) -> dict[tuple[str, str], float]:
    """The collector's own /metrics: (name, source label) -> value ({} when not up)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, s.labels.get("source", ""))] = s.value
    return out


class Collector:
    def __init__(self, home: str, args: list[str], stderr: Any) -> None:
        self.status_port = _port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from infdebug.cli import main; main()",
                "--home",
                home,
                "collect",
                *args,
                "--status-listen",
                f"127.0.0.1:{self.status_port}",
                "--status-every",
                "0.5",
                "--load-interval",
                "0.2",
                "--json",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )

    def metric(self, name: str, source: str = "") -> float:
        return _metrics(self.status_port).get((name, source), -1.0)

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0
        return dict(json.loads(out))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine()
    v = VllmV1()
    v.serve(10, 0.05, 0.02)
    e.body = v.body
    yield e
    e.close()


def _post(port: int, body: bytes) -> int:
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/traces",
        content=body,
        headers={"Content-Type": "application/x-protobuf"},
        timeout=10,
    )
    return r.status_code


def _counts(home: str) -> dict[str, Any]:
    st = open_store(home=home)
    try:
        q = {
            "spans": "SELECT count(), uniqExact(SpanId) FROM otel_traces",
            "requests": "SELECT count(), uniqExact(request_id) FROM requests",
            "metrics": "SELECT count(), uniqExact(replica) FROM metric_samples",
            "gpu": "SELECT count(), min(simulated) FROM gpu_samples",
        }
        return {k: tuple(st.query(sql)[1][0]) for k, sql in q.items()}
    finally:
        st.close()


def test_four_collectors_share_one_store_with_a_status_line_and_metrics(
    tmp_path: Any, migrated_home: str, engine: Engine
) -> None:
    home = copy_home(migrated_home, str(tmp_path / "home"))
    logs = tmp_path / "traces"
    logs.mkdir()
    with open(logs / "r9.jsonl", "wb") as fh:
        for i in range(30):
            fh.write(encode_record(make_request(i, request_id=f"log-{i}")))
    otlp = _port()
    err = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115 - read after the process ends
    c = Collector(
        home,
        [
            "--otlp",
            f"127.0.0.1:{otlp}",
            "--prometheus",
            f"r1={engine.url}",
            "--interval",
            "0.3",
            "--logs",
            str(logs),
            "--gpu",
            "--simulate-gpu",
            "--gpu-hz",
            "5",
            "--gpu-replica",
            "g1",
        ],
        err,
    )
    try:
        _eventually(lambda: c.metric("infdebug_collector_lag_seconds") >= 0, "/metrics", c.proc)
        assert _post(otlp, _batch(0, 25)) == 200
        assert _post(otlp, _batch(25, 25)) == 200
        _eventually(
            lambda: (
                c.metric("infdebug_collector_loaded_spans_total", "otlp") == 50
                and c.metric("infdebug_collector_loaded_metrics_total", "prometheus") > 0
                and c.metric("infdebug_collector_loaded_gpu_total", "gpu") > 0
                and c.metric("infdebug_collector_loaded_total", "logs") == 30
            ),
            "every source loaded",
            c.proc,
        )
        doc = c.stop()
    finally:
        c.kill()
        err.close()
    said = (tmp_path / "stderr.txt").read_text()
    assert "collecting: OTLP on http://127.0.0.1:" in said and "SIMULATED GPU" in said
    assert "otlp " in said and "lag " in said and "spool " in said  # the status line
    assert doc["otlp"]["loaded_spans"] == 50 and doc["logs"]["loaded"] == 30
    assert doc["prometheus"]["targets"] == 1 and doc["prometheus"]["targets_down"] == 0
    assert doc["pump"]["backlog_frames"] == 0
    n = _counts(home)
    assert n["spans"] == (50, 50)
    assert n["requests"] == (80, 80)  # 50 from the spans, 30 from the log, none twice
    assert n["metrics"][0] == doc["prometheus"]["loaded_metrics"] and n["metrics"][1] == 1
    assert n["gpu"][0] == doc["gpu"]["loaded_gpu"] and n["gpu"][1] == 1  # every one simulated


def test_a_held_store_is_waited_for_then_everything_lands_once(
    tmp_path: Any, migrated_home: str, engine: Engine
) -> None:
    home = copy_home(migrated_home, str(tmp_path / "home"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, home],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    otlp = _port()
    err = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115
    c: Collector | None = None
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        c = Collector(
            home,
            [
                "--otlp",
                f"127.0.0.1:{otlp}",
                "--prometheus",
                f"r1={engine.url}",
                "--interval",
                "0.3",
            ],
            err,
        )
        cc = c
        _eventually(lambda: cc.metric("infdebug_collector_store_waiting") == 1, "a wait", c.proc)
        for k in range(4):
            assert _post(otlp, _batch(k * 10, 10)) == 200  # acknowledged: spooled
        _eventually(lambda: cc.metric("infdebug_collector_backlog_frames") >= 4, "a backlog")
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(TIMEOUT) == 0
        _eventually(
            lambda: (
                cc.metric("infdebug_collector_loaded_spans_total", "otlp") == 40
                and cc.metric("infdebug_collector_store_waiting") == 0
            ),
            "the backlog loaded",
            c.proc,
        )
        doc = c.stop()
    finally:
        if c is not None:
            c.kill()
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for fh in (holder.stdin, holder.stdout):
            if fh is not None:
                fh.close()
        err.close()
    said = (tmp_path / "stderr.txt").read_text()
    assert said.count("waiting for the store") == 1 and "the store is back" in said
    assert doc["pump"]["store_waits"] == 1
    n = _counts(home)
    assert n["spans"] == (40, 40) and n["requests"] == (40, 40)
    assert n["metrics"][0] == doc["prometheus"]["loaded_metrics"] > 0


def test_kill_9_then_restart_loses_and_doubles_nothing(tmp_path: Any, migrated_home: str) -> None:
    home = copy_home(migrated_home, str(tmp_path / "home"))
    otlp = _port()
    err = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115
    try:
        c = Collector(home, ["--otlp", f"127.0.0.1:{otlp}", "--hold"], err)
        try:
            _eventually(lambda: c.metric("infdebug_collector_lag_seconds") >= 0, "up", c.proc)
            for k in range(20):
                assert _post(otlp, _batch(k * 50, 50)) == 200
        finally:
            c.proc.send_signal(signal.SIGKILL)  # whatever it was doing: maybe mid-load
            c.kill()
        c2 = Collector(home, ["--otlp", f"127.0.0.1:{otlp}"], err)
        try:
            _eventually(
                lambda: (
                    c2.metric("infdebug_collector_backlog_frames") == 0
                    and c2.metric("infdebug_collector_spool_bytes") == 0
                ),
                "the spool replayed",
                c2.proc,
            )
            c2.stop()
        finally:
            c2.kill()
    finally:
        err.close()
    n = _counts(home)
    assert n["spans"] == (1000, 1000) and n["requests"] == (1000, 1000)
