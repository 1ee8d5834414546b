"""The OTLP/HTTP receiver: a real OTel SDK exporter and raw HTTP posts into it, through the
spool into ``otel_traces`` on a real store."""

from __future__ import annotations

import contextlib
import gzip
import json
import time
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from infdebug.collectors.otlp import OtlpReceiver, SpoolLoader
from infdebug.collectors.otlp_decode import OtlpDecodeError, decode_request
from infdebug.collectors.spool import Spool
from infdebug.store.base import Store


@pytest.fixture
def receiver(tmp_path: Any) -> Any:
    rx = OtlpReceiver(Spool(str(tmp_path / "spool")), port=0, max_body_bytes=1 << 20).start()
    yield rx
    rx.stop()


def _url(rx: OtlpReceiver) -> str:
    return f"http://127.0.0.1:{rx.port}/v1/traces"


def _send_sdk(rx: OtlpReceiver, n: int, *, gz: bool, token: str | None = None) -> set[str]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    exp = OTLPSpanExporter(
        endpoint=_url(rx),
        compression=Compression.Gzip if gz else Compression.NoCompression,
        headers=headers,
        timeout=10,
    )
    res = Resource.create({"service.name": "vllm", "service.instance.id": "replica-3"})
    provider = TracerProvider(resource=res)
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracer = provider.get_tracer("test-scope", "1.2")
    ids = set()
    for i in range(n):
        with tracer.start_as_current_span(
            "llm_request", kind=SpanKind.SERVER, attributes={"gen_ai.request.id": f"r{i}"}
        ) as sp:
            sp.add_event("first_token", {"i": i})
            ids.add(f"{sp.get_span_context().span_id:016x}")
    provider.shutdown()
    return ids


def _spans(store: Store) -> list[tuple[Any, ...]]:
    return store.query(
        "SELECT SpanId, SpanName, SpanKind, ServiceName, ResourceAttributes['service.instance.id'],"
        " SpanAttributes['gen_ai.request.id'], ScopeName, StatusCode, Events.Name, Duration "
        "FROM otel_traces ORDER BY SpanId"
    )[1]


@pytest.mark.parametrize("gz", [False, True])
def test_sdk_exporter_spans_land_in_otel_traces(receiver: Any, store: Store, gz: bool) -> None:
    ids = _send_sdk(receiver, 5, gz=gz)
    assert receiver.stats()["received"] == 5 and receiver.stats()["spans"] == 5
    loader = SpoolLoader(receiver.spool, lambda: store)
    assert loader.load_once(store) == 5
    rows = _spans(store)
    assert {r[0] for r in rows} == ids
    r = rows[0]
    assert r[1:4] == ("llm_request", "SPAN_KIND_SERVER", "vllm")
    assert r[4] == "replica-3" and r[5].startswith("r") and r[6] == "test-scope"
    assert r[7] == "STATUS_CODE_UNSET" and list(r[8]) == ["first_token"]
    assert loader.load_once(store) == 0  # loaded once
    assert len(_spans(store)) == 5
    assert receiver.spool.segments() == []  # loaded segments deleted


T0 = (time.time_ns() // 1_000_000_000) * 1_000_000_000  # recent: inside the TTL


def _json_body(n: int) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "s"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": f"{i + 1:016x}",
                                "name": "op",
                                "kind": 3,
                                "startTimeUnixNano": str(T0),
                                "endTimeUnixNano": str(T0 + 250_000_000),
                                "attributes": [
                                    {"key": "n", "value": {"intValue": "7"}},
                                    {"key": "ok", "value": {"boolValue": True}},
                                ],
                                "status": {"code": 2, "message": "boom"},
                            }
                            for i in range(n)
                        ],
                    }
                ],
            }
        ]
    }


