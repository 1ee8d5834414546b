"""A fleet on one machine: N ``infdebug serve`` processes, each a named replica with its own
port and its own injected faults, all tracing into one directory (trace files are named by
replica, so they do not collide).

``Fleet`` is a context manager: ``start()`` spawns every replica and waits for each /health,
``stop()`` sends SIGTERM and waits so the replicas flush their traces (SIGKILL only after a
timeout). A replica that dies while starting is reported with the tail of its stderr.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any

import httpx

from infdebug.errors import OperationError

_SERVE = "import sys; from infdebug.cli import main; sys.argv[0] = 'infdebug'; main()"


class FleetError(OperationError):
    pass


def replica_names(n: int) -> list[str]:
    return [f"r{i}" for i in range(1, n + 1)]


def parse_injections(specs: list[str] | tuple[str, ...], names: list[str]) -> dict[str, list[str]]:
    """``r2:slow=1.3`` → {"r2": ["slow=1.3"]}; ``all:FAULT`` goes to every replica."""
    out: dict[str, list[str]] = {n: [] for n in names}
    for spec in specs:
        who, sep, fault = spec.partition(":")
        if not sep or not fault:
            raise FleetError(
                f"--inject {spec!r}: expected REPLICA:FAULT, e.g. r2:slow=1.3 "
                f"(replicas: {', '.join(names)})"
            )
        if who == "all":
            for n in names:
                out[n].append(fault)
        elif who in out:
            out[who].append(fault)
        else:
            raise FleetError(
                f"--inject {spec!r}: expected a replica of {', '.join(names)} or 'all', "
                f"found {who!r}"
            )
    return out


def parse_deployments(specs: list[str] | tuple[str, ...], names: list[str]) -> dict[str, str]:
    """``r3=canary`` → {"r3": "canary"}."""
    out: dict[str, str] = {}
    for spec in specs:
        who, sep, label = spec.partition("=")
        if not sep or not label or who not in names:
            raise FleetError(
                f"--deployment-of {spec!r}: expected REPLICA=LABEL with a replica of "
                f"{', '.join(names)}"
            )
        out[who] = label
    return out


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the replica gets SIGTERM if the fleet process dies without stopping it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ReplicaProcess:
    name: str
    port: int
    host: str
    injections: list[str]
    deployment: str | None
    log_path: str
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    ready_s: float | None = None
    # with Fleet(sidecars=True): the infdebug sidecar in front of this replica
    side_port: int | None = None
    side_proc: subprocess.Popen[bytes] | None = None
    _side_log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def side_url(self) -> str | None:
        return None if self.side_port is None else f"http://{self.host}:{self.side_port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:]).rstrip()
        except OSError:
            return "(no output)"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "port": self.port,
            "pid": self.pid,
            "injections": self.injections,
            "deployment": self.deployment,
            "log": self.log_path,
            "ready_s": self.ready_s,
            "returncode": self.proc.returncode if self.proc else None,
            "sidecar": self.side_url,
        }


class Fleet:
    """N replicas of one checkpoint, named r1..rN on ports base_port+1..base_port+N."""

    def __init__(
        self,
        model_dir: str,
        replicas: int = 3,
        *,
        injections: list[str] | tuple[str, ...] = (),
        deployments: list[str] | tuple[str, ...] = (),
        base_port: int = 8100,
        host: str = "127.0.0.1",
        trace_dir: str | None = None,
        log_dir: str | None = None,
        max_batch: int | None = None,
        max_model_len: int | None = None,
        device: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        startup_timeout_s: float = 180.0,
        env: dict[str, str] | None = None,
        sidecars: bool = False,
    ) -> None:
        if replicas < 1:
            raise FleetError(f"--replicas: expected at least 1, found {replicas}")
        if not os.path.isdir(model_dir):
            raise FleetError(
                f"--model {model_dir}: not a directory (make one with: infdebug make-model DIR)"
            )
        names = replica_names(replicas)
        inj = parse_injections(injections, names)
        dep = parse_deployments(deployments, names)
        self.model_dir = os.path.abspath(model_dir)
        self.trace_dir = os.path.abspath(trace_dir) if trace_dir else None
        if log_dir is None:
            log_dir = (
                os.path.join(self.trace_dir, "logs")
                if self.trace_dir
                else tempfile.mkdtemp(prefix="infdebug-fleet-")
            )
        self.log_dir = os.path.abspath(log_dir)
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.env = env
        self._common: list[str] = []
        if max_batch is not None:
            self._common += ["--max-batch", str(max_batch)]
        if max_model_len is not None:
            self._common += ["--max-model-len", str(max_model_len)]
        if device is not None:
            self._common += ["--device", device]
        self._common += list(extra_args)
        self.replicas = [
            ReplicaProcess(
                n, base_port + i, host, inj[n], dep.get(n), os.path.join(self.log_dir, f"{n}.log")
            )
            for i, n in enumerate(names, 1)
        ]
        # Behind sidecars: each replica traces nothing itself (metrics only); an infdebug
        # sidecar on base_port + 50 + i proxies it and writes the traces, as on an engine pod.
        self.sidecars = sidecars
        if sidecars:
            for i, r in enumerate(self.replicas, 1):
                r.side_port = base_port + 50 + i

    @property
    def urls(self) -> list[str]:
        """Where clients go: each replica, or its sidecar."""
        return [r.side_url or r.url for r in self.replicas]

    def sidecar_command(self, r: ReplicaProcess) -> list[str]:
        cmd = [sys.executable, "-c", _SERVE, "sidecar", "--upstream", r.url,
               "--listen", f"{self.host}:{r.side_port}", "--replica", r.name,
               "--model-dir", self.model_dir]  # fmt: skip
        if self.trace_dir:
            cmd += ["--trace-dir", self.trace_dir]
        if r.deployment:
            cmd += ["--deployment", r.deployment]
        if "--simulate-gpu" in self._common:
            cmd += ["--simulate-gpu"]
        return cmd

    def command(self, r: ReplicaProcess) -> list[str]:
        cmd = [
            sys.executable,
            "-c",
            _SERVE,
            "serve",
            "--model",
            self.model_dir,
            "--replica",
            r.name,
            "--host",
            self.host,
            "--port",
            str(r.port),
        ]
        if self.trace_dir and not self.sidecars:
            cmd += ["--trace-dir", self.trace_dir]
        if r.deployment:
            cmd += ["--deployment", r.deployment]
        for f in r.injections:
            cmd += ["--inject", f]
        return cmd + self._common

    def start(self) -> Fleet:
        ports = [(r.name, p) for r in self.replicas for p in (r.port, r.side_port) if p]
        busy = [f"{n} ({p})" for n, p in ports if not port_free(self.host, p)]
        if busy:
            raise FleetError(
                f"ports in use on {self.host}: {', '.join(busy)}; choose another --base-port"
            )
        os.makedirs(self.log_dir, exist_ok=True)
        if self.trace_dir:
            os.makedirs(self.trace_dir, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        t0 = time.monotonic()
        try:
            for r in self.replicas:
                r._log = open(r.log_path, "wb")  # noqa: SIM115 - closed in stop()
                r.proc = subprocess.Popen(
                    self.command(r),
                    stdin=subprocess.DEVNULL,
                    stdout=r._log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            self._wait_ready(t0)
            if self.sidecars:
                self._start_sidecars(env, t0)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, t0: float) -> None:
        pending = list(self.replicas)
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while pending:
                for r in list(pending):
                    assert r.proc is not None
                    code = r.proc.poll()
                    if code is not None:
                        raise FleetError(
                            f"replica {r.name} exited with code {code} while starting "
                            f"(log {r.log_path}):\n{r.stderr_tail()}"
                        )
                    try:
                        if client.get(f"{r.url}/health").status_code == 200:
                            r.ready_s = time.monotonic() - t0
                            pending.remove(r)
                    except httpx.HTTPError:
                        pass
                if pending and time.monotonic() - t0 > self.startup_timeout_s:
                    r = pending[0]
                    raise FleetError(
                        f"replica {r.name} did not answer {r.url}/health within "
                        f"{self.startup_timeout_s:.0f} s (log {r.log_path}):\n{r.stderr_tail()}"
                    )
                if pending:
                    time.sleep(0.2)

    def _start_sidecars(self, env: dict[str, str], t0: float) -> None:
        for r in self.replicas:
            r._side_log = open(r.log_path + ".sidecar", "wb")  # noqa: SIM115 - closed in stop()
            r.side_proc = subprocess.Popen(
                self.sidecar_command(r),
                stdin=subprocess.DEVNULL,
                stdout=r._side_log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            for r in self.replicas:
                assert r.side_proc is not None
                while True:
                    if r.side_proc.poll() is not None:
                        raise FleetError(
                            f"the sidecar of {r.name} exited (log {r.log_path}.sidecar)"
                        )
                    try:
                        if client.get(f"{r.side_url}/infdebug/health").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() - t0 > self.startup_timeout_s:
                        raise FleetError(f"the sidecar of {r.name} did not start")
                    time.sleep(0.2)

    def dead(self) -> list[ReplicaProcess]:
        """Replicas whose process has exited."""
        return [r for r in self.replicas if r.proc is not None and r.proc.poll() is not None]

    def stop(self, timeout_s: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every replica, wait up to ``timeout_s`` for all (they flush their traces),
        SIGKILL what is left; returns each replica's exit code."""
        sides = [r.side_proc for r in self.replicas if r.side_proc and r.side_proc.poll() is None]
        for sp in sides:  # the sidecars first: they flush the traces of what they proxied
            with contextlib.suppress(ProcessLookupError):
                sp.send_signal(signal.SIGTERM)
        for sp in sides:
            try:
                sp.wait(timeout_s)
            except subprocess.TimeoutExpired:
                sp.kill()
                sp.wait(10)
        for r in self.replicas:
            if r._side_log is not None:
                r._side_log.close()
                r._side_log = None
        live = [r for r in self.replicas if r.proc is not None and r.proc.poll() is None]
        for r in live:
            assert r.proc is not None
            with contextlib.suppress(ProcessLookupError):
                r.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for r in live:
            assert r.proc is not None
            try:
                r.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait(10)
        for r in self.replicas:
            if r._log is not None:
                r._log.close()
                r._log = None
        return {r.name: (r.proc.returncode if r.proc else None) for r in self.replicas}

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self.replicas]

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
