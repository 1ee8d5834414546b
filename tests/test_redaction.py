"""``--redact``: a secret planted in every text field of a request (message contents and
parts, names, tool calls and tools, stop strings, user, unknown fields, the prompt) appears
in no output under ``--redact prompts`` or ``all``: not in the JSONL trace (requests and
lifecycle events), not in any span (OTel SDK in-memory exporter in process, a raw OTLP/HTTP
endpoint for the ``infdebug serve`` process), not in ``/metrics``, not in the server's logs
(its stderr, at debug level, with an engine failure whose message quotes the prompt).
Token counts survive ``--redact all``. Under ``--redact none`` the same checks find the
secret, so they can see it where it is.
"""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (pip install -e '.[engine]')")
pytest.importorskip("opentelemetry.proto", reason="needs opentelemetry-proto")

import httpx  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from serveproc import ServeProc  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from infdebug.tracer.engine.make_model import make_model  # noqa: E402
from infdebug.tracer.engine.replica import Injections, Replica  # noqa: E402
from infdebug.tracer.engine.server import App  # noqa: E402
from infdebug.tracer.exporters import InMemoryExporter  # noqa: E402
from infdebug.tracer.otel import OtelExporter  # noqa: E402
from infdebug.tracer.tracer import ReplicaInfo, Tracer  # noqa: E402

S = "S3CR3T"  # every planted secret starts with this
POISON = "POISON"


def secret(where: str) -> str:
    return f"{S}-{where}"


def chat_body(stream: bool) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": secret("system-content")},
            {
                "role": "user",
                "name": secret("user-name"),
                "content": [{"type": "text", "text": secret("user-part")}],
            },
            {
                "role": "assistant",
                "content": secret("assistant-content"),
                "reasoning_content": secret("reasoning"),
                "tool_calls": [
                    {
                        "id": secret("call-id"),
                        "type": "function",
                        "function": {
                            "name": secret("call-name"),
                            "arguments": json.dumps({"q": secret("call-args")}),
                        },
                    }
                ],
            },
            {"role": "user", "content": secret("last"), "tool_call_id": secret("tool-call-id")},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": secret("tool-name"),
                    "description": secret("tool-description"),
                    "parameters": {
                        "type": "object",
                        "properties": {secret("prop"): {"type": "string"}},
                    },
                },
            }
        ],
        "stop": [secret("stop-1"), secret("stop-2")],
        "user": secret("user-field"),
        "metadata": {"k": secret("unknown-field")},
        "response_format": {"type": "json_schema", "json_schema": {"name": secret("schema")}},
        "max_tokens": 6,
        "temperature": 0,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