def test_json_otlp_by_httpx(receiver: Any, store: Store) -> None:
    r = httpx.post(_url(receiver), json=_json_body(3))
    assert r.status_code == 200
    SpoolLoader(receiver.spool, lambda: store).load_once(store)
    _, rows = store.query(
        "SELECT TraceId, SpanKind, Duration, SpanAttributes, StatusCode, StatusMessage, "
        "toUnixTimestamp64Nano(Timestamp) FROM otel_traces"
    )
    assert len(rows) == 3
    tid, kind, dur, attrs, code, msg, ts = rows[0]
    assert tid == "5b8efff798038103d269b633813fc60c" and kind == "SPAN_KIND_CLIENT"
    assert dur == 250_000_000 and dict(attrs) == {"n": "7", "ok": "true"}
    assert (code, msg, ts) == ("STATUS_CODE_ERROR", "boom", T0)


def test_bad_requests_are_refused_and_the_receiver_keeps_serving(tmp_path: Any) -> None:
    rx = OtlpReceiver(Spool(str(tmp_path / "sp")), port=0, token="s3cret", max_body_bytes=4096)
    rx.start()
    try:
        url, auth = _url(rx), {"Authorization": "Bearer s3cret"}
        pb = {"Content-Type": "application/x-protobuf"}
        assert httpx.post(url, content=b"", headers=pb).status_code == 401
        assert httpx.post(url, content=b"x" * 5000, headers=auth | pb).status_code == 413
        for body, ct, enc in [
            (b"\xff\xff\xff\xff", "application/x-protobuf", ""),
            (b"{not json", "application/json", ""),
            (b"\x1f\x8b garbage", "application/x-protobuf", "gzip"),
            (b"[]", "application/json", ""),
        ]:
            r = httpx.post(
                url, content=body, headers=auth | {"Content-Type": ct, "Content-Encoding": enc}
            )
            assert r.status_code == 400 and "error" in r.json(), (body, r.text)
        body = gzip.compress(json.dumps(_json_body(1)).encode())
        hdr = auth | {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        assert httpx.post(url, content=body, headers=hdr).status_code == 200
        s = rx.stats()
        assert s["unauthorized"] == 1 and s["malformed"] == 5 and s["received"] == 1
        assert _send_sdk(rx, 1, gz=True, token="s3cret") and rx.stats()["received"] == 2
    finally:
        rx.stop()


def test_a_full_spool_answers_503_with_retry_after(tmp_path: Any) -> None:
    rx = OtlpReceiver(Spool(str(tmp_path / "sp"), max_bytes=600), port=0).start()
    said: list[str] = []
    rx._say = said.append
    try:
        codes = [httpx.post(_url(rx), json=_json_body(1)) for _ in range(8)]
        assert codes[0].status_code == 200
        full = [r for r in codes if r.status_code == 503]
        assert full and all(r.headers["Retry-After"] == "5" for r in full)
        assert rx.stats()["refused"] == len(full) == rx.spool.refused
        assert len(said) == 1 and "full" in said[0]
    finally:
        rx.stop()


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=300),
    st.sampled_from(["application/x-protobuf", "application/json", "text/plain"]),
    st.sampled_from(["", "gzip"]),
)
def test_the_decoder_raises_only_its_own_error(body: bytes, ct: str, enc: str) -> None:
    with contextlib.suppress(OtlpDecodeError):
        decode_request(body, ct, enc)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    ["resourceSpans", "scopeSpans", "spans", "traceId", "kind", "attributes", "x"]
                ),
                c,
                max_size=4,
            )
        ),
        max_leaves=20,
    )
)
def test_the_json_decoder_raises_only_its_own_error(doc: Any) -> None:
    with contextlib.suppress(OtlpDecodeError):
        decode_request(json.dumps(doc).encode(), "application/json")


