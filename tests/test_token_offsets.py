"""The per-token times in integer microseconds (``token_offsets_us``): the contract's two
forms, migrations 9 (codecs, the token arrays' column TTL) and 10 (the times stored as
integers, ``token_times_s`` an ALIAS) on an old store, both ingest paths storing either
form as integers, and trace sampling at ingest."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from infdebug.collectors.ingest import ingest_paths
from infdebug.collectors.sampling import TraceSample
from infdebug.errors import InputError
from infdebug.schema import Request, decode_record, encode_record, offsets_us, read_records
from infdebug.store.base import apply_statement, migrate
from infdebug.store.client import open_embedded
from infdebug.store.ddl import MIGRATIONS, MIGRATIONS_DDL, TABLES
from infdebug.store.line_check import check_lines
from infdebug.store.queries import fetch_records

TIMES = [0.123456, 0.145001, 0.17, 1.5]
US = [123456, 145001, 170000, 1500000]
# Float seconds finer than the microsecond (the tracer writes full precision): stored as the
# nearest microsecond, ties to even as Python's round() and ClickHouse's do.
FINE = [0.0000004, 0.0000005, 0.0000015, 0.1234564999, 0.98765450001, 3599.9999996, 86400.0]
FINE_US = offsets_us(FINE)


def _line(i: int, **kw: Any) -> dict[str, Any]:
    return {"kind": "request", "request_id": f"q{i}", "replica": "r0", "t_arrival": 1e9 + i, **kw}


def test_round_trip_and_both_forms() -> None:
    assert offsets_us(TIMES) == US
    only_us = decode_record(json.dumps(_line(1, token_offsets_us=US)))
    assert isinstance(only_us, Request)
    assert only_us.token_times_s == [u / 1e6 for u in US]
    assert decode_record(encode_record(only_us)) == only_us
    both = decode_record(json.dumps(_line(1, token_times_s=TIMES, token_offsets_us=US)))
    assert isinstance(both, Request) and both.token_times_s == TIMES  # the float form wins
    old = decode_record(json.dumps(_line(1, token_times_s=TIMES)), strict=True)
    assert isinstance(old, Request) and old.token_offsets_us == [] and old.token_times_s == TIMES
    assert decode_record(json.dumps(_line(1, token_offsets_us=None))).token_offsets_us == []  # type: ignore[union-attr]
    for bad in ([-1], [2**32], [1.5]):
        with pytest.raises(InputError):
            decode_record(json.dumps(_line(1, token_offsets_us=bad)))


def test_reader_accepts_both_forms(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text(
        json.dumps(_line(1, token_times_s=TIMES))
        + "\n"
        + json.dumps(_line(2, token_offsets_us=US))
        + "\n"
    )
    recs = [r for _, r in read_records(str(p))]
    assert [r.token_times_s for r in recs] == [TIMES, [u / 1e6 for u in US]]  # type: ignore[union-attr]


def _old_store(home: Path, upto: int) -> Any:
    """A store at schema ``upto``, its migrations run as that release ran them."""
    st = open_embedded(str(home))
    st.command(MIGRATIONS_DDL)
    for m in MIGRATIONS:
        if m.version > upto:
            break
        for s in m.sql(30):
            st.command(s)
        st.command(
            "INSERT INTO schema_migrations (version, name) VALUES ({v:UInt32}, {n:String})",
            {"v": m.version, "n": m.name},
        )
    return st


def _columns(st: Any) -> dict[str, tuple[str, str, str]]:
    _, rows = st.query(
        "SELECT name, type, default_kind, compression_codec FROM system.columns "
        "WHERE database = currentDatabase() AND table = 'requests' "
        "AND name IN ('token_times_s', 'token_times_f64', 'token_offsets_us', 'prompt_ids')"
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _files(st: Any) -> dict[str, int]:
    """The inode of each column file of the table's active parts, by file name."""
    _, rows = st.query(
        "SELECT path FROM system.parts WHERE database = currentDatabase() "
        "AND table = 'requests' AND active"
    )
    [(d,)] = rows
    return {f: os.stat(os.path.join(d, f)).st_ino for f in os.listdir(d) if f.endswith(".bin")}


