"""The door of every infdebug server (``infdebug.limits``): sampling values out of vLLM's
ranges are refused naming the parameter; malformed JSON (NaN literals, huge numbers, deep
nesting, lone surrogates, invalid UTF-8) is a 400, never a crash; what is valid is kept."""

from __future__ import annotations

from typing import Any

import pytest

from infdebug.limits import Limits, RequestError, decode_json, generation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.5),
        ("temperature", 2.5),
        ("temperature", "hot"),
        ("temperature", True),
        ("top_p", 0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("top_k", 2.5),
        ("max_tokens", 0),
        ("max_tokens", 1.0),
        ("n", 0),
        ("seed", 2**63),
        ("seed", -(2**63) - 1),
        ("seed", "7"),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("repetition_penalty", 0),
        ("min_p", 1.5),
        ("logprobs", 21),
        ("logprobs", -1),
        ("logprobs", True),
        ("stop", ""),
        ("stop", [""]),
        ("stop", ["x"] * 33),
        ("stop", "x" * 1025),
        ("stop", [1, 2]),
        ("stop_token_ids", [-1]),
        ("stop_token_ids", [True]),
        ("ignore_eos", "yes"),
        ("stream", 1),
        ("return_token_ids", "true"),
        ("min_tokens", 99),
        ("logit_bias", {"5": 200}),
        ("user", 5),
    ],
)
def test_sampling_values_out_of_range_are_refused_naming_the_parameter(
    field: str, value: Any
) -> None:
    body = {"prompt": "x", "max_tokens": 4, field: value}
    with pytest.raises(RequestError) as e:
        generation(body, chat=False, limits=Limits())
    assert e.value.status == 400 and e.value.param == field, e.value.message
    assert e.value.payload()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"temperature": NaN}',
        b'{"temperature": Infinity}',
        b'{"temperature": -Infinity}',
        b'{"temperature": 1e999}',
        b'{"seed": 1' + b"0" * 30 + b"}",
        b'{"max_tokens": 1' + b"0" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 65 + b"1" + b"}" * 65,
        b'{"prompt": "\\ud800"}',
        b'{"\\udc00": 1}',
        b'{"prompt": "\xff\xfe"}',
        b'{"prompt": "x"',
        b"",
    ],
)
def test_malformed_json_is_a_400_not_a_crash(raw: bytes) -> None:
    with pytest.raises(RequestError) as e:
        decode_json(raw, Limits())
    assert e.value.status == 400, e.value.message


def test_strict_json_keeps_what_is_valid() -> None:
    lim = Limits()
    v = decode_json(b'\xef\xbb\xbf{"a": [1, -2.5e3, "\\u00e9\\ud83d\\ude00", {"b": null}]}', lim)
    assert v == {"a": [1, -2500.0, "é😀", {"b": None}]}
    assert decode_json(b'{"a":' * 63 + b"1" + b"}" * 63, lim)  # 63 levels: fine
    with pytest.raises(RequestError) as e:
        decode_json(b'{"messages": [{"content": "ok"}, {"content": "\\udfff"}]}', lim)
    assert e.value.param == "messages" and "messages[1].content" in e.value.message
    with pytest.raises(RequestError) as e:
        decode_json(b"x" * (lim.max_body_bytes + 1), lim)
    assert e.value.status == 413
    s = generation({"temperature": 1e-300, "top_k": -1, "stop": "ab"}, chat=True, limits=lim)
    assert s.sampling.temperature == 1e-300 and s.sampling.top_k == 0
    assert s.sampling.stop == ("ab",) and s.sampling.max_tokens is None
