"""The tracer and its exporters know the contract and the hook interface only: they import
no engine, they trace a request that is not the engine's ``Sequence``, and Prometheus and
OTel read everything from the ``request`` record (counts that survive ``--redact all``,
sampling parameters, messages). The wiring builds the same exporters for any caller."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from infdebug.schema import Request, read_records
from infdebug.tracer.exporters import Exporter, InMemoryExporter, token_counts
from infdebug.tracer.hooks import EngineHooks, TracedRequest
from infdebug.tracer.jsonl import JsonlExporter
from infdebug.tracer.prom import PromExporter, ReplicaMetrics
from infdebug.tracer.tracer import ReplicaInfo, Tracer
from infdebug.tracer.wiring import TracerConfig, make_tracer

SECRET = "the quartermaster's password"


@dataclass
class ProxiedRequest:
    """A request seen by something other than the reference engine (a proxy's view)."""

    request_id: str
    prompt_ids: list[int]
    output_ids: list[int]
    prompt_text: str | None = None
    output_text: str = ""
    messages: list[dict[str, Any]] | None = None
    output_logprobs: list[float] | None = None
    cached_tokens: int = 0
    finish_reason: str | None = "stop"
    t_arrival: float = field(default_factory=time.time)
    times: list[float] = field(default_factory=list)

    def timing(self) -> dict[str, Any]:
        return {
            "t_arrival": self.t_arrival,
            "queue_s": 0.001,
            "prefill_s": 0.002,
            "ttft_s": self.times[0] if self.times else None,
            "e2e_s": self.times[-1] if self.times else None,
            "token_times_s": list(self.times),
        }

    def sampling(self) -> dict[str, Any]:
        return {"temperature": 0.5, "top_p": 0.9, "max_tokens": 8, "stop_ids": [2]}

    def extra(self) -> dict[str, Any]:
        return {}


def _proxied(i: int = 0) -> ProxiedRequest:
    return ProxiedRequest(
        f"px-{i}",
        [1, 5, 7, 9],
        [11, 12, 2],
        prompt_text=SECRET,
        output_text="hi",
        messages=[{"role": "user", "content": SECRET}],
        cached_tokens=2,
        times=[0.01, 0.02, 0.03],
    )


def test_tracer_and_exporters_import_no_engine_and_no_torch() -> None:
    code = (
        "import sys\n"
        "import infdebug.tracer.hooks, infdebug.tracer.exporters, infdebug.tracer.tracer\n"
        "import infdebug.tracer.jsonl, infdebug.tracer.prom, "
        "infdebug.tracer.otel, infdebug.tracer.wiring\n"
        "bad = sorted(m for m in sys.modules "
        "if m.startswith('infdebug.tracer.engine') or m == 'torch')\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_a_request_that_is_not_the_engines_is_traced_and_redacted() -> None:
    mem = InMemoryExporter()
    tr = Tracer(ReplicaInfo(replica="px", model="m"), [mem], redact="all")
    hooks: EngineHooks = tr
    req: TracedRequest = _proxied()
    hooks.finished(req)
    assert tr.force_flush(10_000)
    (rec,) = mem.records  # exported before close: force_flush waited for the background thread
    assert rec.request_id == "px-0" and rec.replica == "px" and rec.finish_reason == "stop"
    assert (
        not rec.prompt_ids
        and not rec.output_ids
        and rec.prompt_text is None
        and rec.output_text is None
    )
    assert rec.prompt_tokens == 4 and rec.output_tokens == 3  # the lengths survive --redact all
    assert rec.messages == [{"role": "user"}]
    assert rec.sampling == {"temperature": 0.5, "top_p": 0.9, "max_tokens": 8, "stop_ids": [2]}
    assert rec.ttft_s == pytest.approx(0.01) and rec.cached_prompt_tokens == 2
    tr.close()
    assert mem.is_shutdown and tr.errors == 0 and tr.exported == 1


def test_in_memory_exporter_keeps_nothing_after_shutdown() -> None:
    mem = InMemoryExporter()
    ex: Exporter = mem
    ex.export(Request(request_id="a", replica="r", t_arrival=1.0))
    assert [r.request_id for r in mem.records] == ["a"] and ex.force_flush()
    mem.clear()
    ex.shutdown()
    ex.export(Request(request_id="b", replica="r", t_arrival=2.0))
    assert mem.records == []


def _redacted_record(**kw: Any) -> Request:
    base: dict[str, Any] = dict(
        request_id="r-1",
        replica="r",
        t_arrival=1.7e9,
        model="m",
        queue_s=0.001,
        prefill_s=0.01,
        ttft_s=0.02,
        e2e_s=0.05,
        token_times_s=[0.02, 0.03, 0.05],
        messages=[{"role": "user"}],
        cached_prompt_tokens=16,
        finish_reason="length",
        sampling={"temperature": 0.7, "top_p": 0.95, "max_tokens": 3},
        prompt_tokens=40,
        output_tokens=3,
    )
    base.update(kw)
    return Request(**base)


def test_token_counts_prefer_the_counts_then_the_ids() -> None:
    assert token_counts(_redacted_record()) == (40, 3)
    assert token_counts(
        _redacted_record(prompt_tokens=None, output_tokens=None, prompt_ids=[1, 2], output_ids=[3])
    ) == (2, 1)
    assert token_counts(_redacted_record(prompt_tokens=None, output_tokens=None)) == (
        0,
        3,
    )  # token times


def test_prometheus_reads_the_record_alone() -> None:
    m = ReplicaMetrics("r", "m")
    PromExporter(m).export(_redacted_record())
    lv = {"replica": "r", "model_name": "m"}
    assert m.registry.get_sample_value("infdebug_prompt_tokens_total", lv) == 40
    assert m.registry.get_sample_value("infdebug_generation_tokens_total", lv) == 3
    assert m.registry.get_sample_value("infdebug_prefix_cache_queries_total", lv) == 40
    assert m.registry.get_sample_value("infdebug_prefix_cache_hits_total", lv) == 16
    assert m.registry.get_sample_value("infdebug_inter_token_latency_seconds_count", lv) == 2
    assert (
        m.registry.get_sample_value(
            "infdebug_request_success_total", lv | {"finished_reason": "length"}
        )
        == 1
    )


def test_otel_spans_read_the_record_alone() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from infdebug.tracer.otel import OtelExporter

    spans = InMemorySpanExporter()
    ot = OtelExporter(replica="r", model="m", span_exporter=spans, schedule_delay_ms=10)
    ot.export(_redacted_record())
    ot.export(_redacted_record(request_id="r-2", messages=None, sampling=None))
    assert ot.force_flush(10_000)
    ot.shutdown()
    roots = {
        dict(s.attributes or {})["infdebug.request_id"]: s
        for s in spans.get_finished_spans()
        if s.parent is None
    }
    a = dict(roots["r-1"].attributes or {})
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.usage.input_tokens"] == 40 and a["gen_ai.usage.output_tokens"] == 3
    assert a["gen_ai.request.temperature"] == 0.7 and a["gen_ai.request.max_tokens"] == 3
    assert "infdebug.prompt_token_ids" not in a  # redacted: no IDs in the record
    b = dict(roots["r-2"].attributes or {})
    assert b["gen_ai.operation.name"] == "text_completion"
    assert not [
        k
        for k in b
        if k.startswith("gen_ai.request.")
        and k not in ("gen_ai.request.model", "gen_ai.request.id")
    ]
    prefill = [s for s in spans.get_finished_spans() if s.name == "prefill"]
    assert [dict(s.attributes or {})["gen_ai.usage.input_tokens"] for s in prefill] == [40, 40]


def test_jsonl_force_flush_writes_what_was_queued(tmp_path: Any) -> None:
    ex = JsonlExporter(str(tmp_path), replica="r")
    for i in range(5):
        ex.export(_redacted_record(request_id=f"q{i}"))
    assert ex.force_flush(10_000)
    assert [r.request_id for _, r in read_records(ex.path)] == [f"q{i}" for i in range(5)]  # type: ignore[union-attr]
    ex.shutdown()
    stopped = JsonlExporter(str(tmp_path / "s"), replica="r", start=False)
    assert stopped.force_flush(0)  # nothing queued
    stopped.export(_redacted_record())
    assert not stopped.force_flush(0)  # queued, and no writer thread
    stopped.shutdown()


def test_wiring_builds_the_exporters_from_the_config(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    info = ReplicaInfo(replica="w", model="m")
    t = make_tracer(
        TracerConfig(trace_dir=str(tmp_path), simulate_gpu=True, gpu_hz=50),
        info,
        load=lambda: (2, 1),
        max_batch=4,
    )
    assert [type(e).__name__ for e in t.tracer.exporters] == ["PromExporter", "JsonlExporter"]
    assert t.trace is t.tracer.exporters[1] and t.otlp_endpoint is None
    assert t.gpu_sampler is not None and t.gpu_trace is not None
    lv = {"replica": "w", "model_name": "m"}
    assert t.metrics.registry.get_sample_value("infdebug_num_requests_running", lv) == 2
    t.start()
    t.tracer.finished(_proxied())
    deadline = time.time() + 10
    while t.gpu_sampler.samples == 0 and time.time() < deadline:
        time.sleep(0.02)
    t.stop()
    assert [r.request_id for _, r in read_records(t.trace.path)] == ["px-0"]  # type: ignore[union-attr]
    assert any(True for _ in read_records(t.gpu_trace.path))

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    t = make_tracer(TracerConfig(redact="all"), info)
    assert [type(e).__name__ for e in t.tracer.exporters] == ["PromExporter", "OtelExporter"]
    assert t.trace is None and t.otlp_endpoint == "http://127.0.0.1:9" and t.tracer.redact == "all"
    assert t.tracer.exporters[1].token_ids is False  # type: ignore[attr-defined]
    t.stop()  # nothing was exported, so nothing is sent
