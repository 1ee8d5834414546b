"""Engine log readers on what real logs look like (issue 9, part 2): vLLM >= 0.11.2's split
request lines, OpenAI Batch API files, log-shipper framing, finish reasons, yearless
timestamps, SGLang meta_info counts, and startup lines that name the model.

Every line is built from the engine's public format; where each shape comes from is noted."""

from __future__ import annotations

import calendar
import json
import os
from typing import Any

import pytest

from infdebug.collectors.ingest import ingest_paths
from infdebug.collectors.readers import EngineLogReader, convert_to_contract, detect_format
from infdebug.collectors.readers_batch import pair_input
from infdebug.collectors.readers_fields import FINISH_REASONS, check_sampling, finish
from infdebug.collectors.readers_shipper import NOTE_MIDLINE
from infdebug.schema import LineError, Request


def _utc(y: int, mo: int, d: int, h: int, mi: int, s: int) -> float:
    return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))


def _write(path: Any, lines: list[str], mtime: tuple[int, int, int] | None = None) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    if mtime is not None:
        t = _utc(*mtime, 12, 0, 0)
        os.utime(path, (t, t))
    return str(path)


def _read(path: str, **kw: Any) -> tuple[dict[str, Request], dict[int, LineError], EngineLogReader]:
    r = EngineLogReader(path, **kw)
    reqs: dict[str, Request] = {}
    errs: dict[int, LineError] = {}
    for n, item in r:
        if isinstance(item, LineError):
            errs[n] = item
        else:
            assert item.request_id not in reqs, item.request_id
            reqs[item.request_id] = item
    return reqs, errs, r


# vllm/sampling_params.py SamplingParams.__repr__ at v0.11.2
# (structured_outputs replaced guided_decoding)
def _sp(**over: Any) -> str:
    p: dict[str, Any] = {
        "n": 1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "min_p": 0.0,
        "seed": None,
        "stop": [],
        "stop_token_ids": [151645],
        "bad_words": [],
        "include_stop_str_in_output": False,
        "ignore_eos": False,
        "max_tokens": 512,
        "min_tokens": 0,
        "logprobs": None,
        "prompt_logprobs": None,
        "skip_special_tokens": True,
        "spaces_between_special_tokens": True,
        "truncate_prompt_tokens": None,
        "structured_outputs": None,
        "extra_args": None,
    }
    p.update(over)
    return "SamplingParams(" + ", ".join(f"{k}={v!r}" for k, v in p.items()) + ")"


API = "(APIServer pid=1) {lvl} 11-20 14:{mm}:{ss} [logger.py:{ln}] "


def _api(lvl: str, t: str, msg: str) -> str:
    mm, ss = t.split(":")
    return API.format(lvl=lvl, mm=mm, ss=ss, ln=47 if lvl == "DEBUG" else 56) + msg


# --- 1. vLLM >= 0.11.2: Received (INFO, params only) + details (DEBUG, prompt) -----------------
# vllm/entrypoints/logger.py RequestLogger.log_inputs at v0.11.2: logger.debug("Request %s details:
# prompt: %r, prompt_token_ids: %s, prompt_embeds shape: %s.") then logger.info("Received request
# %s: params: %s, lora_request: %s.").


