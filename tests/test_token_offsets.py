"""The integer form of the per-token times (``token_offsets_us``), migration 9 (codecs and
the token arrays' column TTL) on an existing store, and trace sampling at ingest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infdebug.collectors.ingest import ingest_paths
from infdebug.collectors.sampling import TraceSample
from infdebug.errors import InputError
from infdebug.schema import Request, decode_record, encode_record, offsets_us, read_records
from infdebug.store.base import migrate
from infdebug.store.client import open_embedded
from infdebug.store.ddl import MIGRATIONS, MIGRATIONS_DDL

TIMES = [0.123456, 0.145001, 0.17, 1.5]
US = [123456, 145001, 170000, 1500000]


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


def test_migration_9_on_an_existing_store(tmp_path: Path) -> None:
    """Before the module's store opens: one embedded store at a time in a process."""
    st = open_embedded(str(tmp_path / "old"))
    try:
        st.command(MIGRATIONS_DDL)
        for m in MIGRATIONS:
            if m.version > 8:
                break
            for s in m.sql(30):
                st.command(s)
            st.command(
                "INSERT INTO schema_migrations (version, name) VALUES ({v:UInt32}, {n:String})",
                {"v": m.version, "n": m.name},
            )
        p = tmp_path / "old.jsonl"
        p.write_text(json.dumps(_line(1, token_times_s=TIMES, prompt_ids=[1, 2, 3])) + "\n")
        _ingest(st, p)
        assert migrate(st) == [9]
        _, codecs = st.query(
            "SELECT name, compression_codec FROM system.columns WHERE table = 'requests' "
            "AND name IN ('token_times_s', 'prompt_ids') ORDER BY name"
        )
        assert [c[0] for c in codecs] == ["prompt_ids", "token_times_s"]
        assert "ZSTD(3)" in codecs[0][1] and "FPC" in codecs[1][1]
        _, rows = st.query("SELECT token_times_s, prompt_ids FROM requests")
        assert rows == [(TIMES, [1, 2, 3])]
        p2 = tmp_path / "new.jsonl"
        p2.write_text(json.dumps(_line(2, token_offsets_us=US)) + "\n")
        _ingest(st, p2)
        st.command("OPTIMIZE TABLE requests FINAL")
        _, rows = st.query("SELECT token_times_s FROM requests ORDER BY t_arrival")
        assert rows == [(TIMES,), ([u / 1e6 for u in US],)]
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
def test_store_column_is_filled_the_same_from_either_form(
    store: Any, tmp_path: Path, fast: bool
) -> None:
    """The fast path (clean lines) and the careful path (a bad line in the file) both."""
    p = tmp_path / f"both_{fast}.jsonl"
    tag = "f" if fast else "c"
    lines = [
        _line(1, request_id=f"{tag}-float", token_times_s=[u / 1e6 for u in US], e2e_s=2.0),
        _line(2, request_id=f"{tag}-int", token_offsets_us=US, e2e_s=2.0),
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines) + ("" if fast else "{not json\n")
    p.write_text(text)
    rep = _ingest(store, p)
    assert rep.files[0].path_taken == ("fast" if fast else "careful")
    _, rows = store.query(
        "SELECT request_id, token_times_s FROM requests WHERE startsWith(request_id, {t:String}) "
        "ORDER BY request_id",
        {"t": f"{tag}-"},
    )
    assert [r[0] for r in rows] == [f"{tag}-float", f"{tag}-int"]
    assert rows[0][1] == rows[1][1] == [u / 1e6 for u in US]


def test_an_impossible_integer_time_goes_to_the_careful_path(store: Any, tmp_path: Path) -> None:
    p = tmp_path / "late.jsonl"
    p.write_text(
        json.dumps(_line(1, request_id="late", token_offsets_us=[5_000_000], e2e_s=1.0)) + "\n"
    )
    rep = _ingest(store, p)
    assert rep.files[0].path_taken == "careful"
    _, rows = store.query("SELECT token_times_s FROM requests WHERE request_id = 'late'")
    assert rows == [([],)]  # past e2e_s: dropped, as the float form would be


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
        "e2e_s FROM requests WHERE startsWith(request_id, 's-') ORDER BY i"
    )
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
