"""Host profiling of a replica with py-spy: where the engine's host time goes.

py-spy samples the replica process's Python stacks (``--threads`` keeps each thread apart,
``--idle`` keeps waiting frames). Every collapsed stack is classified by the innermost frame
that belongs to a known activity, so the share of the engine thread's wall time spent in
tokenization, detokenization, scheduling and sampling, the tracer itself and the model step
(and idle) can be read off — the host-side overhead that decides whether a GPU waits on Python.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from infdebug.errors import OperationError
from infdebug.schema import ProfileSample

ENGINE_THREAD = "infdebug-engine"

# (category, pattern on "function (file:line)" frames), tried from the leaf towards the root.
RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "tracer",
        re.compile(
            r"\(.*infdebug/tracer/(tracer|hooks|exporters|jsonl|prom|otel|lifecycle|gpu\w*)\.py:"
        ),
    ),
    (
        "detokenization",
        re.compile(r"^(Engine\._detok|TokenizerBundle\.decode|decode_text|<lambda>) \(.*infdebug/"),
    ),
    (
        "tokenization",
        re.compile(
            r"^(encode_prompt|TokenizerBundle\.encode|render_chat|Replica\.(encode_\w+|render)) "
        ),
    ),
    ("model step", re.compile(r"^LlamaForCausalLM\.(prefill|decode|_run|_attend) ")),
    ("sampling", re.compile(r"^Engine\._sample ")),
    (
        "scheduling",
        re.compile(
            r"^(Engine\.(step|_admit|_decode|_emit|_release|_finish|_deliver)"
            r"|PrefixCache\.\w+|KVCache\.\w+) "
        ),
    ),
    (
        "idle",
        re.compile(r"^(Condition\.wait|Event\.wait|_wait_for_tstate_lock|select|epoll|.*\.wait) "),
    ),
)


@dataclass(frozen=True)
class Stack:
    thread: str
    frames: tuple[str, ...]  # root first
    count: int

    @property
    def category(self) -> str:
        for frame in reversed(self.frames):
            for name, pat in RULES:
                if pat.search(frame):
                    return name
        return "other"


class ProfilerError(OperationError):
    pass


PY_SPY_MISSING = (
    "py-spy is not installed; it comes with infdebug's profile extra: "
    "pip install 'infdebug[profile]' "
    "(in a checkout: .venv/bin/pip install -e '.[profile]'; "
    "make demo installs only the engine extra, "
    "make test installs the profile extra too)"
)


def py_spy_binary() -> str:
    """The py-spy next to this interpreter, else on PATH; ProfilerError naming the install
    command."""
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    found = here if os.path.exists(here) else shutil.which("py-spy")
    if not found:
        raise ProfilerError(PY_SPY_MISSING)
    return found


def record(pid: int, duration_s: float, *, rate_hz: int = 100) -> str:
    """Sample ``pid`` for ``duration_s`` seconds; py-spy's raw collapsed stacks."""
    with tempfile.TemporaryDirectory(prefix="infdebug-pyspy-") as d:
        out = os.path.join(d, "stacks.txt")
        cmd = [
            py_spy_binary(),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(duration_s))),
            "--rate",
            str(rate_hz),
            "--format",
            "raw",
            "--output",
            out,
            "--threads",
            "--idle",
            "--nonblocking",
        ]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
        except subprocess.TimeoutExpired:
            raise ProfilerError(f"py-spy did not finish within {duration_s + 60:.0f}s") from None
        if p.returncode != 0 or not os.path.exists(out):
            msg = (p.stderr or p.stdout).strip().splitlines()
            raise ProfilerError(
                f"py-spy could not record pid {pid}: {msg[-1] if msg else 'no output'}"
                " (it needs ptrace permission: run as the same user or root)"
            )
        with open(out, encoding="utf-8", errors="replace") as f:
            return f.read()


_THREAD = re.compile(r"^thread \((?:0x)?[0-9a-fA-F]+\)(?::\s*(.*))?$")


def parse_raw(text: str) -> list[Stack]:
    """``thread (TID): NAME;frame;…;frame COUNT`` lines into stacks."""
    out = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            continue
        body, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        parts = body.split(";")
        thread = "?"
        if parts and parts[0].startswith("process "):
            parts = parts[1:]
        if parts:
            m = _THREAD.match(parts[0])
            if m:
                thread = m.group(1) or parts[0]
                parts = parts[1:]
        out.append(Stack(thread, tuple(parts), int(count)))
    return out


@dataclass
class ProfileSummary:
    replica: str
    pid: int
    profile_id: str
    duration_s: float
    rate_hz: int
    by_thread: dict[str, Counter[str]]

    def shares(self, thread: str = ENGINE_THREAD) -> dict[str, float]:
        c = self.by_thread.get(thread, Counter())
        total = sum(c.values())
        return {k: v / total for k, v in c.most_common()} if total else {}

    def to_json(self) -> dict[str, object]:
        return {
            "replica": self.replica,
            "pid": self.pid,
            "profile_id": self.profile_id,
            "duration_s": self.duration_s,
            "rate_hz": self.rate_hz,
            "threads": {
                t: {"samples": sum(c.values()), "share": self.shares(t)}
                for t, c in self.by_thread.items()
            },
        }


def summarize(
    stacks: list[Stack], *, replica: str, pid: int, profile_id: str, duration_s: float, rate_hz: int
) -> ProfileSummary:
    by: dict[str, Counter[str]] = {}
    for s in stacks:
        by.setdefault(s.thread, Counter())[s.category] += s.count
    return ProfileSummary(replica, pid, profile_id, duration_s, rate_hz, by)


def to_records(
    stacks: list[Stack],
    *,
    replica: str,
    pid: int,
    profile_id: str,
    t: float,
    duration_s: float,
    rate_hz: int,
) -> list[ProfileSample]:
    return [
        ProfileSample(
            t=t,
            replica=replica,
            profile_id=profile_id,
            thread=s.thread,
            category=s.category,
            stack=";".join(s.frames),
            count=s.count,
            pid=pid,
            rate_hz=float(rate_hz),
            duration_s=duration_s,
        )
        for s in stacks
    ]


def profile(
    pid: int, duration_s: float, *, replica: str, rate_hz: int = 100
) -> tuple[ProfileSummary, list[ProfileSample]]:
    t = time.time()
    pid_ = int(pid)
    stacks = parse_raw(record(pid_, duration_s, rate_hz=rate_hz))
    pid_id = f"prof-{uuid.uuid4().hex[:12]}"
    summ = summarize(
        stacks, replica=replica, pid=pid_, profile_id=pid_id, duration_s=duration_s, rate_hz=rate_hz
    )
    return summ, to_records(
        stacks,
        replica=replica,
        pid=pid_,
        profile_id=pid_id,
        t=t,
        duration_s=duration_s,
        rate_hz=rate_hz,
    )


def find_replica_pid(name: str) -> int:
    """The pid of the running ``infdebug serve … --replica NAME`` process."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if "serve" in argv and any("infdebug" in a for a in argv[:3]):
            for i, a in enumerate(argv):
                if (
                    a == "--replica" and i + 1 < len(argv) and argv[i + 1] == name
                ) or a == f"--replica={name}":
                    found.append(int(d))
    if not found:
        raise ProfilerError(f"no running `infdebug serve --replica {name}` process found")
    if len(found) > 1:
        raise ProfilerError(f"several processes serve replica {name}: {found}; pass --pid")
    return found[0]