def test_vllm_0112_info_and_debug_lines_joined_by_request_id(tmp_path: Any) -> None:
    prompt = '<|im_start|>user\nIt\'s "quoted", params: x<|im_end|>\n<|im_start|>assistant\n'
    lines = [
        _api(
            "INFO",
            "00:01",
            "non-default args: {'model_tag': 'Qwen/Qwen3-8B', 'model': 'Qwen/Qwen3-8B'}",
        ),
        # the usual order: details first
        _api(
            "DEBUG",
            "02:11",
            f"Request chatcmpl-3a1f details: prompt: {prompt!r}, prompt_token_ids: "
            "[151644, 872, 198], prompt_embeds shape: None.",
        ),
        _api(
            "INFO", "02:11", f"Received request chatcmpl-3a1f: params: {_sp()}, lora_request: None."
        ),
        # the other order, and a prompt given as embeddings (torch.Size repr)
        _api(
            "INFO",
            "02:12",
            f"Received request cmpl-77-0: params: {_sp(temperature=0.0, top_k=0)}, "
            "lora_request: None.",
        ),
        _api(
            "DEBUG",
            "02:12",
            "Request cmpl-77-0 details: prompt: None, prompt_token_ids: [1, 2, 3], "
            "prompt_embeds shape: torch.Size([3, 4096]).",
        ),
        # INFO only (the default log level): a request with its sampling parameters, no prompt
        _api(
            "INFO",
            "02:13",
            f"Received request chatcmpl-b2: params: {_sp(seed=7, stop=['###'])}, "
            "lora_request: None.",
        ),
        # --enable-log-outputs, streaming: vllm/entrypoints/openai/serving_chat.py log_outputs calls
        _api(
            "INFO",
            "02:14",
            "Generated response chatcmpl-3a1f (streaming delta): output: 'Hel', "
            "output_token_ids: [9707], finish_reason: None",
        ),
        _api(
            "INFO",
            "02:14",
            "Generated response chatcmpl-3a1f (streaming delta): output: 'lo', "
            "output_token_ids: [385], finish_reason: stop",
        ),
        _api(
            "INFO",
            "02:14",
            "Generated response chatcmpl-3a1f (streaming complete): output: 'Hello', "
            "output_token_ids: None, finish_reason: streaming_complete",
        ),
        _api(
            "INFO",
            "02:15",
            "Generated response chatcmpl-b2 (streaming complete): output: "
            "'<streaming_complete: 5 tokens>', output_token_ids: None, "
            "finish_reason: streaming_complete",
        ),
    ]
    reqs, errs, _ = _read(_write(tmp_path / "vllm-0112.log", lines, (2026, 12, 1)))
    assert not errs and set(reqs) == {"chatcmpl-3a1f", "cmpl-77-0", "chatcmpl-b2"}
    a = reqs["chatcmpl-3a1f"]
    assert a.prompt_text == prompt and a.prompt_ids == [151644, 872, 198]
    assert (
        a.sampling is not None and a.sampling["top_p"] == 0.8 and a.sampling["stop_ids"] == [151645]
    )
    assert a.t_arrival == _utc(2026, 11, 20, 14, 2, 11) and a.model == "Qwen/Qwen3-8B"
    # the deltas joined; the complete line's full text; "streaming_complete" does not hide the stop
    assert a.output_text == "Hello" and a.output_ids == [9707, 385]
    assert a.finish_reason == "stop" and a.finish_reason_raw is None
    b = reqs["cmpl-77-0"]
    assert b.prompt_ids == [1, 2, 3] and b.prompt_text is None and b.sampling is not None
    assert b.sampling["temperature"] == 0.0 and b.t_arrival == _utc(2026, 11, 20, 14, 2, 12)
    c = reqs["chatcmpl-b2"]
    assert (
        c.prompt_text is None
        and c.sampling is not None
        and c.sampling["seed"] == 7
        and c.sampling["stop"] == ["###"]
    )
    # the complete line without the text: the count only, and a raw reason that says nothing
    assert c.output_text is None and c.output_tokens == 5
    assert c.finish_reason is None and c.finish_reason_raw == "streaming_complete"


def test_vllm_request_ids_join_across_the_internal_suffix(tmp_path: Any) -> None:
    # Since vLLM PR #27987 (v0.11.1) the engine's request ID is the frontend's plus "-<8 hex>";
    # a RequestOutput printed from the engine side carries it.
    lines = [
        _api(
            "INFO",
            "03:00",
            f"Received request cmpl-5c1e-0: params: {_sp(max_tokens=2)}, lora_request: None.",
        ),
        _api(
            "INFO",
            "03:01",
            f"Received request cmpl-5c1e-1: params: {_sp(max_tokens=3)}, lora_request: None.",
        ),
        "RequestOutput(request_id=cmpl-5c1e-0-1a2b3c4d, prompt='Hi', prompt_token_ids=[1, 2], "
        "prompt_logprobs=None, outputs=[CompletionOutput(index=0, text=' there', token_ids=[3, 4], "
        "cumulative_logprob=None, logprobs=None, finish_reason=length, stop_reason=None)], "
        "finished=True, metrics=None, lora_request=None, num_cached_tokens=0)",
    ]
    reqs, errs, _ = _read(_write(tmp_path / "ids.log", lines, (2026, 12, 1)))
    assert not errs and set(reqs) == {"cmpl-5c1e-0", "cmpl-5c1e-1"}
    assert reqs["cmpl-5c1e-0"].output_ids == [3, 4] and reqs["cmpl-5c1e-0"].prompt_ids == [1, 2]
    assert reqs["cmpl-5c1e-1"].output_ids == []


