"""``infdebug collect logs``: files still being written get into the store with nothing lost
or doubled — through a kill -9 half way through a load, log rotation by rename, by
copytruncate and with gzip (a line cut in two by each), a store held by another process,
and a one-pass run. Every test ends comparing the store with what was written: the same
request IDs, as many rows, none twice."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import pytest
from conftest import REPO, make_request

from infdebug.collectors.tail import Tailer
from infdebug.schema import encode_records
from infdebug.store import open_store
from infdebug.tracer.jsonl import JsonlExporter

TIMEOUT = 60.0


# --- helpers --------------------------------------------------------------------------------


def _line(i: int, pad: int = 0) -> bytes:
    return encode_records([make_request(i, output_text="x" * pad or "hi there")])


def _eventually(
    cond: Callable[[], bool], what: str, timeout: float = TIMEOUT, pause: float = 0.05
) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)


def _check_store(home: str, expected: set[str]) -> None:
    """The store holds exactly ``expected`` request IDs, each once."""
    st = open_store(home=home)
    try:
        _, rows = st.query("SELECT request_id FROM requests")
        ids = [str(r[0]) for r in rows]
        _, dups = st.query(
            "SELECT request_id, count() FROM requests GROUP BY request_id HAVING count() > 1"
        )
    finally:
        st.close()
    assert dups == [], f"loaded twice: {dups[:5]}"
    assert len(ids) == len(expected)
    missing, extra = expected - set(ids), set(ids) - expected
    assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])


def _ids(lo: int, hi: int) -> set[str]:
    return {f"req-{i}" for i in range(lo, hi)}


class _Log:
    """A writer appending request records to one file (``O_APPEND``, as loggers do)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fh: IO[bytes] = open(path, "ab")  # noqa: SIM115 - reopened on rotation

    def write(self, lo: int, hi: int) -> None:
        self.fh.write(b"".join(_line(i) for i in range(lo, hi)))
        self.fh.flush()

    def half(self, i: int) -> bytes:
        """Write the first half of record ``i``'s line; the rest is returned."""
        line = _line(i)
        cut = len(line) // 2
        self.fh.write(line[:cut])
        self.fh.flush()
        return line[cut:]

    def finish(self, rest: bytes) -> None:
        self.fh.write(rest)
        self.fh.flush()

    def reopen(self) -> None:
        self.fh.close()
        self.fh = open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        self.fh.close()


class _Following:
    """A ``Tailer`` following ``paths`` in a thread of the test process (the store is the
    tailer's until ``stop``)."""

    def __init__(self, tmp_path: Any, *paths: str) -> None:
        self.home = str(tmp_path / "home")
        self.rejects = str(tmp_path / "rejects.jsonl")
        self.lines: list[str] = []
        self.tailer = Tailer(
            paths,
            open_store=lambda: open_store(home=self.home),
            rejects_path=self.rejects,
            follow=True,
            interval=0.05,
            exclude=[self.home],
            say=self.lines.append,
        )
        self.done: list[Any] = []
        self._thread = threading.Thread(
            target=lambda: self.done.append(self.tailer.run()), daemon=True
        )
        self._thread.start()

    def loaded(self, n: int) -> None:
        _eventually(lambda: self.tailer.loaded >= n, f"{n} rows loaded ({self.lines[-3:]})")
        assert self.tailer.loaded == n, self.lines

    def polls(self, n: int) -> None:
        """Wait for ``n`` more polls."""
        target = self.tailer.polls + n
        _eventually(lambda: self.tailer.polls >= target, f"{n} polls")

    def stop(self) -> Any:
        self.tailer.stop()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()
        return self.done[0]


@pytest.fixture
def follow(tmp_path: Any) -> Iterator[Callable[..., _Following]]:
    """``follow(*paths)``: a ``_Following`` of them, stopped at the end of the test."""
    started: list[_Following] = []

    def start(*paths: str) -> _Following:
        started.append(_Following(tmp_path, *paths))
        return started[-1]

    yield start
    for f in started:
        f.tailer.stop()
        f._thread.join(TIMEOUT)


def _collect(home: str, *args: str) -> subprocess.Popen[bytes]:
    """``infdebug collect logs ARGS`` as a process, its stdout and stderr to HOME-run.out
    and HOME-run.err."""
    with open(home + "-run.out", "wb") as out, open(home + "-run.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "infdebug.cli", "collect", "logs", *args],
            env={**os.environ, "INFDEBUG_HOME": home},
            stdout=out,
            stderr=err,
            cwd=REPO,
        )


