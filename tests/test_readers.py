"""Engine log readers: vLLM / SGLang / OpenAI-style logs into contract requests."""

from __future__ import annotations

import calendar
import os
import shutil
from typing import Any

import pytest

from infdebug.collectors.ingest import ingest_paths
from infdebug.collectors.pyrepr import Call, parse_repr
from infdebug.collectors.readers import (
    convert_to_contract,
    detect_format,
    parse_timestamp,
    read_engine_log,
)
from infdebug.schema import LineError, Request, encode_record
from tests.conftest import make_request

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "engine_logs")


def _copy(tmp_path: Any, name: str, mtime_utc: tuple[int, int, int] | None = None) -> str:
    """A copy of a fixture with a known mtime (a checkout does not keep mtimes)."""
    dst = str(tmp_path / name)
    shutil.copy(os.path.join(DATA, name), dst)
    if mtime_utc is not None:
        t = calendar.timegm((*mtime_utc, 12, 0, 0, 0, 0, 0))
        os.utime(dst, (t, t))
    return dst


def _read(path: str, **kw: Any) -> tuple[dict[str, Request], dict[int, LineError]]:
    reqs: dict[str, Request] = {}
    errs: dict[int, LineError] = {}
    for n, item in read_engine_log(path, **kw):
        if isinstance(item, LineError):
            errs[n] = item
        else:
            reqs[item.request_id] = item
    return reqs, errs


def _utc(y: int, mo: int, d: int, h: int, mi: int, s: int) -> float:
    return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))


def test_repr_parser_reads_what_engines_print() -> None:
    v, _ = parse_repr(
        "X(a='it\\'s', b=[1, 2], c=array('l', [3, 4]), d=(5,), "
        "e=stop, f=</s>, g={'k': None}, h=-1e-05)"
    )
    assert isinstance(v, Call) and v.name == "X"
    assert v.kwargs == {
        "a": "it's",
        "b": [1, 2],
        "c": [3, 4],
        "d": (5,),
        "e": "stop",
        "f": "</s>",
        "g": {"k": None},
        "h": -1e-05,
    }


def test_timestamps_with_and_without_year() -> None:
    assert parse_timestamp("INFO 05-14 10:23:45 logger.py:39]", 2024) == _utc(
        2024, 5, 14, 10, 23, 45
    )
    assert parse_timestamp("INFO 2024-05-14 10:23:45,123 x.py:1]", 1999) == pytest.approx(
        _utc(2024, 5, 14, 10, 23, 45) + 0.123
    )
    # a December line in a file last written in January is from the year before
    assert parse_timestamp(
        "INFO 12-31 23:00:00 [logger.py:39]", 2025, _utc(2025, 1, 1, 5, 0, 0)
    ) == _utc(2024, 12, 31, 23, 0, 0)
    assert parse_timestamp("no time here", 2024) is None


def test_detection_per_file() -> None:
    expect = {
        "vllm-0.3.log": "vllm",
        "vllm-0.5-replica-a.log": "vllm",
        "vllm-0.8.log": "vllm",
        "vllm-request-outputs.log": "vllm",
        "sglang-replica-b.log": "sglang",
        "openai-replica-c.jsonl": "openai",
    }
    for name, fmt in expect.items():
        assert detect_format(os.path.join(DATA, name)) == fmt, name


def test_detection_of_contract_and_unknown(tmp_path: Any) -> None:
    p = tmp_path / "c.jsonl"
    p.write_bytes(encode_record(make_request(1)))
    assert detect_format(str(p)) == "contract"
    reqs, errs = _read(str(p))
    assert list(reqs) == ["req-1"] and not errs
    q = tmp_path / "x.log"
    q.write_text("hello\nworld\n")
    assert detect_format(str(q)) == "unknown"
    with pytest.raises(ValueError, match="format not recognised"):
        list(read_engine_log(str(q)))


def test_vllm_05_server_log(tmp_path: Any) -> None:
    path = _copy(tmp_path, "vllm-0.5-replica-a.log", (2024, 6, 1))
    reqs, errs = _read(path)
    assert set(reqs) == {"chat-5b2c1f0e9a7d4e3b8c6a", "cmpl-0a1b2c3d4e5f-0", "cmpl-9988-0"}
    r = reqs["chat-5b2c1f0e9a7d4e3b8c6a"]
    assert r.replica == "vllm-0.5-replica-a" and r.engine == "vllm"
    assert r.model == "meta-llama/Meta-Llama-3-8B-Instruct" and r.engine_version == "0.5.3.post1"
    assert r.t_arrival == _utc(2024, 5, 14, 10, 23, 45)
    assert r.prompt_text is not None and 'What\'s 2+2? Answer with "four".' in r.prompt_text
    assert r.prompt_text.endswith("<|end_header_id|>\n\n")
    assert r.prompt_ids[:2] == [128000, 128006] and len(r.prompt_ids) == 17
    assert r.sampling is not None
    assert {
        k: r.sampling[k] for k in ("temperature", "top_p", "top_k", "max_tokens", "stop_ids")
    } == {"temperature": 0.7, "top_p": 0.9, "top_k": -1, "max_tokens": 256, "stop_ids": [128009]}
    assert "seed" not in r.sampling  # seed=None
    # a prompt that contains "', params:" and escapes; prompt_token_ids: None gives []
    tricky = reqs["cmpl-0a1b2c3d4e5f-0"]
    assert (
        tricky.prompt_text == "Say ', params: SamplingParams(n=9)' back to me.\\ Then a tab:\there"
    )
    assert tricky.prompt_ids == [] and tricky.sampling is not None
    assert tricky.sampling["seed"] == 1234 and tricky.sampling["stop"] == ["###"]
    assert reqs["cmpl-9988-0"].prompt_text == "Ünïcödé — 日本語 and an emoji 🙂"
    # the malformed line is reported with its line number, not fatal
    assert list(errs) == [8] and "unterminated string" in errs[8].reason