# --- 2. OpenAI Batch API files --------------------------------------------------------------------
# vllm/entrypoints/openai/protocol.py BatchRequestInput / BatchRequestOutput / BatchResponseData and
# vllm/entrypoints/openai/run_batch.py make_error_request_output; OpenAI's Batch API output format.


def _chat_body(cid: str, text: str, finish_reason: str, usage: tuple[int, int]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{cid}",
        "object": "chat.completion",
        "created": 1767225600,
        "model": "qwen3-8b",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }


def _batch_files(
    d: Any, out_name: str = "batch_output.jsonl", in_name: str = "batch_input.jsonl"
) -> tuple[str, str]:
    d.mkdir(exist_ok=True)
    inputs = [
        {
            "custom_id": f"request-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "qwen3-8b",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_completion_tokens": 64,
                "temperature": 0.2,
                "stop": "###",
            },
        }
        for i in range(1, 6)
    ]
    outputs = [
        {
            "id": "vllm-1f0e",
            "custom_id": "request-1",
            "response": {
                "status_code": 200,
                "request_id": "vllm-batch-aa",
                "body": _chat_body("1", "four", "stop", (12, 2)),
            },
            "error": None,
        },
        {
            "id": "vllm-2e1d",
            "custom_id": "request-2",
            "response": {
                "status_code": 200,
                "request_id": "vllm-batch-bb",
                "body": _chat_body("2", "a long", "length", (12, 64)),
            },
            "error": None,
        },
        # vLLM's make_error_request_output: status 400, no body, the error as a string
        {
            "id": "vllm-3c2b",
            "custom_id": "request-3",
            "response": {"status_code": 400, "request_id": "vllm-batch-cc"},
            "error": "This model's maximum context length is 8192 tokens.",
        },
        # OpenAI's: no response, an error object
        {
            "id": "batch_req_4",
            "custom_id": "request-4",
            "response": None,
            "error": {
                "code": "batch_expired",
                "message": (
                    "This request could not be executed before the completion window expired."
                ),
            },
        },
    ]  # request-5 has no output line
    out = d / out_name
    out.write_text("".join(json.dumps(o) + "\n" for o in outputs))
    inp = d / in_name
    inp.write_text("".join(json.dumps(o) + "\n" for o in inputs))
    return str(out), str(inp)


def test_batch_output_joined_with_its_input_file(tmp_path: Any) -> None:
    out, inp = _batch_files(tmp_path / "job")
    assert detect_format(out) == detect_format(inp) == "openai-batch"
    reqs, errs, r = _read(out)
    assert not errs and set(reqs) == {"request-1", "request-2", "request-3", "request-4"}
    a = reqs["request-1"]  # request_id is the custom_id
    assert a.engine == "vllm" and a.model == "qwen3-8b" and a.replica == "batch_output"
    assert a.messages == [{"role": "user", "content": "question 1"}]
    assert a.sampling == {"temperature": 0.2, "stop": ["###"], "max_tokens": 64}
    assert a.output_text == "four" and a.finish_reason == "stop" and a.t_arrival == 1767225600.0
    assert (a.prompt_tokens, a.output_tokens, a.cached_prompt_tokens) == (12, 2, 4)
    assert reqs["request-2"].finish_reason == "length"
    e3 = reqs["request-3"]
    assert (
        e3.finish_reason == "error"
        and e3.error == "HTTP 400: This model's maximum context length is 8192 tokens."
    )
    assert e3.messages == [{"role": "user", "content": "question 3"}]
    e4 = reqs["request-4"]
    assert (
        e4.finish_reason == "error"
        and e4.error is not None
        and e4.error.startswith("batch_expired: This request")
    )
    assert r.stats.notes["joined with batch input batch_input.jsonl"] == 4


def test_batch_input_yields_only_unanswered_lines_and_ingest_counts_once(
    store: Any, tmp_path: Any
) -> None:
    out, inp = _batch_files(tmp_path / "job")
    reqs, errs, r = _read(inp)
    assert not errs and list(reqs) == ["request-5"]  # the others are read from the output file
    assert reqs["request-5"].replica == "batch_output" and reqs["request-5"].output_text is None
    assert reqs["request-5"].finish_reason is None and reqs["request-5"].messages is not None
    assert (
        r.stats.notes["batch input lines answered in batch_output.jsonl: read from that file"] == 4
    )
    # a whole directory (both files): each request once
    rep = ingest_paths(store, [str(tmp_path / "job")], rejects_path=str(tmp_path / "rejects.jsonl"))
    assert rep.rows["request"] == 5 and rep.rejected == 0
    _, rows = store.query(
        "SELECT request_id, count() FROM requests GROUP BY request_id ORDER BY request_id"
    )
    assert [(str(a), int(b)) for a, b in rows] == [(f"request-{i}", 1) for i in range(1, 6)]


