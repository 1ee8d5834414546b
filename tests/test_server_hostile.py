"""No request can hurt another: the reference server against hostile clients.

Sampling values the engine cannot sample with are refused at the door (400 naming the
parameter) and a failure inside the engine's step ends only the sequence that caused it;
malformed bodies (deep nesting, lone surrogates, NaN literals, wrong types) get OpenAI-style
400s and leave no trace record; bodies over the cap get 413; large prompts are tokenized off
the event loop (``/health`` answers meanwhile) and their memory goes back to the OS; slow
clients are cut off. A concurrent load of bystanders streams through all of it, and a seeded
fuzz of the request decoder (``requestfuzz.py``) never gets a 500. Real parts throughout: a
trained tiny model behind a real ``infdebug serve`` process, its real trace files. The
door's own checks, value by value, are ``test_limits.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (pip install -e '.[engine]')")

import httpx  # noqa: E402
from livefleet import trained_model  # noqa: E402
from requestfuzz import bodies, mutate  # noqa: E402
from serveproc import ServeProc  # noqa: E402

from infdebug.limits import Limits, RequestError  # noqa: E402
from infdebug.text.tokenizer import load_tokenizer  # noqa: E402
from infdebug.tracer.engine.checkpoint import load_checkpoint  # noqa: E402
from infdebug.tracer.engine.engine import Engine, EngineConfig, SamplingParams  # noqa: E402
from infdebug.tracer.engine.make_model import make_model  # noqa: E402
from infdebug.tracer.engine.replica import Replica  # noqa: E402
from infdebug.tracer.engine.server import App  # noqa: E402
from infdebug.tracer.hooks import NoHooks, TracedRequest  # noqa: E402

POISON = "POISON"  # the module's servers run with --inject fail-request=POISON
SERVE_ARGS = (
    "--max-model-len",
    "512",
    "--max-batch",
    "16",
    "--inject",
    f"fail-request={POISON}",
    "--header-timeout",
    "1",
)
SERVE_ENV = {"INFDEBUG_BODY_TIMEOUT": "2"}  # the environment variable, as --body-timeout 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_model(str(tmp_path_factory.mktemp("m") / "tiny"), preset="tiny", arch="llama")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> str:
    return trained_model(tmp_path_factory)


@pytest.fixture(scope="module", autouse=True)
def started(
    trained: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServeProc]]:
    """Two real servers of the trained model, started side by side when the module starts
    (they come up while the in-process tests run): "shared" for the tests that share one,
    "load" for the concurrent load, which stops it to read its trace."""
    out: dict[str, ServeProc] = {}
    try:
        for name, replica in (("shared", "r-h"), ("load", "r-load")):
            out[name] = ServeProc(
                trained,
                tmp_path_factory.mktemp(f"serve-{name}"),
                *SERVE_ARGS,
                replica=replica,
                env=SERVE_ENV,
                wait=False,
            )
        yield out
    finally:
        for s in out.values():
            s.stop()


@pytest.fixture(scope="module")
def servers(started: dict[str, ServeProc]) -> dict[str, ServeProc]:
    for s in started.values():
        s.wait_ready()
    return started


@pytest.fixture(scope="module")
def server(servers: dict[str, ServeProc]) -> ServeProc:
    return servers["shared"]


def _is_openai_error(r: httpx.Response, status: int | None = None) -> dict[str, Any]:
    assert status is None or r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    kind = "invalid_request_error" if r.status_code < 500 else "server_error"
    assert err["type"] == ("not_found_error" if r.status_code == 404 else kind), err
    return dict(err)


def _read_response(s: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length from a raw socket."""
    got = b""
    while b"\r\n\r\n" not in got:
        part = s.recv(65536)
        assert part, got
        got += part
    head, _, body = got.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        part = s.recv(65536)
        assert part, got
        body += part
    return head + b"\r\n\r\n" + body


# -- the engine: one sequence's failure is its own ----------------------------------------
class _Finished(NoHooks):
    def __init__(self) -> None:
        self.finished_ids: list[str] = []

    def finished(self, seq: TracedRequest) -> None:
        self.finished_ids.append(seq.request_id)


