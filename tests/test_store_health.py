"""The store can never be left unopenable: a broken mutation file is mended on open and by
``store repair``, a dropped table is re-created, ingest state whose rows are gone is forgotten,
a mutation that keeps failing is killed, and a store that cannot be written is still read."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import REPO, make_request

from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import encode_records
from infdebug.store import StoreError, open_store


def _ingest(store: Any, tmp_path: Any, *paths: str) -> Any:
    return ingest_paths(store, list(paths), rejects_path=str(tmp_path / "rejects.jsonl"))


def _count(store: Any, table: str = "requests") -> int:
    _, rows = store.query(f"SELECT count() FROM {table}")
    return int(rows[0][0])


def _file(tmp_path: Any, name: str, lo: int, hi: int) -> str:
    p = tmp_path / name
    p.write_bytes(encode_records([make_request(i) for i in range(lo, hi)]))
    return str(p)


def _cli(home: str, *args: str) -> Any:
    from infdebug.cli import cli

    return CliRunner().invoke(cli, ["--home", home, *args], catch_exceptions=False)


def _table_dir(store: Any, table: str) -> str:
    _, rows = store.query(
        "SELECT data_paths[1] FROM system.tables WHERE database = currentDatabase() "
        "AND name = {t:String}",
        {"t": table},
    )
    return str(rows[0][0])


def _kinds(doc: dict[str, Any]) -> list[str]:
    return [p["kind"] for p in doc["problems"]]


# --- a mutation file a full disk left broken ----------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"format version: 1\ncreate ti"])
def test_a_broken_mutation_file_is_found_and_mended(tmp_path: Any, content: bytes) -> None:
    from infdebug.store.health import broken_mutation_files

    home = str(tmp_path / "home")
    st = open_store(home=home)
    _ingest(st, tmp_path, _file(tmp_path, "a.jsonl", 0, 20))
    st.command("ALTER TABLE requests DELETE WHERE _batch = 1", None, {"mutations_sync": 2})
    target = os.path.join(_table_dir(st, "requests"), "mutation_999.txt")
    st.close()
    # what a full disk left: chDB itself cannot start ("Cannot parse input: expected
    # 'format version: 1\n' at end of stream")
    with open(target, "wb") as f:
        f.write(content)
    assert broken_mutation_files(home) == [target]
    res = _cli(home, "store", "check", "--json")
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert _kinds(doc) == ["broken_mutation_file"] and "mutation_999.txt" in res.stdout
    assert os.path.exists(target)  # check mends nothing
    res = _cli(home, "store", "repair", "--json")
    assert res.exit_code == 0, res.output
    assert not os.path.exists(target) and broken_mutation_files(home) == []
    moved = [
        os.path.join(d, n) for d, _, ns in os.walk(os.path.join(home, "quarantine")) for n in ns
    ]
    assert [os.path.basename(m) for m in moved] == ["mutation_999.txt"]
    st = open_store(home=home)
    assert _count(st) == 20
    st.close()
    assert _cli(home, "store", "check").exit_code == 0


def test_opening_the_store_mends_a_broken_mutation_file_itself(tmp_path: Any) -> None:
    home = str(tmp_path / "home")
    st = open_store(home=home)
    _ingest(st, tmp_path, _file(tmp_path, "a.jsonl", 0, 7))
    target = os.path.join(_table_dir(st, "requests"), "mutation_5.txt")
    st.close()
    open(target, "wb").close()
    st = open_store(home=home)  # chDB would refuse to start with it there
    try:
        assert _count(st) == 7 and not os.path.exists(target)
        assert os.listdir(os.path.join(home, "quarantine"))
    finally:
        st.close()


# --- tables, ingest state, mutations --------------------------------------------------------------


def test_a_dropped_table_is_restored_and_its_files_load_again(tmp_path: Any) -> None:
    from infdebug.store.health import check_store, open_unmended

    home = str(tmp_path / "home")
    a = _file(tmp_path, "a.jsonl", 0, 12)
    st = open_store(home=home)
    _ingest(st, tmp_path, a)
    st.command("DROP TABLE requests")
    st.close()
    st = open_unmended(None, home)
    try:
        kinds = [p.kind for p in check_store(st)]
    finally:
        st.close()
    assert kinds == ["missing_table", "stale_ingest_state"]
    res = _cli(home, "store", "repair")
    assert res.exit_code == 0, res.output
    assert "re-created table(s) requests" in res.output and "forgot 1 file(s)" in res.output
    st = open_store(home=home)
    try:
        rep = _ingest(st, tmp_path, a)
        assert rep.rows["request"] == 12 and _count(st) == 12
    finally:
        st.close()


def test_opening_the_store_re_creates_a_dropped_table(tmp_path: Any) -> None:
    home = str(tmp_path / "home")
    st = open_store(home=home)
    st.command("DROP TABLE gpu_samples")
    st.close()
    st = open_store(home=home)
    try:
        assert _count(st, "gpu_samples") == 0
    finally:
        st.close()


def test_ingest_state_whose_rows_are_gone_is_reported_and_forgotten(
    store_factory: Any, tmp_path: Any
) -> None:
    from infdebug.store.health import check_store, repair_store
    from infdebug.store.ingest_state import IngestState, save_state

    st = store_factory()
    a, b = _file(tmp_path, "a.jsonl", 0, 10), _file(tmp_path, "b.jsonl", 100, 105)
    _ingest(st, tmp_path, a, b)
    assert check_store(st) == []
    st.command(
        "ALTER TABLE requests DELETE WHERE _file = {f:String}", {"f": a}, {"mutations_sync": 2}
    )
    # a state saved before batches were kept: judged by its file name
    save_state(st, IngestState("legacy-gone", size=1, offset=1, rows=3), "/gone/old.jsonl")
    save_state(st, IngestState("legacy-here", size=1, offset=1, rows=5), b)
    problems = check_store(st)
    assert [p.kind for p in problems] == ["stale_ingest_state"]
    assert a in problems[0].what and "/gone/old.jsonl" in problems[0].what
    assert b not in problems[0].what
    done = repair_store(st, problems)
    assert any("forgot 2 file(s)" in line for line in done), done
    assert check_store(st) == []
    assert _ingest(st, tmp_path, a).rows["request"] == 10
    assert _ingest(st, tmp_path, b).files[0].status == "unchanged"
    assert _count(st) == 15


def test_a_failing_mutation_is_reported_killed_and_no_rollback_waits_on_it(
    store: Any, tmp_path: Any
) -> None:
    from infdebug.store.health import check_store, repair_store
    from infdebug.store.ingest_state import failing_mutations, rollback_batch

    _ingest(store, tmp_path, _file(tmp_path, "a.jsonl", 0, 5))
    store.command(
        "ALTER TABLE requests DELETE WHERE throwIf(replica != '', 'boom')",
        None,
        {"mutations_sync": 0},
    )
    for _ in range(300):  # until ClickHouse has tried it once
        if failing_mutations(store):
            break
        time.sleep(0.1)
    problems = check_store(store)
    assert [p.kind for p in problems] == ["failing_mutation"]
    assert "requests" in problems[0].what and "boom" in problems[0].what
    with pytest.raises(StoreError, match="store repair"):
        rollback_batch(store, 12345)  # refused up front, not left waiting behind it
    done = repair_store(store, problems)
    assert done and done[0].startswith("killed mutation")
    assert check_store(store) == []
    rollback_batch(store, 12345)
    assert _count(store) == 5


def test_a_load_that_did_not_finish_is_rolled_back_by_repair(store: Any, tmp_path: Any) -> None:
    from infdebug.store.ddl import TABLES
    from infdebug.store.health import check_store, repair_store
    from infdebug.store.ingest_state import IngestState, save_state

    _ingest(store, tmp_path, _file(tmp_path, "a.jsonl", 0, 4))
    half = _file(tmp_path, "half.jsonl", 100, 110)
    save_state(store, IngestState("died-half-way", pending_batch=777), half)
    store.insert_jsonl(TABLES["request"], half, half, 777, {}, guarded=False)
    assert _count(store) == 14
    problems = check_store(store)
    assert [p.kind for p in problems] == ["pending_load"] and half in problems[0].what
    repair_store(store, problems)
    assert _count(store) == 4 and check_store(store) == []


# --- a store that cannot be written ---------------------------------------------------------------


@contextlib.contextmanager
def _read_only(path: str) -> Iterator[None]:
    """``path`` read-only: by mode bits for an ordinary user; for root, whom mode bits do not
    stop, by a read-only bind mount where that is allowed (else the test is skipped)."""
    if os.geteuid() != 0:
        for d, dirs, files in os.walk(path):
            for n in [*dirs, *files]:
                os.chmod(os.path.join(d, n), 0o555 if n in dirs else 0o444)
        os.chmod(path, 0o555)
        try:
            yield
        finally:
            for d, dirs, _ in os.walk(path):
                os.chmod(d, 0o755)
                for n in dirs:
                    os.chmod(os.path.join(d, n), 0o755)
        return
    bind = subprocess.run(["mount", "--bind", path, path], capture_output=True)
    if bind.returncode != 0:
        pytest.skip("running as root, where chmod does not stop writes, and cannot bind-mount")
    ro = subprocess.run(["mount", "-o", "remount,bind,ro", path], capture_output=True)
    try:
        if ro.returncode != 0:
            pytest.skip("running as root, and a read-only bind mount is not allowed here")
        yield
    finally:
        if subprocess.run(["umount", path], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True)


def test_a_read_only_store_is_queried_and_refuses_writes_in_one_line(tmp_path: Any) -> None:
    from infdebug.store.base import StoreReadOnly
    from infdebug.store.queries import replica_stats

    home = str(tmp_path / "home")
    a, b = _file(tmp_path, "a.jsonl", 0, 9), _file(tmp_path, "b.jsonl", 100, 103)
    st = open_store(home=home)
    _ingest(st, tmp_path, a)
    st.close()
    with _read_only(home):
        st = open_store(home=home)
        try:
            assert getattr(st, "read_only", None)
            assert _count(st) == 9
            assert sum(r.requests for r in replica_stats(st)) == 9
            with pytest.raises(StoreReadOnly) as exc:
                _ingest(st, tmp_path, b)
            msg = str(exc.value)
            assert "\n" not in msg and home in msg and "read-only" in msg and "--home" in msg
        finally:
            st.close()
        env = {**os.environ, "INFDEBUG_HOME": home}
        env.pop("INFDEBUG_CLICKHOUSE_URL", None)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "infdebug.cli", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                cwd=REPO,
            )

        q = cli("query", "SELECT count() AS n FROM requests", "--json")
        assert q.returncode == 0 and json.loads(q.stdout) == [{"n": 9}], q.stdout + q.stderr
        s = cli("stats", "--json")
        assert s.returncode == 0, s.stderr
        assert cli("analyze", "--no-store", "--json").returncode in (0, 1)
        c = cli("store", "check", "--json")
        assert c.returncode == 0, c.stdout + c.stderr
        p = cli("ingest", b, "--rejects", str(tmp_path / "rejects.jsonl"))
        assert p.returncode == 2 and "Traceback" not in p.stderr
        err = [line for line in p.stderr.splitlines() if line.strip()]
        assert len(err) == 1 and home in err[0] and "read-only" in err[0], p.stderr
    st = open_store(home=home)  # writable again: nothing was changed, nothing is left over
    try:
        assert _count(st) == 9
    finally:
        st.close()


def test_a_store_under_a_read_only_parent_is_one_line_naming_it(tmp_path: Any) -> None:
    from infdebug.store.base import StoreReadOnly

    parent = tmp_path / "ro"
    parent.mkdir()
    home = str(parent / "home")
    with _read_only(str(parent)):
        with pytest.raises(StoreReadOnly) as exc:
            open_store(home=home)
        msg = str(exc.value)
        assert "\n" not in msg and home in msg and str(parent) in msg and "--home" in msg
    assert not os.path.exists(home)
