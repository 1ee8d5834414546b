"""py-spy host profiling of a real replica process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from infdebug.tracer.profile import ENGINE_THREAD, parse_raw, summarize

# py-spy --format raw output, one sample a line, kept verbatim (hence the noqa below)
RAW = """\
process 1:"python";thread (0x1a): infdebug-engine;Thread._bootstrap (threading.py:1002);Engine._loop (/x/infdebug/tracer/engine/engine.py:200);Engine.step (/x/infdebug/tracer/engine/engine.py:230);Engine._decode (/x/infdebug/tracer/engine/engine.py:280);LlamaForCausalLM.decode (/x/infdebug/tracer/engine/model.py:350);LlamaForCausalLM._run (/x/infdebug/tracer/engine/model.py:310);linear (torch/nn/functional.py:1) 70
thread (0x1a): infdebug-engine;Engine._loop (/x/infdebug/tracer/engine/engine.py:200);Engine.step (/x/infdebug/tracer/engine/engine.py:230);Engine._emit (/x/infdebug/tracer/engine/engine.py:300);Engine._detok (/x/infdebug/tracer/engine/engine.py:350);<lambda> (/x/infdebug/tracer/engine/replica.py:120);TokenizerBundle.decode (/x/infdebug/text/tokenizer.py:80) 10
thread (0x1a): infdebug-engine;Engine._loop (/x/infdebug/tracer/engine/engine.py:200);Engine.step (/x/infdebug/tracer/engine/engine.py:230);Engine._emit (/x/infdebug/tracer/engine/engine.py:300);Tracer.finished (/x/infdebug/tracer/tracer.py:50) 5
thread (0x1a): infdebug-engine;Engine._loop (/x/infdebug/tracer/engine/engine.py:200);Engine.step (/x/infdebug/tracer/engine/engine.py:230);Engine._sample (/x/infdebug/tracer/engine/engine.py:320) 5
thread (0x1a): infdebug-engine;Engine._loop (/x/infdebug/tracer/engine/engine.py:200);Condition.wait (threading.py:320) 10
thread (0x2b): MainThread;run (uvicorn/server.py:1);App.chat (/x/infdebug/tracer/engine/server.py:200);Replica.encode_chat (/x/infdebug/tracer/engine/replica.py:150);encode_prompt (/x/infdebug/text/tokenizer.py:300) 4
"""  # noqa: E501


def test_stacks_are_classified_by_their_innermost_known_frame() -> None:
    stacks = parse_raw(RAW)
    assert [s.thread for s in stacks][:5] == [ENGINE_THREAD] * 5
    s = summarize(stacks, replica="r", pid=1, profile_id="p", duration_s=1, rate_hz=100)
    assert s.shares() == {
        "model step": 0.7,
        "detokenization": 0.1,
        "idle": 0.1,
        "tracer": 0.05,
        "sampling": 0.05,
    }
    assert s.shares("MainThread") == {"tokenization": 1.0}


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


def test_profile_a_running_replica(tmp_path: Any) -> None:
    pytest.importorskip("torch", reason="the engine needs torch")
    import httpx

    from infdebug.tracer.engine.make_model import make_model
    from infdebug.tracer.profile import ProfilerError, py_spy_binary

    try:
        py_spy_binary()
    except ProfilerError as e:
        pytest.skip(str(e))
    model = make_model(str(tmp_path / "m"), preset="tiny")
    port = _free_port()
    env = {**os.environ, "INFDEBUG_HOME": str(tmp_path / "home")}
    env.pop("INFDEBUG_CLICKHOUSE_URL", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infdebug.cli",
            "serve",
            "--model",
            model,
            "--port",
            str(port),
            "--replica",
            "prof-r1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    c.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                        json={
                            "messages": [{"role": "user", "content": "hi there"}],
                            "max_tokens": 32,
                        },
                    )
                except httpx.HTTPError:
                    time.sleep(0.2)

    th = threading.Thread(target=load, daemon=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.HTTPError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError(
                        server.stderr.read() if server.stderr else "no server"
                    ) from None
                time.sleep(0.1)
        th.start()
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "infdebug.cli",
                "profile",
                "--replica",
                "prof-r1",
                "--duration",
                "2",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if p.returncode != 0 and "ptrace" in p.stderr:
            pytest.skip(f"py-spy cannot attach here: {p.stderr.strip()}")
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        eng = out["threads"][ENGINE_THREAD]
        assert eng["samples"] > 0
        assert abs(sum(eng["share"].values()) - 1.0) < 1e-9
        assert eng["share"].get("model step", 0) > 0
    finally:
        stop.set()
        server.terminate()
        server.communicate(timeout=60)  # reads and closes the pipe
    q = subprocess.run(
        [
            sys.executable,
            "-m",
            "infdebug.cli",
            "query",
            "--json",
            "SELECT category, sum(count) AS n FROM profile_samples GROUP BY category",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert q.returncode == 0, q.stderr
    cats = {r["category"]: r["n"] for r in json.loads(q.stdout)}
    assert cats.get("model step", 0) > 0