def test_the_collect_otlp_command_receives_loads_and_stops(
    tmp_path: Any, migrated_home: str
) -> None:
    import signal
    import socket
    import subprocess
    import sys

    from conftest import REPO, copy_home

    from infdebug.store import open_store

    home = copy_home(migrated_home, str(tmp_path / "home"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from infdebug.cli import main; main()",
            "--home",
            home,
            "collect",
            "otlp",
            "--listen",
            f"127.0.0.1:{port}",
            "--status-listen",
            "off",
            "--json",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        end = time.monotonic() + 60
        while True:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/traces", json=_json_body(4))
                break
            except httpx.TransportError:
                assert time.monotonic() < end and proc.poll() is None
                time.sleep(0.1)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["otlp"]["received"] == 1 and doc["otlp"]["loaded_spans"] == 4, doc
    assert doc["pump"]["backlog_frames"] == 0, doc
    st = open_store(home=home)
    try:
        assert st.query("SELECT count() FROM otel_traces")[1][0][0] == 4
    finally:
        st.close()


def test_vllm_shaped_spans_become_request_records(receiver: Any, store: Store) -> None:
    # the attribute names of vllm/tracing.py SpanAttributes, set as vLLM's
    # output_processor does on its "llm_request" span (SpanKind.SERVER)
    exp = OTLPSpanExporter(endpoint=_url(receiver), timeout=10)
    res = Resource({"service.name": "vllm.llm_engine", "k8s.pod.name": "pod-7"})
    provider = TracerProvider(resource=res)
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracer = provider.get_tracer("vllm.llm_engine")
    for i in range(3):
        with tracer.start_as_current_span("llm_request", kind=SpanKind.SERVER) as sp:
            sp.set_attributes(
                {
                    "gen_ai.response.model": "meta-llama/Llama-3.1-8B",
                    "gen_ai.request.id": f"cmpl-{i}",
                    "gen_ai.request.temperature": 0.7,
                    "gen_ai.request.top_p": 0.9,
                    "gen_ai.request.max_tokens": 128,
                    "gen_ai.request.n": 1,
                    "gen_ai.usage.prompt_tokens": 40 + i,
                    "gen_ai.usage.completion_tokens": 12,
                    "gen_ai.latency.time_in_queue": 0.25,
                    "gen_ai.latency.time_to_first_token": 0.5,
                    "gen_ai.latency.e2e": 1.5 + i,
                    "gen_ai.latency.time_in_scheduler": 0.01,
                    "gen_ai.latency.time_in_model_forward": 0.8,
                    "gen_ai.latency.time_in_model_execute": 0.9,
                    "gen_ai.response.finish_reasons": ["length"],
                }
            )
    provider.shutdown()
    loader = SpoolLoader(receiver.spool, lambda: store)
    loader.load_once(store)
    assert loader.stats()["loaded_requests"] == 3
    _, rows = store.query(
        "SELECT request_id, replica, model, engine, queue_s, ttft_s, e2e_s, prompt_tokens, "
        "output_tokens, finish_reason FROM requests ORDER BY request_id"
    )
    assert [r[0] for r in rows] == ["cmpl-0", "cmpl-1", "cmpl-2"]
    assert rows[1][1:] == (
        "pod-7",
        "meta-llama/Llama-3.1-8B",
        "vllm",
        0.25,
        0.5,
        2.5,
        41,
        12,
        "length",
    )


def test_infdebug_tracer_spans_round_trip_to_request_records(receiver: Any, store: Store) -> None:
    from conftest import make_request

    from infdebug.tracer.otel import OtelExporter

    exp = OtelExporter(
        replica="r9", model="m", endpoint=f"http://127.0.0.1:{receiver.port}", deployment="canary"
    )
    now = time.time()
    for i in range(3):
        exp.export(make_request(i, replica="r9", t_arrival=now + i))
    exp.shutdown()
    SpoolLoader(receiver.spool, lambda: store).load_once(store)
    _, rows = store.query(
        "SELECT request_id, replica, deployment, model, engine, queue_s, ttft_s, e2e_s, "
        "prompt_ids, output_ids, finish_reason FROM requests ORDER BY request_id"
    )
    assert [r[0] for r in rows] == ["req-0", "req-1", "req-2"]
    want = make_request(1)
    assert rows[1][1:5] == ("r9", "stable", "m", "infdebug")  # the record's own deployment
    assert rows[1][5:8] == pytest.approx((want.queue_s, want.ttft_s, want.e2e_s))
    assert list(rows[1][8]) == want.prompt_ids and list(rows[1][9]) == want.output_ids
    assert rows[1][10] == "stop"
