"""The reference engine behind its OpenAI-compatible API: real torch, real tokenizer and
chat template (from make-model), the official openai client against a real server process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (pip install -e '.[engine]')")

from starlette.testclient import TestClient  # noqa: E402

from infdebug.tracer.engine.make_model import make_model  # noqa: E402
from infdebug.tracer.engine.replica import Injections, Replica  # noqa: E402
from infdebug.tracer.engine.server import App  # noqa: E402

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the fleet."},
]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_model(
        str(tmp_path_factory.mktemp("m") / "tiny-llama3"),
        preset="tiny",
        arch="llama",
        chat_format="llama3",
    )


@pytest.fixture(scope="session")
def chatml_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_model(
        str(tmp_path_factory.mktemp("m") / "tiny-chatml"),
        preset="tiny",
        arch="qwen2",
        chat_format="chatml",
    )


@pytest.fixture
def client_for(model_dir: str) -> Iterator[Any]:
    made: list[tuple[Replica, TestClient]] = []

    def make(*injects: str, directory: str | None = None, **kw: Any) -> TestClient:
        rep = Replica(
            directory or model_dir,
            name="r-test",
            injections=Injections.parse(list(injects)),
            max_model_len=256,
            max_batch=4,
            **kw,
        )
        rep.start()
        c = TestClient(App(rep).app)
        made.append((rep, c))
        return c

    yield make
    for rep, c in made:
        c.close()
        rep.stop()


def _chat(c: TestClient, **kw: Any) -> dict[str, Any]:
    body = {
        "model": "tiny-llama3",
        "messages": CHAT,
        "max_tokens": 8,
        "temperature": 0,
        "return_token_ids": True,
    }
    body.update(kw)
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_chat_completion_returns_token_ids_and_is_deterministic(
    client_for: Any, model_dir: str
) -> None:
    c = client_for()
    a, b = _chat(c), _chat(c)
    assert a["choices"][0]["token_ids"] == b["choices"][0]["token_ids"]
    assert len(a["choices"][0]["token_ids"]) == a["usage"]["completion_tokens"] <= 8
    rep_ids = a["prompt_token_ids"]
    assert (
        rep_ids[0] != rep_ids[1]
    )  # one BOS: the template writes it, encoding does not add another
    # the second identical prompt hits the prefix cache
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    h = c.get("/health").json()
    assert h["status"] == "ok" and h["injections"] == [] and h["tokenizer_fp"] and h["template_fp"]


def test_completions_streaming_and_logprobs(client_for: Any) -> None:
    c = client_for()
    body = {
        "prompt": "The fleet",
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": 2,
        "return_token_ids": True,
    }
    whole = c.post("/v1/completions", json=body).json()
    ch = whole["choices"][0]
    assert len(ch["logprobs"]["token_logprobs"]) == len(ch["token_ids"])
    assert all(lp <= 0 for lp in ch["logprobs"]["token_logprobs"])
    with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert "".join(x["choices"][0]["text"] for x in chunks) == ch["text"]
    assert [t for x in chunks for t in x["choices"][0]["token_ids"]] == ch["token_ids"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        ({"model": "gpt-9", "prompt": "x"}, 404, "does not exist"),
        ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ({"prompt": "word " * 400, "max_tokens": 8}, 400, "exceeds the context"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": "x", "n": 2}, 400, "n=1"),
        ({"prompt": [1, 2, 99999999]}, 400, "out of the vocabulary"),
        ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    client_for: Any, body: Any, status: int, needle: str
) -> None:
    c = client_for()
    r = (
        c.post("/v1/completions", content=body)
        if isinstance(body, bytes)
        else c.post("/v1/completions", json=body)
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]
    assert c.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2}).status_code == 200


def test_inject_double_bos_repeats_bos(client_for: Any) -> None:
    base = _chat(client_for())["prompt_token_ids"]
    bad = _chat(client_for("double-bos"))["prompt_token_ids"]
    assert bad[0] == bad[1] == base[0] and bad[1:] == base


def test_inject_template_changes_the_prompt(client_for: Any, tmp_path: Any) -> None:
    tpl = tmp_path / "other.jinja"
    tpl.write_text(
        "{{ bos_token }}{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant:{% endif %}"
    )
    base = _chat(client_for())
    other_c = client_for(f"template={tpl}")
    other = _chat(other_c)
    assert other["prompt_token_ids"] != base["prompt_token_ids"]
    assert (
        other_c.get("/health").json()["template_fp"]
        != client_for().get("/health").json()["template_fp"]
    )


def test_inject_tokenizer_changes_the_ids(client_for: Any, model_dir: str, tmp_path: Any) -> None:
    other = tmp_path / "tok"
    other.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(model_dir, f), other / f)
    tj = json.loads((other / "tokenizer.json").read_text())
    tj["normalizer"] = {"type": "Lowercase"}  # a tokenizer upgrade that changes the normalizer
    (other / "tokenizer.json").write_text(json.dumps(tj))
    body = {"prompt": "Hello Fleet", "max_tokens": 2, "temperature": 0, "return_token_ids": True}
    a = client_for().post("/v1/completions", json=body).json()["choices"][0]["prompt_token_ids"]
    c = client_for(f"tokenizer={other}")
    b = c.post("/v1/completions", json=body).json()["choices"][0]["prompt_token_ids"]
    assert a != b
    assert c.get("/health").json()["injections"] == [f"tokenizer={other}"]


def test_inject_ignore_eos_drops_it_from_the_stop_set(client_for: Any) -> None:
    c = client_for()
    eos = c.app.state.infdebug.replica.eos_ids[0]
    ignored = client_for(f"ignore-eos={eos}")
    assert eos not in ignored.app.state.infdebug.replica.eos_ids
    assert ignored.get("/health").json()["injections"] == [f"ignore-eos={eos}"]
    # Steer both replicas' models to always predict that ID: a head whose bias favours it.
    for cl in (c, ignored):
        m = cl.app.state.infdebug.replica.model
        head = torch.nn.Linear(m.cfg.hidden_size, m.cfg.vocab_size, bias=True)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[eos] = 10.0
        m.lm_head = head
    body = {"prompt": [5, 6, 7], "max_tokens": 5, "temperature": 0, "return_token_ids": True}
    base = c.post("/v1/completions", json=body).json()["choices"][0]
    ign = ignored.post("/v1/completions", json=body).json()["choices"][0]
    assert base["finish_reason"] == "stop" and base["token_ids"] == [eos]
    assert ign["finish_reason"] == "length" and ign["token_ids"] == [eos] * 5


class _Times:
    def __init__(self) -> None:
        self.token_times: list[float] = []

    def admitted(self, seq: Any) -> None: ...
    def scheduled(self, seq: Any) -> None: ...
    def prefill_done(self, seq: Any) -> None: ...
    def step_tokens(self, seqs: Any, t: float) -> None: ...

    def finished(self, seq: Any) -> None:
        self.token_times = list(seq.token_times)


def test_inject_slow_sleeps_between_every_step(client_for: Any) -> None:
    times = _Times()
    c = client_for("slow=3", hooks=times)
    eng = c.app.state.infdebug.engine
    r = c.post("/v1/completions", json={"prompt": "a b c", "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    sleeps = list(eng.step_sleeps)
    gaps = [b - a for a, b in zip(times.token_times, times.token_times[1:], strict=False)]
    assert len(gaps) == 5 and len(sleeps) >= 4 and all(s > 0 for s in sleeps)
    # The first step prefills and decodes (tokens 1 and 2); after that every token arrives
    # only once the previous step's pause is over: the slowdown is in the serving path.
    assert all(g >= s for g, s in zip(gaps[1:], sleeps, strict=False))
    assert c.get("/health").json()["injections"] == ["slow=3"]


def test_inject_dtype_changes_the_numerics(client_for: Any) -> None:
    body = {"prompt": "The fleet answers", "max_tokens": 4, "temperature": 0, "logprobs": 0}
    a = (
        client_for()
        .post("/v1/completions", json=body)
        .json()["choices"][0]["logprobs"]["token_logprobs"]
    )
    c = client_for("dtype=bfloat16")
    b = c.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["token_logprobs"]
    assert c.app.state.infdebug.replica.model.lm_head.weight.dtype == torch.bfloat16
    assert a != b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_openai_client_streams_from_infdebug_serve(chatml_dir: str, tmp_path: Any) -> None:
    openai = pytest.importorskip("openai", reason="the official openai client is a test dependency")
    port = _free_port()
    trace = tmp_path / "trace"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infdebug.cli",
            "serve",
            "--model",
            chatml_dir,
            "--port",
            str(port),
            "--replica",
            "r1",
            "--trace-dir",
            str(trace),
            "--max-model-len",
            "512",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0
        )
        deadline = time.time() + 120
        while True:
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError(
                        proc.stderr.read() if proc.stderr else "server did not start"
                    ) from None
                time.sleep(0.1)
        name = models.data[0].id
        stream = client.chat.completions.create(
            model=name, messages=CHAT, max_tokens=12, temperature=0, stream=True
        )
        pieces = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
        whole = client.chat.completions.create(
            model=name, messages=CHAT, max_tokens=12, temperature=0
        )
        assert "".join(pieces) == whole.choices[0].message.content
        assert whole.usage and whole.usage.completion_tokens >= 1
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=CHAT, max_tokens=2)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)  # reads and closes the pipes (no ResourceWarning)
    from infdebug.schema import Event, Request, read_records

    files = list(trace.glob("*.requests.jsonl"))
    assert len(files) == 1
    recs = [r for _, r in read_records(str(files[0]))]
    assert len(recs) == 2 and all(isinstance(r, Request) for r in recs)
    assert all(
        r.replica == "r1" and r.prompt_ids and r.output_ids and r.ttft_s is not None for r in recs
    )
    # the replica's lifecycle, start to shutdown, with the duration of each phase
    events = [r for f in trace.glob("*.events.jsonl") for _, r in read_records(str(f))]
    assert [e.name for e in events if isinstance(e, Event)] == [
        "process_start",
        "weights_loaded",
        "warmup_done",
        "ready",
        "drain",
        "shutdown",
    ]
    assert all(
        isinstance(e, Event) and e.replica == "r1" and (e.duration_s or 0) >= 0 for e in events
    )