def test_vllm_08_and_later_lines(tmp_path: Any) -> None:
    path = _copy(tmp_path, "vllm-0.8.log", (2025, 1, 4))
    reqs, errs = _read(path, replica="pod-7")
    assert not errs
    a, b = reqs["chatcmpl-aa11"], reqs["cmpl-bb22-0"]
    assert a.replica == b.replica == "pod-7" and a.engine_version == "0.8.5"
    assert a.t_arrival == _utc(2025, 1, 3, 23, 59, 59)
    assert (
        a.prompt_ids == []
        and a.sampling is not None
        and a.sampling["stop_ids"] == [128001, 128008, 128009]
    )
    assert a.prompt_text is not None and '"double quotes"\nplease.' in a.prompt_text
    # (APIServer pid=1) prefix, prompt_embeds shape, and the Generated response joined in
    assert b.t_arrival == _utc(2025, 1, 4, 0, 0, 3)
    assert b.prompt_text == "plain 'single' quotes"
    assert b.output_text == "abc" and b.output_ids == [13997] and b.finish_reason == "stop"
    assert b.sampling is not None and b.sampling["stop"] == ["\n\n", "it's"]


def test_vllm_02_03_variants_and_year_rollover(tmp_path: Any) -> None:
    path = _copy(tmp_path, "vllm-0.3.log", (2024, 1, 2))
    reqs, errs = _read(path)
    assert not errs
    old = reqs["cmpl-old02"]  # "sampling params:" / "prompt token ids:", 0.2 era
    assert old.t_arrival == _utc(2023, 12, 1, 8, 0, 0)
    assert old.prompt_ids == [1, 15043, 29892, 590, 1024, 338]
    assert (
        old.sampling is not None
        and old.sampling["stop_ids"] == [2]
        and old.sampling["max_tokens"] == 16
    )
    o3 = reqs["cmpl-old03"]  # "prefix_pos: None,sampling_params:" and a year in the timestamp
    assert o3.prompt_text == "Don't stop" and o3.prompt_ids == [1, 3872, 29915, 29873, 5040]
    assert o3.t_arrival == pytest.approx(_utc(2024, 3, 2, 9, 15, 1) + 0.25)


def test_vllm_request_output_reprs_and_join(tmp_path: Any) -> None:
    path = _copy(tmp_path, "vllm-request-outputs.log", (2024, 5, 14))
    reqs, errs = _read(path)
    joined = reqs["cmpl-7f3e-0"]
    assert joined.prompt_text == 'It\'s a "test"'
    assert joined.prompt_ids == [
        1,
        739,
        29915,
        29879,
    ]  # the RequestOutput's full list, not the logger's cut
    assert joined.output_ids == [3431, 2]  # array('l', [...])
    assert joined.output_text == "ok</s>" and joined.finish_reason == "stop"
    assert joined.output_logprobs == [-0.25, -0.5]
    assert joined.sampling is not None and joined.sampling["stop_ids"] == [2]
    assert joined.t_arrival == 1715679900.0 and joined.e2e_s == pytest.approx(0.5)
    r0 = reqs["0"]
    assert r0.output_ids == [2259, 29889, 306] and r0.finish_reason == "length"
    assert r0.ttft_s == pytest.approx(0.25) and r0.queue_s == pytest.approx(0.01)
    r2 = reqs["2"]  # tuple token ids, prompt=None, no metrics, no timestamp
    assert (
        r2.output_ids == [13347, 128009]
        and r2.prompt_text is None
        and r2.prompt_ids == [128000, 9906]
    )
    assert r2.t_arrival == 0.0 and r2.cached_prompt_tokens == 16
    assert list(errs) == [6] and "output_ids" in errs[6].reason  # a negative token ID