def test_batch_files_alone_and_pairing_by_shared_custom_ids(tmp_path: Any) -> None:
    # an input file alone: every line is a request without an answer
    d1 = tmp_path / "only-input"
    d1.mkdir()
    _, inp = _batch_files(tmp_path / "tmp1")
    os.rename(inp, d1 / "requests.jsonl")
    reqs, _, _ = _read(str(d1 / "requests.jsonl"))
    assert set(reqs) == {f"request-{i}" for i in range(1, 6)}
    # an output file alone: the requests, messages unknown
    d2 = tmp_path / "only-output"
    d2.mkdir()
    out, _ = _batch_files(tmp_path / "tmp2")
    os.rename(out, d2 / "results.jsonl")
    reqs, _, r = _read(str(d2 / "results.jsonl"))
    assert (
        len(reqs) == 4
        and reqs["request-1"].messages is None
        and reqs["request-1"].output_text == "four"
    )
    assert r.stats.notes["no batch input file in the directory: messages and sampling unknown"] == 1
    # names that do not pair (OpenAI's download names): the input sharing the custom_ids wins over
    # a decoy
    d3 = tmp_path / "names"
    out3, inp3 = _batch_files(d3, out_name="batch_6912ab_output.jsonl", in_name="my-upload.jsonl")
    decoy = d3 / "another-upload.jsonl"
    decoy.write_text(
        json.dumps(
            {
                "custom_id": "other-1",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": []},
            }
        )
        + "\n"
    )
    assert pair_input(out3) == inp3
    reqs, _, _ = _read(out3)
    assert reqs["request-1"].messages == [{"role": "user", "content": "question 1"}]
    assert _read(str(decoy))[0].keys() == {"other-1"}  # not paired with the output: all its lines


# --- 3. log-shipper framing -----------------------------------------------------------------------
# CRI logging format (kubelet / containerd, /var/log/pods): "<RFC3339Nano> <stream> <P|F> <msg>",
# containerd splits lines at 16 KiB (max_container_log_line_size); Docker json-file splits at 16 KiB
# ({"log": …} without a trailing newline); kubectl logs --timestamps prefixes each part with its
# time.

STAMP = "2026-02-27T05:35:45.999662386Z"


def _long_received(rid: str, prompt_len: int, **sp: Any) -> str:
    return (
        f"INFO 02-27 05:35:45 [logger.py:39] Received request {rid}: prompt: {'x' * prompt_len!r}, "
        f"params: {_sp(**sp)}, prompt_token_ids: None, prompt_embeds shape: None, "
        "lora_request: None."
    )


def _split_at(line: str, at: int) -> tuple[str, str]:
    b = line.encode()
    return b[:at].decode(), b[at:].decode()


def test_cri_partial_lines_rejoined_and_prefixes_stripped(tmp_path: Any) -> None:
    long_line = _long_received("cmpl-long-0", 20000)
    p1, p2 = _split_at(long_line, 16384)
    lines = [
        f"{STAMP} stdout P {p1}",
        "2026-02-27T05:35:46.000000001Z stderr F INFO 02-27 05:35:46 [metrics.py:1] "
        "Avg prompt throughput: 1.0",
        f"2026-02-27T05:35:46.000000002Z stdout F {p2}",
        f"2026-02-27T05:35:47.5Z stdout F {_long_received('cmpl-short-0', 10)}",
    ]
    path = _write(tmp_path / "vllm-cri.log", lines)
    assert detect_format(path) == "vllm"
    reqs, errs, r = _read(path)
    assert not errs and set(reqs) == {"cmpl-long-0", "cmpl-short-0"}
    assert (
        reqs["cmpl-long-0"].prompt_text == "x" * 20000 and reqs["cmpl-long-0"].sampling is not None
    )
    assert reqs["cmpl-long-0"].t_arrival == _utc(
        2026, 2, 27, 5, 35, 45
    )  # the year from the CRI prefix
    assert r.stats.notes["CRI partial (P) lines rejoined with their final (F) line"] == 1