def _engine(tiny: str, **cfg: Any) -> tuple[Engine, _Finished]:
    model, _ = load_checkpoint(tiny, max_len=256)
    tok = load_tokenizer(tiny)
    hooks = _Finished()
    eng = Engine(
        model,
        eos_ids=[],
        decode_text=lambda ids: tok.decode(ids, skip_special_tokens=True),
        config=EngineConfig(max_model_len=256, max_batch=8, **cfg),
        hooks=hooks,
    )
    return eng, hooks


def _drive(eng: Engine, jobs: list[tuple[list[int], SamplingParams]]) -> list[list[Any]]:
    events: list[list[Any]] = [[] for _ in jobs]
    for i, (ids, p) in enumerate(jobs):
        eng.submit(ids, p, events[i].append, request_id=f"q{i}")
        eng.step()  # later requests join a running batch
    while eng.running or eng.waiting:
        eng.step()
    return events


@pytest.mark.parametrize("stage", ["sampling", "prefill"])
def test_a_sequence_that_fails_in_the_engine_fails_alone(tiny: str, stage: str) -> None:
    """Values no door should let through (a caller of the engine's own API can): a NaN
    temperature (NaN probabilities) or a token ID past the embedding table. Only that
    sequence ends, with an error; the batch it shared steps with runs to its end."""
    eng, hooks = _engine(tiny)
    ok = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    prompts = [list(range(5 + i, 15 + i)) for i in range(5)]
    jobs = [(p, ok) for p in prompts[:2]]
    if stage == "sampling":
        nan = SamplingParams(max_tokens=10, temperature=math.nan, ignore_eos=True)
        jobs.append((prompts[2], nan))
    else:
        jobs.append(([5, 6, eng.model.cfg.vocab_size + 7], ok))
    jobs += [(p, ok) for p in prompts[3:]]
    got = _drive(eng, jobs)
    reasons = [evs[-1].finish_reason for evs in got]
    assert reasons == ["length", "length", "error", "length", "length"]
    assert all(
        len([e for e in evs if e.token_id >= 0]) == 10 for i, evs in enumerate(got) if i != 2
    )
    assert sorted(hooks.finished_ids) == [f"q{i}" for i in range(5)]  # each once
    alone, _ = _engine(tiny)
    ref = _drive(alone, [(prompts[0], ok)])[0]
    assert [e.token_id for e in got[0]] == [e.token_id for e in ref]  # untouched by the failure


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-6, 0.009])
def test_tiny_temperatures_sample_safely(tiny: str, temperature: float) -> None:
    eng, _ = _engine(tiny)
    p = SamplingParams(max_tokens=6, temperature=temperature, seed=1, ignore_eos=True)
    (evs,) = _drive(eng, [(list(range(3, 20)), p)])
    assert evs[-1].finish_reason == "length" and len(evs) == 6


def test_a_failing_step_of_one_sequence_and_stop_finish_each_request_once(tiny: str) -> None:
    eng, hooks = _engine(tiny, fail_request=POISON)
    ok = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    events: list[list[Any]] = [[] for _ in range(4)]
    texts = ["fine", f"has {POISON} in it", "fine too", "waits"]
    for i in range(3):
        eng.submit(list(range(4 + i, 14 + i)), ok, events[i].append, f"q{i}", prompt_text=texts[i])
        eng.step()
    while eng.running:
        eng.step()
    assert [e[-1].finish_reason for e in events[:3]] == ["length", "error", "length"]
    eng.submit([5, 6, 7], ok, events[3].append, "q3")  # still waiting when the engine stops
    eng.stop()
    assert events[3][-1].finish_reason == "abort"
    assert sorted(hooks.finished_ids) == ["q0", "q1", "q2", "q3"]


# -- a seeded fuzz of the request decoder --------------------------------------------------
def test_fuzzed_bodies_get_a_result_or_a_4xx_never_a_crash(tiny: str) -> None:
    """2400 seeded mutations through the server's own request preparation (decoding,
    validation, the chat template, the tokenizer), in process."""
    rep = Replica(tiny, name="r-fuzz", max_model_len=256, max_batch=4)
    app = App(rep)
    try:
        _fuzz(app, rep.model_name)
    finally:
        app.close()
        rep.stop()


