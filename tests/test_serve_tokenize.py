"""``/tokenize`` and ``/detokenize`` on the reference engine's server, in vLLM's shapes: a real
replica (make-model checkpoint: real tokenizer and chat template, real torch) behind the
server's Starlette app. A chat body's IDs are those a chat completion of the same messages
reports (``prompt_token_ids``); neither route leaves a trace record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="the engine needs torch (pip install -e '.[engine]')")

from starlette.testclient import TestClient  # noqa: E402

from infdebug.tracer.engine.make_model import make_model  # noqa: E402
from infdebug.tracer.engine.replica import Injections, Replica  # noqa: E402
from infdebug.tracer.engine.server import App  # noqa: E402

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the fleet."},
]
MAX_MODEL_LEN = 256


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_model(
        str(tmp_path_factory.mktemp("m") / "tiny-llama3"),
        preset="tiny",
        arch="llama",
        chat_format="llama3",
    )


class Served:
    def __init__(self, model_dir: str, trace_dir: Path, *injects: str) -> None:
        self.trace_dir = trace_dir
        self.replica = Replica(
            model_dir,
            name="r-tok",
            injections=Injections.parse(list(injects)),
            max_model_len=MAX_MODEL_LEN,
            max_batch=4,
            trace_dir=str(trace_dir),
        )
        self.replica.start()
        self.client = TestClient(App(self.replica).app)
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.client.close()
            self.replica.stop()

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for p in self.trace_dir.glob("*.requests.jsonl"):
            out += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        return out


@pytest.fixture(scope="module")
def served(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(model_dir, tmp_path_factory.mktemp("trace"))
    yield s
    s.stop()


def _tokenize(c: TestClient, **body: Any) -> dict[str, Any]:
    r = c.post("/tokenize", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _chat_prompt_ids(c: TestClient, **extra: Any) -> list[int]:
    body = {"max_tokens": 1, "temperature": 0, "return_token_ids": True, **extra}
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return list(r.json()["prompt_token_ids"])


def test_tokenize_messages_equals_the_chat_completions_prompt_ids(served: Served) -> None:
    c = served.client
    tok = _tokenize(c, model="tiny-llama3", messages=CHAT)
    assert set(tok) == {"count", "max_model_len", "tokens", "token_strs"}
    assert tok["tokens"] == _chat_prompt_ids(c, messages=CHAT)
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == MAX_MODEL_LEN
    assert tok["token_strs"] is None
    # one BOS: the template writes it; add_special_tokens (default false) adds another
    bos = served.replica.tokenizer.bos_id
    assert tok["tokens"][0] == bos and tok["tokens"][1] != bos
    doubled = _tokenize(c, messages=CHAT, add_special_tokens=True)["tokens"]
    assert doubled[:2] == [bos, bos] and doubled[1:] == tok["tokens"]
    # the options reach both routes alike
    no_gen = _tokenize(c, messages=CHAT, add_generation_prompt=False)["tokens"]
    assert no_gen == _chat_prompt_ids(c, messages=CHAT, add_generation_prompt=False)
    assert len(no_gen) < len(tok["tokens"]) and tok["tokens"][: len(no_gen)] == no_gen
    doubled_chat = _chat_prompt_ids(c, messages=CHAT, add_special_tokens=True)
    assert doubled_chat == doubled
    # template kwargs: neither route passes them to the template, so the IDs still agree
    kw = {"chat_template_kwargs": {"enable_thinking": False}}
    assert _tokenize(c, messages=CHAT, **kw)["tokens"] == tok["tokens"]
    assert _chat_prompt_ids(c, messages=CHAT, **kw) == tok["tokens"]


def test_tokenize_prompt_with_and_without_special_tokens(served: Served) -> None:
    c = served.client
    bos = served.replica.tokenizer.bos_id
    with_special = _tokenize(c, prompt="The fleet serves.")  # default true, as vLLM
    without = _tokenize(c, prompt="The fleet serves.", add_special_tokens=False)
    assert with_special["tokens"] == [bos, *without["tokens"]]
    assert bos not in without["tokens"] and without["count"] == len(without["tokens"]) > 0
    # the completions route encodes a prompt string the same way
    r = c.post("/v1/completions", json={"prompt": "The fleet serves.", "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens"] == with_special["count"]


def test_detokenize_round_trips(served: Served) -> None:
    c = served.client
    text = "Hello, fleet: 42 replicas!"
    ids = _tokenize(c, prompt=text, add_special_tokens=False)["tokens"]
    r = c.post("/detokenize", json={"model": "tiny-llama3", "tokens": ids})
    assert r.status_code == 200, r.text
    assert r.json() == {"prompt": text}
    chat = _tokenize(c, messages=CHAT)["tokens"]
    prompt = c.post("/detokenize", json={"tokens": chat}).json()["prompt"]
    assert prompt.startswith("<|begin_of_text|>")  # special tokens kept, as vLLM decodes
    assert prompt == served.replica.render(CHAT)
    assert c.post("/detokenize", json={"tokens": []}).json() == {"prompt": ""}


def test_token_strs_when_asked(served: Served) -> None:
    c = served.client
    tok = _tokenize(c, messages=CHAT, return_token_strs=True)
    strs = tok["token_strs"]
    assert isinstance(strs, list) and len(strs) == tok["count"]
    pieces = [served.replica.tokenizer.piece(i) for i in tok["tokens"]]
    assert strs == pieces  # the vocabulary's pieces, as vLLM's convert_ids_to_tokens
    assert strs[0] == "<|begin_of_text|>"
    assert _tokenize(c, prompt="hi", return_token_strs=False)["token_strs"] is None


def test_continue_final_message_as_transformers(served: Served, model_dir: str) -> None:
    c = served.client
    msgs = [*CHAT, {"role": "assistant", "content": "Hello, fl "}]
    body = {"messages": msgs, "add_generation_prompt": False, "continue_final_message": True}
    ids = _tokenize(c, **body)["tokens"]
    assert ids == _chat_prompt_ids(c, **body)
    text = c.post("/detokenize", json={"tokens": ids}).json()["prompt"]
    assert text.endswith("Hello, fl")  # the message left open: no end-of-turn after it
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(model_dir)
    want = hf.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=False, continue_final_message=True
    )
    assert text == want


@pytest.mark.parametrize(
    ("route", "body", "param", "needle"),
    [
        ("/tokenize", {}, "prompt", "'prompt' must be a string"),
        ("/tokenize", {"prompt": 7}, "prompt", "'prompt' must be a string"),
        ("/tokenize", {"prompt": "x", "add_special_tokens": "yes"}, "add_special_tokens", "true"),
        ("/tokenize", {"prompt": "x", "return_token_strs": 1}, "return_token_strs", "true"),
        ("/tokenize", {"prompt": "x", "messages": CHAT}, "messages", "not both"),
        ("/tokenize", {"messages": []}, "messages", "non-empty"),
        ("/tokenize", {"messages": [{"content": "x"}]}, "messages", "role"),
        ("/tokenize", {"messages": CHAT, "add_generation_prompt": 0}, "add_generation_prompt", ""),
        (
            "/tokenize",
            {"messages": CHAT, "continue_final_message": True},
            "continue_final_message",
            "both",
        ),
        ("/tokenize", {"messages": CHAT, "tools": "none"}, "tools", "list"),
        ("/tokenize", {"messages": CHAT, "chat_template_kwargs": 3}, "chat_template_kwargs", ""),
        ("/tokenize", {"messages": CHAT, "chat_template": "{{ x }}"}, "chat_template", "chat"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "add_special_tokens": 1},
            "add_special_tokens",
            "",
        ),
        ("/detokenize", {}, "tokens", "list of token IDs"),
        ("/detokenize", {"tokens": [1, -2]}, "tokens", "integers >= 0"),
        ("/detokenize", {"tokens": [1, True]}, "tokens", "list of token IDs"),
        ("/detokenize", {"tokens": [1, 10**9]}, "tokens", "out of the vocabulary"),
        ("/detokenize", {"tokens": [2**63]}, "tokens", "out of the vocabulary"),
    ],
)
def test_bad_bodies_get_a_400_naming_the_field(
    served: Served, route: str, body: dict[str, Any], param: str, needle: str
) -> None:
    r = served.client.post(route, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and needle in err["message"]
    assert err["param"] == param


def test_other_refusals(served: Served) -> None:
    c = served.client
    r = c.post("/tokenize", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = c.post("/tokenize", json={"model": "gpt-9", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = c.post("/detokenize", json={"model": "gpt-9", "tokens": [1]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert c.get("/tokenize").status_code == 405


def test_double_bos_fault_shows_in_tokenize(model_dir: str, tmp_path: Path) -> None:
    s = Served(model_dir, tmp_path / "trace", "double-bos")
    try:
        ids = _tokenize(s.client, messages=CHAT)["tokens"]
        assert ids[0] == ids[1] == s.replica.tokenizer.bos_id
        assert ids == _chat_prompt_ids(s.client, messages=CHAT)
    finally:
        s.stop()


def test_tokenize_and_detokenize_leave_no_trace_record(model_dir: str, tmp_path: Path) -> None:
    s = Served(model_dir, tmp_path / "trace")
    try:
        c = s.client
        ids = _chat_prompt_ids(c, messages=CHAT)  # one generation: one record
        for _ in range(3):
            _tokenize(c, messages=CHAT, return_token_strs=True)
            _tokenize(c, prompt="x")
            assert c.post("/detokenize", json={"tokens": ids}).status_code == 200
            assert c.post("/detokenize", json={"tokens": [10**9]}).status_code == 400
    finally:
        s.stop()
    records = s.records()
    assert len(records) == 1 and records[0]["prompt_ids"] == ids
