"""The sidecar as a proxy: what passes through is what the upstream sent, byte for byte and
event for event (a scripted upstream that sends awkward bytes, and a real ``infdebug
serve``); every failure reaches the client as one and is recorded; a client that leaves
cancels the upstream request; the records' token IDs say where they came from."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from proxyproc import SidecarThread, ThreadServer
from serveproc import ServeProc, free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from infdebug.sidecar.sse import SseReader
from infdebug.text.model_text import ModelText
from infdebug.tracer.engine.make_model import make_model

# --- a scripted upstream -------------------------------------------------------------------

JSON_BODY = (
    b'{"id":"cmpl-1",  "object":"chat.completion","choices":[{"index":0,"message":'
    b'{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n'
)
SSE_EVENTS = [
    {"id": "s1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "s1", "choices": [{"index": 0, "delta": {"content": "Hel"}, "token_ids": [7, 8]}]},
    {"id": "s1", "choices": [{"index": 0, "delta": {"content": "lo"}, "token_ids": [9]}]},
    {"id": "s1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "token_ids": []}]},
]
# awkward on purpose: CRLF line ends, a comment, events split across chunks
SSE_BYTES = (
    b": keep-alive\r\n\r\n"
    + b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in SSE_EVENTS)
    + b"data: [DONE]\r\n\r\n"
)


class Script:
    """The upstream's state the tests look at."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.seen_headers: list[dict[str, str]] = []


def scripted(script: Script) -> Starlette:
    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        script.seen_headers.append(dict(request.headers))
        how = body.get("model")
        if how == "json":
            r = Response(JSON_BODY, media_type="application/json")
            r.raw_headers += [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
            return r
        if how == "error400":
            return JSONResponse(
                {"error": {"message": "max_tokens too large", "type": "invalid_request_error"}},
                status_code=400,
            )
        if how == "hang-json":
            await asyncio.sleep(30)
        if how == "sse":

            async def gen() -> Any:
                for i in range(0, len(SSE_BYTES), 37):  # chunks that cut events anywhere
                    yield SSE_BYTES[i : i + 37]
                    await asyncio.sleep(0.001)

            return StreamingResponse(gen(), media_type="text/event-stream")
        if how in ("hang", "die", "slow", "malformed"):

            async def gen2() -> Any:
                yield b"data: " + json.dumps(SSE_EVENTS[1]).encode() + b"\n\n"
                if how == "malformed":
                    yield b"data: {not json\n\n"
                    yield b"data: [DONE]\n\n"
                    return
                if how == "die":
                    raise RuntimeError("the engine process died")
                try:
                    for _ in range(600):
                        await asyncio.sleep(0.05 if how == "slow" else 30)
                        yield b"data: " + json.dumps(SSE_EVENTS[2]).encode() + b"\n\n"
                except BaseException:
                    script.cancelled.set()
                    raise

            return StreamingResponse(gen2(), media_type="text/event-stream")
        return JSONResponse({"error": "unknown script"}, status_code=500)

    async def other(request: Request) -> Response:
        return PlainTextResponse("busy\n", status_code=503, headers={"retry-after": "3"})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/other/{rest:path}", other, methods=["GET", "POST"]),
        ]
    )


@pytest.fixture(scope="module")
def script() -> Any:
    s = Script()
    # its hung handlers ("hang-json" sleeps 30 s, and nothing cancels a handler that is not
    # streaming) would hold the shutdown until they end: cancelled after a second instead
    up = ThreadServer(scripted(s), timeout_graceful_shutdown=1)
    side = SidecarThread(up.url, upstream_timeout_s=1.0)
    yield s, up, side
    side.stop()
    up.stop()