def test_an_old_store_keeps_its_float_times_through_migration_10(tmp_path: Path) -> None:
    """Before the module's store opens: one embedded store at a time in a process. Rows an
    old release stored (schema 9: Float64 seconds in ``token_times_s``) read back the same
    after migration 10, their data renamed, not rewritten; new rows are stored as integers
    beside them."""
    st = _old_store(tmp_path / "old", 9)
    try:
        # wide parts, as a store's parts past 10 MB are: a file per column
        st.command("ALTER TABLE requests MODIFY SETTING min_bytes_for_wide_part = 0")
        # as the old loader wrote them (its INSERT named the physical column)
        st.command(
            "INSERT INTO requests (request_id, replica, t_arrival, token_times_s, prompt_ids) "
            "VALUES ('old', 'r0', 1e9, {t:Array(Float64)}, [1, 2, 3])",
            {"t": FINE},
        )
        before = _files(st)
        assert migrate(st) == [10]
        after = _files(st)
        for old, new in (("token_times_s", "token_times_f64"), ("prompt_ids", "prompt_ids")):
            assert after[f"{new}.bin"] == before[f"{old}.bin"]  # the same file: not rewritten
        cols = _columns(st)
        assert cols["token_times_f64"][:2] == ("Array(Float64)", "")
        assert "FPC" in cols["token_times_f64"][2]  # migration 9's codec, kept by the rename
        assert cols["token_offsets_us"] == ("Array(Int64)", "", "CODEC(Delta(8), ZSTD(1))")
        assert cols["token_times_s"][:2] == ("Array(Float64)", "ALIAS")
        _, rows = st.query("SELECT token_times_s, token_times_f64, token_offsets_us FROM requests")
        assert rows == [(FINE, FINE, [])]  # the old row's Float64 seconds, to the bit
        p = tmp_path / "new.jsonl"
        p.write_text(
            json.dumps(_line(2, request_id="new-us", token_offsets_us=US))
            + "\n"
            + json.dumps(_line(3, request_id="new-f", token_times_s=FINE))
            + "\n"
        )
        assert _ingest(st, p).files[0].path_taken == "fast"
        st.command("OPTIMIZE TABLE requests FINAL")  # old and new rows in one part
        _, rows = st.query(
            "SELECT request_id, token_times_s, token_times_f64, token_offsets_us FROM requests "
            "ORDER BY t_arrival"
        )
        assert rows == [
            ("old", FINE, FINE, []),
            ("new-us", [u / 1e6 for u in US], [], US),
            ("new-f", [u / 1e6 for u in FINE_US], [], FINE_US),
        ]
        assert migrate(st) == []
    finally:
        st.close()


def test_migrations_9_and_10_on_a_schema_8_store_and_again_after_a_stop(tmp_path: Path) -> None:
    """Codecs and the times' columns from schema 8; migration 10 run again from its start
    (as after a stop before it was recorded): the rename is skipped where it was done."""
    st = _old_store(tmp_path / "stopped", 8)
    try:
        st.command(
            "INSERT INTO requests (request_id, replica, t_arrival, token_times_s, prompt_ids) "
            "VALUES ('old', 'r0', 1e9, {t:Array(Float64)}, [1, 2, 3])",
            {"t": TIMES},
        )
        assert migrate(st) == [9, 10]
        cols = _columns(st)
        assert "ZSTD(3)" in cols["prompt_ids"][2] and "FPC" in cols["token_times_f64"][2]
        [m10] = [m for m in MIGRATIONS if m.version == 10]
        for s in m10.sql(30):
            apply_statement(st, s)
        assert _columns(st) == cols
        _, rows = st.query("SELECT token_times_s, prompt_ids FROM requests")
        assert rows == [(TIMES, [1, 2, 3])]
    finally:
        st.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    st = open_embedded(str(tmp_path_factory.mktemp("offsets")))
    migrate(st)
    yield st
    st.close()


def _ingest(st: Any, path: Path, **kw: Any) -> Any:
    return ingest_paths(st, [str(path)], rejects_path=str(path) + ".rejects", **kw)


@pytest.mark.parametrize("fast", [True, False])
def test_both_forms_are_stored_as_integers_on_either_path(
    store: Any, tmp_path: Path, fast: bool
) -> None:
    """The fast path (clean lines) and the careful path (a bad line in the file) both: the
    integer form as it is, the float form rounded to the microsecond, read back in seconds
    by ``token_times_s``; nothing in the Float64 column of the rows stored before."""
    p = tmp_path / f"both_{fast}.jsonl"
    tag = "f" if fast else "c"
    lines = [
        _line(1, request_id=f"{tag}-float", token_times_s=FINE, e2e_s=86400.0),
        _line(2, request_id=f"{tag}-int", token_offsets_us=US, e2e_s=2.0),
        _line(3, request_id=f"{tag}-both", token_times_s=TIMES, token_offsets_us=[1, 2], e2e_s=2.0),
        _line(4, request_id=f"{tag}-none", e2e_s=2.0),
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines) + ("" if fast else "{not json\n")
    p.write_text(text)
    rep = _ingest(store, p)
    assert rep.files[0].path_taken == ("fast" if fast else "careful")
    _, rows = store.query(
        "SELECT request_id, token_offsets_us, token_times_s, token_times_f64 FROM requests "
        "WHERE startsWith(request_id, {t:String}) ORDER BY t_arrival",
        {"t": f"{tag}-"},
    )
    assert rows == [
        (f"{tag}-float", FINE_US, [u / 1e6 for u in FINE_US], []),
        (f"{tag}-int", US, [u / 1e6 for u in US], []),
        (f"{tag}-both", US, [u / 1e6 for u in US], []),  # the float form wins, as decoded
        (f"{tag}-none", [], [], []),
    ]
    _, types = store.query(
        "SELECT name, type, default_kind FROM system.columns WHERE database = "
        "currentDatabase() AND table = 'requests' AND name IN ('token_times_s', "
        "'token_offsets_us', 'token_times_f64') ORDER BY position"
    )
    assert types == [
        ("token_times_f64", "Array(Float64)", ""),
        ("token_offsets_us", "Array(Int64)", ""),
        ("token_times_s", "Array(Float64)", "ALIAS"),
    ]
    # read back as records: the float form, to the microsecond
    [rec] = fetch_records(
        store, "request", where="request_id = {r:String}", params={"r": f"{tag}-float"}
    )
    assert rec.token_times_s == [u / 1e6 for u in FINE_US] and not rec.token_offsets_us


