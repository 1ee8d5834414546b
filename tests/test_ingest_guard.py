"""The fast ingest path passes nothing the contract forbids.

Each case below is a line that ClickHouse's JSONEachRow reader, with the fast path's
per-row guard alone, used to load (coerced, wrapped or split into two rows). Now the raw
line check (``Table.line_guard``, store/line_check.py) doubts it, the file goes down the
careful path, the line is rejected with its file, line and field, the good lines around it
load, and what is stored is exactly what the contract decoder reads.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from conftest import make_gpu, make_metric, make_request

from infdebug.collectors.ingest import ingest_paths
from infdebug.collectors.ingestor import Ingestor
from infdebug.collectors.json_where import field_at
from infdebug.collectors.rejects import RejectSink
from infdebug.schema import Event, Finding, ProfileSample, encode_record, encode_records
from infdebug.store.columns import Column
from infdebug.store.ddl import TABLES
from infdebug.store.line_check import LineCheck, check_lines, column_in_other_case
from infdebug.store.queries import fetch_records

R = b'{"kind":"request","request_id":"bad","replica":"bad","t_arrival":1764000000.5'
G = b'{"kind":"gpu","t":1764000000.5,"replica":"bad"'
M = b'{"kind":"metrics","t":1764000000.5,"replica":"bad","name":"x","type":"gauge"'
BIG = b"18446744073709551621"  # 2^64 + 5: JSONEachRow read it as 5

# (case, kind, bad line, the field the reject names, a piece of its reason)
CASES: list[tuple[str, str, bytes, str | None, str]] = [
    ("id past 2^64", "request", R + b',"prompt_ids":[1,' + BIG + b"]}", "prompt_ids[1]", "<="),
    (
        "count past 2^64",
        "request",
        R + b',"cached_prompt_tokens":' + BIG + b"}",
        "cached_prompt_tokens",
        "<=",
    ),
    ("null in ids", "request", R + b',"prompt_ids":[1,null,3]}', "prompt_ids[1]", "got `null`"),
    ("string number", "request", R + b',"ttft_s":"0.5"}', "ttft_s", "got `str`"),
    ("string ids", "request", R + b',"prompt_ids":["1","2"]}', "prompt_ids[0]", "got `str`"),
    ("messages string", "request", R + b',"messages":"[{}]"}', "messages", "got `str`"),
    ("messages numbers", "request", R + b',"messages":[1,2]}', "messages[0]", "got `int`"),
    ("two objects", "request", R + b"}" + R + b"}", None, "trailing characters"),
    ("two objects comma", "request", R + b"}," + R + b"}", None, "trailing characters"),
    ("two objects CR", "request", R + b"}\r" + R + b"}", None, "trailing characters"),
    (
        "control char",
        "request",
        R + b',"prompt_text":"a\x01b"}',
        "prompt_text",
        "invalid character",
    ),
    ("bad escape", "request", R + b',"prompt_text":"a\\qb"}', "prompt_text", "invalid escape"),
    (
        "leading zero",
        "request",
        b'{"kind":"request","request_id":"bad","replica":"bad","t_arrival":01764000000}',
        "t_arrival",
        "invalid number",
    ),
    ("plus sign", "request", R + b',"ttft_s":+1}', "ttft_s", "invalid character"),
    ("no integer part", "request", R + b',"ttft_s":.5}', "ttft_s", "invalid character"),
    ("no fraction", "request", R + b',"ttft_s":1.}', "ttft_s", "invalid number"),
    # found beside the listed ones: JSONEachRow defaults a null (or reads 1 as true) where
    # the contract has no Optional, and keeps any JSON text where it types the values
    ("null version", "request", R + b',"v":null}', "v", "got `null`"),
    (
        "int as float",
        "request",
        R + b',"spec_draft_tokens":3.0}',
        "spec_draft_tokens",
        "got `float`",
    ),
    ("bool as number", "gpu", G + b',"simulated":1}', "simulated", "got `int`"),
    ("null gpu index", "gpu", G + b',"gpu_index":null}', "gpu_index", "got `null`"),
    (
        "null in texts",
        "gpu",
        G + b',"throttle_reasons":["power_cap",null]}',
        "throttle_reasons[1]",
        "null",
    ),
    (
        "object in texts",
        "gpu",
        G + b',"throttle_reasons":[{"a":1}]}',
        "throttle_reasons[0]",
        "object",
    ),
    ("array in texts", "gpu", G + b',"throttle_reasons":[["a"]]}', "throttle_reasons[0]", "array"),
    ("number label", "metrics", M + b',"labels":{"a":1}}', "labels[...]", "got `int`"),
    (
        "huge label",
        "metrics",
        M + b',"labels":{"a":' + BIG + b"}}",
        "labels[...]",
        "Expected `str`",
    ),
    ("string bucket", "metrics", M + b',"buckets":{"1":"2"}}', "buckets[...]", "got `str`"),
]
# JSONEachRow itself refuses these (float syntax for an Int64 column): the line check need not
LOADER_REFUSES = {"int as float"}

_MAKE = {"request": make_request, "gpu": make_gpu, "metrics": make_metric}


def _ingest(store: Any, tmp_path: Any, path: str) -> Any:
    return ingest_paths(store, [path], rejects_path=str(tmp_path / "rejects.jsonl"))


def _rejects(rep: Any) -> list[dict[str, Any]]:
    if not rep.rejects_file:
        return []
    with open(rep.rejects_file, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize(
    ("case", "kind", "bad", "field", "needle"), CASES, ids=[c[0] for c in CASES]
)
def test_a_line_json_each_row_would_let_through_is_rejected(
    store: Any, tmp_path: Any, case: str, kind: str, bad: bytes, field: str | None, needle: str
) -> None:
    good = [_MAKE[kind](0), _MAKE[kind](1)]
    p = tmp_path / "one-bad.jsonl"
    p.write_bytes(encode_record(good[0]) + bad + b"\n" + encode_record(good[1]))
    table = TABLES[kind]
    if store.description.startswith("chDB"):
        check = check_lines(store, table, str(p))
        doubted = 0 if case in LOADER_REFUSES else 1
        assert check == LineCheck(3, doubted), check
    rep = _ingest(store, tmp_path, str(p))
    f = rep.files[0]
    assert f.path_taken == "careful" and f.rows[kind] == 2 and f.rejected == 1
    [r] = _rejects(rep)
    assert (r["file"], r["line"], r["field"]) == (str(p), 2, field), r
    assert needle in r["reason"], r
    # the neighbours are stored exactly, and nothing of the bad line
    assert sorted(map(encode_record, fetch_records(store, kind))) == sorted(
        map(encode_record, good)
    )
    _, rows = store.query(f"SELECT count() FROM {table.name} WHERE replica = 'bad'")
    assert rows[0][0] == 0


@pytest.mark.parametrize(
    "extra",
    [b'"TTFT_S":7', b'"Prompt_Ids":[' + BIG + b"]", b'"Kind":"gpu"', b'"V":null'],
    ids=["TTFT_S", "Prompt_Ids", "Kind", "V"],
)
def test_a_column_name_in_another_case_is_an_unknown_field_not_the_column(
    store: Any, tmp_path: Any, extra: bytes
) -> None:
    # ClickHouse's JSONEachRow matches field names in any ASCII case; the contract ignores
    # such a field as unknown. Both paths must store what the contract reads.
    line = R + b"," + extra + b"}"
    assert column_in_other_case(line, "request") == extra.split(b'"')[1].decode()
    p = tmp_path / "case.jsonl"
    p.write_bytes(encode_record(make_request(0)) + line + b"\n")
    rep = _ingest(store, tmp_path, str(p))
    assert rep.files[0].rows["request"] == 2 and rep.rejected == 0
    assert rep.files[0].path_taken == "careful"
    [got] = [r for r in fetch_records(store, "request") if r.request_id == "bad"]
    assert (got.ttft_s, got.prompt_ids, got.v) == (None, [], 1)


def _tricky_but_good() -> bytes:
    """Valid lines of every feature the check reads: escapes, unicode, number forms, nulls
    for Optionals, unknown fields of any JSON, whitespace, a CRLF ending, blank lines."""
    base = json.loads(encode_record(make_request(10)))
    lines = [
        encode_record(make_request(11, prompt_text='quote " backslash \\ tab \t nul \x00 é 🙂')),
        json.dumps({**base, "request_id": "r12", "ttft_s": 2e-2, "e2e_s": 1e-1}).encode(),
        json.dumps({**base, "request_id": "r13", "queue_s": None, "cached_prompt_tokens": 0}),
        json.dumps({**base, "request_id": "r14", "extra": [[{"a": [1, None, "x"]}], 10**30]}),
        json.dumps({**base, "request_id": "r15"}, indent=None, separators=(" , ", " : ")),
        json.dumps({**base, "request_id": "r16", "prompt_ids": None, "messages": []}),
        b'{"kind":"request","request_id":"r\\u0031\\u0037","replica":"r1","t_arrival":1764000017,'
        b'"ttft_s":-0,"e2e_s":1E-1,"output_ids":[0,4294967295],"prompt_text":"\\ud83d\\ude42"}',
    ]
    body = b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines)
    return body.replace(b"\n", b"\r\n", 1) + b"\n\n   \n" + encode_record(make_request(18))


def test_good_lines_of_every_form_still_take_the_fast_path(store: Any, tmp_path: Any) -> None:
    if not store.description.startswith("chDB"):
        pytest.skip("the line check runs where ClickHouse reads the file itself")
    body = _tricky_but_good()
    for name, data in (("tricky.jsonl", body), ("tricky.jsonl.gz", gzip.compress(body))):
        p = tmp_path / name
        p.write_bytes(data)
        rep = _ingest(store, tmp_path, str(p))
        assert rep.files[0].path_taken == "fast", rep.to_json()
        assert rep.rows["request"] == 8 and rep.rejected == 0
        store.command("TRUNCATE TABLE requests")
        store.command("TRUNCATE TABLE ingest_state")
    # the same rows as the careful path stores, forced
    p = tmp_path / "tricky.jsonl"
    assert _ingest(store, tmp_path, str(p)).files[0].path_taken == "fast"
    fast = {r.request_id: r for r in fetch_records(store, "request")}
    store.command("TRUNCATE TABLE requests")
    store.command("TRUNCATE TABLE ingest_state")
    ing = Ingestor(store, rejects=RejectSink(str(tmp_path / "r.jsonl")), fast_path=False)
    assert ing.ingest_file(str(p)).path_taken == "careful"
    assert {r.request_id: r for r in fetch_records(store, "request")} == fast
    assert fast["r17"].prompt_text == "🙂" and fast["r17"].output_ids == [0, 4294967295]


def test_every_kind_has_a_line_check_that_passes_its_good_records(
    store: Any, tmp_path: Any
) -> None:
    if not store.description.startswith("chDB"):
        pytest.skip("the line check runs where ClickHouse reads the file itself")
    records: dict[str, list[Any]] = {
        "request": [make_request(i) for i in range(3)],
        "gpu": [make_gpu(i, throttle_reasons=["power_cap"], simulated=True) for i in range(3)],
        "metrics": [make_metric(i, labels={"a": "b"}, buckets={"1": 2.0}) for i in range(3)],
        "event": [Event(t=1.0, replica="r", name="ready", pid=7, detail={"x": [1]})],
        "profile": [
            ProfileSample(
                t=1.0, replica="r", profile_id="p", thread="t", category="c", stack="a;b", count=3
            )
        ],
        "finding": [
            Finding(kind="template.double_bos", analyzer="a", severity="info", summary="s", t=1.0)
        ],
    }
    for kind, recs in records.items():
        p = tmp_path / f"{kind}.jsonl"
        p.write_bytes(encode_records(recs))
        assert check_lines(store, TABLES[kind], str(p)) == LineCheck(len(recs), 0), kind
        rep = _ingest(store, tmp_path, str(p))
        assert rep.files[0].path_taken == "fast" and rep.rows[kind] == len(recs), kind


def test_the_careful_path_is_forced_by_fast_path_false(store: Any, tmp_path: Any) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(encode_records([make_request(i) for i in range(5)]))
    ing = Ingestor(store, rejects=RejectSink(str(tmp_path / "r.jsonl")), fast_path=False)
    res = ing.ingest_file(str(p))
    assert res.path_taken == "careful" and res.rows["request"] == 5


@pytest.mark.parametrize(
    ("line", "at", "field"),
    [
        (b'{"a":1,"ttft_s":+1}', 16, "ttft_s"),
        (b'{"m":[{"c":"x\x01"}]}', 13, "m[0].c"),
        (b'{"k\\"ey":{"b":[1,2,03]}}', 21, 'k"ey.b[2]'),
        (b'{"a":1}{"a":2}', 7, None),  # after the record: trailing, no field
        (b'{"a":1, x:2}', 8, None),  # a field name, not a value
    ],
)
def test_a_malformed_line_names_the_field_its_error_is_in(
    line: bytes, at: int, field: str | None
) -> None:
    assert field_at(line, at) == field


def test_every_column_gets_a_raw_check_from_its_type() -> None:
    # a column built without one doubts every line that has the field
    for table in TABLES.values():
        for c in table.columns:
            assert c.raw, f"{table.name}.{c.name} has no raw check"
    assert Column("x", "String", "Nullable(String)").raw_guard("fv") == "0"