def test_docker_json_file_partials_rejoined(tmp_path: Any) -> None:
    long_line = _long_received("cmpl-d-0", 17000)
    p1, p2 = _split_at(long_line, 16384)
    lines = [
        json.dumps({"log": p1, "stream": "stdout", "time": STAMP}),
        json.dumps({"log": p2 + "\n", "stream": "stdout", "time": STAMP}),
    ]
    path = _write(tmp_path / "docker.log", lines)
    reqs, errs, _ = _read(path)
    assert not errs and reqs["cmpl-d-0"].prompt_text == "x" * 17000


def test_kubectl_timestamps_inside_a_split_line_cut_at_the_split_else_rejected(
    tmp_path: Any,
) -> None:
    # kubectl logs --timestamps (older kubelets) writes a split line's parts one after the other,
    # each with its own timestamp; here the split falls right after "top_p=".
    probe = _long_received("cmpl-k-0", 0)
    head = probe[: probe.index("top_p=") + len("top_p=")]
    at_split = _long_received("cmpl-k-0", 16384 - len(head.encode()))
    p1, p2 = _split_at(at_split, 16384)
    assert p1.endswith("top_p=") and p2.startswith("0.8,")
    # the same insertion somewhere that is not a runtime split: never parsed into a garbage value
    off_split = _long_received("cmpl-k-1", 16000 - len(head.encode()))
    q1, q2 = _split_at(off_split, 16000)
    lines = [f"{STAMP} {p1}{STAMP} {p2}", f"{STAMP} {q1}{STAMP} {q2}"]
    reqs, errs, r = _read(_write(tmp_path / "kubectl.log", lines))
    assert reqs["cmpl-k-0"].sampling is not None and reqs["cmpl-k-0"].sampling["top_p"] == 0.8
    assert list(errs) == [2] and errs[2].field == "sampling.top_p"
    assert "log shipper's timestamp" in errs[2].reason and STAMP in errs[2].reason
    assert (
        r.stats.notes[
            "a long line split by the container runtime: the next part's timestamp cut out"
        ]
        == 1
    )
    assert r.stats.notes[NOTE_MIDLINE] == 1


def test_sampling_values_parse_to_their_types_or_the_line_is_rejected() -> None:
    assert check_sampling(
        {"temperature": "0.5", "top_k": 40.0, "stop": "###", "stop_ids": [2], "seed": None}
    ) == {"temperature": 0.5, "top_k": 40, "stop": ["###"], "stop_ids": [2]}
    for bad, field in (
        ({"top_p": "2026-02-27T05:35:45.999662386Z 0.8"}, "sampling.top_p"),
        ({"temperature": True}, "sampling.temperature"),
        ({"max_tokens": 1.5}, "sampling.max_tokens"),
        ({"stop": [1]}, "sampling.stop"),
        ({"stop_ids": [1, "2"]}, "sampling.stop_ids"),
        ({"n": "two"}, "sampling.n"),
    ):
        with pytest.raises(LineError) as e:
            check_sampling(bad)
        assert e.value.field == field


# --- 4. finish reasons: one table -----------------------------------------------------------------
# vLLM: stop/length/abort (+ "streaming_complete" in the output log), OpenAI: tool_calls /
# function_call / content_filter, TGI (text-generation-inference FinishReason): eos_token /
# stop_sequence / length, SGLang (python/sglang/srt/managers/schedule_batch.py):
# FINISH_MATCHED_TOKEN / FINISH_MATCHED_STR / FINISH_LENGTH / FINISH_ABORT and their to_json()
# {'type': …}.


def test_finish_reason_table() -> None:
    cases = {
        "stop": ("stop", None),
        "length": ("length", None),
        "abort": ("abort", None),
        "error": ("error", None),
        "eos": ("stop", "eos"),
        "eos_token": ("stop", "eos_token"),
        "stop_sequence": ("stop", "stop_sequence"),
        "tool_calls": ("stop", "tool_calls"),
        "function_call": ("stop", "function_call"),
        "content_filter": ("abort", "content_filter"),
        "streaming_complete": (None, "streaming_complete"),
        "FINISH_MATCHED_TOKEN: 128009": ("stop", "FINISH_MATCHED_TOKEN: 128009"),
        "FINISH_MATCHED_STR: '</s>'": ("stop", "FINISH_MATCHED_STR: '</s>'"),
        "FINISH_LENGTH: 128": ("length", "FINISH_LENGTH: 128"),
        "FINISH_ABORT": ("abort", "FINISH_ABORT"),
        "cancelled": ("abort", "cancelled"),
        "timeout": ("abort", "timeout"),
        "preempted": ("abort", "preempted"),
        "STOP": ("stop", "STOP"),
        "FinishReason.LENGTH": ("length", "FinishReason.LENGTH"),
        # unknown: kept raw, not guessed (the old substring rule made this "stop")
        "nonstop_mode": (None, "nonstop_mode"),
        "repetition_detected": (None, "repetition_detected"),
    }
    for raw, want in cases.items():
        assert finish(raw) == want, raw
    assert finish({"type": "stop", "matched": 128009}) == ("stop", None)
    assert finish({"type": "length", "length": 128}) == ("length", None)
    assert finish({"type": "abort", "message": "Client disconnected"}) == ("abort", None)
    assert finish(None) == (None, None)
    assert set(FINISH_REASONS.values()) <= {"stop", "length", "abort", "error", None}