def completion_body(stream: bool, poison: bool = False) -> dict[str, Any]:
    return {
        "prompt": (f"{POISON} " if poison else "") + secret("prompt"),
        "stop": secret("stop-str"),
        "user": secret("user-field"),
        "suffix": secret("suffix"),
        "max_tokens": 6,
        "temperature": 0.7,
        "seed": 3,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("/v1/completions", {"prompt": "x", "temperature": secret("bad-temperature")}),
    ("/v1/chat/completions", {"messages": [{"role": secret("role"), "content": "x"}]}),
    ("/v1/completions", {"prompt": "x", "model": secret("model")}),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_model(
        str(tmp_path_factory.mktemp("m") / "tiny-llama3"),
        preset="tiny",
        arch="llama",
        chat_format="llama3",
    )


@dataclass
class Sent:
    """What the requests got back: one usage per accepted request, by request ID."""

    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # accepted, failed in the engine


def _send_all(c: Any) -> Sent:
    """Every request of the test through a client (Starlette's TestClient or httpx)."""
    sent = Sent()
    for path, body in (
        [("/v1/chat/completions", chat_body(s)) for s in (False, True)]
        + [("/v1/completions", completion_body(s)) for s in (False, True)]
        + [("/v1/completions", completion_body(s, poison=True)) for s in (False, True)]
    ):
        r = c.post(path, json=body)
        rid = r.headers["x-request-id"]
        if POISON in body.get("prompt", ""):
            sent.failed.append(rid)
            continue
        assert r.status_code == 200, r.text
        if body["stream"]:
            lines = [ln for ln in r.text.splitlines() if ln.startswith("data: {")]
            sent.usage[rid] = json.loads(lines[-1][6:])["usage"]
        else:
            sent.usage[rid] = r.json()["usage"]
    for path, body in REFUSED:
        assert 400 <= c.post(path, json=body).status_code < 500
    return sent


def _strings(v: Any) -> Iterator[str]:
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield str(k)
            yield from _strings(x)
    elif isinstance(v, list | tuple):
        for x in v:
            yield from _strings(x)
    elif v is not None:
        yield str(v)


def _span_text(sp: ReadableSpan) -> str:
    """Everything a span carries, as text: name, attributes, events, links, status,
    resource."""
    parts: list[Any] = [sp.name, dict(sp.attributes or {}), dict(sp.resource.attributes)]
    parts += [[e.name, dict(e.attributes or {})] for e in sp.events]
    parts += [dict(lk.attributes or {}) for lk in sp.links]
    parts.append(sp.status.description or "")
    return "\n".join(_strings(parts))


def _files_text(trace_dir: Path) -> str:
    out = []
    for p in sorted(trace_dir.glob("*")):
        data = p.read_bytes()
        out.append(gzip.decompress(data) if p.suffix == ".gz" else data)
    return b"\n".join(out).decode("utf-8")


def _records(trace_dir: Path) -> list[dict[str, Any]]:
    recs = []
    for p in trace_dir.glob("*.requests.jsonl"):
        recs += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return recs


def _prom_value(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    )


@pytest.mark.parametrize("redact", ["none", "prompts", "all"])
def test_no_secret_reaches_any_output_in_process(
    model_dir: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, redact: str
) -> None:
    caplog.set_level(logging.DEBUG)
    trace_dir = tmp_path / "trace"
    rep = Replica(
        model_dir,
        name="r-red",
        max_model_len=512,
        max_batch=4,
        trace_dir=str(trace_dir),
        redact=redact,  # type: ignore[arg-type]
        injections=Injections.parse([f"fail-request={POISON}"]),
    )
    spans = InMemorySpanExporter()
    otel = OtelExporter(
        replica=rep.name, model=rep.model_name, span_exporter=spans, token_ids=redact != "all"
    )
    rep.tracer.exporters.append(otel)  # beside the replica's own: JSONL and Prometheus
    rep.start()
    app = App(rep)
    with TestClient(app.app) as c:
        sent = _send_all(c)
        assert rep.tracer.force_flush(30_000)
        metrics = c.get("/metrics").text
    rep.stop()
    files = _files_text(trace_dir)
    span_texts = [_span_text(sp) for sp in spans.get_finished_spans()]
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    recs = _records(trace_dir)
    assert sorted(r["request_id"] for r in recs) == sorted([*sent.usage, *sent.failed])
    assert len([s for s in spans.get_finished_spans() if s.parent is None]) == len(recs)
    if redact == "none":  # the checks below can see a secret where there is one
        for where in ("system-content", "user-part", "stop-1", "stop-str", "prompt"):
            assert secret(where) in files, where
        assert secret("prompt") in logs  # the engine's failure quotes the prompt
        return
    assert S not in files
    assert all(S not in t for t in span_texts)
    assert S not in metrics
    assert S not in logs
    by_id = {r["request_id"]: r for r in recs}
    for rid, usage in sent.usage.items():
        r = by_id[rid]
        assert r["prompt_tokens"] == usage["prompt_tokens"]
        assert r["output_tokens"] == usage["completion_tokens"]
        assert r["sampling"]["stop"] == ["[redacted]"] * len(r["sampling"]["stop"])
        assert bool(r.get("prompt_ids")) == (redact == "prompts")
    assert all(by_id[rid]["finish_reason"] == "error" for rid in sent.failed)
    roots = {
        s.attributes["infdebug.request_id"]: s
        for s in spans.get_finished_spans()
        if s.parent is None and s.attributes
    }
    for rid, usage in sent.usage.items():
        attrs = roots[rid].attributes or {}
        assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
        assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    n_prompt = sum(r["prompt_tokens"] for r in recs)
    assert _prom_value(metrics, "infdebug_prompt_tokens_total") == n_prompt


def test_a_role_or_stop_from_another_engine_is_redacted_too() -> None:
    """The tracer's redaction for requests it did not see the door of (a proxy's): a role
    that is not a standard one is a client's text, and so is any string among the
    sampling parameters."""

    @dataclass
    class Proxied:
        request_id: str = "px-1"
        prompt_ids: list[int] = field(default_factory=lambda: [1, 2, 3])
        output_ids: list[int] = field(default_factory=lambda: [4])
        prompt_text: str | None = secret("prompt")
        output_text: str = secret("output")
        output_logprobs: list[float] | None = None
        messages: list[dict[str, Any]] | None = field(
            default_factory=lambda: [
                {"role": "user", "content": secret("content")},
                {"role": secret("role"), "content": "x"},
                {"role": ["odd"], "content": "x"},
            ]
        )
        cached_tokens: int = 0
        finish_reason: str | None = "stop"

        def timing(self) -> dict[str, Any]:
            return {"t_arrival": 1.0, "queue_s": 0.0, "prefill_s": 0.0, "ttft_s": 0.1,
                    "e2e_s": 0.1, "token_times_s": [0.1]}  # fmt: skip

        def sampling(self) -> dict[str, Any]:
            return {
                "temperature": 0.5,
                "stop": [secret("stop")],
                "grammar": secret("grammar"),
                "schema": {secret("key"): [secret("deep"), 3]},
                "stop_ids": [2],
            }

        def extra(self) -> dict[str, Any]:
            return {"error": secret("error"), "output_tokens": 1, "derived": ["prompt_text"]}

    mem = InMemoryExporter()
    tr = Tracer(ReplicaInfo(replica="px", model="m"), [mem], redact="prompts")
    tr.finished(Proxied())
    assert tr.force_flush(10_000)
    tr.close()
    (rec,) = mem.records
    assert S not in json.dumps(rec.messages) + json.dumps(rec.sampling)
    assert rec.messages == [{"role": "user"}, {"role": "[redacted]"}, {"role": "[redacted]"}]
    assert rec.sampling is not None
    assert rec.sampling["temperature"] == 0.5 and rec.sampling["stop_ids"] == [2]
    assert rec.sampling["stop"] == ["[redacted]"] and rec.prompt_ids == [1, 2, 3]
    # what a proxy adds: the engine's error text redacted, counts and provenance kept
    assert rec.error == "[redacted]" and rec.output_tokens == 1
    assert rec.derived == ["prompt_text"] and S not in json.dumps(msgspec.to_builtins(rec))


class RawOtlp:
    """A real OTLP/HTTP endpoint that keeps every request body as received (decompressed):
    a secret anywhere in any span is in these bytes."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self._closed = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                outer.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def usage(self) -> dict[str, tuple[int, int]]:
        """Request ID → (input, output) tokens of every request span received."""
        out: dict[str, tuple[int, int]] = {}
        for b in self.bodies:
            req = ExportTraceServiceRequest()
            req.ParseFromString(b)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        a = {x.key: x.value for x in sp.attributes}
                        if "infdebug.request_id" in a:
                            out[a["infdebug.request_id"].string_value] = (
                                a["gen_ai.usage.input_tokens"].int_value,
                                a["gen_ai.usage.output_tokens"].int_value,
                            )
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.server.shutdown()
        self.server.server_close()


SERVED_REDACT = ("prompts", "all")


@pytest.fixture(scope="module", autouse=True)
def started(
    model_dir: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[ServeProc, RawOtlp]]]:
    """A real ``infdebug serve`` per --redact mode, each exporting to its own OTLP endpoint,
    started side by side when the module starts (they come up while the in-process tests
    run; each test of them uses its own and stops it)."""
    out: dict[str, tuple[ServeProc, RawOtlp]] = {}
    try:
        for redact in SERVED_REDACT:
            otlp = RawOtlp()
            server = ServeProc(
                model_dir,
                tmp_path_factory.mktemp(f"serve-{redact}"),
                "--redact",
                redact,
                "--log-level",
                "debug",
                "--otlp-endpoint",
                otlp.url,
                "--max-model-len",
                "512",
                "--inject",
                f"fail-request={POISON}",
                replica="r-red",
                wait=False,
            )
            out[redact] = (server, otlp)
        yield out
    finally:
        for server, otlp in out.values():
            server.stop()
            otlp.close()


@pytest.fixture(scope="module")
def served(
    started: dict[str, tuple[ServeProc, RawOtlp]],
) -> dict[str, tuple[ServeProc, RawOtlp]]:
    for server, _ in started.values():
        server.wait_ready()
    return started


@pytest.mark.parametrize("redact", SERVED_REDACT)
def test_no_secret_in_what_infdebug_serve_writes_or_logs(
    served: dict[str, tuple[ServeProc, RawOtlp]], redact: str
) -> None:
    server, otlp = served[redact]
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            sent = _send_all(c)
            assert c.post("/v1/completions", content=b"x" * (5 << 20)).status_code == 413
            with c.stream("POST", "/v1/completions", json=completion_body(True)) as r:
                next(r.iter_lines())  # and go away mid-stream
            metrics = c.get("/metrics").text
            health = c.get("/health").text
        assert server.stop() == 0
    finally:
        server.stop()
        otlp.close()
    stderr = server.stderr()
    assert "InjectedFault" in stderr  # the engine's failure was logged, without its message
    assert S not in stderr, [ln for ln in stderr.splitlines() if S in ln][:3]
    assert S not in _files_text(server.trace_dir)
    assert otlp.bodies and all(S.encode() not in b for b in otlp.bodies)
    assert S not in metrics and S not in health
    recs = {r["request_id"]: r for r in server.records()}
    got = otlp.usage()
    for rid, usage in sent.usage.items():
        n = (usage["prompt_tokens"], usage["completion_tokens"])
        assert (recs[rid]["prompt_tokens"], recs[rid]["output_tokens"]) == n == got[rid]
        assert bool(recs[rid].get("output_ids")) == (redact == "prompts")
