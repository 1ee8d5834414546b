"""The store on real ClickHouse (chDB; a server too where INFDEBUG_TEST_CLICKHOUSE_URL is set)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import as_stored, make_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import records

from infdebug.collectors.ingest import ingest_paths
from infdebug.collectors.timing import sanitize_timing
from infdebug.schema import KINDS, encode_records, kind_of
from infdebug.store import StoreBusy, StoreError, open_store, schema_version
from infdebug.store.ddl import MIGRATIONS, TABLES
from infdebug.store.queries import fetch_records


def test_migrations_apply_once_and_tables_exist(store_factory: Any) -> None:
    st = store_factory()
    assert schema_version(st) == MIGRATIONS[-1].version
    _, rows = st.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
    names = {r[0] for r in rows}
    assert {t.name for t in TABLES.values()} | {
        "ingest_state",
        "otel_traces",
        "schema_migrations",
    } <= names
    st.close()
    st = store_factory()  # reopening applies nothing twice
    _, rows = st.query("SELECT count() FROM schema_migrations")
    assert rows[0][0] == len(MIGRATIONS)


def test_parameters_are_bound_not_formatted(store: Any) -> None:
    hostile = "x'); DROP TABLE requests; --"
    cols, rows = store.query("SELECT {s:String} AS s, {n:UInt32} + 1 AS n", {"s": hostile, "n": 41})
    assert cols == ["s", "n"] and rows == [(hostile, 42)]
    _, rows = store.query(
        "SELECT count() FROM system.tables WHERE name = 'requests' AND database = currentDatabase()"
    )
    assert rows[0][0] == 1


def test_otel_traces_has_the_collector_exporter_layout(store: Any) -> None:
    _, rows = store.query(
        "SELECT name, type FROM system.columns "
        "WHERE table = 'otel_traces' AND database = currentDatabase()"
    )
    cols = dict(rows)
    for name in (
        "Timestamp",
        "TraceId",
        "SpanId",
        "ParentSpanId",
        "SpanName",
        "SpanKind",
        "ServiceName",
        "ResourceAttributes",
        "SpanAttributes",
        "Duration",
        "StatusCode",
        "Events.Timestamp",
        "Links.TraceId",
    ):
        assert name in cols
    assert cols["Timestamp"] == "DateTime64(9)"
    assert cols["SpanAttributes"] == "Map(LowCardinality(String), String)"


def _reset(st: Any) -> None:
    for t in [*(t.name for t in TABLES.values()), "ingest_state"]:
        st.command(f"TRUNCATE TABLE {t}")


@given(st.lists(records, min_size=1, max_size=12))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_every_kind_round_trips_through_the_store(
    store: Any, tmp_path: Any, recs: list[Any]
) -> None:
    _reset(store)
    path = os.path.join(tmp_path, "in.jsonl")
    with open(path, "wb") as f:
        f.write(encode_records(recs))
    rep = ingest_paths(store, [path], rejects_path=os.path.join(tmp_path, "rej.jsonl"))
    assert rep.rejected == 0, rep.to_json()
    for kind in KINDS:
        # as stored: a latency that cannot be true is dropped (collectors/timing.py), the
        # token times kept to the microsecond
        want = sorted(
            (
                as_stored(sanitize_timing(r)[0]) if kind == "request" else r
                for r in recs
                if kind_of(r) == kind
            ),
            key=lambda r: encode_records([r]),
        )
        got = sorted(fetch_records(store, kind), key=lambda r: encode_records([r]))
        assert got == want


def test_second_process_gets_one_line_naming_the_holder(store_factory: Any) -> None:
    if store_factory.backend != "chdb":
        pytest.skip("locking concerns the embedded store only")
    st = store_factory()
    env = {**os.environ, "INFDEBUG_HOME": store_factory.home}
    env.pop("INFDEBUG_CLICKHOUSE_URL", None)
    p = subprocess.run(
        [sys.executable, "-m", "infdebug.cli", "stats"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert f"process {os.getpid()}" in p.stderr
    assert "--clickhouse" in p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 3  # one message, wrapped at most
    st.close()


def test_same_process_second_open_is_refused_while_held(tmp_path: Any) -> None:
    home = str(tmp_path / "h")
    st = open_store(home=home)
    try:
        with pytest.raises(StoreBusy):
            open_store(home=home)
    finally:
        st.close()
    st = open_store(home=home)  # free again after close
    st.close()


def test_store_persists_between_opens(tmp_path: Any) -> None:
    home = str(tmp_path / "h")
    st = open_store(home=home)
    path = str(tmp_path / "a.jsonl")
    with open(path, "wb") as f:
        f.write(encode_records([make_request(i) for i in range(5)]))
    ingest_paths(st, [path], rejects_path=str(tmp_path / "r.jsonl"))
    st.close()
    st = open_store(home=home)
    _, rows = st.query("SELECT count() FROM requests")
    assert rows[0][0] == 5
    st.close()


def test_bad_sql_is_a_store_error(store: Any) -> None:
    with pytest.raises(StoreError) as e:
        store.query("SELEKT 1")
    assert "Syntax error" in str(e.value) or "SYNTAX_ERROR" in str(e.value)


def test_strings_and_lists_bind_as_parameters(store: Any) -> None:
    s = "it's a \\ back'slash \"quote\"\ttab\nnewline {x:String} $$"
    names = ["a'b", "c\\d", 'e"f', "", "g\\'h"]
    _, rows = store.query(
        "SELECT {s:String}, {l:Array(String)}, {n:Array(UInt32)}, {e:Array(String)}, "
        "has({l:Array(String)}, 'a''b')",
        {"s": s, "l": names, "n": [1, 2, 4294967295], "e": []},
    )
    assert rows == [(s, names, [1, 2, 4294967295], [], 1)]
    _, rows = store.query(
        "SELECT count() FROM system.one WHERE {s:String} IN {l:Array(String)}",
        {"s": "c\\d", "l": names},
    )
    assert rows == [(1,)]


def test_result_types(store: Any) -> None:
    cols, rows = store.query(
        "SELECT toUInt64(18446744073709551615) AS u, [1, 2]::Array(UInt32) AS a, "
        "NULL::Nullable(Int32) AS n, toDateTime('2024-01-02 03:04:05', 'UTC') AS d, "
        "'é' AS s, unhex('ff00') AS b, 1.5::Float64 AS f, "
        "map('k', 'v') AS m, [NULL, 1]::Array(Nullable(UInt8)) AS an"
    )
    assert cols == ["u", "a", "n", "d", "s", "b", "f", "m", "an"]
    assert rows == [
        (
            18446744073709551615,
            [1, 2],
            None,
            1704164645,
            "é",
            "\ufffd\x00",
            1.5,
            [("k", "v")],
            [None, 1],
        )
    ]


def test_settings_apply_to_one_call_only(store: Any) -> None:
    get = "SELECT getSetting('max_threads'), getSetting('input_format_skip_unknown_fields')"
    _, before = store.query(get)
    _, during = store.query(get, None, {"max_threads": 3, "input_format_skip_unknown_fields": 0})
    assert during == [(3, False)]
    store.command("SELECT 1", None, {"max_threads": 5, "input_format_skip_unknown_fields": 0})
    _, after = store.query(get)
    assert after == before


def test_upload_pieces_end_at_line_ends(tmp_path: Any) -> None:
    from infdebug.store.client import _pieces

    lines = [b'{"a":%d}' % i + b"x" * (i % 7) + b"\n" for i in range(50)]
    path = str(tmp_path / "a.jsonl")
    with open(path, "wb") as f:
        f.write(b"".join(lines) + b'{"tail":1}')  # no newline at the end
    for size in (1, 5, 16, 1000):
        pieces = list(_pieces(path, size))
        assert pieces
        assert b"".join(pieces) == b"".join(lines) + b'{"tail":1}'
        assert all(p.endswith(b"\n") for p in pieces[:-1])


def test_a_server_gets_the_file_as_the_body_of_input(tmp_path: Any, monkeypatch: Any) -> None:
    from infdebug.store import client

    sent: list[tuple[str, dict[str, Any], bytes, dict[str, Any]]] = []

    class Recorder:  # stands in for clickhouse-connect's HTTP Client
        def command(self, sql: str, parameters: Any, data: bytes, settings: Any) -> None:
            sent.append((sql, parameters, data, settings))

    body = encode_records([make_request(i) for i in range(30)])
    path = str(tmp_path / "a.jsonl")
    with open(path, "wb") as f:
        f.write(body)
    monkeypatch.setattr(client, "UPLOAD_CHUNK_BYTES", len(body) // 4)
    store = client.ClickHouseStore(Recorder(), "test server")
    store.insert_jsonl(
        TABLES["request"], path, "tag", 7, {"max_insert_block_size": 8192}, guarded=False
    )
    assert len(sent) >= 4 and b"".join(d for _, _, d, _ in sent) == body
    sql, params, _, settings_ = sent[0]
    assert "FROM input({structure:String})" in sql and sql.endswith(" FORMAT JSONEachRow")
    assert params == {"structure": TABLES["request"].structure(), "file_tag": "tag", "batch": 7}
    assert settings_ == {"max_insert_block_size": 8192}  # a server takes every setting per call


def test_url_parsing_and_redaction() -> None:
    from infdebug.store.client import parse_url, redact_url

    cfg = parse_url("https://ann:p%40ss@ch.example:9443/logs")
    assert cfg == {
        "host": "ch.example",
        "port": 9443,
        "username": "ann",
        "password": "p@ss",
        "database": "logs",
        "secure": True,
    }
    assert (
        parse_url("http://ch")["port"] == 8123 and parse_url("http://ch")["database"] == "default"
    )
    assert redact_url("http://ann:secret@ch:8123/db") == "http://ann:***@ch:8123/db"
    with pytest.raises(StoreError):
        parse_url("ftp://ch/db")