def test_partial_request_outputs_are_not_finished_requests(tmp_path: Any) -> None:
    # vllm/outputs.py RequestOutput.__repr__; finished=False while a request streams
    def ro(rid: str, text: str, ids: list[int], finished: bool, reason: str = "None") -> str:
        return (
            f"RequestOutput(request_id={rid}, prompt='Hi', prompt_token_ids=[1, 2], "
            f"prompt_logprobs=None, outputs=[CompletionOutput(index=0, text={text!r}, "
            f"token_ids={ids}, cumulative_logprob=None, logprobs=None, finish_reason={reason}, "
            f"stop_reason=None)], finished={finished}, metrics=None, "
            "lora_request=None, num_cached_tokens=0)"
        )

    lines = [
        ro("cum", " th", [3], False),
        ro("cum", " there", [3, 4], True, "stop"),  # cumulative: the last has all
        ro("dlt", " th", [3], False),
        ro("dlt", "ere", [4], True, "eos"),  # delta: joined
        ro("cut", " th", [3], False),  # never finished in the log
        ro("odd", "x", [5], True, "repetition_detected"),
    ]
    reqs, errs, r = _read(_write(tmp_path / "ro.log", lines, (2026, 12, 1)))
    assert not errs and set(reqs) == {"cum", "dlt", "odd"}
    assert reqs["cum"].output_ids == [3, 4] and reqs["cum"].output_text == " there"
    assert reqs["dlt"].output_ids == [3, 4] and reqs["dlt"].output_text == " there"
    assert (reqs["dlt"].finish_reason, reqs["dlt"].finish_reason_raw) == ("stop", "eos")
    assert (reqs["odd"].finish_reason, reqs["odd"].finish_reason_raw) == (
        None,
        "repetition_detected",
    )
    notes = r.stats.notes
    assert (
        notes[
            "RequestOutput(finished=False) with no finished one: not a finished request, left out"
        ]
        == 1
    )
    assert notes["partial RequestOutput(finished=False) lines: superseded by the finished one"] == 1


def test_tgi_finish_reasons_through_openai_jsonl(tmp_path: Any) -> None:
    # TGI's OpenAI-compatible /v1/chat/completions answers finish_reason "eos_token" /
    # "stop_sequence"
    rows = [
        {
            "t": 1767225600,
            "request": {"model": "tgi", "messages": [{"role": "user", "content": "hi"}]},
            "response": {
                "id": f"tgi-{i}",
                "object": "chat.completion",
                "created": 1767225600,
                "model": "tgi",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": fr,
                    }
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
            },
        }
        for i, fr in enumerate(["eos_token", "stop_sequence", "length", "something_new"])
    ]
    p = tmp_path / "tgi.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in rows))
    reqs, errs, _ = _read(str(p))
    got = {
        k: (v.finish_reason, v.finish_reason_raw, v.prompt_tokens, v.output_tokens)
        for k, v in reqs.items()
    }
    assert got == {
        "tgi-0": ("stop", "eos_token", 7, 1),
        "tgi-1": ("stop", "stop_sequence", 7, 1),
        "tgi-2": ("length", None, 7, 1),
        "tgi-3": (None, "something_new", 7, 1),
    }


# --- 5. a year for timestamps without one ---------------------------------------------------------