def test_the_stored_rounding_is_pythons(store: Any, tmp_path: Path) -> None:
    """ClickHouse rounds seconds to microseconds as ``offsets_us`` does (ties to even)."""
    rng = random.Random(3)
    times = sorted(
        [rng.uniform(0, 86400) for _ in range(300)]
        + [rng.randrange(0, 10**8) / 1e6 + 5e-7 for _ in range(300)]  # near ties
        + [(2 * k + 1) / 2e6 for k in range(50)]  # ties, as exactly as floats give them
    )
    p = tmp_path / "rounding.jsonl"
    p.write_text(json.dumps(_line(1, request_id="rounding", token_times_s=times)) + "\n")
    _ingest(store, p)
    _, rows = store.query("SELECT token_offsets_us FROM requests WHERE request_id = 'rounding'")
    assert rows == [(offsets_us(times),)]


@pytest.mark.parametrize(
    ("bad", "field", "raw_doubt"),
    [
        ("[-1]", "token_offsets_us[0]", True),
        (f"[1,{2**32}]", "token_offsets_us[1]", False),  # the row guard's to bound
        ("[1.5]", "token_offsets_us[0]", True),
        ('["1"]', "token_offsets_us[0]", True),
        ("[1,null]", "token_offsets_us[1]", True),
        ('"1,2"', "token_offsets_us", True),
        ("[18446744073709551621]", "token_offsets_us[0]", True),  # 2^64 + 5: read as 5
    ],
)
def test_bad_integer_times_are_rejected_with_file_line_and_field(
    store: Any, tmp_path: Path, bad: str, field: str, raw_doubt: bool
) -> None:
    """The line check doubts a line whose JSON is not a list of plain integers, the row
    guard one out of UInt32; the careful path rejects it with its file, line and field."""
    good = [json.dumps(_line(i, request_id=f"ok-{bad}-{i}", token_offsets_us=US)) for i in (1, 2)]
    bad_line = json.dumps(_line(9, request_id="bad-us"))[:-1] + f', "token_offsets_us": {bad}}}'
    p = tmp_path / "bad.jsonl"
    p.write_text(f"{good[0]}\n{bad_line}\n{good[1]}\n")
    check = check_lines(store, TABLES["request"], str(p))
    assert check is not None and check.doubtful == int(raw_doubt)
    rep = _ingest(store, p)
    f = rep.files[0]
    assert f.path_taken == "careful" and f.rows["request"] == 2 and f.rejected == 1
    with open(rep.rejects_file, encoding="utf-8") as fh:
        [r] = [json.loads(x) for x in fh]
    assert (r["file"], r["line"], r["field"]) == (str(p), 2, field), r
    _, rows = store.query("SELECT count() FROM requests WHERE request_id = 'bad-us'")
    assert rows == [(0,)]
    _, rows = store.query(
        "SELECT token_offsets_us FROM requests WHERE startsWith(request_id, {p:String})",
        {"p": f"ok-{bad}-"},
    )
    assert rows == [(US,), (US,)]


