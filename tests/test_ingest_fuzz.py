"""Fuzz: the fast ingest path and the careful path agree on seeded random good and mutated lines.

Lines of every contract kind are generated (seeded, bounded) and mutated: type swaps, big
integers, nulls, numbers as strings, bad escapes, raw control characters, invalid UTF-8,
concatenated objects, truncation, a byte-order mark, field names in another case,
duplicated keys, unknown fields nested modestly deep, number syntax JSON forbids. Then:

* line by line, against the contract decoder: a line the contract rejects is doubted by
  the raw line check (``Table.line_guard``) or refused by the guarded JSONEachRow load, and
  a line the contract accepts and the check passes is stored exactly as decoded;
* file by file, end to end: ``Ingestor`` with the fast path allowed and forced off stores
  the same rows and rejects the same lines.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from typing import Any

import msgspec
import pytest
from conftest import as_stored, make_gpu, make_metric, make_request

from infdebug.collectors.ingestor import Ingestor
from infdebug.collectors.rejects import RejectSink
from infdebug.schema import (
    Event,
    Finding,
    LineError,
    ProfileSample,
    RecordDecoder,
    encode_record,
    kind_of,
)
from infdebug.store.base import StoreError
from infdebug.store.ddl import JSONL_READ_SETTINGS, TABLES
from infdebug.store.line_check import CHECK_SETTINGS
from infdebug.store.queries import fetch_records

SEED = 20251201
KINDS = ("request", "gpu", "metrics", "event", "profile", "finding")
DECODER = RecordDecoder()
SETTINGS = {**JSONL_READ_SETTINGS, "input_format_skip_unknown_fields": 1}
BOM = b"\xef\xbb\xbf"

# --- good records ---------------------------------------------------------------------

_CHARS = 'abcXYZ 019_-:,.{}[]"\\/\t\n\x00\x1fé中🙂\u2028'


def _text(rng: random.Random) -> str:
    s = "".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 12)))
    return s.lstrip("{[") or "t"  # a text that opens like JSON is only doubted: keep most plain


def _opt(rng: random.Random, value: Any) -> Any:
    return None if rng.random() < 0.2 else value


def _record(rng: random.Random, kind: str, i: int) -> Any:
    if kind == "request":
        e2e = rng.uniform(0.05, 5.0)
        return make_request(
            i,
            replica=_text(rng) + "-r",
            ttft_s=_opt(rng, e2e * rng.random()),
            e2e_s=e2e,
            queue_s=_opt(rng, 0.0),
            token_times_s=sorted(rng.uniform(0, e2e) for _ in range(rng.randint(0, 4))),
            messages=_opt(rng, [{"role": "user", "content": _text(rng), "n": [1, 2.5, None]}]),
            prompt_text=_opt(rng, _text(rng)),
            prompt_ids=[rng.choice([0, 1, 2**31, 2**32 - 1]) for _ in range(rng.randint(0, 5))],
            output_logprobs=[-rng.random() * 10 for _ in range(rng.randint(0, 3))],
            cached_prompt_tokens=_opt(rng, rng.randint(0, 2**32 - 1)),
            finish_reason=rng.choice(["stop", "length", "abort", "error", None]),
            sampling=_opt(rng, {"temperature": rng.random(), "stop_ids": [2], "x": {"y": None}}),
            error=_opt(rng, _text(rng)),
            prompt_tokens=_opt(rng, rng.randint(0, 10**6)),
        )
    if kind == "gpu":
        return make_gpu(
            i,
            gpu_index=rng.randint(0, 7),
            mem_used_bytes=_opt(rng, rng.randint(0, 2**40)),
            throttle_reasons=[_text(rng) for _ in range(rng.randint(0, 2))],
            simulated=rng.random() < 0.5,
        )
    if kind == "metrics":
        return make_metric(
            i,
            labels=_opt(rng, {_text(rng): _text(rng)}),
            buckets=_opt(rng, {"0.1": float(rng.randint(0, 9)), "+Inf": 10.0}),
            value=_opt(rng, rng.uniform(-1e6, 1e6)),
        )
    if kind == "event":
        return Event(
            t=1.7e9 + i, replica="r", name=_text(rng), pid=_opt(rng, 42), detail={"a": [i]}
        )
    if kind == "profile":
        return ProfileSample(
            t=1.7e9 + i,
            replica="r",
            profile_id="p",
            thread=_text(rng),
            category="c",
            stack="a;b",
            count=rng.randint(0, 2**32 - 1),
        )
    return Finding(
        kind="x.y", analyzer="a", severity="warning", summary=_text(rng), values={"p": 0.5}
    )


# --- mutations ------------------------------------------------------------------------

_WRONG: list[Any] = [
    "0.5", "1", "", "true", "[1]", 1.0, 3.0, 1.5, 0, -1, 7, True, False, None, [], [1],
    [None], ["1"], [1.5], [1.0], {}, {"a": 1}, {"a": "b"}, [{"a": 1}], [[1]], [1, "a"],
    2**64 + 5, 2**63, -(2**63) - 1, 10**30, 2**32, -0.0, 1e300, [2**64 + 5], [-1], [2**32],
    ["a", None], {"a": None}, {"a": 1.5}, {"1": "2"}, "1" * 20, {"a": 2**64}, [2**63],
    [10**19], [2**64 - 1], [10**10], 2**64 - 1, 10**19, -(2**63),
]  # fmt: skip
_NUMBERS = [
    b"+1", b".5", b"1.", b"01", b"-01", b"1e400", b"NaN", b"Infinity", b"-", b"0x1", b"1e",
    b"--1", b"-0", b"1E+2", b"0.0", b"1e-400", b"18446744073709551616", b"-9223372036854775809",
]  # fmt: skip
_IN_STRING = [
    b"\x01", b"\x1f", b"\t", b"\x7f", b"\\q", b"\\x41", b"\\u12", b"\\ud800", b"\\udc00",
    b"\\ud83d\\ude42", b"\\u0000", b"\xff", b"\xc3", b"\\/", b'\\"', b"\xe2\x80\xa8",
]  # fmt: skip
_SPOT = "__spot__"


def _nested(rng: random.Random, depth: int) -> Any:
    v: Any = rng.choice([1, "s", None, 2**70, 1.5])
    for _ in range(depth):
        v = [v] if rng.random() < 0.5 else {"k": v}
    return v


def _dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode()


def _spot(rng: random.Random, d: dict[str, Any], value: bytes, *, string: bool) -> bytes:
    key = rng.choice([k for k in d if k != "kind"] or ["extra"])
    d[key] = f"a{_SPOT}b" if string else _SPOT
    quoted = json.dumps(d[key]).encode()
    return _dumps(d).replace(quoted, b'"a' + value + b'b"' if string else value, 1)


def _mutate(rng: random.Random, line: bytes, other: bytes) -> bytes:
    d = json.loads(line)
    keys = [k for k in d if k != "kind"]
    op = rng.randrange(14)
    if op == 0:
        d[rng.choice(keys)] = copy.deepcopy(rng.choice(_WRONG))
    elif op == 1:
        del d[rng.choice(list(d))]
    elif op == 2:
        k = rng.choice(keys + ["kind"])
        d[rng.choice([k.upper(), k.capitalize() if len(k) > 1 else k.upper()])] = d.pop(k)
    elif op == 3:
        d["x_" + _text(rng)] = _nested(rng, rng.choice([0, 3, 30, 300, 600]))
    elif op == 4:
        d["kind"] = rng.choice(["request", "gpu", "metrics", "a.b", "Request", "", 1, None])
    elif op == 5:
        return _spot(rng, d, rng.choice(_NUMBERS), string=False)
    elif op == 6:
        return _spot(rng, d, rng.choice(_IN_STRING), string=True)
    elif op == 7:
        return line + rng.choice([b"", b",", b"\r", b" ", b"\t", b"\x0b"]) + other
    elif op == 8:
        return line[: rng.randrange(1, len(line))]
    elif op == 9:
        return BOM + line
    elif op == 10:  # valid: whitespace JSON allows, a CR before the newline
        return line.replace(b'":', b'" :\t', 3).replace(b",", b" ,", 3) + b"\r"
    elif op == 11:  # a duplicated key
        k = rng.choice(keys)
        return line[:-1] + b',"' + k.encode() + b'":' + _dumps({"v": d[k]})[5:-1] + b"}"
    elif op == 12:
        return line[:-1] + b",}"
    else:
        d[rng.choice(keys)] = _nested(rng, rng.randint(1, 6))
    return _dumps(d)


def _lines(rng: random.Random, kind: str, n: int, start: int) -> list[tuple[bytes, bool]]:
    """``n`` lines of ``kind``, each (line, mutated)."""
    out = []
    for i in range(start, start + n):
        good = _dumps(json.loads(encode_record(_record(rng, kind, i))))
        if rng.random() < 0.6:
            other = encode_record(_record(rng, kind, i + 10**6)).rstrip(b"\n")
            out.append((_mutate(rng, good, other), True))
        else:
            out.append((good, False))
    return out


def _contract(line: bytes) -> Any:
    """The contract decoder's record, or None for a reject (as the careful path judges:
    too deep and a finding malformed after its tag are rejects too)."""
    try:
        return DECODER.decode(line)
    except (LineError, RecursionError, msgspec.DecodeError):
        return None


# --- line by line ---------------------------------------------------------------------


def _line_guard(store: Any, kind: str, lines: list[bytes]) -> list[bool]:
    t = TABLES[kind]
    sql = (
        f"SELECT n, {t.line_guard('line', 'fields')} FROM ("
        "SELECT n, line, JSONExtractKeysAndValuesRaw(line) AS fields FROM ("
        "SELECT arrayJoin(arrayEnumerate({h:Array(String)})) AS n, "
        "unhex(arrayElement({h:Array(String)}, n)) AS line)) ORDER BY n"
    )
    _, rows = store.query(sql, {"h": [x.hex() for x in lines]}, settings=CHECK_SETTINGS)
    return [bool(ok) for _, ok in rows]


_BATCH = iter(range(9_000_000, 10_000_000))


def _load(store: Any, tmp_path: Any, kind: str, lines: list[bytes], *, guarded: bool) -> int:
    """Load ``lines`` as the fast path does (``guarded``: with its row guard); the batch."""
    p = tmp_path / f"load-{kind}.jsonl"
    p.write_bytes(b"".join(x + b"\n" for x in lines))
    batch = next(_BATCH)
    store.insert_jsonl(TABLES[kind], str(p), "fuzz", batch, SETTINGS, guarded=guarded)
    return batch


def _duplicated_key(line: bytes) -> bool:
    """Whether the record names a field twice (the last object ``json`` builds is the top)."""
    objects: list[list[str]] = []

    def keep(kv: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append([k for k, _ in kv])
        return dict(kv)

    json.loads(line, object_pairs_hook=keep)
    return len(objects[-1]) != len(set(objects[-1]))


def _same_records(got: list[Any], want: list[Any]) -> bool:
    rest = list(want)
    for g in got:
        if g not in rest:
            return False
        rest.remove(g)
    return not rest


def test_line_by_line_the_fast_checks_never_pass_what_the_contract_rejects(
    store: Any, tmp_path: Any
) -> None:
    if not store.description.startswith("chDB"):
        pytest.skip("the line check runs where ClickHouse reads the file itself")
    rng = random.Random(SEED)
    tried = passed = 0
    for kind in KINDS:
        pairs = [(x, m) for x, m in _lines(rng, kind, 240 if kind == "request" else 80, 0)]
        pairs = [(x, m) for x, m in pairs if x.strip()]
        lines = [x for x, _ in pairs]
        ok = _line_guard(store, kind, lines)
        accepted: list[bytes] = []
        for (line, mutated), checked in zip(pairs, ok, strict=True):
            rec = _contract(line)
            if not mutated:
                assert checked, f"a good {kind} line doubted: {line!r}"
            if not checked:
                continue
            if rec is None or kind_of(rec) != kind or _duplicated_key(line):
                # the check passed a line the contract rejects (or reads its last duplicated
                # key, not the first): the load itself must refuse it
                tried += 1
                with pytest.raises(StoreError):
                    _load(store, tmp_path, kind, [line], guarded=True)
                continue
            accepted.append(line)
        passed += len(accepted)
        # what the fast path would store of every line it passes is what the contract read
        batch = _load(store, tmp_path, kind, accepted, guarded=False)
        got = fetch_records(store, kind, where="_batch = {b:UInt64}", params={"b": batch})
        want = [as_stored(_contract(x)) for x in accepted]  # times to the microsecond
        assert _same_records(got, want), (kind, accepted, got)
    assert tried > 0 and passed > 100


# --- file by file ---------------------------------------------------------------------


def _snapshot(store: Any, label: str) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for kind, t in TABLES.items():
        cols = ", ".join(f"`{c.name}`" for c in t.columns)
        _, rows = store.query(
            f"SELECT {cols} FROM {t.name} WHERE _file = {{f:String}}", {"f": label}
        )
        out[kind] = sorted(rows, key=repr)
    return out


def _run(store: Any, tmp_path: Any, path: str, label: str, *, fast: bool) -> Any:
    sink = RejectSink(str(tmp_path / f"rejects-{label}.jsonl"))
    res = Ingestor(store, rejects=sink, fast_path=fast).ingest_file(path, label=label)
    sink.close()
    rejects = set()
    if sink.count:
        with open(sink.path, encoding="utf-8") as f:
            for r in map(json.loads, f):
                rejects.add((r["line"], r["field"], r["reason"].split("(in file")[0]))
    store.command("TRUNCATE TABLE ingest_state")  # the other run reads the file as new
    return dataclasses.replace(res, path=""), rejects, _snapshot(store, label)


def test_file_by_file_the_fast_and_the_careful_path_store_the_same(
    store: Any, tmp_path: Any
) -> None:
    rng = random.Random(SEED + 1)
    taken = {"fast": 0, "careful": 0}
    for n in range(16):
        kind = KINDS[n % len(KINDS)] if n % 3 else "request"
        first = _dumps(json.loads(encode_record(_record(rng, kind, 0))))
        body = [(first, False)]
        for line, mutated in _lines(rng, kind, rng.randint(3, 8), 1):
            if not mutated or rng.random() < [0.0, 0.3, 1.0][n % 3]:  # some files all good
                body.append((line, mutated))
        if n % 5 == 4:
            body.append((encode_record(make_gpu(n)).rstrip(b"\n"), False))  # another kind
        p = tmp_path / f"f{n}.jsonl"
        p.write_bytes(b"\n".join(x for x, _ in body) + b"\n")
        fast, fast_rejects, fast_rows = _run(store, tmp_path, str(p), f"fast-{n}", fast=True)
        slow, slow_rejects, slow_rows = _run(store, tmp_path, str(p), f"slow-{n}", fast=False)
        assert slow.path_taken == "careful"
        assert (fast.rows, fast.rejected, fast_rejects) == (slow.rows, slow.rejected, slow_rejects)
        assert fast_rows == slow_rows, p.read_bytes()
        taken[fast.path_taken] += 1
        if fast.path_taken == "fast":
            assert not slow_rejects
    if store.description.startswith("chDB"):
        assert taken["fast"] >= 3 and taken["careful"] >= 3, taken


def test_generated_records_round_trip(tmp_path: Any) -> None:
    # the generator itself makes contract records (so a mutation is what makes a line bad)
    rng = random.Random(SEED)
    for kind in KINDS:
        for i in range(20):
            rec = _record(rng, kind, i)
            assert msgspec.json.decode(encode_record(rec), type=type(rec)) == rec
