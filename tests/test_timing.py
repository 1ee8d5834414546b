"""Latencies that cannot be true (another clock, negative, past the ceiling or the request's
own span) are never stored: dropped with a note, the rest of the request kept — through the
engine-log readers and both paths of contract JSONL ingest."""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
import pytest
from conftest import make_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infdebug.collectors.ingest import ingest_paths
from infdebug.collectors.readers import Context, ReadStats, build_request
from infdebug.collectors.timing import (
    DEFAULT_MAX_LATENCY_S,
    MAX_LATENCY_ENV,
    SPAN_TOLERANCE_REL,
    SPAN_TOLERANCE_S,
    LatencyConfigError,
    latency_ceiling,
    max_latency_s,
    sanitize_timing,
)
from infdebug.schema import Request, encode_record, encode_records
from infdebug.store.ddl import TABLES, request_latency_guard
from infdebug.store.queries import fetch_records

MONO_MIX = 1.7e9  # wall-clock token time minus a monotonic arrival time


def _ingest(store: Any, tmp_path: Any, *paths: str, **kw: Any) -> Any:
    return ingest_paths(store, list(paths), rejects_path=str(tmp_path / "rejects.jsonl"), **kw)


def test_a_sane_request_comes_back_as_it_was() -> None:
    r = make_request(1)
    out, notes = sanitize_timing(r)
    assert out is r and notes == []
    # within the tolerance of the span: kept (clocks read microseconds apart)
    r = make_request(2, e2e_s=1.0, ttft_s=1.0 + SPAN_TOLERANCE_S * 0.9, token_times_s=[0.5, 1.005])
    assert sanitize_timing(r) == (r, [])


@pytest.mark.parametrize(
    ("kw", "dropped", "note"),
    [
        (
            {"ttft_s": MONO_MIX, "e2e_s": MONO_MIX + 2},
            {"ttft_s", "e2e_s"},
            "ttft_s 1.7e9 s past the 86400 s ceiling",
        ),
        ({"ttft_s": 3.0, "e2e_s": 1.0}, {"ttft_s"}, "ttft_s past e2e_s"),
        ({"queue_s": 5.0, "e2e_s": 1.0}, {"queue_s"}, "queue_s past e2e_s"),
        ({"prefill_s": -0.25}, {"prefill_s"}, "prefill_s negative"),
        (
            {"token_times_s": [0.02, 0.5, 7.0], "e2e_s": 1.0},
            {"token_times_s"},
            "token_times_s has a time past e2e_s",
        ),
        ({"token_times_s": [-1.0, 0.03]}, {"token_times_s"}, "token_times_s has a negative time"),
        (
            {"token_times_s": [0.02, MONO_MIX], "e2e_s": None},
            {"token_times_s"},
            "past the 86400 s ceiling",
        ),
    ],
)
def test_impossible_latencies_are_dropped_with_a_note(
    kw: dict[str, Any], dropped: set[str], note: str
) -> None:
    r = make_request(3, **kw)
    out, notes = sanitize_timing(r)
    for name in ("queue_s", "prefill_s", "ttft_s", "e2e_s"):
        assert getattr(out, name) == (None if name in dropped else getattr(r, name)), name
    assert out.token_times_s == ([] if "token_times_s" in dropped else r.token_times_s)
    assert len(notes) == len(dropped) and any(note in n for n in notes), notes
    assert all(n.endswith(": dropped") for n in notes)
    # everything else is kept
    assert (out.request_id, out.output_ids, out.prompt_text) == (
        r.request_id,
        r.output_ids,
        r.prompt_text,
    )


def test_an_absurd_e2e_is_not_the_span_the_others_are_judged_by() -> None:
    r = make_request(4, e2e_s=MONO_MIX, ttft_s=0.5, queue_s=0.01)
    out, notes = sanitize_timing(r)
    assert out.e2e_s is None and out.ttft_s == 0.5 and out.queue_s == 0.01
    assert notes == ["e2e_s 1.7e9 s past the 86400 s ceiling: dropped"]