@pytest.mark.parametrize(
    ("form", "times"),
    [
        ("token_offsets_us", [100, 5_000_000]),  # past e2e_s
        ("token_times_s", [0.0001, 5.0]),
        ("token_times_s", [-0.5, 0.1]),  # negative
        ("token_times_s", [0.1, 1e6]),  # past the ceiling (no e2e_s)
    ],
)
def test_an_impossible_time_in_either_form_goes_to_the_careful_path(
    store: Any, tmp_path: Path, form: str, times: list[Any]
) -> None:
    rid = f"late-{form}-{times[-1]}"
    e2e = {"e2e_s": 1.0} if times[-1] != 1e6 else {}
    p = tmp_path / "late.jsonl"
    p.write_text(json.dumps(_line(1, request_id=rid, **{form: times}, **e2e)) + "\n")
    rep = _ingest(store, p, max_latency=1000.0)
    assert rep.files[0].path_taken == "careful"
    assert rep.files[0].rows["request"] == 1 and rep.files[0].rejected == 0
    _, rows = store.query(
        "SELECT token_times_s, token_offsets_us FROM requests WHERE request_id = {r:String}",
        {"r": rid},
    )
    assert rows == [([], [])]  # dropped, the request kept


def test_select_star_the_diff_export_and_the_request_detail_give_token_times_s(
    store: Any, tmp_path: Path
) -> None:
    """``token_times_s`` is an ALIAS, which ``SELECT *`` leaves out unless told: every
    place that reads a whole request gives it as before."""
    from infdebug.store import q_dashboard, q_diff
    from infdebug.store.user_sql import run_sql

    p = tmp_path / "star.jsonl"
    p.write_text(
        json.dumps(_line(1, request_id="star", token_offsets_us=US, deployment="dx")) + "\n"
    )
    _ingest(store, p)
    want = [u / 1e6 for u in US]
    for write in (False, True):
        res = run_sql(store, "SELECT * FROM requests WHERE request_id = 'star'", write=write)
        row = dict(zip(res.columns, res.rows[0], strict=True))
        assert row["token_times_s"] == want and row["token_offsets_us"] == US
    detail = q_dashboard.request(store, "star")
    assert detail is not None and detail["token_times_s"] == want
    assert "token_offsets_us" not in detail and "token_times_f64" not in detail
    exported = q_diff.export_side(store, {"deployment": "dx"}, "requests")
    [line] = [json.loads(x) for x in exported.splitlines()]
    assert line["token_times_s"] == want and "token_offsets_us" not in line


def test_trace_sampling_keeps_anomalies_and_the_share(store: Any, tmp_path: Path) -> None:
    n = 2000
    lines = []
    for i in range(n):
        kw: dict[str, Any] = {
            "request_id": f"s-{i}",
            "finish_reason": "stop",
            "ttft_s": 0.1,
            "e2e_s": 1.0,
            "token_times_s": [0.1, 0.12, 0.14],
            "prompt_ids": [1, 2, 3, 4],
            "output_ids": [5, 6, 7],
            "prompt_text": "hello",
        }
        if i % 100 == 1:
            kw["error"] = "boom"
        elif i % 100 == 2:
            kw["finish_reason"] = "length"
        elif i % 100 == 3:
            kw.update(ttft_s=3.0, e2e_s=4.0, token_times_s=[3.0, 3.02, 3.04])  # slow TTFT
        elif i % 100 == 4:
            kw["token_times_s"] = [0.1, 0.9]  # an 0.8 s gap
        lines.append(_line(i, **kw))
    p = tmp_path / "sample.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    sample = TraceSample(0.2, seed=7)
    _ingest(store, p, assign=sample.assign(), assign_params=sample.params())
    _, rows = store.query(
        "SELECT toUInt32(substring(request_id, 3)) AS i, notEmpty(prompt_ids), "
        "notEmpty(token_times_s), prompt_text IS NOT NULL, prompt_tokens, output_tokens, "
        "e2e_s, notEmpty(token_offsets_us) FROM requests WHERE startsWith(request_id, 's-') "
        "ORDER BY i"
    )
    assert all(r[2] == r[7] for r in rows)  # the times dropped where they are stored
    assert len(rows) == n  # every row kept, with its aggregates
    assert all(r[6] in (1.0, 4.0) for r in rows)
    # a request without its arrays keeps their lengths as its token counts
    assert all((r[4], r[5]) == (4, 3) for r in rows if not r[1])
    anomalous = [r for r in rows if r[0] % 100 in (1, 2, 3, 4)]
    assert all(r[1] and r[2] and r[3] for r in anomalous), [r for r in anomalous if not r[1]][:4]
    ordinary = [r for r in rows if r[0] % 100 not in (1, 2, 3, 4)]
    kept = [r for r in ordinary if r[1]]
    assert all(r[1] == r[2] == r[3] for r in ordinary)  # whole or aggregates only
    assert 0.15 < len(kept) / len(ordinary) < 0.25
    # the choice is a hash of the request ID and the seed: the same on every load
    assert TraceSample(0.2, seed=7).params() == sample.params()


def test_trace_sample_share_is_checked() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(InputError):
            TraceSample(bad)
    assert TraceSample(1.0).assign() == {}
