"""Trace readers on the real Azure and Mooncake files, scaling, prompts with shared prefixes, and
the rate a load run really sends (against a tiny local server)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from infdebug.fleet.loadgen import LoadError, check_urls, run_load, summarize
from infdebug.fleet.prompts import TOKENS_PER_WORD, prompt_text, word_list
from infdebug.fleet.traces import TraceFormatError, TraceRequest, detect_format, plan, read_trace


def test_reads_the_real_azure_trace(shared_data: str) -> None:
    path = os.path.join(shared_data, "traces", "azure_llm_2023", "AzureLLMInferenceTrace_conv.csv")
    reqs = read_trace(path, limit=500)
    assert detect_format(path) == "azure" and len(reqs) == 500
    assert reqs[0].t_s == 0.0 and (reqs[0].input_tokens, reqs[0].output_tokens) == (374, 44)
    assert abs(reqs[1].t_s - (50.9951690 - 46.6805900)) < 1e-6  # 7 fractional digits kept
    assert all(b.t_s >= a.t_s for a, b in zip(reqs, reqs[1:], strict=False))
    assert reqs[0].line == 2 and not reqs[0].hash_ids


def test_reads_the_real_mooncake_trace(shared_data: str) -> None:
    path = os.path.join(shared_data, "traces", "mooncake_fast25", "conversation_trace.jsonl")
    reqs = read_trace(path, limit=300)
    assert detect_format(path) == "mooncake" and len(reqs) == 300
    first = reqs[0]
    assert (first.input_tokens, first.output_tokens, first.hash_ids[:3]) == (6758, 500, (0, 1, 2))
    assert all(r.input_tokens <= 512 * len(r.hash_ids) for r in reqs)
    assert reqs[-1].t_s > 0  # ms → s
    # the trace really shares prefixes: hash id 0 opens many requests
    assert sum(r.hash_ids[:1] == (0,) for r in reqs) > 1


@pytest.mark.parametrize(
    ("name", "content", "line", "expect"),
    [
        (
            "t.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n"
            "2023-11-16 18:15:46.68,10,2\n"
            "2023-11-16 18:15:47.1,ten,2\n",
            3,
            "integer ContextTokens",
        ),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,2\n", 2, "TIMESTAMP"),
        ("t.csv", "when,in,out\n", 1, "header"),
        (
            "t.jsonl",
            '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0]}\n'
            '{"timestamp": 1,\n',
            2,
            "syntax error",
        ),
        (
            "t.jsonl",
            '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
            "\n"
            '{"timestamp": 3, "output_length": 1}\n',
            3,
            "'input_length'",
        ),
        ("t.jsonl", '{"timestamp": 0, "input_length": -5, "output_length": 1}\n', 1, ">= 0"),
    ],
)
def test_a_bad_line_is_rejected_with_file_and_line(
    tmp_path: Any, name: str, content: str, line: int, expect: str
) -> None:
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(TraceFormatError) as e:
        read_trace(str(p))
    assert f"{p}:{line}:" in str(e.value) and expect in str(e.value)


def test_missing_file_and_unknown_format_are_named(tmp_path: Any) -> None:
    with pytest.raises(TraceFormatError, match="no such trace file"):
        read_trace(str(tmp_path / "nope.csv"))
    p = tmp_path / "t.txt"
    p.write_text("hello\n")
    with pytest.raises(TraceFormatError, match=r"t\.txt:1: expected an Azure"):
        read_trace(str(p))


TRACE = [
    TraceRequest(t, 1000 + 100 * i, 200, (), i + 1) for i, t in enumerate([0.0, 1.0, 1.0, 4.0, 6.0])
]


def test_time_scale_multiplies_the_trace_gaps() -> None:
    p = plan(TRACE, duration_s=3.0, time_scale=0.5)
    assert [r.at_s for r in p] == [0.0, 0.5, 0.5, 2.0, 3.0]


def test_rate_rescales_the_mean_gap_and_the_trace_wraps() -> None:
    p = plan(TRACE, duration_s=100.0, rate=4.0)
    gaps = [b.at_s - a.at_s for a, b in zip(p, p[1:], strict=False)]
    assert abs(sum(gaps) / len(gaps) - 0.25) < 0.02
    assert len(p) > len(TRACE) and p[5].source_line == TRACE[0].line  # wrapped around
    assert p[-1].at_s <= 100.0
    assert len(plan(TRACE, duration_s=100.0, rate=4.0, max_requests=7)) == 7
    with pytest.raises(ValueError, match="exactly one"):
        plan(TRACE, duration_s=1.0, rate=1.0, time_scale=1.0)


def test_lengths_are_scaled_and_clamped_to_the_context() -> None:
    p = plan(TRACE, duration_s=6.0, time_scale=1.0, length_scale=0.1)
    assert [(r.prompt_tokens, r.output_tokens) for r in p] == [(100 + 10 * i, 20) for i in range(5)]
    p = plan(
        TRACE,
        duration_s=6.0,
        time_scale=1.0,
        max_model_len=256,
        max_output_tokens=50,
        reserve_tokens=32,
    )
    assert all(r.output_tokens == 50 and r.prompt_tokens + r.output_tokens + 32 <= 256 for r in p)
    p = plan(TRACE, duration_s=6.0, time_scale=1.0, max_prompt_tokens=64)
    assert {r.prompt_tokens for r in p} == {64}


def test_mooncake_hash_ids_become_identical_prefixes() -> None:
    trace = [
        TraceRequest(0.0, 1200, 10, (7, 8, 9), 1),
        TraceRequest(0.1, 1100, 10, (7, 8, 11), 2),
        TraceRequest(0.2, 600, 10, (5, 8), 3),
    ]
    p = plan(trace, duration_s=0.2, time_scale=1.0, length_scale=0.1)  # 512-token blocks → 51
    assert p[0].blocks == ((7, 51), (8, 51), (9, 18)) and p[2].blocks == ((5, 51), (8, 9))
    a, b, c = (prompt_text(r, seed=3) for r in p)
    shared = len(os.path.commonprefix([a, b]).split())
    assert shared >= 2 * round(51 / TOKENS_PER_WORD) - 1  # blocks 7 and 8 are the same text
    assert c.split()[:5] != a.split()[:5]  # hash 5 is another block
    assert (
        prompt_text(p[0], seed=3) == a and prompt_text(p[0], seed=4) != a
    )  # deterministic by seed
    # requests without hash ids get their own text
    q = plan(TRACE, duration_s=1.0, time_scale=1.0, length_scale=0.1)
    assert prompt_text(q[0]) != prompt_text(q[1])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("torch", reason="make-model needs torch (pip install -e '.[engine]')")
    from infdebug.tracer.engine.make_model import make_model

    return make_model(str(tmp_path_factory.mktemp("m") / "tiny"), preset="tiny")


def test_prompt_length_roughly_matches_on_the_tiny_tokenizer(tiny_model: str) -> None:
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(os.path.join(tiny_model, "tokenizer.json"))
    p = plan(TRACE, duration_s=6.0, time_scale=1.0, length_scale=0.3)
    for r in p:
        n = len(tok.encode(prompt_text(r), add_special_tokens=False).ids)
        assert 0.8 * r.prompt_tokens <= n <= 1.25 * r.prompt_tokens, (n, r.prompt_tokens)
    assert len(set(word_list())) == len(word_list()) == 200


def test_only_local_urls_unless_allowed() -> None:
    assert check_urls(["http://127.0.0.1:8101/v1/", "http://localhost:9"]) == [
        "http://127.0.0.1:8101",
        "http://localhost:9",
    ]
    with pytest.raises(LoadError, match="not this machine"):
        check_urls(["http://10.0.0.5:8000"])
    assert check_urls(["http://10.0.0.5:8000"], allow_remote=True) == ["http://10.0.0.5:8000"]
    with pytest.raises(LoadError, match="expected http"):
        check_urls(["127.0.0.1:8000"])


# --- --rate R: R requests/s on average over the run ---------------------------------------------


def test_rate_is_the_average_over_the_run_on_every_real_trace(shared_data: str) -> None:
    # Rescaling by the whole trace's mean gap missed the rate wherever the replayed part is
    # burstier or quieter than the whole: the Azure conv trace opens with its longest gap
    # (1 req/s for 10 s sent 1 request), the code trace with a 143-s lull (3 req/s: 1.05).
    paths = [
        os.path.join(shared_data, "traces", "azure_llm_2023", f"AzureLLMInferenceTrace_{k}.csv")
        for k in ("conv", "code")
    ]
    paths += [
        os.path.join(shared_data, "traces", "mooncake_fast25", f"{k}_trace.jsonl")
        for k in ("conversation", "synthetic")
    ]
    for path in paths:
        trace = read_trace(path, limit=3000)
        for rate, duration in ((1.0, 10.0), (2.0, 20.0), (3.0, 60.0), (0.5, 7.0), (25.0, 4.0)):
            p = plan(trace, duration_s=duration, rate=rate)
            assert len(p) == round(rate * duration), (path, rate, duration, len(p))
            assert p[0].at_s == 0.0 and all(0.0 <= r.at_s <= duration for r in p)
            assert all(b.at_s >= a.at_s for a, b in zip(p, p[1:], strict=False))


def test_rate_keeps_the_trace_shape_and_spreads_a_trace_without_gaps() -> None:
    p = plan(TRACE, duration_s=10.0, rate=0.5)  # 5 requests: gaps 1, 0, 3, 2, (2) span 10 s
    assert [r.at_s for r in p] == pytest.approx([0.0, 1.25, 1.25, 5.0, 7.5])
    same_time = [TraceRequest(0.0, 10, 2, (), i) for i in range(4)]
    p = plan(same_time, duration_s=2.0, rate=3.0)
    assert [r.at_s for r in p] == pytest.approx([k / 3 for k in range(6)])


class _FakeReplica(BaseHTTPRequestHandler):
    """The OpenAI streaming surface run_load uses, answering at once; records arrivals."""

    arrivals: list[float] = []

    def log_message(
        self, format: str, *args: Any
    ) -> None:  # quiet: pytest output carries no prints
        pass

    def _json(self, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._json(
            {"data": [{"id": "m", "max_model_len": 2048}]}
            if self.path == "/v1/models"
            else {"replica": "fake", "running": 0, "waiting": 0}
        )

    def do_POST(self) -> None:
        type(self).arrivals.append(time.perf_counter())
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for chunk in (
            {"choices": [{"delta": {"content": "a"}, "finish_reason": None}]},
            {"choices": [{"delta": {"content": "b"}, "finish_reason": "length"}]},
            {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
        ):
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def fake_replica() -> Iterator[tuple[str, list[float]]]:
    arrivals: list[float] = []
    handler = type("Handler", (_FakeReplica,), {"arrivals": arrivals})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", arrivals
    finally:
        server.shutdown()
        server.server_close()


def test_load_sends_the_rate_it_is_given(
    fake_replica: tuple[str, list[float]], shared_data: str
) -> None:
    url, arrivals = fake_replica
    trace = read_trace(
        os.path.join(shared_data, "traces", "azure_llm_2023", "AzureLLMInferenceTrace_conv.csv"),
        limit=200,
    )
    rate, duration = 8.0, 2.5
    t0 = time.perf_counter()
    run = asyncio.run(
        run_load(
            [url],
            plan(trace, duration_s=duration, rate=rate, max_output_tokens=2),
            concurrency=8,
            drain_s=10,
            duration_s=duration,
        )
    )
    s = summarize(run)
    assert len(arrivals) == round(rate * duration) == s["total"]["sent"] == s["total"]["ok"]
    assert s["sent_per_s"] == pytest.approx(rate)
    assert max(arrivals) - t0 < duration + 0.5  # all of them within the run, as planned
    assert s["max_late_s"] < 0.5