def _fuzz(app: App, name: str) -> None:
    chat, completion = bodies(name)
    rng = random.Random(20251201)
    outcomes = {"ok": 0, "4xx": 0}
    for i in range(2400):
        is_chat = i % 2 == 0
        raw = mutate(rng, chat if is_chat else completion)
        try:
            (app.prepare_chat if is_chat else app.prepare_completion)(raw)
            outcomes["ok"] += 1
        except RequestError as e:
            assert 400 <= e.status < 500, (raw[:200], e.status, e.message)
            err = e.payload()["error"]
            assert err["message"] and err["type"] in ("invalid_request_error", "not_found_error")
            outcomes["4xx"] += 1
    assert outcomes["ok"] > 100 and outcomes["4xx"] > 1000, outcomes


def test_fuzzed_bodies_over_http_never_get_a_500(server: ServeProc, trained: str) -> None:
    name = Path(trained).name
    chat, completion = bodies(name)
    rng = random.Random(7)
    before = len(server.records())
    accepted = 0
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for i in range(24):
            is_chat = i % 2 == 0
            raw = mutate(rng, chat if is_chat else completion)
            path = "/v1/chat/completions" if is_chat else "/v1/completions"
            r = c.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 200 or 400 <= r.status_code < 500, (raw[:200], r.text[:300])
            if r.status_code == 200:
                accepted += 1
                assert r.headers["x-request-id"]
            else:
                _is_openai_error(r)
    assert _wait_records(server, before + accepted) == before + accepted


def _wait_records(server: ServeProc, n: int, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while len(server.records()) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.2)  # one more writer cycle: nothing else arrives
    return len(server.records())


# -- over HTTP: malformed bodies, size, slow clients --------------------------------------
CMPL, CHATP = "/v1/completions", "/v1/chat/completions"
MSG = b'{"messages": [{"role": "user", "content": '


MALFORMED: list[tuple[str, bytes, str | None]] = [
    (CMPL, b'{"prompt": "x", "temperature": NaN}', None),
    (CMPL, b'{"prompt": "x", "stream": true, "stream_options": 3}', "stream_options"),
    (CMPL, b'{"prompt": "x", "stream": true, "stream_options": []}', "stream_options"),
    (CMPL, b'{"prompt": "x", "stream_options": {"include_usage": true}}', "stream_options"),
    (CMPL, b'{"prompt": "\\ud800 x"}', "prompt"),
    (CHATP, MSG + b'"\\udc00"}]}', "messages"),
    (CHATP, MSG + b"5}]}", "messages"),
    (CHATP, MSG + b'"x", "name": {}}]}', "messages"),
    (CHATP, MSG + b'"x"}], "tools": "f"}', "tools"),
    (CHATP, b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
    (CMPL, b"[" * 200_000 + b"]" * 200_000, None),
    (CMPL, b'{"prompt": "x", "top_p": 0}', "top_p"),
    (CMPL, b'{"prompt": "x", "seed": 99999999999999999999}', "seed"),
]


def test_malformed_requests_get_openai_errors_and_leave_no_trace(server: ServeProc) -> None:
    """Each body in turn: a 400 naming its parameter, no request ID, the server still well;
    then one writer cycle for all of them together: not one left a trace record."""
    before = len(server.records())
    for path, raw, param in MALFORMED:
        case = (path, raw[:80])
        r = httpx.post(server.url + path, content=raw, timeout=60)
        assert r.status_code == 400, (case, r.status_code, r.text[:300])
        err = _is_openai_error(r, 400)
        assert err["param"] == param, (case, err)
        assert "x-request-id" not in r.headers, case
        assert httpx.get(server.url + "/health").json()["status"] == "ok", case
        assert len(server.records()) == before, case
    assert _wait_records(server, before, timeout_s=0) == before, [
        (r.get("request_id"), (r.get("prompt_text") or "")[:80]) for r in server.records()[before:]
    ]


def test_bodies_over_the_cap_are_refused_with_413(server: ServeProc) -> None:
    cap = Limits().max_body_bytes
    # declared too large: refused from the headers alone, before a byte of body is read
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 52428800\r\n\r\n"
        )
        head = _read_response(s)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert b'"request_too_large"' in head
    big = b'{"prompt": "' + b"a" * cap + b'"}'
    r = httpx.post(server.url + "/v1/completions", content=big, timeout=60)
    _is_openai_error(r, 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    r = httpx.post(server.url + "/v1/completions", content=chunks(), timeout=60)
    _is_openai_error(r, 413)
    assert httpx.get(server.url + "/health").status_code == 200


def _closed_by_server(s: socket.socket, trickle: bytes = b"") -> bytes:
    """Read until the server closes the connection (sending ``trickle`` a byte at a time
    meanwhile, as a slowloris client does); what it sent before closing."""
    stop = threading.Event()

    def drip() -> None:
        for b in trickle:
            if stop.wait(0.2):
                return
            try:
                s.sendall(bytes([b]))
            except OSError:
                return

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    got = b""
    try:
        while True:
            part = s.recv(65536)
            if not part:
                break
            got += part
    except ConnectionResetError:
        pass
    finally:
        stop.set()
        t.join()
    return got


def test_slow_clients_are_cut_off(server: ServeProc) -> None:
    before = len(server.records())
    # silent: connects and sends nothing
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        assert _closed_by_server(s) == b""
    # slow headers: a header byte every 0.2 s, never the blank line
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        assert _closed_by_server(s, trickle=b"X-Slow: " + b"a" * 200) == b""
    # slow body: the headers, then 10 of the 100 bytes promised
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt":'
        )
        got = _closed_by_server(s, trickle=b'"' + b"a" * 200)
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    # a kept-alive connection whose next request's head stalls
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = _read_response(s)
        assert first.startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /health HTTP/1.1\r\n")
        assert _closed_by_server(s, trickle=b"X-Slow: " + b"a" * 200) == b""
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert _wait_records(server, before, timeout_s=0) == before