def test_the_ceiling_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_LATENCY_ENV, raising=False)
    assert max_latency_s() == DEFAULT_MAX_LATENCY_S
    monkeypatch.setenv(MAX_LATENCY_ENV, "30")
    assert max_latency_s() == 30.0
    r = make_request(5, e2e_s=60.0, ttft_s=0.5)
    assert sanitize_timing(r)[0].e2e_s is None
    assert max_latency_s("120") == 120.0  # the flag wins
    with latency_ceiling(120.0):
        assert sanitize_timing(r)[0].e2e_s == 60.0  # the ingest in progress wins over the env
    monkeypatch.setenv(MAX_LATENCY_ENV, "a day")
    with pytest.raises(LatencyConfigError, match=MAX_LATENCY_ENV):
        max_latency_s()
    for bad in ("0", "-5", "nan", "x"):
        with pytest.raises(LatencyConfigError, match="--max-latency"):
            max_latency_s(bad)


def test_the_engine_log_readers_apply_the_same_rule(tmp_path: Any) -> None:
    ctx = Context(path=str(tmp_path / "vllm.log"), replica="r1", engine="vllm", stats=ReadStats())
    req = build_request(
        ctx,
        7,
        {"request_id": "a", "t_arrival": 1.7e9, "ttft_s": MONO_MIX, "e2e_s": 2.0, "queue_s": 0.1},
    )
    assert isinstance(req, Request)
    assert req.ttft_s is None and req.e2e_s == 2.0 and req.queue_s == 0.1
    assert ctx.stats.notes["ttft_s 1.7e9 s past the 86400 s ceiling: dropped"] == 1


def test_a_vllm_log_with_a_monotonic_arrival_time_stores_no_absurd_ttft(
    store: Any, tmp_path: Any
) -> None:
    # Old vLLM: arrival_time from time.monotonic(), token times from time.time().
    line = (
        "RequestOutput(request_id=7, prompt='Hi', prompt_token_ids=[1, 15043], "
        "prompt_logprobs=None, outputs=[CompletionOutput(index=0, text=' there', "
        "token_ids=[727, 2], cumulative_logprob=-1.5, logprobs=None, finish_reason=stop, "
        "stop_reason=None)], finished=True, metrics=RequestMetrics("
        "arrival_time=5025.25, last_token_time=1715679825.75, first_scheduled_time=1715679825.26, "
        "first_token_time=1715679825.5, time_in_queue=0.01, finished_time=1715679825.75), "
        "lora_request=None)\n"
    )
    p = tmp_path / "vllm-old.log"
    p.write_text(line * 3)
    rep = _ingest(store, tmp_path, str(p))
    assert rep.rows["request"] >= 1, rep.to_json()
    _, rows = store.query("SELECT ttft_s, e2e_s, queue_s FROM requests")
    for ttft, e2e, _queue in rows:
        assert ttft is None or 0 <= ttft < DEFAULT_MAX_LATENCY_S
        assert e2e is None or 0 <= e2e < DEFAULT_MAX_LATENCY_S


def test_contract_jsonl_with_another_clocks_ttft_loads_the_rest(store: Any, tmp_path: Any) -> None:
    recs = [make_request(i) for i in range(20)]
    for i in (3, 8, 15):
        recs[i] = make_request(i, ttft_s=MONO_MIX + i, e2e_s=0.5)
    recs[10] = make_request(10, queue_s=-2.0)
    p = tmp_path / "mixed-clock.jsonl"
    p.write_bytes(encode_records(recs))
    rep = _ingest(store, tmp_path, str(p))
    assert rep.rows["request"] == 20 and rep.rejected == 0 and rep.exit_code() == 0
    assert rep.files[0].path_taken == "careful"  # the fast path's guard doubted those rows
    got = {r.request_id: r for r in fetch_records(store, "request")}
    for i in (3, 8, 15):
        assert got[f"req-{i}"].ttft_s is None and got[f"req-{i}"].e2e_s == 0.5
        assert got[f"req-{i}"].output_ids == recs[i].output_ids
    assert got["req-10"].queue_s is None and got["req-10"].ttft_s == recs[10].ttft_s
    assert got["req-0"] == recs[0]
    notes = rep.notes()
    assert f"{p}: ttft_s 1.7e9 s past the 86400 s ceiling: dropped (3 requests)" in notes
    assert f"{p}: queue_s negative: dropped (1 request)" in notes
    assert rep.to_json()["per_file"][0]["notes"]["queue_s negative: dropped"] == 1


