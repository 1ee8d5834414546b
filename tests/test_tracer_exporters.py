"""The tracer's exporters against each other: JSONL records, /metrics and OTLP spans (received
by a real OTLP/HTTP endpoint in the test) agree request for request; redaction reaches every
exporter; JSONL rotation, gzip, drop-oldest and SIGTERM durability."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (pip install -e '.[engine]')")
pytest.importorskip("opentelemetry.proto", reason="needs opentelemetry-proto")

import httpx  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from infdebug.schema import Request, decode_record, read_records  # noqa: E402
from infdebug.tracer.engine.engine import SamplingParams, Sequence  # noqa: E402
from infdebug.tracer.engine.make_model import make_model  # noqa: E402
from infdebug.tracer.engine.replica import Replica  # noqa: E402
from infdebug.tracer.engine.server import App  # noqa: E402
from infdebug.tracer.exporters import InMemoryExporter  # noqa: E402
from infdebug.tracer.jsonl import JsonlExporter  # noqa: E402
from infdebug.tracer.prom import ReplicaMetrics  # noqa: E402
from infdebug.tracer.tracer import ReplicaInfo, Tracer  # noqa: E402

SECRET = "Say hello to the quartermaster fleet."
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": SECRET}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_model(
        str(tmp_path_factory.mktemp("m") / "tiny-llama3"),
        preset="tiny",
        arch="llama",
        chat_format="llama3",
    )


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


def _serve(
    model_dir: str, tmp_path: Any, otlp: OtlpReceiver, **kw: Any
) -> tuple[Replica, TestClient]:
    kw.setdefault("otlp_endpoint", otlp.url)
    rep = Replica(
        model_dir,
        name="r-x",
        deployment="canary",
        max_model_len=256,
        max_batch=4,
        trace_dir=str(tmp_path / "trace"),
        **kw,
    )
    rep.start()
    return rep, TestClient(App(rep).app)


def _records(rep: Replica) -> list[Request]:
    assert rep.trace is not None
    recs = [r for _, r in read_records(rep.trace.path)]
    assert all(isinstance(r, Request) for r in recs)
    return recs  # type: ignore[return-value]


def _metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + (
                "{"
                + ",".join(
                    f"{k}={v}"
                    for k, v in sorted(s.labels.items())
                    if k not in ("replica", "model_name")
                )
                + "}"
                if len(s.labels) > 2
                else ""
            )
            assert s.labels.get("replica") == "r-x" or not s.labels, s
            out[key] = s.value
    return out


def test_jsonl_metrics_and_spans_agree_request_for_request(
    model_dir: str, tmp_path: Any, otlp: OtlpReceiver
) -> None:
    rep, c = _serve(model_dir, tmp_path, otlp)
    ids: list[str] = []
    for i in range(3):
        r = c.post(
            "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4 + i, "temperature": 0}
        )
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    for i in range(2):
        r = c.post(
            "/v1/completions",
            json={
                "prompt": "the fleet",
                "max_tokens": 6 + i,
                "temperature": 0.7,
                "top_p": 0.9,
                "seed": i,
            },
        )
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    rep.stop()  # drains the tracer: JSONL fsynced, spans flushed to the receiver
    metrics = _metrics(c.get("/metrics").text)
    c.close()

    recs = {r.request_id: r for r in _records(rep)}
    assert sorted(recs) == sorted(ids)  # the response ID is the trace's request_id
    for r in recs.values():
        assert (
            r.replica == "r-x"
            and r.deployment == "canary"
            and r.tokenizer_fp
            and r.prompt_ids
            and r.output_ids
        )
        assert r.ttft_s is not None and r.e2e_s is not None and r.queue_s is not None
        assert len(r.token_times_s or []) == len(r.output_ids)
    assert SECRET in (recs[ids[0]].prompt_text or "")

    # /metrics: counts and sums of every histogram agree with the records
    n = len(recs)
    assert metrics["infdebug_time_to_first_token_seconds_count"] == n
    assert metrics["infdebug_time_to_first_token_seconds_sum"] == pytest.approx(
        sum(r.ttft_s or 0 for r in recs.values())
    )
    assert metrics["infdebug_e2e_request_latency_seconds_count"] == n
    assert metrics["infdebug_e2e_request_latency_seconds_sum"] == pytest.approx(
        sum(r.e2e_s or 0 for r in recs.values())
    )
    assert metrics["infdebug_request_queue_time_seconds_sum"] == pytest.approx(
        sum(r.queue_s or 0 for r in recs.values())
    )
    assert metrics["infdebug_request_prefill_time_seconds_count"] == n
    gaps = sum(len(r.output_ids or []) - 1 for r in recs.values())
    assert metrics["infdebug_inter_token_latency_seconds_count"] == gaps
    assert metrics["infdebug_inter_token_latency_seconds_sum"] == pytest.approx(
        sum((r.e2e_s or 0) - (r.ttft_s or 0) for r in recs.values())
    )
    assert metrics["infdebug_generation_tokens_total"] == sum(
        len(r.output_ids or []) for r in recs.values()
    )
    assert metrics["infdebug_prompt_tokens_total"] == sum(
        len(r.prompt_ids or []) for r in recs.values()
    )
    assert (
        metrics["infdebug_prefix_cache_hits_total"]
        == sum(r.cached_prompt_tokens or 0 for r in recs.values())
        > 0
    )
    assert sum(v for k, v in metrics.items() if k.startswith("infdebug_request_success_total")) == n
    assert metrics["infdebug_num_requests_running"] == 0
    assert "infdebug_tracer_dropped_records_total{stage=jsonl}" in metrics
    assert (
        metrics["infdebug_request_queue_time_seconds_bucket{le=0.001}"] >= 0
    )  # queue buckets go below 300 ms

    # OTLP: one request span with prefill and decode children per record, same numbers
    roots = {s["attrs"]["infdebug.request_id"]: s for s in otlp.spans if not s["parent"]}
    assert sorted(roots) == sorted(ids)
    for rid, s in roots.items():
        r, a = recs[rid], s["attrs"]
        assert (
            s["resource"]["service.name"] == rep.model_name
            and s["resource"]["infdebug.replica"] == "r-x"
        )
        assert a["gen_ai.system"] == "infdebug" and a["gen_ai.request.model"] == rep.model_name
        assert a["gen_ai.operation.name"] == (
            "chat" if rid.startswith("chatcmpl-") else "text_completion"
        )
        assert a["gen_ai.usage.input_tokens"] == len(r.prompt_ids or [])
        assert a["gen_ai.usage.output_tokens"] == len(r.output_ids or [])
        assert a["gen_ai.latency.time_to_first_token"] == pytest.approx(r.ttft_s)
        assert a["gen_ai.latency.e2e"] == pytest.approx(r.e2e_s)
        assert a["gen_ai.latency.time_in_queue"] == pytest.approx(r.queue_s)
        assert a["gen_ai.response.finish_reasons"] == [r.finish_reason]
        assert a["gen_ai.request.max_tokens"] == (r.sampling or {})["max_tokens"]
        assert (
            a["infdebug.tokenizer_fp"] == r.tokenizer_fp
            and a["infdebug.template_fp"] == r.template_fp
        )
        assert (
            a["infdebug.prompt_token_ids"] == r.prompt_ids
            and a["infdebug.output_token_ids"] == r.output_ids
        )
        assert s["start"] == pytest.approx(r.t_arrival * 1e9, abs=1e3)
        assert (s["end"] - s["start"]) / 1e9 == pytest.approx(r.e2e_s, abs=1e-6)
        assert s["events"] == 0
        kids = {k["name"]: k for k in otlp.spans if k["parent"] == s["span_id"]}
        assert set(kids) == {"prefill", "decode"}
        assert kids["prefill"]["end"] == kids["decode"]["start"]
        assert (kids["decode"]["end"] - kids["decode"]["start"]) / 1e9 == pytest.approx(
            (r.e2e_s or 0) - (r.ttft_s or 0), abs=1e-6
        )


@pytest.mark.parametrize("redact", ["prompts", "all"])
def test_redaction_reaches_every_exporter(
    model_dir: str, tmp_path: Any, otlp: OtlpReceiver, redact: str
) -> None:
    rep, c = _serve(model_dir, tmp_path, otlp, redact=redact)
    r = c.post(
        "/v1/chat/completions",
        json={"messages": CHAT, "max_tokens": 8, "temperature": 0, "return_token_ids": True},
    )
    assert r.status_code == 200
    body = r.json()
    rep.stop()
    c.close()
    assert rep.trace is not None
    with open(rep.trace.path, encoding="utf-8") as f:
        raw = f.read()
    assert SECRET not in raw and "You are terse." not in raw
    (rec,) = _records(rep)
    assert rec.prompt_text is None and rec.output_text is None
    assert rec.messages == [{"role": "system"}, {"role": "user"}]
    assert rec.tokenizer_fp and rec.template_fp and rec.ttft_s is not None
    assert len(rec.token_times_s or []) == body["usage"]["completion_tokens"]
    (span,) = [s for s in otlp.spans if not s["parent"]]
    assert SECRET not in json.dumps(span)
    assert span["attrs"]["gen_ai.usage.input_tokens"] == len(body["prompt_token_ids"])
    if redact == "prompts":
        assert (
            rec.prompt_ids == body["prompt_token_ids"]
            and rec.output_ids == body["choices"][0]["token_ids"]
        )
        assert span["attrs"]["infdebug.prompt_token_ids"] == body["prompt_token_ids"]
    else:
        assert not rec.prompt_ids and not rec.output_ids  # left empty
        assert (
            "infdebug.prompt_token_ids" not in span["attrs"]
            and "infdebug.output_token_ids" not in span["attrs"]
        )


def test_otlp_endpoint_from_the_standard_environment_variable(
    model_dir: str, tmp_path: Any, otlp: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url)
    rep, c = _serve(model_dir, tmp_path, otlp, otlp_endpoint=None)
    rid = c.post("/v1/completions", json={"prompt": "fleet", "max_tokens": 3}).json()["id"]
    rep.stop()
    c.close()
    assert [s["attrs"]["infdebug.request_id"] for s in otlp.spans if not s["parent"]] == [rid]


def _rec(i: int, n_ids: int = 64) -> Request:
    return Request(
        request_id=f"q{i}",
        replica="r",
        t_arrival=1.7e9 + i,
        prompt_ids=list(range(n_ids)),
        output_ids=[i] * 8,
        ttft_s=0.01,
    )


def _read_any(path: str) -> list[str]:
    opener: Any = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return [decode_record(line).request_id for line in f if line.strip()]  # type: ignore[union-attr]


def test_jsonl_rotates_by_size_and_gzips(tmp_path: Any) -> None:
    ex = JsonlExporter(str(tmp_path), replica="r", max_bytes=2_000)
    for i in range(60):
        ex.export(_rec(i))
        if i % 7 == 0:
            time.sleep(0.01)  # several drained batches
    ex.shutdown()
    assert ex.rotated and all(
        p.endswith(".requests.jsonl.gz") and os.path.exists(p) for p in ex.rotated
    )
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    plain = [str(tmp_path / p) for p in sorted(os.listdir(tmp_path)) if p.endswith(".jsonl")]
    assert plain == [ex.path]  # only the live segment is uncompressed
    got = [rid for p in ex.rotated + [ex.path] for rid in _read_any(p)]
    assert got == [f"q{i}" for i in range(60)]  # nothing lost, nothing twice, in order


def test_jsonl_rotates_by_age(tmp_path: Any) -> None:
    ex = JsonlExporter(str(tmp_path), replica="r", max_bytes=None, max_age_s=0.2)
    ex.export(_rec(0))
    deadline = time.time() + 10
    while not ex.rotated and time.time() < deadline:
        time.sleep(0.05)
    ex.export(_rec(1))
    ex.shutdown()
    assert len(ex.rotated) >= 1
    assert [rid for p in ex.rotated + [ex.path] for rid in _read_any(p)] == ["q0", "q1"]


def test_jsonl_drops_oldest_when_full_and_counts_it(tmp_path: Any) -> None:
    m = ReplicaMetrics("r", "m")
    ex = JsonlExporter(
        str(tmp_path), replica="r", max_queue=3, on_drop=m.dropped("jsonl"), start=False
    )
    for i in range(10):
        ex.export(_rec(i))
    assert ex.dropped == 7
    labels = {"replica": "r", "model_name": "m", "stage": "jsonl"}
    assert m.registry.get_sample_value("infdebug_tracer_dropped_records_total", labels) == 7
    ex.start()
    ex.shutdown()
    assert _read_any(ex.path) == ["q7", "q8", "q9"]


class _Boom:
    """An exporter with a bug in every method."""

    def export(self, record: Request) -> None:
        raise RuntimeError("exporter bug")

    def shutdown(self) -> None:
        raise RuntimeError("shutdown bug")

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        raise RuntimeError("flush bug")


def test_tracer_never_raises_into_the_engine_and_counts_errors() -> None:
    keep = InMemoryExporter()
    tr = Tracer(ReplicaInfo(replica="r", model="m"), [_Boom(), keep])
    seq = Sequence("req-1", [1, 2, 3], SamplingParams(max_tokens=2), lambda ev: None, frozenset())
    seq.t_scheduled = seq.t0 + 0.001
    seq.t_prefill_done = seq.t0 + 0.002
    seq.output_ids += [5, 6]
    seq.token_times += [seq.t0 + 0.003, seq.t0 + 0.004]
    seq.finish_reason = "length"
    tr.step_tokens([seq], seq.t0)
    tr.finished(seq)
    tr.close()
    assert tr.errors == 2  # one export, one shutdown
    (rec,) = keep.records
    assert (
        rec.request_id == "req-1"
        and rec.output_ids == [5, 6]
        and rec.ttft_s == pytest.approx(0.003)
    )
    assert rec.finish_reason == "length"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_loses_no_finished_request(model_dir: str, tmp_path: Any) -> None:
    port = _free_port()
    trace = tmp_path / "trace"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infdebug.cli",
            "serve",
            "--model",
            model_dir,
            "--port",
            str(port),
            "--replica",
            "r-sig",
            "--trace-dir",
            str(trace),
            "--max-model-len",
            "256",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ids: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                httpx.get(base + "/health", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError(
                        proc.stderr.read() if proc.stderr else "server did not start"
                    ) from None
                time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in range(12):
                r = client.post(
                    "/v1/chat/completions",
                    json={"messages": CHAT, "max_tokens": 3 + i % 5, "temperature": 0},
                )
                assert r.status_code == 200, r.text
                ids.append(r.json()["id"])
            assert "infdebug_time_to_first_token_seconds_count" in client.get("/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # reads and closes the pipes
    assert proc.returncode == 0, err
    files = sorted(trace.glob("*.requests.jsonl"))
    assert len(files) == 1
    got = [r.request_id for _, r in read_records(str(files[0])) if isinstance(r, Request)]
    assert sorted(got) == sorted(ids)
