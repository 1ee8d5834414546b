"""Ingest under hostile input and a hostile disk: one bad file stops nothing, a rotated log
is found and resumed, a file that merely starts like another is not read from the other's
offset, and a full disk stops ingest in one line without leaving the store unopenable."""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import random
import shutil
import string
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import REPO, make_gpu, make_request

from infdebug.collectors.ingest import ingest_paths
from infdebug.collectors.ingestor import Ingestor
from infdebug.collectors.readers import convert_to_contract, detect_format
from infdebug.collectors.rejects import RejectSink
from infdebug.schema import encode_record, encode_records
from infdebug.store import open_store
from infdebug.store.queries import fetch_records

DEEP = b'{"a":' * 5000 + b"1" + b"}" * 5000
DEEP_ARRAY = b"[" * 5000 + b"]" * 5000
LOGS = os.path.join(os.path.dirname(__file__), "data", "engine_logs")


def _ingest(store: Any, tmp_path: Any, *paths: str, **kw: Any) -> Any:
    return ingest_paths(store, list(paths), rejects_path=str(tmp_path / "rejects.jsonl"), **kw)


def _rejects(rep: Any) -> list[dict[str, Any]]:
    if not rep.rejects_file:
        return []
    with open(rep.rejects_file, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _count(store: Any, table: str = "requests") -> int:
    _, rows = store.query(f"SELECT count() FROM {table}")
    return int(rows[0][0])


def _ids(store: Any) -> set[str]:
    return {r.request_id for r in fetch_records(store, "request")}


def _requests(lo: int, hi: int, **kw: Any) -> bytes:
    return encode_records([make_request(i, **kw) for i in range(lo, hi)])


def _noisy(lo: int, hi: int) -> bytes:
    """Requests whose text does not compress away (a .gz of them is about as big)."""
    rnd = random.Random(lo)
    return encode_records(
        [
            make_request(i, output_text="".join(rnd.choices(string.ascii_letters, k=400)))
            for i in range(lo, hi)
        ]
    )


# --- one hostile file ---------------------------------------------------------------------------


def test_a_deeply_nested_line_is_a_rejected_line_not_a_crash(store: Any, tmp_path: Any) -> None:
    only = tmp_path / "only-deep.jsonl"
    only.write_bytes(DEEP + b"\n" + DEEP_ARRAY + b"\n")
    first = tmp_path / "deep-first.jsonl"
    first.write_bytes(DEEP + b"\n" + _requests(0, 3))
    middle = tmp_path / "deep-middle.jsonl"
    middle.write_bytes(_requests(10, 13) + DEEP + b"\n" + _requests(13, 15))
    good = tmp_path / "good.jsonl"
    good.write_bytes(_requests(20, 25))
    # detection looks past a line it cannot parse
    assert detect_format(str(first)) == "contract"
    rep = _ingest(store, tmp_path, str(only), str(first), str(middle), str(good))
    assert rep.rows["request"] == 3 + 5 + 5 and _count(store) == 13
    where = {(os.path.basename(r["file"]), r["line"]) for r in _rejects(rep)}
    assert where == {
        ("only-deep.jsonl", 1),
        ("only-deep.jsonl", 2),
        ("deep-first.jsonl", 1),
        ("deep-middle.jsonl", 4),
    }
    reasons = {(os.path.basename(r["file"]), r["line"]): r["reason"] for r in _rejects(rep)}
    assert "Expected `object`, got `array`" in reasons[("only-deep.jsonl", 2)]  # told at once
    del reasons[("only-deep.jsonl", 2)]
    assert all("nested too deeply" in why for why in reasons.values()), reasons
    assert all(f.status != "error" for f in rep.files)
    assert rep.exit_code() == 3


def test_a_deeply_nested_line_in_an_engine_log_is_rejected_with_its_line(tmp_path: Any) -> None:
    src = os.path.join(LOGS, "openai-replica-c.jsonl")
    with open(src, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    p = tmp_path / "openai-deep.jsonl"
    p.write_bytes(lines[0] + DEEP + b"\n" + b"".join(lines[1:]))
    assert detect_format(str(p)) == "openai"
    plain = convert_to_contract(src, str(tmp_path / "a.jsonl"))
    deep = convert_to_contract(str(p), str(tmp_path / "b.jsonl"))
    assert deep.error is None and deep.requests == plain.requests
    assert [r.line for r in deep.rejects if "nested too deeply" in r.reason] == [2]
    assert deep.rejected == plain.rejected + 1


def test_a_truncated_or_corrupt_gzip_is_that_files_error(store: Any, tmp_path: Any) -> None:
    body = _noisy(0, 600)  # ~300 KB: sniffing and detection read only its first part
    packed = gzip.compress(body)
    assert len(packed) > 150_000
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(packed[: len(packed) * 2 // 3])
    corrupt = tmp_path / "corrupt.jsonl.gz"
    bad = bytearray(packed)
    for i in range(len(bad) * 2 // 3, len(bad) * 2 // 3 + 64):
        bad[i] ^= 0x5A
    corrupt.write_bytes(bytes(bad))
    crc = tmp_path / "crc.jsonl.gz"  # every block decompresses; the trailer's CRC is wrong
    crc.write_bytes(packed[:-8] + bytes(8))
    good = tmp_path / "good.jsonl"
    good.write_bytes(_requests(1000, 1010))
    rep = _ingest(store, tmp_path, str(truncated), str(corrupt), str(crc), str(good))
    by = {os.path.basename(f.path): f for f in rep.files}
    assert by["good.jsonl"].status == "loaded" and by["good.jsonl"].rows["request"] == 10
    for name in ("truncated.jsonl.gz", "corrupt.jsonl.gz", "crc.jsonl.gz"):
        assert by[name].status == "error", by[name]
        assert by[name].message.startswith(str(tmp_path / name)) and "\n" not in by[name].message
        assert by[name].rows["request"] == 0
    assert "truncated" in by["truncated.jsonl.gz"].message
    assert "gzip" in by["corrupt.jsonl.gz"].message and "gzip" in by["crc.jsonl.gz"].message
    assert _ids(store) == {f"req-{i}" for i in range(1000, 1010)}  # nothing of the bad files
    assert rep.exit_code() == 3


def test_a_truncated_gzip_does_not_abort_the_cli(tmp_path: Any) -> None:
    packed = gzip.compress(_noisy(0, 600))
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "good.jsonl").write_bytes(_requests(0, 4))
    p = subprocess.run(
        [sys.executable, "-m", "infdebug.cli", "ingest", str(tmp_path), "--json"],
        env={**os.environ, "INFDEBUG_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert p.returncode == 3, p.stdout + p.stderr
    assert "Aborted" not in p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["rows"]["request"] == 4
    assert any("cut.jsonl.gz" in e and "truncated" in e for e in doc["errors"])


class _Rotating:
    """The real store, with log rotation renaming the file away while ClickHouse starts to
    read it (the seam is the ``Store`` protocol; every call goes to the real store)."""

    def __init__(self, store: Any, victim: str) -> None:
        self._store, self._victim = store, victim

    def insert_jsonl(self, table: Any, path: str, *args: Any, **kw: Any) -> None:
        if path == self._victim and os.path.exists(path):
            os.rename(path, path + ".1")
        self._store.insert_jsonl(table, path, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_file_rotated_away_while_it_is_read_is_that_files_error(
    store: Any, tmp_path: Any
) -> None:
    victim = tmp_path / "app.jsonl"
    victim.write_bytes(_requests(0, 20))
    other = tmp_path / "other.jsonl"
    other.write_bytes(_requests(100, 105))
    rep = _ingest(_Rotating(store, str(victim)), tmp_path, str(victim), str(other))
    by = {os.path.basename(f.path): f for f in rep.files}
    assert by["app.jsonl"].status == "error"
    assert "gone while it was being read" in by["app.jsonl"].message
    assert by["other.jsonl"].rows["request"] == 5
    assert _ids(store) == {f"req-{i}" for i in range(100, 105)}  # the failed load rolled back
    assert rep.exit_code() == 3
    # under its new name it loads, in full
    again = _ingest(store, tmp_path, str(victim) + ".1")
    assert again.rows["request"] == 20 and _count(store) == 25


# --- rotated names ------------------------------------------------------------------------------


def test_rotated_log_names_are_read_and_what_is_skipped_is_reported(
    store: Any, tmp_path: Any
) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    with gzip.open(d / "app.jsonl.1.gz", "wb") as f:
        f.write(_requests(0, 2))
    (d / "app.log.1").write_bytes(_requests(2, 4))
    (d / "app.jsonl.2").write_bytes(_requests(4, 6))
    with gzip.open(d / "app.log-20251201.gz", "wb") as f:
        f.write(_requests(6, 8))
    (d / "app.jsonl-2025120113").write_bytes(_requests(8, 10))
    (d / "app.log.2025-12-01").write_bytes(_requests(10, 12))
    (d / "a.txt").write_text("notes")
    (d / "b.csv").write_text("x,y\n")
    (d / ".hidden.jsonl").write_bytes(_requests(50, 51))
    os.mkfifo(d / "pipe.jsonl")  # reading it would block: never opened
    rep = _ingest(store, tmp_path, str(d))
    assert _ids(store) == {f"req-{i}" for i in range(12)}
    assert rep.rows["request"] == 12 and len(rep.files) == 6
    assert rep.skipped == [
        f"{d}: skipped 2 files with unknown suffixes: a.txt, b.csv",
        f"{d}: skipped 1 file hidden (their names start with a dot): .hidden.jsonl",
        f"{d}: skipped 1 file that are not regular files (pipes, sockets, devices, broken "
        "links): pipe.jsonl",
    ]
    assert all(line in rep.notes() for line in rep.skipped)
    assert rep.to_json()["skipped"] == rep.skipped
    assert rep.exit_code() == 0


def test_a_grown_log_rotated_to_a_numbered_gzip_is_resumed(store: Any, tmp_path: Any) -> None:
    # Bigger than the 64 KiB hashed at each end, so the prefix check reads both.
    body = _noisy(0, 400)
    assert len(body) > 3 * (64 << 10)
    p = tmp_path / "app.jsonl"
    p.write_bytes(body)
    assert _ingest(store, tmp_path, str(p)).rows["request"] == 400
    rotated = tmp_path / "app.jsonl.1.gz"
    with gzip.open(rotated, "wb") as f:
        f.write(body + _noisy(400, 405))
    os.unlink(p)
    rep = _ingest(store, tmp_path, str(tmp_path))
    assert rep.rows["request"] == 5, rep.to_json()
    assert _count(store) == 405
    assert _ingest(store, tmp_path, str(rotated)).files[0].status == "unchanged"


# --- file identity ------------------------------------------------------------------------------


def test_a_file_that_starts_with_the_same_line_is_read_whole(store: Any, tmp_path: Any) -> None:
    header = encode_record(make_gpu(0))  # e.g. a tracer's first sample, the same in every file
    a = tmp_path / "a.jsonl"
    a.write_bytes(header + _requests(0, 10))
    assert _ingest(store, tmp_path, str(a)).rows["request"] == 10
    b = tmp_path / "b.jsonl"  # longer than a, the same first line, other requests after it
    b.write_bytes(header + _requests(100, 130))
    rep = _ingest(store, tmp_path, str(b))
    assert rep.rows["request"] == 30, rep.to_json()
    assert _ids(store) == {f"req-{i}" for i in [*range(10), *range(100, 130)]}
    # and each is still recognised as itself
    for path in (a, b):
        assert _ingest(store, tmp_path, str(path)).files[0].status == "unchanged"
    with open(b, "ab") as f:
        f.write(_requests(130, 132))
    assert _ingest(store, tmp_path, str(b)).rows["request"] == 2
    with open(a, "ab") as f:
        f.write(_requests(10, 11))
    assert _ingest(store, tmp_path, str(a)).rows["request"] == 1


def test_a_file_that_shares_a_long_prefix_then_differs_is_read_whole(
    store: Any, tmp_path: Any
) -> None:
    shared = _noisy(0, 300)  # over 64 KiB: the first block hashed is the same in both
    a = tmp_path / "a.jsonl"
    a.write_bytes(shared + _noisy(300, 310))
    assert _ingest(store, tmp_path, str(a)).rows["request"] == 310
    b = tmp_path / "b.jsonl"
    b.write_bytes(shared + _noisy(500, 600))
    rep = _ingest(store, tmp_path, str(b))
    assert rep.rows["request"] == 400  # not only what lies past a's offset
    assert {f"req-{i}" for i in range(500, 600)} <= _ids(store)


def test_a_file_rewritten_in_place_is_read_again_with_a_warning(store: Any, tmp_path: Any) -> None:
    header = encode_record(make_gpu(0))
    p = tmp_path / "trace.jsonl"
    p.write_bytes(header + _requests(0, 20))
    _ingest(store, tmp_path, str(p))
    p.write_bytes(header + _requests(50, 55))  # shorter: truncated and written anew
    rep = _ingest(store, tmp_path, str(p))
    assert rep.rows["request"] == 5 and rep.files[0].status == "loaded"
    assert any("changed before the point ingested earlier" in n for n in rep.notes())
    assert {f"req-{i}" for i in range(50, 55)} <= _ids(store)


def test_a_byte_order_mark_is_not_a_bad_first_line(store: Any, tmp_path: Any) -> None:
    bom = b"\xef\xbb\xbf"
    for fast in (True, False):
        p = tmp_path / f"bom-{fast}.jsonl"
        p.write_bytes(bom + _requests(0 if fast else 10, 5 if fast else 15))
        sink = RejectSink(str(tmp_path / f"r-{fast}.jsonl"))
        res = Ingestor(store, rejects=sink, fast_path=fast).ingest_file(str(p))
        sink.close()
        assert (res.rows["request"], res.rejected) == (5, 0), res
    assert _ids(store) == {f"req-{i}" for i in [*range(5), *range(10, 15)]}
    # a converted engine log too
    src = os.path.join(LOGS, "openai-replica-c.jsonl")
    with open(src, "rb") as f:
        (tmp_path / "bom-openai.jsonl").write_bytes(bom + f.read())
    plain = convert_to_contract(src, str(tmp_path / "a.jsonl"))
    marked = convert_to_contract(str(tmp_path / "bom-openai.jsonl"), str(tmp_path / "b.jsonl"))
    assert marked.format == "openai"
    assert (marked.requests, marked.rejected) == (plain.requests, plain.rejected)


# --- a full disk --------------------------------------------------------------------------------


def test_disk_full_is_told_from_real_errors() -> None:
    from infdebug.store.base import disk_full

    with pytest.raises(OSError) as exc, open("/dev/full", "wb") as f:
        f.write(b"x")
        f.flush()
    assert exc.value.errno == errno.ENOSPC and disk_full(exc.value)
    assert not disk_full(FileNotFoundError(errno.ENOENT, "No such file or directory"))
    # ClickHouse's own words, as chDB 26.9 gave them on a full tmpfs
    assert disk_full(
        "Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)"
    )
    assert disk_full(
        "Code: 74. DB::ErrnoException: Cannot write to file /x/data.bin, errno: 28, "
        "strerror: No space left on device. (CANNOT_WRITE_TO_FILE_DESCRIPTOR)"
    )
    assert not disk_full("Code: 27. DB::Exception: Cannot parse input. (CANNOT_PARSE_INPUT)")
    assert not disk_full("Code: 62. DB::Exception: Syntax error: errno: 280")


def test_a_full_disk_under_the_rejects_file_stops_ingest_in_one_line(
    store_factory: Any, tmp_path: Any
) -> None:
    from infdebug.store.base import StoreFull

    st = store_factory()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(_requests(0, 5) + b'{"kind":"request"\n' + _requests(5, 8))
    later = tmp_path / "later.jsonl"
    later.write_bytes(_requests(100, 103))
    with pytest.raises(StoreFull) as exc:
        ingest_paths(st, [str(bad), str(later)], rejects_path="/dev/full")
    msg = str(exc.value)
    assert "\n" not in msg and "no space left" in msg and "/dev/full" in msg
    assert "ingest stopped at " + str(bad) in msg
    st.close()
    # the store opens again, and the file loads in full once rejects can be written
    st = store_factory()
    rep = _ingest(st, tmp_path, str(bad), str(later))
    assert rep.rows["request"] == 11 and rep.rejected == 1
    assert _count(st) == 11


@contextlib.contextmanager
def _tmpfs(path: str, size: str) -> Iterator[str]:
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a real full disk needs a small tmpfs, which only root can mount")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", path], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True)


def _fill(path: str) -> None:
    """Write zeros to ``path`` until the disk is full."""
    with open(path, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(bytes(1 << 16))
        with contextlib.suppress(OSError):
            while True:
                f.write(bytes(512))


def test_a_really_full_disk_stops_ingest_and_the_store_still_opens(tmp_path: Any) -> None:
    from infdebug.store.health import broken_mutation_files

    with _tmpfs(str(tmp_path / "disk"), "24m") as disk:
        home = os.path.join(disk, "home")
        first = tmp_path / "first.jsonl"
        first.write_bytes(_requests(0, 50))
        second = tmp_path / "second.jsonl"  # a bad line: the fast path loads, then rolls back
        second.write_bytes(_requests(100, 150) + b'{"kind":"request"\n' + _requests(150, 160))
        env = {**os.environ, "INFDEBUG_HOME": home}
        env.pop("INFDEBUG_CLICKHOUSE_URL", None)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "infdebug.cli", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=240,  # a hang in a rollback would end here, failing the test
                cwd=REPO,
            )

        rejects = str(tmp_path / "rejects.jsonl")
        assert cli("ingest", str(first), "--rejects", rejects).returncode == 0
        _fill(os.path.join(disk, "filler"))
        p = cli("ingest", str(second), "--rejects", rejects)
        assert p.returncode == 2, p.stdout + p.stderr
        err = [line for line in p.stderr.splitlines() if line.strip()]
        assert len(err) == 1 and "no space left" in err[0].lower(), p.stderr
        assert "Traceback" not in p.stderr
        assert broken_mutation_files(home) == []
        os.unlink(os.path.join(disk, "filler"))
        assert cli("ingest", str(second), "--rejects", rejects).returncode == 3
        st = open_store(home=home)
        try:
            assert _ids(st) == {f"req-{i}" for i in [*range(50), *range(100, 160)]}
            assert _count(st) == 110
        finally:
            st.close()


def test_a_file_name_with_glob_characters_loads_only_itself(tmp_path: Any) -> None:
    """ClickHouse's file() expands ``?`` ``*`` ``{}`` ``[]`` with no escape: ``x?.jsonl``
    must not also load ``xY.jsonl`` beside it (both paths: fast and careful)."""
    from conftest import make_request

    from infdebug.collectors.ingest import ingest_paths
    from infdebug.schema import encode_records
    from infdebug.store import open_store

    d = tmp_path / "logs"
    d.mkdir()
    (d / "x?.jsonl").write_bytes(
        encode_records([make_request(request_id=f"q{i}") for i in range(2)])
    )
    (d / "xY.jsonl").write_bytes(
        encode_records([make_request(request_id=f"y{i}") for i in range(3)])
    )
    (d / "a*{b,c}[d].jsonl.gz").write_bytes(
        gzip.compress(encode_records([make_request(request_id="g0")]))
    )
    st = open_store(home=str(tmp_path / "home"))
    try:
        ingest_paths(st, [str(d / "x?.jsonl")], rejects_path=str(tmp_path / "r.jsonl"))
        _, rows = st.query("SELECT request_id FROM requests ORDER BY request_id")
        assert [r[0] for r in rows] == ["q0", "q1"]
        ingest_paths(st, [str(d / "a*{b,c}[d].jsonl.gz")], rejects_path=str(tmp_path / "r.jsonl"))
        _, rows = st.query("SELECT request_id, _file FROM requests WHERE request_id = 'g0'")
        assert len(rows) == 1 and rows[0][1].endswith("a*{b,c}[d].jsonl.gz")
    finally:
        st.close()