def test_sglang_log_requests(tmp_path: Any) -> None:
    reqs, errs = _read(os.path.join(DATA, "sglang-replica-b.log"))
    a = reqs["a1b2c3"]
    assert a.engine == "sglang" and a.replica == "sglang-replica-b"
    assert a.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert a.t_arrival == _utc(2025, 1, 20, 10, 23, 45) and a.e2e_s == 0.5
    assert a.prompt_ids[:2] == [128000, 128006] and a.output_ids == [9906, 0, 128009]
    assert a.output_text == "Hello!" and a.finish_reason == "stop"
    assert a.sampling == {
        "temperature": 0.0,
        "max_tokens": 128,
        "stop": [],
        "stop_ids": [128009],
        "top_p": 1.0,
        "top_k": -1,
        "skip_special_tokens": True,
    }
    d = reqs["d4e5f6"]
    assert d.prompt_text == 'He said "it\'s fine"\nthen left.' and d.prompt_ids == []
    assert (
        d.finish_reason == "length" and d.output_ids == [5507] * 4 and d.cached_prompt_tokens == 2
    )
    assert d.e2e_s == 1.0  # Finish time - Receive time
    # truncated by the logger: kept, the shortened fields left out
    assert reqs["long1"].prompt_text is None and reqs["long1"].prompt_ids == []
    # older `in=…, out=…` style: IDs from output_token_logprobs, arrival = finish - e2e_latency
    old = reqs["old9"]
    assert old.output_ids == [264, 293, 272] and old.output_logprobs == [-0.5, -0.25, -1.0]
    assert old.t_arrival == pytest.approx(_utc(2025, 1, 20, 10, 23, 50) - 0.25)
    assert list(errs) == [10]


def test_openai_jsonl() -> None:
    reqs, errs = _read(os.path.join(DATA, "openai-replica-c.jsonl"))
    chat = reqs["chatcmpl-111"]
    assert chat.engine == "openai" and chat.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert chat.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": 'Say "hi"'},
    ]
    assert chat.prompt_ids[0] == 128000 and chat.output_ids == [6151, 128009]
    assert chat.t_arrival == 1736000000.5 and chat.finish_reason == "stop"
    assert chat.sampling == {"temperature": 0.2, "seed": 11, "max_tokens": 32, "stop_ids": [128009]}
    comp = reqs["cmpl-222"]  # choice-level prompt_token_ids, ISO timestamp
    assert comp.prompt_text == "Once upon" and comp.prompt_ids == [128000, 12805, 5304]
    assert comp.output_ids == [264, 892, 11] and comp.t_arrival == _utc(2025, 1, 4, 12, 0, 0)
    lp = reqs["chatcmpl-333"]  # logprobs only: IDs unknown
    assert (
        lp.output_ids == [] and lp.output_logprobs == [-0.5, -1.5] and lp.t_arrival == 1736000200.0
    )
    assert reqs["chatcmpl-444"].output_ids == [13, 128009]  # return_tokens_as_token_ids
    assert list(errs) == [3] and "malformed JSON" in errs[3].reason


def test_format_override(tmp_path: Any) -> None:
    reqs, errs = _read(os.path.join(DATA, "openai-replica-c.jsonl"), fmt="vllm")
    assert not reqs and not errs  # nothing looks like a vLLM request line
    with pytest.raises(ValueError, match="unknown format"):
        list(read_engine_log(os.path.join(DATA, "openai-replica-c.jsonl"), fmt="tgi"))


def test_convert_report_and_round_trip_into_the_store(store: Any, tmp_path: Any) -> None:
    src = _copy(tmp_path, "vllm-request-outputs.log", (2024, 5, 14))
    out = str(tmp_path / "out.jsonl")
    rep = convert_to_contract(src, out, "auto", None)
    assert rep.format == "vllm" and rep.requests == 3 and rep.rejected == 1 and rep.ignored == 1
    assert rep.rejects[0].line == 6 and rep.rejects[0].raw.startswith(b"RequestOutput(request_id=3")
    assert rep.to_json()["rejects"][0].startswith(f"{src}:6: ")
    assert rep.notes == {"no timestamp on the line: t_arrival set to 0": 1}

    sg = str(tmp_path / "sg.jsonl")
    rep2 = convert_to_contract(os.path.join(DATA, "sglang-replica-b.log"), sg, replica="b")
    assert rep2.requests == 4 and rep2.rejected == 1

    ing = ingest_paths(store, [out, sg], rejects_path=str(tmp_path / "rejects.jsonl"))
    assert ing.rejected == 0 and ing.rows["request"] == 7
    cols, rows = store.query(
        "SELECT request_id, replica, prompt_ids, output_ids FROM requests ORDER BY request_id"
    )
    got = {r[0]: (r[1], list(r[2]), list(r[3])) for r in rows}
    assert got["cmpl-7f3e-0"] == ("vllm-request-outputs", [1, 739, 29915, 29879], [3431, 2])
    assert got["2"] == ("vllm-request-outputs", [128000, 9906], [13347, 128009])
    assert got["a1b2c3"][0] == "b" and got["a1b2c3"][2] == [9906, 0, 128009]
    assert got["old9"][1:] == ([1, 1170, 1196], [264, 293, 272])


def test_convert_of_an_unknown_file_reports_instead_of_raising(tmp_path: Any) -> None:
    p = tmp_path / "noise.log"
    p.write_text("just noise\n")
    rep = convert_to_contract(str(p), str(tmp_path / "o.jsonl"), "auto", None)
    assert rep.error is not None and "format not recognised" in rep.error and rep.requests == 0