def test_yearless_timestamps_take_the_year_of_dated_lines(tmp_path: Any) -> None:
    # vLLM's "INFO 12-31 …" beside another logger's "2025-12-31 23:59:59,120" (Python logging's
    # default asctime) and across new year; the file's mtime (2027) would say otherwise
    lines = [
        "2025-12-31 23:59:50,120 - uvicorn.error - INFO - Application startup complete.",
        "INFO 12-31 23:59:58 [logger.py:39] Received request cmpl-a-0: prompt: 'a', "
        f"params: {_sp()}, "
        "prompt_token_ids: [1], lora_request: None.",
        "INFO 01-01 00:00:02 [logger.py:39] Received request cmpl-b-0: prompt: 'b', "
        f"params: {_sp()}, "
        "prompt_token_ids: [2], lora_request: None.",
        '2026-01-01 00:00:03,001 - uvicorn.access - INFO - 10.0.0.1 - "POST /v1/completions" 200',
    ]
    reqs, errs, _ = _read(_write(tmp_path / "newyear.log", lines, (2027, 3, 1)))
    assert not errs
    assert reqs["cmpl-a-0"].t_arrival == _utc(2025, 12, 31, 23, 59, 58)
    assert reqs["cmpl-b-0"].t_arrival == _utc(2026, 1, 1, 0, 0, 2)
    # no dated line: the mtime's year, as before
    undated = _write(tmp_path / "undated.log", lines[1:2], (2027, 3, 1))
    assert _read(undated)[0]["cmpl-a-0"].t_arrival == _utc(2026, 12, 31, 23, 59, 58)


# --- 6. SGLang meta_info counts and abort message -------------------------------------------------
# python/sglang/srt/managers/tokenizer_manager.py: log_requests prints "Finish: obj=…, out={…}" with
# meta_info {'id', 'finish_reason', 'prompt_tokens', 'completion_tokens', 'cached_tokens',
# 'e2e_latency'};
# FINISH_ABORT.to_json() is {'type': 'abort', 'message': …, 'status_code': …, 'err_type': …}.


def test_sglang_meta_info_counts_and_abort_message(tmp_path: Any) -> None:
    obj = (
        "GenerateReqInput(text='Hi', input_ids=None, sampling_params={'temperature': 0.6, "
        "'max_new_tokens': 32, "
        "'top_p': 0.95}, rid='{rid}', return_logprob=False, stream=True)"
    )
    lines = [
        "[2026-01-05 09:00:00] server_args=ServerArgs(model_path='/models/Llama-3.1-8B-Instruct', "
        "tokenizer_path='/models/Llama-3.1-8B-Instruct', served_model_name='llama-8b', "
        "random_seed=1)",
        f"[2026-01-05 09:00:01] Receive: obj={obj.replace('{rid}', 'r-ok')}",
        f"[2026-01-05 09:00:02] Finish: obj={obj.replace('{rid}', 'r-ok')}, "
        "out={'text': ' Hello', 'output_ids': "
        "[22691], 'meta_info': {'id': 'r-ok', 'finish_reason': {'type': 'stop', "
        "'matched': 128009}, "
        "'prompt_tokens': 12, 'weight_version': 'default', 'completion_tokens': 1, "
        "'cached_tokens': 8, "
        "'e2e_latency': 0.75}}",
        f"[2026-01-05 09:00:03] Finish: obj={obj.replace('{rid}', 'r-ab')}, "
        "out={'text': '', 'output_ids': [], "
        "'meta_info': {'id': 'r-ab', 'finish_reason': {'type': 'abort', "
        "'message': 'The input (9000 tokens) is "
        "longer than the model context length (8192 tokens).', 'status_code': 400, "
        "'err_type': 'BadRequest'}, "
        "'prompt_tokens': 9000, 'completion_tokens': 0, 'cached_tokens': 0, 'e2e_latency': 0.01}}",
    ]
    reqs, errs, _ = _read(_write(tmp_path / "sglang.log", lines))
    assert not errs
    ok = reqs["r-ok"]
    assert (ok.prompt_tokens, ok.output_tokens, ok.cached_prompt_tokens, ok.e2e_s) == (
        12,
        1,
        8,
        0.75,
    )
    assert ok.finish_reason == "stop" and ok.finish_reason_raw is None and ok.model == "llama-8b"
    assert ok.sampling == {"temperature": 0.6, "max_tokens": 32, "top_p": 0.95}
    ab = reqs["r-ab"]
    assert ab.finish_reason == "abort" and ab.prompt_tokens == 9000 and ab.output_tokens == 0
    assert ab.abort_message is not None and ab.abort_message.startswith("The input (9000 tokens)")


# --- 7. the model from startup lines --------------------------------------------------------------


