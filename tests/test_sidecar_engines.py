"""The sidecar in front of an engine nobody here wrote: ``transformers serve`` (Hugging Face's
OpenAI-compatible server) and ``infdebug serve``, the same checkpoint, each behind its own
``infdebug sidecar`` process. The official client gets the same answers through a sidecar as
direct; the records' derived IDs re-encode the rendered prompt exactly; and ``infdebug
analyze`` on the two-engine fleet names what truly differs between the engines and invents
nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from livefleet import trained_model
from proxyproc import TransformersServe
from serveproc import ServeProc, free_port

from infdebug.analyzers.base import AnalysisContext, analyze
from infdebug.collectors.ingest import ingest_paths
from infdebug.text.model_text import ModelText
from infdebug.text.tokenizer import load_tokenizer

NAME = "tiny"  # the served model name on both


class SidecarProc:
    """``infdebug sidecar`` as an operator runs it, in front of ``upstream``."""

    def __init__(
        self, upstream: str, root: Path, replica: str, model: str, *extra: str, wait: bool = True
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.trace_dir = root / f"traces-{replica}"
        self.log = root / f"sidecar-{replica}.log"
        self._log = open(self.log, "w")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infdebug.cli", "sidecar", "--upstream", upstream,
             "--listen", f"127.0.0.1:{self.port}", "--replica", replica, "--deployment", "fleet",
             "--model-dir", model, "--served-model-name", NAME,
             "--trace-dir", str(self.trace_dir), *extra],
            stdout=subprocess.DEVNULL, stderr=self._log,
        )  # fmt: skip
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/infdebug/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sidecar did not start: {self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self._log.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("two-engines")
    model = trained_model(tmp_path_factory)
    # the two engines start side by side, then their two sidecars
    infd = ServeProc(model, root, "--served-model-name", NAME, replica="up-infdebug", wait=False)
    hf = TransformersServe(model, root, wait=False)
    infd.wait_ready()
    hf.wait_ready()
    sides = {
        "infd": SidecarProc(infd.url, root, "infd", model, wait=False),
        "hf": SidecarProc(hf.url, root, "hf", model, "--engine-name", "transformers", wait=False),
    }
    for s in sides.values():
        s.wait_ready()
    yield model, {"infd": infd.url, "hf": hf.url}, sides, root
    for s in sides.values():
        s.stop()
    infd.stop()
    hf.stop()


def _conversations() -> list[list[dict[str, str]]]:
    out = []
    for i in range(12):
        msgs = [{"role": "system", "content": "You are terse."}] if i % 3 == 0 else []
        msgs.append({"role": "user", "content": f"Tell me about the number {i}."})
        if i % 4 == 1:
            msgs += [{"role": "assistant", "content": "It is a number."},
                     {"role": "user", "content": "And?"}]  # fmt: skip
        out.append(msgs)
    return out


def _ask(base: str, model: str, msgs: list[dict[str, str]], stream: bool) -> str:
    c = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=120)
    if stream:
        s = c.chat.completions.create(
            model=model,
            messages=msgs,
            max_tokens=24,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        return "".join((ch.choices[0].delta.content or "") for ch in s if ch.choices)
    r = c.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    return r.choices[0].message.content or ""


def test_the_two_engines_behind_sidecars(fleet: Any, tmp_path: Path) -> None:
    model, direct, sides, _ = fleet
    answers: dict[str, list[str]] = {"infd": [], "hf": []}
    hf_model = model  # transformers serve names its model by the path it loaded
    for i, msgs in enumerate(_conversations()):
        for name in ("infd", "hf"):
            m = NAME if name == "infd" else hf_model
            via = _ask(sides[name].url, m, msgs, stream=i % 2 == 1)
            # the same answer through the sidecar as direct, streamed or not
            assert via == _ask(direct[name], m, msgs, stream=i % 2 == 1), (name, i)
            answers[name].append(via)
    for name in ("infd", "hf"):
        c = openai.OpenAI(base_url=sides[name].url + "/v1", api_key="x", max_retries=0)
        c.completions.create(
            model=NAME if name == "infd" else hf_model, prompt="Once upon", max_tokens=8,
            temperature=0,
        )  # fmt: skip
    # transformers serve has no /tokenize and does not name itself: the sidecar says so
    h = httpx.get(sides["hf"].url + "/infdebug/health").json()
    assert h["tokenize"] is False and h["engine"] == "transformers"  # named by --engine-name
    for s in sides.values():
        s.stop()  # flush the traces

    same = sum(a == b for a, b in zip(answers["infd"], answers["hf"], strict=True))
    print(f"greedy answers equal on the two engines: {same} of {len(answers['hf'])}")
    recs = {n: _records(s.trace_dir) for n, s in sides.items()}
    for name, rs in recs.items():
        fins = sorted((r["finish_reason"], r["output_tokens"], len(r["output_ids"])) for r in rs)
        print(
            name,
            "finish/engine count/ids:",
            fins,
            "derived:",
            sorted({d for r in rs for d in r["derived"] or []}),
        )
    assert {n: len(r) for n, r in recs.items()} == {"infd": 13, "hf": 13}
    mt = ModelText.load(model)
    for name, rs in recs.items():
        for r in rs:
            assert r["finish_reason"] in ("stop", "length"), r
            if "prompt_ids" in (r["derived"] or []):  # derived: the rendering, re-encoded
                assert r["prompt_ids"] == mt.encode_prompt(r["prompt_text"]), name
            if r["messages"]:
                assert r["prompt_text"] == mt.render(r["messages"])
                assert "prompt_text" in r["derived"]
            assert len(r["token_times_s"]) in (0, len(r["output_ids"]))

    # A true difference the records keep apart: on a chat that stops, transformers serve
    # counts the stop token in usage.completion_tokens and infdebug serve does not (the same
    # answer text, one more token). Derived output IDs are the text re-encoded, which is not
    # always what the engine generated (one answer re-encodes to a token fewer on both):
    # that is why they are marked derived.
    def stop_counts(name: str) -> dict[str, int]:
        rs = [r for r in recs[name] if r["messages"] and r["finish_reason"] == "stop"]
        return {r["output_text"]: r["output_tokens"] for r in rs}

    hf_n, infd_n = stop_counts("hf"), stop_counts("infd")
    diffs = {hf_n[t] - infd_n[t] for t in hf_n.keys() & infd_n.keys()}
    print("stop-token counting, transformers - infdebug:", sorted(diffs))
    assert diffs and diffs <= {0, 1} and 1 in diffs
    assert {r["engine"] for r in recs["hf"]} == {"transformers"}
    assert {r["engine"] for r in recs["infd"]} == {"infdebug"}

    findings = _analyze(tmp_path, [s.trace_dir for s in sides.values()], model)
    kinds = {f.kind for f in findings}
    print("two-engine fleet findings:", json.dumps(sorted(kinds)))
    for f in findings:
        print(f"  {f.severity} {f.kind}: {f.summary}")
    # the same checkpoint, template and tokenizer: no tokenizer or template drift to invent
    assert not {k for k in kinds if k.startswith(("tokenizer.", "template."))}, findings
    # what does differ: the engines themselves
    skew = [f for f in findings if f.kind == "replica.version_skew"]
    assert skew and "transformers" in skew[0].summary


def _records(d: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(d.glob("*.requests.jsonl")):
        out += [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return out


def _analyze(tmp: Path, dirs: list[Path], model: str) -> list[Any]:
    from infdebug.store.base import migrate
    from infdebug.store.client import open_embedded

    st = open_embedded(str(tmp / "store"))
    try:
        migrate(st)
        rep = ingest_paths(st, [str(d) for d in dirs], rejects_path=str(tmp / "rej.jsonl"))
        assert rep.rejected == 0
        tok = load_tokenizer(model)
        ctx = AnalysisContext(
            store=st,
            tokenizer=tok,
            template=ModelText.load(model).template,
            options={"model": NAME, "model_dir": model},
        )
        return analyze(ctx, None, None, count=False).findings
    finally:
        st.close()