def test_the_fast_path_guard_follows_the_configured_ceiling(store: Any, tmp_path: Any) -> None:
    p = tmp_path / "slow.jsonl"
    p.write_bytes(encode_records([make_request(i, e2e_s=20.0 + i, ttft_s=1.0) for i in range(5)]))
    rep = _ingest(store, tmp_path, str(p), max_latency=60.0)
    assert rep.files[0].path_taken == "fast" and not rep.notes()
    q = tmp_path / "slow2.jsonl"
    q.write_bytes(
        encode_records([make_request(i + 10, e2e_s=20.0 + i, ttft_s=1.0) for i in range(5)])
    )
    rep = _ingest(store, tmp_path, str(q), max_latency=10.0)
    assert rep.files[0].path_taken == "careful" and rep.max_latency_s == 10.0
    assert rep.notes() == [
        f"{q}: e2e_s {v} s past the 10 s ceiling: dropped (1 request)" for v in range(20, 25)
    ]
    _, rows = store.query("SELECT count() FROM requests WHERE e2e_s > 10")
    assert rows[0][0] == 5  # the first file, loaded under a 60 s ceiling


# --- the fast path's guard and the careful path's rule agree -----------------------------

_VALUE = st.one_of(
    st.sampled_from(
        [0.0, -0.0, -1e-9, 0.5, 1.0, 1.01, 1.0100000001, 86400.0, 86400.5, MONO_MIX, -MONO_MIX]
    ),
    st.floats(min_value=-10, max_value=1e5, allow_nan=False),
)
_LAT = st.one_of(st.none(), _VALUE)


def _guard_flags(store: Any, path: str) -> list[bool]:
    t = TABLES["request"]
    guard = request_latency_guard(DEFAULT_MAX_LATENCY_S, SPAN_TOLERANCE_S, SPAN_TOLERANCE_REL)
    _, rows = store.query(
        f"SELECT `request_id`, {guard} FROM file({{p:String}}, 'JSONEachRow', {{s:String}})",
        {"p": path, "s": t.structure()},
    )
    return [bool(ok) for _, ok in sorted(rows, key=lambda r: int(r[0]))]


_TIMES = st.lists(_VALUE, max_size=4)  # drawn directly: no filter for the health check to trip on


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(_LAT, _LAT, _LAT, _LAT, _TIMES), min_size=1, max_size=40))
def test_the_guard_passes_a_row_only_if_the_rule_keeps_it_whole(
    store: Any, tmp_path: Any, rows: list[Any]
) -> None:
    if not store.description.startswith("chDB"):
        pytest.skip("file() reads a local file: the embedded store only")
    recs = [
        make_request(
            0, request_id=str(i), queue_s=q, prefill_s=pf, ttft_s=tt, e2e_s=e2e, token_times_s=times
        )
        for i, (q, pf, tt, e2e, times) in enumerate(rows)
    ]
    path = str(tmp_path / f"rows-{next(_SEQ)}.jsonl")
    with open(path, "wb") as f:
        f.write(encode_records(recs))
    flags = _guard_flags(store, path)
    for rec, ok in zip(recs, flags, strict=True):
        _, notes = sanitize_timing(rec, DEFAULT_MAX_LATENCY_S)
        # the same verdict: the fast path passes exactly the rows the careful path keeps whole
        assert ok == (not notes), (msgspec.to_builtins(rec), notes, ok)


_SEQ = itertools.count()


def test_a_sanitized_line_is_stored_exactly_as_the_rule_leaves_it(
    store: Any, tmp_path: Any
) -> None:
    r = make_request(1, ttft_s=MONO_MIX, e2e_s=0.75, token_times_s=[0.1, 0.2])
    line = json.loads(encode_record(r))
    line["unknown_extra"] = 1  # tolerated, not stored
    p = tmp_path / "one.jsonl"
    p.write_text(json.dumps(line) + "\n")
    rep = _ingest(store, tmp_path, str(p))
    assert rep.rows["request"] == 1
    got = fetch_records(store, "request")[0]
    assert got == msgspec.structs.replace(r, ttft_s=None)
