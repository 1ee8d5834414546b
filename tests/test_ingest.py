"""Ingest: every good line loads, every bad line is set aside with file, line, field, reason."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from typing import Any

from conftest import make_gpu, make_metric, make_request

from infdebug.collectors.ingest import ingest_paths
from infdebug.collectors.ingestor import Ingestor
from infdebug.collectors.rejects import RejectSink
from infdebug.schema import Finding, encode_record, encode_records
from infdebug.store.ddl import TABLES
from infdebug.store.ingest_state import IngestState, save_state
from infdebug.store.queries import fetch_records


def _ingest(store: Any, tmp_path: Any, *paths: str, strict: bool = False) -> Any:
    return ingest_paths(
        store, list(paths), strict=strict, rejects_path=str(tmp_path / "rejects.jsonl")
    )


def _rejects(rep: Any) -> list[dict[str, Any]]:
    if not rep.rejects_file:
        return []
    with open(rep.rejects_file, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _count(store: Any, table: str) -> int:
    _, rows = store.query(f"SELECT count() FROM {table}")
    return int(rows[0][0])


BAD = [
    (b'{"kind":"request","request_id":"x1","replica":"r0"', None, "malformed JSON"),
    (
        b'{"kind":"request","request_id":"x2","replica":"r0","t_arrival":"yesterday"}',
        "t_arrival",
        "Expected `float`",
    ),
    (b'{"kind":"request","request_id":"x3","replica":"r0"}', "t_arrival", "missing required field"),
    (
        b'{"kind":"request","request_id":"x4\xff\xfe","replica":"r0","t_arrival":1}',
        None,
        "invalid UTF-8",
    ),
    (
        b'{"kind":"request","request_id":"x5","replica":"r0","t_arrival":1,"prompt_ids":[1,-1]}',
        "prompt_ids[1]",
        ">= 0",
    ),
    (
        b'{"kind":"request","request_id":"x6","replica":"r0","t_arrival":1,"output_ids":[99999999999]}',
        "output_ids[0]",
        "<=",
    ),
    (
        b'{"kind":"request","request_id":"x7","replica":7,"t_arrival":1}',
        "replica",
        "Expected `str`",
    ),
    (b'{"kind":"wat","request_id":"x8"}', "kind", "unknown record kind"),
    (b'["not", "an", "object"]', None, "Expected `object`"),
]


def test_every_kind_of_bad_line_is_set_aside_and_the_rest_loads(store: Any, tmp_path: Any) -> None:
    good = [make_request(i) for i in range(30)]
    lines: list[bytes] = []
    expect: dict[int, tuple[str | None, str]] = {}
    for i, r in enumerate(good):
        lines.append(encode_record(r).rstrip(b"\n"))
        if i < len(BAD):
            lines.append(BAD[i][0])
            expect[len(lines)] = (BAD[i][1], BAD[i][2])
    truncated = encode_record(make_request(99)).rstrip(b"\n")[:-25]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n" + truncated)
    rep = _ingest(store, tmp_path, str(path))
    assert rep.rows["request"] == len(good)
    assert _count(store, "requests") == len(good)
    rejects = _rejects(rep)
    assert rep.rejected == len(rejects) == len(BAD) + 1
    by_line = {r["line"]: r for r in rejects}
    for line_no, (field, needle) in expect.items():
        r = by_line[line_no]
        assert r["file"] == str(path)
        assert r["field"] == field, r
        assert needle in r["reason"], r
    last = by_line[len(lines) + 1]
    assert "truncated last line" in last["reason"]
    # raw lines are kept so nothing is lost, invalid UTF-8 as base64
    assert any(r.get("raw_base64") for r in rejects)
    assert all(r.get("raw") or r.get("raw_base64") for r in rejects)
    assert rep.exit_code() == 3


def test_same_file_twice_adds_nothing(store: Any, tmp_path: Any) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(encode_records([make_request(i) for i in range(50)]))
    assert _ingest(store, tmp_path, str(p)).rows["request"] == 50
    rep = _ingest(store, tmp_path, str(p))
    assert rep.rows["request"] == 0 and rep.files[0].status == "unchanged"
    assert _count(store, "requests") == 50
    assert rep.exit_code() == 0


def test_a_grown_file_is_read_from_where_it_stopped(store: Any, tmp_path: Any) -> None:
    p = tmp_path / "grow.jsonl"
    first = encode_records([make_request(i) for i in range(10)])
    partial = encode_record(make_request(10))
    p.write_bytes(first + partial[:40])  # the writer is mid-line
    rep = _ingest(store, tmp_path, str(p))
    assert rep.rows["request"] == 10 and _count(store, "requests") == 10
    with open(p, "ab") as f:
        f.write(partial[40:] + encode_records([make_request(i) for i in range(11, 15)]))
    rep = _ingest(store, tmp_path, str(p))
    assert rep.rows["request"] == 5, rep.to_json()
    assert rep.rejected == 0
    got = sorted(r.request_id for r in fetch_records(store, "request"))
    assert got == sorted(f"req-{i}" for i in range(15))


def test_rotated_and_gzipped_file_is_recognised(store: Any, tmp_path: Any) -> None:
    p = tmp_path / "trace.jsonl"
    body = encode_records([make_request(i) for i in range(20)])
    p.write_bytes(body)
    _ingest(store, tmp_path, str(p))
    gz = tmp_path / "trace-0001.jsonl.gz"
    with gzip.open(gz, "wb") as f:
        f.write(body + encode_records([make_request(20)]))
    os.unlink(p)
    rep = _ingest(store, tmp_path, str(gz))
    assert rep.rows["request"] == 1
    assert _count(store, "requests") == 21


def test_gzip_and_mixed_kinds_and_directories(store: Any, tmp_path: Any) -> None:
    d = tmp_path / "logs"
    (d / "sub").mkdir(parents=True)
    recs: list[Any] = [
        make_request(0),
        make_gpu(0),
        make_metric(0, type="histogram", buckets={"0.1": 1.0, "+Inf": 2.0}),
    ]
    recs.append(
        Finding(
            kind="template.double_bos",
            analyzer="template",
            severity="error",
            summary="two BOS",
            scope={"replica": "r1"},
            evidence={"request_ids": ["req-0"]},
        )
    )
    with gzip.open(d / "sub" / "all.jsonl.gz", "wb") as f:
        f.write(encode_records(recs))
    (d / "gpu.jsonl").write_bytes(encode_records([make_gpu(i) for i in range(1, 6)]))
    (d / "notes.txt").write_text("not a log")
    rep = _ingest(store, tmp_path, str(d))
    assert rep.rows == {
        "request": 1,
        "gpu": 6,
        "metrics": 1,
        "event": 0,
        "profile": 0,
        "finding": 1,
    }
    assert len(rep.files) == 2
    f = fetch_records(store, "finding")[0]
    assert f.kind == "template.double_bos" and f.scope == {"replica": "r1"}


def test_strict_mode_rejects_unknown_fields(store: Any, tmp_path: Any) -> None:
    line = json.dumps({**json.loads(encode_record(make_request(1))), "extra_field": 1}).encode()
    p = tmp_path / "x.jsonl"
    p.write_bytes(encode_record(make_request(0)) + line + b"\n")
    rep = _ingest(store, tmp_path, str(p), strict=True)
    assert rep.rows["request"] == 1 and rep.rejected == 1
    assert _rejects(rep)[0]["field"] == "extra_field"
    p2 = tmp_path / "y.jsonl"
    p2.write_bytes(line + b"\n")
    rep = _ingest(store, tmp_path, str(p2))
    assert rep.rows["request"] == 1 and rep.rejected == 0


def test_a_line_only_clickhouse_refuses_is_bisected_out(store: Any, tmp_path: Any) -> None:
    # msgspec keeps the last of duplicated keys; ClickHouse refuses the line. The careful
    # path narrows the failure down to that line and rejects it with ClickHouse's reason.
    good = [encode_record(make_request(i)) for i in range(12)]
    dup = (
        b'{"kind":"request","request_id":"dup","request_id":"dup2","replica":"r0","t_arrival":1}\n'
    )
    p = tmp_path / "dup.jsonl"
    p.write_bytes(b"".join(good[:5]) + dup + b"".join(good[5:]))
    rep = _ingest(store, tmp_path, str(p))
    assert rep.rows["request"] == 12 and rep.rejected == 1
    r = _rejects(rep)[0]
    assert r["line"] == 6 and "ClickHouse refused" in r["reason"]
    assert _count(store, "requests") == 12


def test_missing_paths_are_reported_and_nothing_done_is_exit_2(store: Any, tmp_path: Any) -> None:
    rep = _ingest(store, tmp_path, str(tmp_path / "nope.jsonl"), str(tmp_path / "*.jsonl"))
    assert rep.exit_code() == 2
    assert any("no such file" in e for e in rep.errors)
    assert any("no file matches" in e for e in rep.errors)


def test_a_failed_load_is_rolled_back_on_the_next_run(store: Any, tmp_path: Any) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(encode_records([make_request(i) for i in range(8)]))
    _ingest(store, tmp_path, str(p))
    # A process that died half way through loading a second file leaves rows whose batch
    # is still marked pending in ingest_state.
    q = tmp_path / "b.jsonl"
    q.write_bytes(encode_records([make_request(i) for i in range(100, 104)]))
    ing = Ingestor(store, rejects=RejectSink(str(tmp_path / "r.jsonl")))
    cid = hashlib.sha256(q.read_bytes().split(b"\n", 1)[0] + b"\n").hexdigest()[:32]
    save_state(store, IngestState(cid, pending_batch=777), str(q))
    store.insert_jsonl(TABLES["request"], str(q), str(q), 777, ing._settings, guarded=False)
    assert _count(store, "requests") == 12
    rep = _ingest(store, tmp_path, str(q))
    assert rep.rows["request"] == 4
    assert _count(store, "requests") == 12  # the half-done load was rolled back, then redone


def test_fast_path_doubts_send_files_down_the_careful_path(store: Any, tmp_path: Any) -> None:
    # Text that looks like JSON (a Llama-2 ``[INST]`` prompt, a JSON prompt) is text: the
    # line check sees a JSON string, so the file stays on the fast path and loads as it is.
    a = make_request(1, prompt_text='{"looks": "like json"}', output_text="[1, 2]")
    b = make_request(2, prompt_text="[INST] hello [/INST]")
    p = tmp_path / "a.jsonl"
    p.write_bytes(encode_records([make_request(0), a, b]))
    rep = _ingest(store, tmp_path, str(p))
    assert rep.rows["request"] == 3 and rep.rejected == 0 and rep.files[0].path_taken == "fast"
    got = {r.request_id: r for r in fetch_records(store, "request")}
    assert got["req-1"] == a and got["req-2"] == b
    # a quoted number of 19 digits may be a number past 64 bits: doubted, judged exactly
    c = make_request(3, prompt_text="1234567890123456789012")
    p2 = tmp_path / "c.jsonl"
    p2.write_bytes(encode_records([make_request(4), c]))
    rep = _ingest(store, tmp_path, str(p2))
    assert rep.rows["request"] == 2 and rep.rejected == 0 and rep.files[0].path_taken == "careful"
    got = {r.request_id: r for r in fetch_records(store, "request")}
    assert got["req-3"] == c
    # an object where text belongs is a wrong type, not text
    q = tmp_path / "b.jsonl"
    q.write_bytes(
        b'{"kind":"request","request_id":{"a":1},"replica":"r","t_arrival":1}\n'
        + encode_record(make_request(5))
    )
    rep = _ingest(store, tmp_path, str(q))
    assert rep.rows["request"] == 1 and rep.rejected == 1
    assert _rejects(rep)[0]["field"] == "request_id"


def test_engine_logs_are_converted_on_ingest(store: Any, tmp_path: Any) -> None:
    logs = os.path.join(os.path.dirname(__file__), "data", "engine_logs")
    (tmp_path / "not-a-request-log.log").write_text("INFO uvicorn started\nINFO shutting down\n")
    rep = _ingest(store, tmp_path, logs, str(tmp_path))
    by_file = {os.path.basename(f.path): f for f in rep.files}
    assert by_file["vllm-0.8.log"].path_taken.startswith("vllm log")
    assert by_file["sglang-replica-b.log"].path_taken.startswith("sglang log")
    assert by_file["openai-replica-c.jsonl"].path_taken.startswith("openai log")
    assert (
        by_file["not-a-request-log.log"].status == "unchanged"
    )  # found in a directory, not an engine log
    _, rows = store.query("SELECT engine, count() FROM requests GROUP BY engine ORDER BY engine")
    assert dict(rows) == {"openai": 4, "sglang": 4, "vllm": 10}
    rejects = _rejects(rep)
    assert len(rejects) == rep.rejected == 4
    assert all(r["file"].startswith(logs) and r["line"] > 0 and r["reason"] for r in rejects)
    again = _ingest(store, tmp_path, logs)
    assert again.rows["request"] == 0  # converted logs are idempotent too


def test_empty_json_array_and_binary_files_each_get_their_own_message(
    store: Any, tmp_path: Any
) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_bytes(b"\n  \n")
    (tmp_path / "export.json").write_text(
        json.dumps([json.loads(encode_record(make_request(0)))], indent=2)
    )
    (tmp_path / "oneline.jsonl").write_text(
        json.dumps([json.loads(encode_record(make_request(1)))])
    )
    (tmp_path / "core.log").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    with gzip.open(tmp_path / "plain.gz.tmp", "wb") as f:
        f.write(encode_record(make_request(2)))
    os.rename(tmp_path / "plain.gz.tmp", tmp_path / "rotated.jsonl")  # gzip without .gz
    names = [
        "empty.jsonl",
        "blank.jsonl",
        "export.json",
        "oneline.jsonl",
        "core.log",
        "rotated.jsonl",
    ]
    rep = _ingest(store, tmp_path, *(str(tmp_path / n) for n in names))
    by = {os.path.basename(f.path): f for f in rep.files}
    assert (by["empty.jsonl"].status, by["empty.jsonl"].message) == (
        "empty",
        "empty file: nothing to load",
    )
    assert (by["blank.jsonl"].status, by["blank.jsonl"].message) == (
        "empty",
        "only blank lines: nothing to load",
    )
    for n in ("export.json", "oneline.jsonl"):
        assert by[n].status == "error" and "a JSON array, not JSON Lines" in by[n].message
        assert f"jq -c '.[]' {n}" in by[n].message
    assert by["core.log"].status == "error" and "a binary file" in by["core.log"].message
    assert (
        "gzip-compressed" in by["rotated.jsonl"].message
        and "rotated.jsonl.gz" in by["rotated.jsonl"].message
    )
    messages = [by[n].message for n in names]
    assert len(set(messages)) == len(messages)  # one message each, none lumped together
    assert all("\n" not in m for m in messages)
    assert rep.rejected == 0 and _count(store, "requests") == 0
    # an empty file is empty each time it is seen, never "unchanged"
    again = _ingest(store, tmp_path, str(tmp_path / "empty.jsonl"))
    assert again.files[0].status == "empty" and again.exit_code() == 0


def test_a_file_that_starts_with_blank_lines_or_an_array_line_still_loads(
    store: Any, tmp_path: Any
) -> None:
    p = tmp_path / "leading-blank.jsonl"
    p.write_bytes(b"\n\n" + encode_records([make_request(i) for i in range(5)]))
    rep = _ingest(store, tmp_path, str(p))
    assert rep.rows["request"] == 5 and rep.files[0].status == "loaded"
    q = (
        tmp_path / "array-first.jsonl"
    )  # JSON Lines whose first line is a stray array: judged per line
    q.write_bytes(
        b'["not", "an", "object"]\n' + encode_records([make_request(i) for i in range(10, 13)])
    )
    rep = _ingest(store, tmp_path, str(q))
    assert rep.rows["request"] == 3 and rep.rejected == 1 and _rejects(rep)[0]["line"] == 1


def test_assigned_columns_are_stored_on_both_paths(store: Any, tmp_path: Any) -> None:
    # What infdebug diff labels each side with as it loads: a column stored as given
    # (a bound parameter), and one the store added holding the line's own value.
    from infdebug.store import q_diff

    q_diff.prepare(store)
    good = tmp_path / "good.jsonl"
    good.write_bytes(encode_records([make_request(i, deployment="stable") for i in range(3)]))
    bad = tmp_path / "bad.jsonl"  # one bad line: the careful path
    bad.write_bytes(
        encode_record(make_request(7, deployment=None)) + b"not json\n" + encode_record(make_gpu(0))
    )
    rep = ingest_paths(
        store,
        [str(good), str(bad)],
        rejects_path=str(tmp_path / "rejects.jsonl"),
        assign=q_diff.side_assign(),
        assign_params={"side": "A"},
    )
    first = "fast" if getattr(store, "home", None) else "careful"  # a server: always careful
    assert [f.path_taken for f in rep.files] == [first, "careful"] and rep.rejected == 1
    _, rows = store.query(
        "SELECT request_id, deployment, own_deployment FROM requests ORDER BY request_id"
    )
    assert [tuple(r) for r in rows] == [
        ("req-0", "A", "stable"),
        ("req-1", "A", "stable"),
        ("req-2", "A", "stable"),
        ("req-7", "A", None),
    ]
    _, rows = store.query("SELECT deployment, own_deployment FROM gpu_samples")
    assert [tuple(r) for r in rows] == [("A", None)]
    assert q_diff.side_deployments(store, "A") == ["", "stable"]