def _post(url: str, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def _record(side: SidecarThread, rid: str) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        side.telemetry.tracer.force_flush(1000)
        got = [r for r in side.memory.records if r.request_id == rid]
        if got:
            return got[0]
        time.sleep(0.05)
    raise AssertionError(f"no record {rid}")


def test_bodies_and_headers_pass_unchanged(script: Any) -> None:
    _, up, side = script
    direct, via = _post(up.url, "json"), _post(side.url, "json")
    assert via.status_code == direct.status_code == 200
    assert via.content == direct.content == JSON_BODY
    assert via.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert via.headers["content-type"] == direct.headers["content-type"]
    rec = _record(side, "cmpl-1")
    assert rec.output_text == "Hi there" and rec.finish_reason == "stop"
    assert rec.prompt_tokens == 5 and rec.output_tokens == 2
    assert rec.output_ids is None or rec.output_ids == []  # no model dir: nothing derived
    # an unknown path, and its 503, pass through as they are
    d, v = httpx.get(up.url + "/other/x?q=1"), httpx.get(side.url + "/other/x?q=1")
    assert (v.status_code, v.content, v.headers["retry-after"]) == (503, b"busy\n", "3")
    assert d.content == v.content


def test_the_event_stream_is_the_upstreams(script: Any) -> None:
    _, up, side = script
    with httpx.stream(
        "POST",
        side.url + "/v1/chat/completions",
        json={"model": "sse", "stream": True, "messages": []},
    ) as r:  # noqa: E501
        got = b"".join(r.iter_raw())
    assert got == SSE_BYTES
    rec = _record(side, "s1")
    assert rec.output_text == "Hello" and rec.output_ids == [7, 8, 9]
    assert rec.derived is None or "output_ids" not in rec.derived  # the engine's own IDs
    times = rec.token_times_s
    assert len(times) == 3 and times[0] == times[1] <= times[2]  # one chunk, two tokens
    assert rec.ttft_s == times[0]


def test_upstream_errors_reach_the_client_and_are_recorded(script: Any) -> None:
    s, up, side = script
    r = _post(side.url, "error400")
    assert r.status_code == 400 and r.json() == _post(up.url, "error400").json()
    # a hung non-streamed answer: 504 with an OpenAI-style body
    r = _post(side.url, "hang-json")
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    # a stream that hangs, one that dies, one that is malformed: the client sees an error
    # event (or the bytes as sent), never a clean end
    for how in ("hang", "die"):
        events = _events(side.url, how)
        assert "error" in events[-1] and events[-1] != "[DONE]", how
    assert _events(side.url, "malformed")[-2:] == ["{not json", "[DONE]"]
    side.telemetry.tracer.force_flush(5000)
    recs = side.records(len(side.memory.records))
    errors = [r for r in recs if r.finish_reason == "error"]
    assert len(errors) >= 5
    assert any("max_tokens too large" in (r.error or "") for r in errors)
    assert any("did not answer in time" in (r.error or "") for r in errors)
    assert any("malformed SSE" in (r.error or "") for r in errors)
    # the official client raises on each, as it would against a failing engine
    client = openai.OpenAI(base_url=side.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="die", messages=[], stream=True):
            pass
    # no upstream at all: 502
    dead = SidecarThread(f"http://127.0.0.1:{free_port()}")
    try:
        r = _post(dead.url, "json")
        assert r.status_code == 502 and r.json()["error"]["type"] == "bad_gateway"
        assert dead.records(1)[0].finish_reason == "error"
    finally:
        dead.stop()


def _events(url: str, how: str) -> list[str]:
    reader, out = SseReader(), []
    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json={"model": how, "stream": True, "messages": []},
        timeout=30,
    ) as r:  # noqa: E501
        for chunk in r.iter_raw():
            out += [d.decode() for d in reader.feed(chunk)]
    return out


def test_a_client_that_leaves_cancels_the_upstream(script: Any) -> None:
    s, _, side = script
    n = len(side.memory.records)
    with httpx.stream(
        "POST",
        side.url + "/v1/chat/completions",
        json={"model": "slow", "stream": True, "messages": []},
    ) as r:  # noqa: E501
        next(r.iter_raw())
    assert asyncio.run(_wait(s.cancelled, 15)), "the upstream request was not cancelled"
    rec = side.records(n + 1)[-1]
    assert rec.finish_reason == "abort" and rec.abort_message == "the client disconnected"


