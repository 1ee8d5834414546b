"""Servers for the sidecar's tests: any ASGI app on a free port in a thread of this process
(the sidecar itself, a scripted upstream), and a ``transformers serve`` process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from serveproc import free_port

from infdebug.limits import Limits
from infdebug.sidecar.proxy import Sidecar, SidecarConfig
from infdebug.text.model_text import ModelText
from infdebug.tracer.exporters import InMemoryExporter
from infdebug.tracer.tracer import ReplicaInfo
from infdebug.tracer.wiring import TracerConfig, make_tracer


class ThreadServer:
    """``app`` served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, **kw: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="error", lifespan="on", **kw
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class SidecarThread(ThreadServer):
    """A sidecar in front of ``upstream`` whose records land in ``.records``."""

    def __init__(
        self,
        upstream: str,
        *,
        model_dir: str | None = None,
        replica: str = "sc",
        upstream_timeout_s: float = 30.0,
        trace_dir: str | None = None,
    ) -> None:
        self.memory = InMemoryExporter()
        tel = make_tracer(
            TracerConfig(trace_dir=trace_dir),
            ReplicaInfo(replica=replica, model="m", engine="openai-compatible"),
        )
        tel.tracer.exporters.append(self.memory)
        self.telemetry = tel
        mt = ModelText.load(model_dir) if model_dir else None
        self.sidecar = Sidecar(
            SidecarConfig(
                upstream=upstream,
                upstream_timeout_s=upstream_timeout_s,
                limits=Limits(max_body_bytes=1 << 20),
            ),
            tel,
            model_text=mt,
        )
        super().__init__(self.sidecar.app, server_header=False, date_header=False)

    def records(self, n: int, timeout_s: float = 30.0) -> list[Any]:
        """The first ``n`` records (waiting for them: the tracer builds them off-thread)."""
        deadline = time.monotonic() + timeout_s
        while len(self.memory.records) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.memory.records)} of {n} records")
            time.sleep(0.05)
            self.telemetry.tracer.force_flush(1000)
        return list(self.memory.records)

    def stop(self) -> None:
        super().stop()
        self.telemetry.stop()


class TransformersServe:
    """``transformers serve DIR`` (Hugging Face's OpenAI-compatible server) on a free port."""

    def __init__(self, model_dir: str, root: Path, *, wait: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "transformers-serve.log"
        exe = os.path.join(os.path.dirname(sys.executable), "transformers")
        self._out = open(self.log, "w")  # noqa: SIM115 - closed by stop()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
        self.proc = subprocess.Popen(
            [exe, "serve", model_dir, "--port", str(self.port), "--host", "127.0.0.1"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(root),
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"transformers serve exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("transformers serve did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._out.close()


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
