"""A real ``infdebug serve`` process for tests: started on a free port with its stderr in a
file, waited for through ``/health``, its RSS read from /proc, stopped with SIGTERM (the
trace is flushed and fsynced then), its trace records read back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProc:
    def __init__(
        self,
        model_dir: str,
        root: Path,
        *args: str,
        replica: str = "r-h",
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        """Started, and waited for unless ``wait`` is false (then call ``wait_ready``: a
        caller starting several servers lets them start side by side)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.trace_dir = root / "trace"
        self.stderr_path = root / f"{replica}.stderr"
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed by stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infdebug.cli",
                "serve",
                "--model",
                model_dir,
                "--port",
                str(self.port),
                "--replica",
                replica,
                "--trace-dir",
                str(self.trace_dir),
                "--device",
                "cpu",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"infdebug serve exited: {self.stderr()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"infdebug serve did not start: {self.stderr()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._stderr.close()
        return int(self.proc.returncode)

    def trace_files(self) -> list[Path]:
        return sorted(self.trace_dir.glob("*.jsonl"))

    def records(self) -> list[dict[str, Any]]:
        """The request records written so far (all of them once stopped)."""
        out: list[dict[str, Any]] = []
        for p in self.trace_dir.glob("*.requests.jsonl"):
            with open(p, encoding="utf-8") as f:
                out += [json.loads(line) for line in f if line.strip()]
        return out