async def _wait(ev: asyncio.Event, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not ev.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return ev.is_set()


def test_hop_by_hop_headers_stay_and_others_pass(script: Any) -> None:
    s, _, side = script
    httpx.post(
        side.url + "/v1/chat/completions",
        json={"model": "json", "messages": []},
        headers={
            "x-trace": "t1",
            "authorization": "Bearer k",
            "connection": "keep-alive, x-hop",
            "x-hop": "gone",
            "accept-encoding": "identity",
        },  # fmt: skip
    )
    seen = s.seen_headers[-1]
    assert seen["x-trace"] == "t1" and seen["authorization"] == "Bearer k"
    assert "x-hop" not in seen  # named by Connection: hop-by-hop
    assert seen["accept-encoding"] == "identity"  # the client's, not one the proxy adds


# --- a real engine: infdebug serve -------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def engine_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServeProc]]:
    """``infdebug serve`` on a tiny model, started when the module starts: it comes up while
    the scripted-upstream tests run."""
    root = tmp_path_factory.mktemp("sc-engine")
    model = make_model(str(root / "tiny"), preset="tiny", arch="llama", chat_format="chatml")
    up = ServeProc(model, root, replica="up", wait=False)
    yield model, up
    up.stop()


@pytest.fixture(scope="module")
def engine(engine_started: tuple[str, ServeProc]) -> Any:
    model, up = engine_started
    up.wait_ready()
    side = SidecarThread(up.url, model_dir=model)
    yield model, up, side
    side.stop()


# what differs between two runs of one request: its ID, its time, and its prefix-cache hits
VOLATILE = ("id", "created", "prompt_tokens_details")


def _normal(doc: Any) -> Any:
    """A body with what differs between two runs of the same request (its ID, its time) out."""
    if isinstance(doc, dict):
        return {k: _normal(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_normal(x) for x in doc]
    return doc


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


def test_the_official_client_gets_the_same_answers(engine: Any) -> None:
    _, up, side = engine
    direct = openai.OpenAI(base_url=up.url + "/v1", api_key="x")
    via = openai.OpenAI(base_url=side.url + "/v1", api_key="x")
    for c in (direct, via):
        assert [m.id for m in c.models.list()] == [m.id for m in direct.models.list()]
    kw: dict[str, Any] = {"model": "tiny", "messages": CHAT, "max_tokens": 12, "temperature": 0}
    a, b = direct.chat.completions.create(**kw), via.chat.completions.create(**kw)
    assert _normal(a.model_dump()) == _normal(b.model_dump())
    sa = [_normal(x.model_dump()) for x in direct.chat.completions.create(**kw, stream=True)]
    sb = [_normal(x.model_dump()) for x in via.chat.completions.create(**kw, stream=True)]
    assert sa == sb
    ca = direct.completions.create(model="tiny", prompt="Once", max_tokens=6, temperature=0)
    cb = via.completions.create(model="tiny", prompt="Once", max_tokens=6, temperature=0)
    assert _normal(ca.model_dump()) == _normal(cb.model_dump())


def test_raw_bodies_and_events_match_direct(engine: Any) -> None:
    _, up, side = engine
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 8, "temperature": 0,
            "return_token_ids": True}  # fmt: skip
    a = httpx.post(up.url + "/v1/chat/completions", json=body)
    b = httpx.post(side.url + "/v1/chat/completions", json=body)
    assert _normal(a.json()) == _normal(b.json())
    assert len(a.content) == len(b.content)  # same bytes, less an ID of the same length
    ea, eb = _sse(up.url, {**body, "stream": True}), _sse(side.url, {**body, "stream": True})
    assert [_normal(json.loads(x)) if x != "[DONE]" else x for x in ea] == [
        _normal(json.loads(x)) if x != "[DONE]" else x for x in eb
    ]


def _sse(url: str, body: dict[str, Any]) -> list[str]:
    reader, out = SseReader(), []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        for chunk in r.iter_raw():
            out += [d.decode() for d in reader.feed(chunk)]
    return out


def test_records_say_where_their_ids_came_from(engine: Any) -> None:
    model, up, side = engine
    mt = ModelText.load(model)
    n = len(side.memory.records)
    base = {"model": "tiny", "messages": CHAT, "max_tokens": 6, "temperature": 0}
    own = httpx.post(side.url + "/v1/chat/completions", json={**base, "return_token_ids": True})
    plain = httpx.post(side.url + "/v1/chat/completions", json={**base, "stream": True})
    assert own.status_code == plain.status_code == 200
    recs = {r.request_id: r for r in side.records(n + 2)[n:]}
    engine_rec = recs[own.json()["id"]]
    # the engine's IDs: not derived, and what the engine's own tracer recorded
    assert "prompt_ids" not in (engine_rec.derived or [])
    assert "output_ids" not in (engine_rec.derived or [])
    assert engine_rec.output_ids == own.json()["choices"][0]["token_ids"]
    up_recs = {r["request_id"]: r for r in _wait_records(up, own.json()["id"])}
    assert engine_rec.prompt_ids == up_recs[own.json()["id"]]["prompt_ids"]
    # the streamed one without IDs: the engine's /tokenize where it has one, else derived,
    # and derived IDs re-encode the rendered prompt exactly
    derived = next(r for rid, r in recs.items() if rid != own.json()["id"])
    assert "prompt_text" in (derived.derived or [])
    assert derived.prompt_text == mt.render(CHAT)
    if "prompt_ids" in (derived.derived or []):
        assert derived.prompt_ids == mt.encode_prompt(derived.prompt_text)
    assert derived.prompt_ids == engine_rec.prompt_ids  # one template, one tokenizer
    assert len(derived.token_times_s) == len(derived.output_ids) > 0
    assert derived.token_times_s == sorted(derived.token_times_s)


def _wait_records(up: ServeProc, rid: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        recs = up.records()
        if any(r["request_id"] == rid for r in recs):
            return recs
        time.sleep(0.2)
    raise AssertionError(f"the engine wrote no record {rid}")


def test_sidecar_cli_help_teaches(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from infdebug.cli import cli

    r = CliRunner().invoke(cli, ["sidecar", "--help"])
    assert r.exit_code == 0
    for word in ("--upstream", "--listen", "/infdebug/metrics", "derived", "502"):
        assert word in r.output
    r = CliRunner().invoke(cli, ["sidecar", "--upstream", "ftp://x", "--replica", "a"])
    assert r.exit_code == 2 and "http://" in r.output
