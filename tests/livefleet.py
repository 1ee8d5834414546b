"""Logs the reference engine really produces with a fault injected: a fleet of in-process
replicas of one tiny checkpoint (trained by make-model to chat, with the tokenizer and chat
template make-model trains and writes), each behind the ``infdebug serve`` app and its
tracer, all answering the same chat conversations, each writing its own trace JSONL as
``serve --trace-dir`` does.

Requests go through the real HTTP handler (``server.App`` over an in-process ASGI transport,
so no sockets and no subprocesses), concurrently, so the engine batches them. Sampling is
seeded per conversation (temperature 1): every replica draws the same tokens wherever its
logits are the same. The trained model answers in a few words and ends its turn with the
end-of-turn ID, so a clean replica stops on almost every request and does not loop; a
random-weight one would run to ``max_tokens`` on most, hiding a replica that ignores EOS.

The checkpoint is trained once per test session (``trained_model``: a few seconds; the
session starts that in the background where a module will need it, see conftest.py) and
shared by every test that asks for it.

The faulty inputs are made from the model's own files: a variant of its chat template that
writes a fixed Llama-3.1-style system preamble, and a copy of its tokenizer with one
added-token flag changed (``rstrip`` on ``<|end_header_id|>``, which eats the blank line
after each header; same vocabulary and special-token IDs, other encodings).
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import torch
from conftest import trained_model_path, wait_for_training

from infdebug.text.template import load_template
from infdebug.text.tokenizer import TokenizerBundle, load_tokenizer
from infdebug.tracer.engine.make_model import is_trained, make_model
from infdebug.tracer.engine.replica import Injections, Replica
from infdebug.tracer.engine.server import App

CLEAN = ("r1", "r2")
EOT = "<|eot_id|>"
RSTRIP_TOKEN = "<|end_header_id|>"
PREAMBLE = (
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' -}}\n"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' ~ strftime_now('%d %b %Y') -}}\n"
    "{{- '<|eot_id|>' -}}\n"
)
SYSTEMS = ("You are terse.", "Answer in French.", "You are a careful assistant.")


def trained_model(
    factory: pytest.TempPathFactory,
    preset: str = "tiny",
    chat_format: str = "llama3",
    arch: str = "llama",
) -> str:
    """A make-model checkpoint trained to chat (the preset's default recipe), made once per
    test session under pytest's base temporary directory and shared after that."""
    path = trained_model_path(factory.getbasetemp(), preset, arch, chat_format)
    wait_for_training(path)  # the session may have started it (conftest.py)
    if not is_trained(path):
        threads = torch.get_num_threads()
        torch.set_num_threads(
            1
        )  # a 64-wide model trains as fast on one thread, and spares the other CPU
        try:
            make_model(path, preset=preset, arch=arch, chat_format=chat_format, train_steps=0)
        finally:
            torch.set_num_threads(threads)
    return path


def conversation(i: int) -> list[dict[str, Any]]:
    """Mixed shapes (with and without a system message, one or two user turns) and numbers
    of one to four digits."""
    msgs: list[dict[str, Any]] = []
    if i % 3 == 0:
        msgs.append({"role": "system", "content": SYSTEMS[i % len(SYSTEMS)]})
    msgs.append({"role": "user", "content": f"What is {i} plus {i * 37}? Explain briefly."})
    if i % 4 == 1:
        msgs.append({"role": "assistant", "content": f"It is {i * 38}."})
        msgs.append({"role": "user", "content": "And doubled?"})
    return msgs


def preamble_template(model_template: str) -> str:
    """The model's template with a fixed system block (knowledge cutoff, today's date) written
    after the BOS, as Llama 3.1's template does and this model's does not."""
    anchor = "{{- bos_token -}}\n"
    assert model_template.count(anchor) == 1, "the model's template does not start as expected"
    return model_template.replace(anchor, anchor + PREAMBLE)


def rstrip_tokenizer(model_dir: str, out_dir: str, token: str = RSTRIP_TOKEN) -> str:
    """A copy of the model's tokenizer files with ``rstrip`` set on ``token`` (in
    tokenizer.json and in tokenizer_config.json's added_tokens_decoder)."""
    os.makedirs(out_dir, exist_ok=True)
    changed = 0
    for name, key in (
        ("tokenizer.json", "added_tokens"),
        ("tokenizer_config.json", "added_tokens_decoder"),
    ):
        with open(os.path.join(model_dir, name), encoding="utf-8") as f:
            data = json.load(f)
        table = data[key]
        for entry in table.values() if isinstance(table, dict) else table:
            if entry["content"] == token:
                entry["rstrip"] = True
                changed += 1
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
    assert changed == 2, f"{token} not found in both tokenizer files"
    return out_dir


@dataclass
class LiveFleet:
    model_dir: str
    trace_dir: str
    model_name: str
    tokenizer: TokenizerBundle  # the model's own: the reference
    template: str  # the model's own chat template: the reference
    eot_id: int
    template_variant: str  # the template=FILE file
    tokenizer_variant: str  # the tokenizer=DIR directory
    faults: dict[str, list[str]]  # replica → its --inject specs (clean replicas: [])
    # replica → the chat completion responses it returned
    responses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def files(self, *replicas: str) -> list[str]:
        """The trace files (requests and lifecycle events) of these replicas."""
        out: list[str] = []
        for r in replicas:
            found = sorted(glob.glob(os.path.join(self.trace_dir, f"{r}-*.jsonl")))
            assert found, f"no trace of {r} in {self.trace_dir}"
            out += found
        return out

    def records(self, replica: str) -> list[dict[str, Any]]:
        out = []
        for p in self.files(replica):
            if p.endswith(".requests.jsonl"):
                with open(p, encoding="utf-8") as f:
                    out += [json.loads(line) for line in f if line.strip()]
        return out


async def _chat_all(app: App, model: str, n: int, max_tokens: int) -> list[dict[str, Any]]:
    transport = httpx.ASGITransport(app=app.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://replica", timeout=120.0
    ) as client:

        async def one(i: int) -> dict[str, Any]:
            body = {
                "model": model,
                "messages": conversation(i),
                "max_tokens": max_tokens,
                "temperature": 1.0,
                "seed": 1000 + i,
                "return_token_ids": True,
            }
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            out: dict[str, Any] = r.json()
            return out

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def serve_requests(
    model_dir: str,
    name: str,
    injects: list[str],
    trace_dir: str,
    n: int,
    max_tokens: int,
    max_batch: int,
) -> list[dict[str, Any]]:
    """Start replica ``name`` with ``injects``, send it conversations 0..n-1 through the chat
    endpoint, stop it (its tracer flushes and fsyncs the trace); returns the responses."""
    rep = Replica(
        model_dir,
        name=name,
        injections=Injections.parse(injects),
        device="cpu",
        max_batch=max_batch,
        max_model_len=1024,
        trace_dir=trace_dir,
    )
    rep.start()
    try:
        return asyncio.run(_chat_all(App(rep), rep.model_name, n, max_tokens))
    finally:
        rep.stop()


def build(
    root: str,
    model_dir: str,
    *,
    n: int = 48,
    max_tokens: int = 256,
    faulty: dict[str, str] | None = None,
) -> LiveFleet:
    """Make the faulty inputs for ``model_dir`` (a llama3-format checkpoint, see
    ``trained_model``) under ``root``, then run the fleet: r1 and r2 clean, and one replica
    per fault in ``faulty`` (replica → "double-bos", "template", "tokenizer" or
    "ignore-eos"; the faults' files and IDs are filled in here)."""
    tok = load_tokenizer(model_dir)
    template = load_template(model_dir)
    eot = tok.tok.token_to_id(EOT)
    assert eot is not None and eot in tok.eos_ids
    tpl_path = os.path.join(root, "preamble.jinja")
    with open(tpl_path, "w", encoding="utf-8") as f:
        f.write(preamble_template(template))
    tok_dir = rstrip_tokenizer(model_dir, os.path.join(root, "tokenizer-rstrip"))
    specs = {
        "double-bos": "double-bos",
        "template": f"template={tpl_path}",
        "tokenizer": f"tokenizer={tok_dir}",
        "ignore-eos": f"ignore-eos={eot}",
    }
    faults: dict[str, list[str]] = {r: [] for r in CLEAN}
    for rep, fault in (faulty or {}).items():
        faults[rep] = [specs[fault]]
    trace_dir = os.path.join(root, "traces")
    name = os.path.basename(model_dir)
    live = LiveFleet(model_dir, trace_dir, name, tok, template, eot, tpl_path, tok_dir, faults)
    threads = torch.get_num_threads()
    # a 64-wide model: one thread is faster than two, and leaves the other CPU alone
    torch.set_num_threads(1)
    try:
        for rep, injects in faults.items():
            live.responses[rep] = serve_requests(
                model_dir, rep, injects, trace_dir, n, max_tokens, n
            )
    finally:
        torch.set_num_threads(threads)
    return live