def test_model_from_startup_lines_tells_files_and_restarts_apart(tmp_path: Any) -> None:
    # vllm/entrypoints/utils.py log_non_default_args, vllm/v1/engine/core.py "Initializing a V1 LLM
    # engine (v%s) with config: %s" (VllmConfig.__str__: model=%r, …, served_model_name=%s)
    boot = [
        "(APIServer pid=1) INFO 11-20 14:00:01 [api_server.py:1839] vLLM API server version 0.11.2",
        "(APIServer pid=1) INFO 11-20 14:00:01 [utils.py:253] non-default args: "
        "{'model_tag': 'Qwen/Qwen3-8B', "
        "'model': 'Qwen/Qwen3-8B', 'served_model_name': ['qwen3-8b'], 'max_model_len': 8192}",
        "(EngineCore_DP0 pid=291) INFO 11-20 14:00:05 [core.py:77] "
        "Initializing a V1 LLM engine (v0.11.2) with "
        "config: model='Qwen/Qwen3-8B', speculative_config=None, tokenizer='Qwen/Qwen3-8B', "
        "skip_tokenizer_init=False, tokenizer_mode=auto, dtype=torch.bfloat16, max_seq_len=8192, "
        "seed=0, "
        "served_model_name=qwen3-8b, enable_prefix_caching=True",
    ]
    a_lines = [
        *boot,
        _api("INFO", "02:11", f"Received request chatcmpl-1: params: {_sp()}, lora_request: None."),
    ]
    b_lines = [
        "(EngineCore_DP0 pid=77) INFO 11-20 15:00:05 [core.py:77] "
        "Initializing a V1 LLM engine (v0.12.0) with "
        "config: model='/models/Llama-3.1-8B-Instruct', speculative_config=None, "
        "tokenizer='/models/Llama-3.1-8B-Instruct', "
        "served_model_name=/models/Llama-3.1-8B-Instruct, seed=0",
        _api("INFO", "05:00", f"Received request chatcmpl-2: params: {_sp()}, lora_request: None."),
        # a restart serving another model, in the same file
        "INFO 11-20 16:00:00 [api_server.py:1] vLLM server version 0.12.0, "
        "serving model mistral-7b",
        _api("INFO", "06:00", f"Received request chatcmpl-3: params: {_sp()}, lora_request: None."),
    ]
    a, _, _ = _read(_write(tmp_path / "a.log", a_lines, (2026, 12, 1)))
    b, _, _ = _read(_write(tmp_path / "b.log", b_lines, (2026, 12, 1)))
    assert (a["chatcmpl-1"].model, a["chatcmpl-1"].engine_version) == ("qwen3-8b", "0.11.2")
    assert (b["chatcmpl-2"].model, b["chatcmpl-2"].engine_version) == (
        "/models/Llama-3.1-8B-Instruct",
        "0.12.0",
    )
    assert b["chatcmpl-3"].model == "mistral-7b"


def test_batch_error_shapes_and_convert_report(tmp_path: Any) -> None:
    out, _ = _batch_files(tmp_path / "job")
    more = [  # vLLM's run_batch with an ErrorResponse (status = its code); OpenAI's error body
        {
            "id": "vllm-9",
            "custom_id": "request-6",
            "response": {"status_code": 400, "request_id": "vllm-batch-dd"},
            "error": {
                "object": "error",
                "message": "max_tokens must be at least 1",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
        },
        {
            "id": "batch_req_7",
            "custom_id": "request-7",
            "response": {
                "status_code": 404,
                "request_id": "req_7",
                "body": {
                    "error": {
                        "message": "The model `gpt-x` does not exist",
                        "type": "invalid_request_error",
                        "code": "model_not_found",
                    }
                },
            },
            "error": None,
        },
        {
            "id": "batch_req_8",
            "custom_id": "request-8",
            "response": None,
            "error": None,
        },  # neither: rejected
    ]
    with open(out, "a") as fh:
        fh.write("".join(json.dumps(o) + "\n" for o in more))
    reqs, errs, _ = _read(out)
    assert reqs["request-6"].error == "HTTP 400: BadRequestError: max_tokens must be at least 1"
    assert reqs["request-7"].error == "HTTP 404: model_not_found: The model `gpt-x` does not exist"
    assert (
        reqs["request-7"].finish_reason == "error"
        and list(errs) == [7]
        and errs[7].field == "response"
    )
    rep = convert_to_contract(out, str(tmp_path / "c.jsonl"))
    assert rep.format == "openai-batch" and rep.requests == 6 and rep.rejected == 1