def _text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _in_all(err: str) -> int:
    found = re.findall(r"([\d,]+) in all", err)
    return int(found[-1].replace(",", "")) if found else 0


# --- a kill -9 half way through a load ------------------------------------------------------


def _loading(pid: int) -> bool:
    """Whether process ``pid`` is half way through a load: it has a temporary ``.jsonl``
    open (the snapshot or spill a load makes after marking its batch pending, which the
    store then reads)."""
    tmp = tempfile.gettempdir()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            name = os.path.basename(target)
            if os.path.dirname(target) == tmp and name.startswith("tmp") and ".jsonl" in name:
                return True
    return False


def _committed(home: str) -> tuple[int, int]:
    """(rows of finished loads, loads left pending) in the store, as a killed tailer left it."""
    st = open_store(home=home)
    try:
        _, pend = st.query("SELECT pending_batch FROM ingest_state FINAL WHERE pending_batch != 0")
        pending = [int(r[0]) for r in pend]
        _, rows = st.query(
            "SELECT count() FROM requests WHERE _batch NOT IN {p:Array(UInt64)}", {"p": pending}
        )
    finally:
        st.close()
    return int(rows[0][0]), len(pending)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_tailer_killed_in_the_middle_of_a_load_resumes_every_record_once(tmp_path: Any) -> None:
    home = str(tmp_path / "home")
    logs = tmp_path / "logs"
    logs.mkdir()
    app = str(logs / "app.jsonl")
    written = [0]
    stop = threading.Event()

    def writer() -> None:  # about 3 MB/s of 2 KB records, until stopped
        with open(app, "ab") as fh:
            while not stop.is_set():
                lo = written[0]
                fh.write(b"".join(_line(i, pad=2000) for i in range(lo, lo + 30)))
                fh.flush()
                written[0] += 30
                time.sleep(0.02)

    w = threading.Thread(target=writer)
    w.start()
    err = home + "-run.err"
    try:
        hit = 0
        for _attempt in range(5):
            proc = _collect(home, str(logs), "--follow", "--interval", "0.5")
            try:
                _eventually(lambda: _in_all(_text(err)) > 0, "a first load")
                _eventually(lambda: _loading(proc.pid), "a load under way", pause=0.002)  # noqa: B023
            finally:
                proc.kill()  # SIGKILL, half way through a load
            assert proc.wait(TIMEOUT) == -signal.SIGKILL
            before, pending = _committed(home)  # pending: the load it was killed in
            hit += pending
            if hit:
                break
        assert hit, "no kill landed in the middle of a load"
    finally:
        stop.set()
        w.join(TIMEOUT)
    total = written[0]
    # restarted, it rolls the killed load back and catches up, each record once
    proc = _collect(home, str(logs), "--follow", "--interval", "0.1", "--json")
    try:
        _eventually(lambda: _in_all(_text(err)) >= total - before, "catching up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0, _text(err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    doc = json.loads(_text(home + "-run.out"))
    assert doc["rows"]["request"] == total - before and doc["rejected"] == 0
    _check_store(home, _ids(0, total))


# --- rotation while the tailer follows ------------------------------------------------------


def test_rotation_by_rename_with_a_line_cut_loses_and_doubles_nothing(
    tmp_path: Any, follow: Any
) -> None:
    app = str(tmp_path / "app.jsonl")
    log = _Log(app)
    log.write(0, 50)
    f = follow(app)  # the file named: its rotated copies are followed too
    f.loaded(50)
    n = 50
    for _cycle in range(2):
        rest = log.half(n)  # a line half written ...
        f.polls(3)  # ... is waited for, not rejected poll after poll
        assert not os.path.exists(f.rejects)
        if os.path.exists(app + ".1"):
            os.rename(app + ".1", app + ".2")
        os.rename(app, app + ".1")  # rotated by rename
        log.finish(rest)  # the writer finishes the line in the file it has open ...
        log.write(n + 1, n + 10)
        log.reopen()  # ... then opens the new file
        log.write(n + 10, n + 30)
        n += 30
        f.loaded(n)
    log.close()
    done = f.stop()
    assert done.report.rejected == 0 and not os.path.exists(f.rejects)
    _check_store(f.home, _ids(0, n))


def test_copytruncate_with_a_line_cut_loses_and_doubles_nothing(tmp_path: Any, follow: Any) -> None:
    app = str(tmp_path / "app.jsonl")
    log = _Log(app)
    log.write(0, 40)
    f = follow(app)
    f.loaded(40)
    # copytruncate cuts a half-written line in two: its first half ends the copy, the
    # writer (appending) writes the rest at the start of the truncated file
    rest = log.half(40)
    f.polls(2)
    shutil.copyfile(app, app + ".1")
    os.truncate(app, 0)
    log.finish(rest)
    log.write(41, 60)
    f.loaded(60)
    # what is written between the copy and the truncation is read from the original,
    # so the copy is shorter than what was read: it adds nothing
    os.rename(app + ".1", app + ".2")
    log.write(60, 70)
    f.loaded(70)
    shutil.copyfile(app, app + ".1")
    log.write(70, 80)  # logrotate loses these; the tailer has them
    f.loaded(80)
    os.truncate(app, 0)
    log.write(80, 90)
    f.loaded(90)
    log.close()
    done = f.stop()
    assert done.report.rejected == 0 and not os.path.exists(f.rejects), done.to_json()
    assert any("cut by log rotation" in line for line in f.lines)
    _check_store(f.home, _ids(0, 90))


def _gzip_slowly(src: str) -> None:
    """Compress ``src`` to ``src.gz`` as gzip(1) does: written in place, then ``src``
    removed (the tailer may see the ``.gz`` half written)."""
    with open(src, "rb") as f:
        body = f.read()
    with open(src + ".gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as gz:
        for at in range(0, len(body), 4096):
            gz.write(body[at : at + 4096])
            gz.flush()
            raw.flush()
            time.sleep(0.005)
    os.unlink(src)


def test_gzip_on_rotate_with_a_line_cut_loses_and_doubles_nothing(
    tmp_path: Any, follow: Any
) -> None:
    app = str(tmp_path / "app.jsonl")
    log = _Log(app)
    log.write(0, 30)
    f = follow(app)
    f.loaded(30)
    # rename, the line finished in the renamed file, which is then gzipped
    rest = log.half(30)
    f.polls(2)
    os.rename(app, app + ".1")
    log.finish(rest)
    log.write(31, 40)
    log.reopen()
    log.write(40, 60)
    _gzip_slowly(app + ".1")
    f.loaded(60)
    # copytruncate and compress: the copy, ending with half a line, gzipped
    rest = log.half(60)
    f.polls(2)
    os.rename(app + ".1.gz", app + ".2.gz")
    shutil.copyfile(app, app + ".1")
    os.truncate(app, 0)
    log.finish(rest)
    log.write(61, 80)
    _gzip_slowly(app + ".1")
    f.loaded(80)
    log.close()
    done = f.stop()
    assert done.report.rejected == 0 and not os.path.exists(f.rejects), done.to_json()
    _check_store(f.home, _ids(0, 80))


def test_the_tracers_own_rotation_and_gzip_lose_and_double_nothing(
    tmp_path: Any, follow: Any
) -> None:
    traces = tmp_path / "traces"
    f = follow(str(traces / "*.jsonl"))  # a glob: the .gz match it no more
    exp = JsonlExporter(str(traces), replica="r0", max_bytes=12_000)
    for i in range(200):
        exp.export(make_request(i))
        if i % 10 == 9:  # the batch that fills a file is rotated, gzipped, before it is read
            assert exp.force_flush()
            f.loaded(i + 1)
    exp.shutdown()
    assert len(exp.rotated) >= 4
    f.stop()
    _check_store(f.home, _ids(0, 200))


# --- a store held by another process --------------------------------------------------------

HOLDER = """
import sys
from infdebug.store import open_store
st = open_store(home=sys.argv[1])
print("holding", flush=True)
sys.stdin.readline()  # held until told to let go
st.close()
"""


def test_a_store_held_by_another_process_is_waited_for_and_nothing_is_lost(
    tmp_path: Any,
) -> None:
    home = str(tmp_path / "home")
    logs = tmp_path / "logs"
    logs.mkdir()
    log = _Log(str(logs / "app.jsonl"))
    log.write(0, 40)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, home],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
    assert holder.stdin is not None
    proc = _collect(home, str(logs), "--follow", "--interval", "0.1", "--json")
    err = home + "-run.err"
    try:
        _eventually(lambda: "waiting for the store" in _text(err), "the tailer to wait")
        log.write(40, 100)  # written while the store is held: the file keeps it
        # held a while longer: the tailer tries again (its backoff starts at 0.5 s) and
        # still says it waits only once
        time.sleep(1.0)
        holder.stdin.close()  # let go
        assert holder.wait(TIMEOUT) == 0
        holder.stdout.close()
        _eventually(lambda: _in_all(_text(err)) >= 100, "everything loaded")
        log.write(100, 120)
        _eventually(lambda: _in_all(_text(err)) >= 120, "what came after")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0, _text(err)
    finally:
        for p in (proc, holder):
            if p.poll() is None:
                p.kill()
                p.wait()
        for pipe in (holder.stdin, holder.stdout):
            if pipe is not None:
                pipe.close()
        log.close()
    text = _text(err)
    assert text.count("waiting for the store") == 1, text  # said once, however long
    assert "in use by process" in text
    assert text.count("the store is back") == 1, text
    doc = json.loads(_text(home + "-run.out"))
    assert doc["store_waits"] == 1 and doc["rows"]["request"] == 120 and doc["follow"]
    _check_store(home, _ids(0, 120))


# --- one pass -------------------------------------------------------------------------------


def test_one_pass_exit_codes_and_json_summary(tmp_path: Any) -> None:
    home = str(tmp_path / "home")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.jsonl").write_bytes(encode_records([make_request(i) for i in range(10)]))
    with gzip.open(logs / "b.jsonl.1.gz", "wb") as g:
        g.write(encode_records([make_request(i) for i in range(10, 15)]))

    def once(*args: str) -> tuple[int, dict[str, Any]]:
        p = _collect(home, *args, "--json")
        rc = p.wait(TIMEOUT * 2)
        return rc, json.loads(_text(home + "-run.out"))

    rc, doc = once(str(logs))
    assert rc == 0, doc
    assert doc["rows"]["request"] == 15 and doc["rejected"] == 0 and doc["files"] == 2
    assert doc["follow"] is False and doc["polls"] == 1 and doc["store_waits"] == 0
    # a bad line, and a last line cut short: set aside with file, line and field; exit 3
    bad = _line(20) + b'{"kind":"request","request_id":"req-x","ttft_s":"soon"}\n' + _line(21)
    (logs / "c.jsonl").write_bytes(bad + _line(22)[:40])
    rc, doc = once(str(logs), "--rejects", str(tmp_path / "rejects.jsonl"))
    assert rc == 3, doc
    assert doc["rows"]["request"] == 2 and doc["rejected"] == 2
    with open(tmp_path / "rejects.jsonl", encoding="utf-8") as f:
        rejects = [json.loads(line) for line in f]
    assert [(os.path.basename(r["file"]), r["line"]) for r in rejects] == [
        ("c.jsonl", 2),
        ("c.jsonl", 4),
    ]
    assert "truncated last line" in rejects[1]["reason"]
    # nothing to read: exit 2, and why
    rc, doc = once(str(tmp_path / "nowhere"))
    assert rc == 2 and "no such file" in doc["error"], doc
    _check_store(home, _ids(0, 15) | {"req-20", "req-21"})


def test_trace_sampling_applies_to_what_the_tailer_loads(tmp_path: Any) -> None:
    home = str(tmp_path / "home")
    logs = tmp_path / "logs"
    logs.mkdir()
    recs = [make_request(i, prompt_ids=[1, 2, 3], output_ids=[4, 5]) for i in range(20)]
    recs.append(make_request(20, error="boom", prompt_ids=[1, 2, 3], output_ids=[4, 5]))
    (logs / "a.jsonl").write_bytes(encode_records(recs))
    p = _collect(home, str(logs), "--trace-sample", "0", "--json")
    assert p.wait(TIMEOUT * 2) == 0
    st = open_store(home=home)
    try:
        _, rows = st.query(
            "SELECT request_id, notEmpty(prompt_ids), prompt_tokens FROM requests "
            "ORDER BY request_id"
        )
    finally:
        st.close()
    assert len(rows) == 21  # every request, with its aggregates
    kept = {r[0] for r in rows if r[1]}
    assert kept == {"req-20"}  # share 0: only the anomalous one keeps its token IDs
    assert all(r[2] == 3 for r in rows if not r[1])  # the counts survive the arrays
