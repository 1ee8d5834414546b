"""The record contract: JSONL round-trips, tolerant and strict reading, precise errors."""

from __future__ import annotations

import gzip

import msgspec
import pytest
from hypothesis import given, settings
from strategies import records

from infdebug.schema import (
    Finding,
    GpuSample,
    LineError,
    Request,
    decode_record,
    encode_record,
    encode_records,
    kind_of,
    read_records,
)


@given(records)
@settings(max_examples=300, deadline=None)
def test_every_kind_round_trips_through_jsonl(rec: object) -> None:
    line = encode_record(rec)  # type: ignore[arg-type]
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_record(line) == rec
    assert decode_record(line, strict=True) == rec


def test_kind_tag_and_version_are_written() -> None:
    r = Request(request_id="a", replica="r1", t_arrival=1.0)
    d = msgspec.json.decode(encode_record(r))
    assert d["kind"] == "request" and d["v"] == 1
    f = Finding(kind="template.double_bos", analyzer="template", severity="error", summary="x")
    d = msgspec.json.decode(encode_record(f))
    assert d["kind"] == "template.double_bos"
    assert kind_of(f) == "finding" and kind_of(r) == "request"
    assert kind_of(GpuSample(t=1.0, replica="r")) == "gpu"


def test_unknown_fields_are_ignored_unless_strict() -> None:
    line = (
        b'{"kind":"request","request_id":"a","replica":"r","t_arrival":1,"from_the_future":[1,2]}'
    )
    assert decode_record(line).request_id == "a"
    with pytest.raises(LineError) as e:
        decode_record(line, strict=True)
    assert e.value.field == "from_the_future"


def test_null_arrays_read_as_empty() -> None:
    r = decode_record(
        b'{"kind":"request","request_id":"a","replica":"r","t_arrival":1,"prompt_ids":null}'
    )
    assert isinstance(r, Request) and r.prompt_ids == [] and r.output_ids == []


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        (
            b'{"kind":"request","request_id":"a","replica":"r"}',
            "t_arrival",
            "missing required field",
        ),
        (
            b'{"kind":"request","request_id":"a","replica":"r","t_arrival":"noon"}',
            "t_arrival",
            "Expected `float`",
        ),
        (
            b'{"kind":"request","request_id":5,"replica":"r","t_arrival":1}',
            "request_id",
            "Expected `str`",
        ),
        (
            b'{"kind":"request","request_id":"a","replica":"r","t_arrival":1,"prompt_ids":[1,-3]}',
            "prompt_ids[1]",
            ">= 0",
        ),
        (
            b'{"kind":"request","request_id":"a","replica":"r","t_arrival":1,"output_ids":[4294967296]}',
            "output_ids[0]",
            "<= 4294967295",
        ),
        (
            b'{"kind":"request","request_id":"a","replica":"r","t_arrival":1,"finish_reason":"done"}',
            "finish_reason",
            "Invalid enum",
        ),
        (
            b'{"kind":"gpu","t":1,"replica":"r","throttle_reasons":"power_cap"}',
            "throttle_reasons",
            "Expected `array",
        ),
        (b'{"kind":"mystery","x":1}', "kind", "unknown record kind 'mystery'"),
        (b'{"request_id":"a"}', "kind", "missing required field `kind`"),
        (
            b'{"kind":"template.double_bos","analyzer":"t","summary":"s"}',
            "severity",
            "missing required field",
        ),
        (b'{"kind":"request",', None, "malformed JSON"),
        (
            b'{"kind":"request","request_id":"\xff","replica":"r","t_arrival":1}',
            None,
            "invalid UTF-8",
        ),
    ],
)
def test_bad_lines_name_field_and_reason(line: bytes, field: str | None, needle: str) -> None:
    with pytest.raises(LineError) as e:
        decode_record(line)
    assert e.value.field == field
    assert needle in e.value.reason


def test_read_records_reads_gzip_and_reports_line_numbers(tmp_path: object) -> None:
    recs = [Request(request_id=str(i), replica="r", t_arrival=float(i)) for i in range(3)]
    body = encode_records(recs[:2]) + b"not json\n\n" + encode_record(recs[2])
    p = f"{tmp_path}/x.jsonl.gz"
    with gzip.open(p, "wb") as f:
        f.write(body)
    got = list(read_records(p))
    assert [n for n, _ in got] == [1, 2, 3, 5]
    assert isinstance(got[2][1], LineError)
    assert [r for _, r in got if not isinstance(r, LineError)] == recs


@pytest.mark.parametrize("offset", [0, 1, 33])
def test_invalid_utf8_names_its_byte_offset_whatever_msgspec_raises(offset: int) -> None:
    # msgspec <= 0.22 raised UnicodeDecodeError, 0.23 raises DecodeError without the offset:
    # the reject reason names the byte either way.
    good = (
        b'{"kind":"request","request_id":"abcdefghijklmnopqrstuvwxyz0123456789",'
        b'"replica":"r","t_arrival":1}'
    )
    line = good[:offset] + b"\xff" + good[offset:]
    with pytest.raises(LineError) as e:
        decode_record(line)
    assert f"invalid UTF-8 at byte {offset}" in e.value.reason