def test_a_large_prompt_is_tokenized_off_the_event_loop_and_its_memory_returned(
    server: ServeProc,
) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for _ in range(3):  # warm: the baseline includes what every request touches
            assert c.post(
                "/v1/completions", json={"prompt": "the fleet", "max_tokens": 4}
            ).is_success
    baseline = server.rss_mb()
    words = "hello world the fleet answers quickly " * 120_000
    body = json.dumps({"prompt": words[: Limits().max_body_bytes - 100], "max_tokens": 4})
    result: dict[str, httpx.Response] = {}

    def send() -> None:
        with httpx.Client(timeout=300) as c:
            result["r"] = c.post(
                server.url + "/v1/completions",
                content=body.encode(),
                headers={"content-type": "application/json"},
            )

    t = threading.Thread(target=send)
    t.start()
    seen_preparing = 0
    with httpx.Client(base_url=server.url, timeout=120) as c:
        while t.is_alive():
            h = c.get("/health").json()  # answered while the prompt is being tokenized
            seen_preparing = max(seen_preparing, int(h.get("preparing", 0)))
            time.sleep(0.02)
    t.join()
    err = _is_openai_error(result["r"], 400)
    assert err["code"] == "context_length_exceeded"
    assert seen_preparing >= 1, "/health never answered while the large prompt was prepared"
    deadline = time.monotonic() + 30
    while server.rss_mb() > baseline + 200 and time.monotonic() < deadline:
        time.sleep(0.25)
    assert server.rss_mb() <= baseline + 200, (baseline, server.rss_mb())


# -- concurrent load: bystanders stream while hostile requests arrive ----------------------
HOSTILE_400: list[tuple[str, bytes]] = [
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    ),
    ("/v1/completions", b'{"prompt": "x", "temperature": -1}'),
    ("/v1/completions", b'{"prompt": "x", "top_k": -5, "stream": true}'),
    ("/v1/completions", b'{"prompt": "x", "n": 3}'),
    ("/v1/completions", b'{"prompt": "x", "logprobs": 99}'),
    ("/v1/completions", b'{"prompt": "x", "stop": [""]}'),
    ("/v1/completions", b'{"prompt": "x", "stream": true, "stream_options": "yes"}'),
    ("/v1/completions", b'{"prompt": "\\udfff"}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 100000}'),
    ("/v1/chat/completions", b'{"messages": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}'),
    ("/v1/chat/completions", b'{"messages": [{"content": "no role"}]}'),
]


