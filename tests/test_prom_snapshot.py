"""Prometheus exposition snapshots (``curl …/metrics > r1.prom``) ingest as ``metrics`` records:
real vLLM and SGLang expositions, detection by content, sample timestamps, malformed lines."""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import pytest

from infdebug.collectors.ingest import ingest_paths
from infdebug.collectors.prom_snapshot import INSTALL_HINT, read_exposition
from infdebug.store.queries import fetch_records

pytest.importorskip(
    "prometheus_client", reason="prometheus-client is installed with the engine extra"
)

VLLM = "vllm_metrics_v0_qwen2.5-coder-1.5b_aibrix-docs.prom"
SGLANG = "sglang_metrics_gemma2-9b_docs_2024-11.prom"


def _ingest(store: Any, tmp_path: Any, *paths: str, **kw: Any) -> Any:
    return ingest_paths(store, list(paths), rejects_path=str(tmp_path / "rejects.jsonl"), **kw)


def _rejects(rep: Any) -> list[dict[str, Any]]:
    if not rep.rejects_file:
        return []
    with open(rep.rejects_file, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _real(shared_data: str, name: str, tmp_path: Any, as_name: str) -> str:
    src = os.path.join(shared_data, "logs", name)
    if not os.path.exists(src):
        pytest.skip(f"{src} is absent")
    dst = str(tmp_path / as_name)
    shutil.copyfile(src, dst)
    os.utime(dst, (1_764_000_000.0, 1_764_000_000.0))
    return dst


def test_real_vllm_and_sglang_expositions_load(store: Any, tmp_path: Any, shared_data: str) -> None:
    v = _real(shared_data, VLLM, tmp_path, "vllm-r1.prom")
    s = _real(shared_data, SGLANG, tmp_path, "sglang-r2.prom")
    rep = _ingest(store, tmp_path, v, s)
    assert rep.exit_code() == 0 and rep.rejected == 0, rep.to_json()
    assert all(f.path_taken.startswith("prometheus exposition") for f in rep.files)
    recs = fetch_records(store, "metrics")
    assert {r.replica for r in recs} == {"vllm-r1", "sglang-r2"}
    assert {r.t for r in recs} == {
        1_764_000_000.0
    }  # the file's mtime: no sample carries a timestamp
    by = {(r.replica, r.name, r.type): r for r in recs if r.type != "summary"}
    ttft = by[("sglang-r2", "sglang:time_to_first_token_seconds", "histogram")]
    assert ttft.labels == {"name": "google/gemma-2-9b-it"}
    assert (
        ttft.buckets is not None
        and ttft.buckets["+Inf"] == 2124.0
        and ttft.buckets["0.04"] == 207.0
    )
    assert ttft.count == 2124.0 and ttft.sum == pytest.approx(656.0780844688416)
    assert by[("sglang-r2", "sglang:prompt_tokens_total", "counter")].value == 506780.0
    assert by[("sglang-r2", "sglang:cache_hit_rate", "gauge")].value == 10.61
    running = by[("vllm-r1", "vllm:num_requests_running", "gauge")]
    assert running.value == 0.0 and running.labels == {
        "model_name": "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    }
    assert by[("vllm-r1", "vllm:request_success_total", "counter")].labels == {
        "finished_reason": "stop",
        "model_name": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
    }
    assert by[("vllm-r1", "vllm:iteration_tokens_total", "histogram")].sum == 1103.0
    # the same snapshot again adds nothing
    again = _ingest(store, tmp_path, v, s)
    assert [f.status for f in again.files] == ["unchanged", "unchanged"]
    assert len(fetch_records(store, "metrics")) == len(recs)


def test_an_exposition_is_told_by_its_content_and_a_bad_line_is_a_reject(
    store: Any, tmp_path: Any
) -> None:
    p = tmp_path / "replica-7.txt"  # no .prom: told by its # HELP / # TYPE lines
    p.write_text(
        "# HELP vllm:num_requests_running Number of requests running.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="m"} 3.0\n'
        'vllm:num_requests_waiting{model_name="m" 2.0\n'  # line 4: unclosed labels
        "# TYPE vllm:e2e_request_latency_seconds histogram\n"
        'vllm:e2e_request_latency_seconds_bucket{le="0.5",model_name="m"} 4.0\n'
        'vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 5.0\n'
        'vllm:e2e_request_latency_seconds_count{model_name="m"} 5.0\n'
        'vllm:e2e_request_latency_seconds_sum{model_name="m"} 2.5\n'
        "this is not a sample\n"  # line 10
        "# TYPE vllm:preemptions counter\n"
        # a counter without _total, with its own timestamp (ms)
        "vllm:preemptions 7 1700000000000\n"
    )
    rep = _ingest(store, tmp_path, str(p))
    assert rep.rows["metrics"] == 3 and rep.rejected == 2 and rep.exit_code() == 3, rep.to_json()
    rejects = _rejects(rep)
    assert [(r["file"], r["line"]) for r in rejects] == [(str(p), 4), (str(p), 10)]
    assert all(r["reason"].startswith("malformed exposition line") for r in rejects)
    assert rejects[0]["raw"] == 'vllm:num_requests_waiting{model_name="m" 2.0'
    recs = {r.name: r for r in fetch_records(store, "metrics")}
    assert recs["vllm:num_requests_running"].replica == "replica-7"
    h = recs["vllm:e2e_request_latency_seconds"]
    assert (
        h.buckets == {"0.5": 4.0, "+Inf": 5.0}
        and h.count == 5.0
        and h.sum == 2.5
        and h.labels == {"model_name": "m"}
    )
    c = recs["vllm:preemptions"]  # keeps its exposed name (the parser would call it …_total)
    assert c.type == "counter" and c.value == 7.0 and c.t == 1_700_000_000.0


def test_summaries_give_sum_count_and_one_record_per_quantile(tmp_path: Any) -> None:
    p = tmp_path / "r3.prom"
    p.write_text(
        "# TYPE rpc_seconds summary\n"
        'rpc_seconds{quantile="0.5",svc="a"} 0.1\n'
        'rpc_seconds{quantile="0.99",svc="a"} 0.9\n'
        'rpc_seconds_sum{svc="a"} 12.0\n'
        'rpc_seconds_count{svc="a"} 40\n'
    )
    recs, rejects = read_exposition(str(p), replica="explicit")
    assert not rejects
    whole = [r for r in recs if r.count is not None]
    assert len(whole) == 1 and whole[0].sum == 12.0 and whole[0].labels == {"svc": "a"}
    q = {r.labels["quantile"]: r.value for r in recs if r.labels and "quantile" in r.labels}
    assert q == {"0.5": 0.1, "0.99": 0.9}
    assert {r.replica for r in recs} == {"explicit"} and {r.type for r in recs} == {"summary"}


def test_without_prometheus_client_the_error_names_the_install(
    store: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "r1.prom"
    p.write_text("# TYPE up gauge\nup 1\n")
    monkeypatch.setitem(sys.modules, "prometheus_client.parser", None)  # import fails
    rep = _ingest(store, tmp_path, str(p))
    assert rep.files[0].status == "error" and INSTALL_HINT in rep.files[0].message
    assert "prometheus-client" in rep.files[0].message and rep.exit_code() == 2
