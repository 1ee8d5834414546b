"""The spool: durable frames, corruption reported and skipped, and a loader that loads every
span once through a kill -9 between insert and commit and through a store held elsewhere."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

from conftest import REPO, copy_home
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from infdebug.collectors.otlp import SpoolLoader
from infdebug.collectors.spool import HEADER, Corruption, Spool
from infdebug.store import open_store

TIMEOUT = 60.0
T0 = time.time_ns()


def _batch(first: int, n: int) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "svc"
    ss = rs.scope_spans.add()
    for i in range(first, first + n):
        s = ss.spans.add()
        s.trace_id = (7).to_bytes(16, "big")
        s.span_id = (i + 1).to_bytes(8, "big")
        s.name = "op"
        a = s.attributes.add()  # a request span too: a request record per span
        a.key, a.value.string_value = "gen_ai.request.id", f"q{i}"
        s.start_time_unix_nano, s.end_time_unix_nano = T0, T0 + 1000
    return req.SerializeToString()


def _span_ids(home: str) -> list[str]:
    st = open_store(home=home)
    try:
        spans = [r[0] for r in st.query("SELECT SpanId FROM otel_traces ORDER BY SpanId")[1]]
        reqs = st.query("SELECT count(), uniqExact(request_id) FROM requests")[1][0]
    finally:
        st.close()
    assert reqs == (len(spans), len(spans))  # one request record per span, none doubled
    return spans


def _want(n: int) -> list[str]:
    return sorted(f"{i + 1:016x}" for i in range(n))


def test_frames_come_back_in_order_and_survive_reopening(tmp_path: Any) -> None:
    sp = Spool(str(tmp_path), segment_bytes=200)
    seqs = [sp.append(bytes([i]) * 50) for i in range(10)]
    assert seqs == list(range(1, 11)) and len(sp.segments()) > 1
    again = Spool(str(tmp_path), segment_bytes=200)
    assert [s for s, _ in again.frames()] == seqs
    assert again.append(b"x") == 11
    assert [s for s, _ in again.frames(after=8)] == [9, 10, 11]
    again.release(11)
    assert again.segments() == []


def test_a_corrupted_segment_is_reported_and_the_rest_replayed(tmp_path: Any) -> None:
    sp = Spool(str(tmp_path))
    for i in range(5):
        sp.append(bytes([65 + i]) * 100)
    (seg,) = sp.segments()
    frame = HEADER.size + 100
    with open(seg, "r+b") as fh:  # flip bytes in the middle of the third frame's payload
        fh.seek(2 * frame + HEADER.size + 50)
        fh.write(b"\x00\x01\x02")
    bad: list[Corruption] = []
    got = [s for s, _ in Spool(str(tmp_path)).frames(report=bad.append)]
    assert got == [1, 2, 4, 5]
    assert len(bad) == 1 and bad[0].path == seg and bad[0].offset == 2 * frame
    assert "checksum" in str(bad[0]) and seg in str(bad[0])


def test_the_spool_refuses_past_its_limit_and_counts(tmp_path: Any) -> None:
    sp = Spool(str(tmp_path), max_bytes=300)
    sp.append(b"a" * 100)
    sp.append(b"b" * 100)
    for _ in range(3):
        try:
            sp.append(b"c" * 100)
        except Exception as e:
            assert "full" in str(e)
    assert sp.refused == 3 and sp.size() <= 300


CRASHER = """
import os, signal, sys
from infdebug.collectors.otlp import SpoolLoader
from infdebug.collectors.spool import Spool
from infdebug.store import open_store
st = open_store(home=sys.argv[2])
real = st.insert_jsonl
def insert_jsonl(*a, **k):  # the chunk's request records, after its spans
    real(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)  # both inserted, not yet recorded as loaded
st.insert_jsonl = insert_jsonl
SpoolLoader(Spool(sys.argv[1]), lambda: st).load_once(st)
"""


def test_a_loader_killed_between_insert_and_commit_loads_every_span_once(
    tmp_path: Any, migrated_home: str
) -> None:
    home = copy_home(migrated_home, str(tmp_path / "home"))
    spool = str(tmp_path / "spool")
    sp = Spool(spool)
    for b in range(4):
        sp.append(_batch(b * 25, 25))
    p = subprocess.run(
        [sys.executable, "-c", CRASHER, spool, home], cwd=REPO, timeout=TIMEOUT, check=False
    )
    assert p.returncode == -9
    assert len(_span_ids(home)) == 100  # the whole chunk went in before the kill
    st = open_store(home=home)
    try:
        loader = SpoolLoader(Spool(spool), lambda: st)
        loader.load_once(st)
        sp2 = Spool(spool)
        sp2.append(_batch(100, 10))
        SpoolLoader(sp2, lambda: st).load_once(st)
    finally:
        st.close()
    assert _span_ids(home) == _want(110)  # nothing doubled, nothing lost
    assert Spool(spool).segments() == []


HOLDER = """
import sys
from infdebug.store import open_store
st = open_store(home=sys.argv[1])
print("holding", flush=True)
sys.stdin.readline()
st.close()
"""


def _eventually(cond: Any, what: str) -> None:
    end = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_held_store_is_waited_for_once_and_nothing_is_lost(
    tmp_path: Any, migrated_home: str
) -> None:
    home = copy_home(migrated_home, str(tmp_path / "home"))
    sp = Spool(str(tmp_path / "spool"))
    sp.append(_batch(0, 20))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, home],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    said: list[str] = []
    stop = threading.Event()
    loader = SpoolLoader(sp, lambda: open_store(home=home), say=said.append, interval=0.05)
    th = threading.Thread(target=loader.run, args=(stop,))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        th.start()
        _eventually(lambda: any("waiting for the store" in s for s in said), "the wait")
        sp.append(_batch(20, 20))  # received while the store is held: kept in the spool
        _eventually(lambda: loader.waits == 1 and len(said) == 1, "a retry")
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(TIMEOUT) == 0
        _eventually(lambda: loader.loaded_spans == 40, "everything loaded")
    finally:
        stop.set()
        th.join(TIMEOUT)
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert sum("waiting for the store" in s for s in said) == 1, said
    assert sum("the store is back" in s for s in said) == 1, said
    assert _span_ids(home) == _want(40)
    assert sp.segments() == []  # loaded segments deleted