async def _bystander(c: httpx.AsyncClient, i: int, started: asyncio.Event) -> dict[str, Any]:
    body = {
        "messages": [{"role": "user", "content": f"What is {i} plus {i * 7}? Explain."}],
        "max_tokens": 160,
        "temperature": 1.0,
        "seed": 100 + i,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out: dict[str, Any] = {"chunks": [], "errors": []}
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        out["status"] = r.status_code
        out["id"] = r.headers.get("x-request-id")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                out["done"] = True
                continue
            d = json.loads(line[6:])
            if "error" in d:
                out["errors"].append(d)
            else:
                out["chunks"].append(d)
                if len(out["chunks"]) == 3:
                    started.set()
    return out


async def _poison(c: httpx.AsyncClient, stream: bool) -> tuple[str, int, bool]:
    body = {"prompt": f"a {POISON} prompt", "max_tokens": 50, "stream": stream}
    if not stream:
        r = await c.post("/v1/completions", json=body)
        assert r.status_code == 500, r.text
        assert _is_openai_error(r)["code"] == "engine_error"
        return r.headers["x-request-id"], r.status_code, False
    got_error = False
    async with c.stream("POST", "/v1/completions", json=body) as r:
        rid = r.headers["x-request-id"]
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"error"' in line:
                got_error = True
    return rid, r.status_code, got_error


async def _hostile(c: httpx.AsyncClient, path: str, raw: bytes) -> int:
    r = await c.post(path, content=raw, headers={"content-type": "application/json"})
    _is_openai_error(r)
    assert "x-request-id" not in r.headers
    return r.status_code


async def _walks_away(c: httpx.AsyncClient) -> str:
    body = {"prompt": "walk away", "max_tokens": 300, "ignore_eos": True, "stream": True}
    async with c.stream("POST", "/v1/completions", json=body) as r:
        rid = r.headers["x-request-id"]
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                break  # and close the connection mid-stream
    return rid


async def _load(url: str, n: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
        started = [asyncio.Event() for _ in range(n)]
        bystanders = [asyncio.create_task(_bystander(c, i, started[i])) for i in range(n)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 300)
        cap = Limits().max_body_bytes
        hostile = [_hostile(c, p, raw) for p, raw in HOSTILE_400]
        hostile.append(_hostile(c, "/v1/completions", b'{"prompt":"' + b"a" * cap + b'"}'))
        poison = [_poison(c, stream=k % 2 == 0) for k in range(4)]
        tiny_temp = c.post("/v1/completions", json={"prompt": "x", "temperature": 1e-300})
        statuses, poisoned, walked, tiny = await asyncio.gather(
            asyncio.gather(*hostile),
            asyncio.gather(*poison),
            asyncio.gather(*(_walks_away(c) for _ in range(2))),
            tiny_temp,
        )
        return {
            "bystanders": await asyncio.gather(*bystanders),
            "hostile": statuses,
            "poisoned": poisoned,
            "walked": walked,
            "tiny": tiny,
        }


def test_bystanders_stream_through_hostile_requests(servers: dict[str, ServeProc]) -> None:
    server = servers["load"]  # a server of its own: nothing but this load in its trace
    try:
        got = asyncio.run(_load(server.url, n=8))
        assert server.stop() == 0
    finally:
        server.stop()
    for b in got["bystanders"]:
        assert b["status"] == 200 and b.get("done") and not b["errors"], b["errors"]
        finish = [ch["choices"][0]["finish_reason"] for ch in b["chunks"] if ch["choices"]]
        assert finish[-1] == "length" and all(f is None for f in finish[:-1])
        assert b["chunks"][-1]["usage"]["completion_tokens"] == 160
    assert got["hostile"] == [400] * len(HOSTILE_400) + [413]
    assert all(s == 500 or err for _, s, err in got["poisoned"]), got["poisoned"]
    assert got["tiny"].status_code == 200, got["tiny"].text
    recs = server.records()
    ids = [r["request_id"] for r in recs]
    assert len(ids) == len(set(ids)), "a request left more than one trace record"
    by_id = {r["request_id"]: r for r in recs}
    accepted = (
        [b["id"] for b in got["bystanders"]]
        + [rid for rid, _, _ in got["poisoned"]]
        + got["walked"]
        + [got["tiny"].headers["x-request-id"]]
    )
    assert sorted(by_id) == sorted(accepted)  # refused requests left none
    assert all(by_id[b["id"]]["finish_reason"] == "length" for b in got["bystanders"])
    assert all(by_id[rid]["finish_reason"] == "error" for rid, _, _ in got["poisoned"])
    assert all(by_id[rid]["finish_reason"] in ("abort", "length") for rid in got["walked"])
    assert "Exception in ASGI application" not in server.stderr()  # no unhandled failure
