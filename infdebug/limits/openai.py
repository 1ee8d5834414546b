"""The OpenAI request fields of ``/v1/completions`` and ``/v1/chat/completions``, checked
in the ranges vLLM's ``SamplingParams`` accepts (see the package docstring); unknown fields
are accepted and ignored, as OpenAI-compatible servers do."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from infdebug.limits.base import INT64, Limits, RequestError, kind_of


# -- fields --------------------------------------------------------------------------------
def _show(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, dict | list) else kind_of(v)
    return s if len(s) <= 40 else s[:40] + "…"


def number(
    body: dict[str, Any],
    name: str,
    default: float | None,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> float | None:
    """A finite number (an int is a number; a boolean is not) in [lo, hi] (lo excluded with
    ``lo_open``); absent or null: ``default``."""
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise RequestError(400, f"'{name}' must be a finite number, got {_show(v)}", name)
    low_bad = lo is not None and (v <= lo if lo_open else v < lo)
    if low_bad or (hi is not None and v > hi):
        lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_s = "" if hi is None else f"<= {hi}"
        rng = " and ".join(x for x in (lo_s, hi_s) if x)
        raise RequestError(400, f"'{name}' must be {rng}, got {v}", name)
    return float(v)


def integer(
    body: dict[str, Any],
    name: str,
    default: int | None,
    *,
    lo: int | None = None,
    hi: int | None = None,
) -> int | None:
    """An integer (not a boolean, not 1.0) in [lo, hi]; absent or null: ``default``."""
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(400, f"'{name}' must be an integer, got {_show(v)}", name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = " and ".join(
            x
            for x in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "")
            if x
        )
        raise RequestError(400, f"'{name}' must be {rng}, got {v}", name)
    return v


def boolean(body: dict[str, Any], name: str, default: bool = False) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise RequestError(400, f"'{name}' must be true or false, got {_show(v)}", name)
    return v


def string(body: dict[str, Any], name: str) -> str | None:
    v = body.get(name)
    if v is not None and not isinstance(v, str):
        raise RequestError(400, f"'{name}' must be a string, got {_show(v)}", name)
    return v


def obj(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    v = body.get(name)
    if v is not None and not isinstance(v, dict):
        raise RequestError(400, f"'{name}' must be an object, got {_show(v)}", name)
    return v


@dataclass(frozen=True)
class Sampling:
    """The sampling values of one request, checked; what an engine maps to its own type."""

    max_tokens: int | None  # None: the server's default (chat: what the context leaves)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off (-1 is accepted and means the same)
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; n: the chosen token's logprob and the top n
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    n: int = 1


@dataclass(frozen=True)
class Generation:
    """One completions or chat request's options, checked."""

    sampling: Sampling
    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    return_token_ids: bool = False
    user: str | None = None


def stop_strings(body: dict[str, Any], limits: Limits) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise RequestError(400, "'stop' must be a string or a list of strings", "stop")
    if len(items) > limits.max_stop:
        raise RequestError(
            400, f"'stop' holds {len(items)} strings; at most {limits.max_stop}", "stop"
        )
    for s in items:
        if not s:
            raise RequestError(400, "'stop' strings must not be empty", "stop")
        if len(s) > limits.max_stop_chars:
            raise RequestError(
                400,
                f"a 'stop' string has {len(s)} characters; at most {limits.max_stop_chars}",
                "stop",
            )
    return tuple(items)


def _token_ids(body: dict[str, Any], name: str, most: int) -> tuple[int, ...]:
    v = body.get(name)
    if v is None:
        return ()
    if not (
        isinstance(v, list)
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
    ):
        raise RequestError(400, f"'{name}' must be a list of token IDs (integers >= 0)", name)
    if len(v) > most:
        raise RequestError(400, f"'{name}' holds {len(v)} IDs; at most {most}", name)
    return tuple(v)


def generation(body: dict[str, Any], *, chat: bool, limits: Limits) -> Generation:
    """The options of a ``/v1/completions`` (``chat=False``) or ``/v1/chat/completions``
    request body, checked; the prompt or messages are checked by their own functions."""
    lim = limits
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = integer(body, "max_completion_tokens", None, lo=1)
        integer(body, "max_tokens", None, lo=1)
    else:
        max_tokens = integer(body, "max_tokens", None if chat else 16, lo=1)
    n = integer(body, "n", 1, lo=1)
    assert n is not None
    best_of = integer(body, "best_of", None, lo=1)
    if best_of is not None and best_of < n:
        raise RequestError(400, f"'best_of' ({best_of}) must be >= 'n' ({n})", "best_of")
    top_k = integer(body, "top_k", 0, lo=-1)
    min_tokens = integer(body, "min_tokens", 0, lo=0) or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise RequestError(
            400, f"'min_tokens' ({min_tokens}) must be <= max_tokens ({max_tokens})", "min_tokens"
        )
    if chat:
        want_lp = boolean(body, "logprobs")
        top = integer(body, "top_logprobs", None, lo=0, hi=lim.max_logprobs)
        if top is not None and not want_lp and top > 0:
            raise RequestError(
                400, "'top_logprobs' needs 'logprobs': true", "top_logprobs", code=None
            )
        logprobs = (top or 0) if want_lp else None
    else:
        logprobs = integer(body, "logprobs", None, lo=0, hi=lim.max_logprobs)
        boolean(body, "echo")
        string(body, "suffix")
    bias = obj(body, "logit_bias")
    for k, v in (bias or {}).items():
        if not k.lstrip("-").isdigit() or isinstance(v, bool) or not isinstance(v, int | float):
            raise RequestError(
                400, "'logit_bias' maps token IDs to numbers in [-100, 100]", "logit_bias"
            )
        if not -100 <= v <= 100:
            raise RequestError(
                400, f"'logit_bias' values must be in [-100, 100], got {v}", "logit_bias"
            )
    sampling = Sampling(
        max_tokens=max_tokens,
        temperature=_num(body, "temperature", 1.0, lo=0.0, hi=2.0),
        top_p=_num(body, "top_p", 1.0, lo=0.0, hi=1.0, lo_open=True),
        top_k=0 if top_k in (None, -1) else int(top_k),
        min_p=_num(body, "min_p", 0.0, lo=0.0, hi=1.0),
        seed=integer(body, "seed", None, lo=INT64[0], hi=INT64[1]),
        stop=stop_strings(body, lim),
        stop_token_ids=_token_ids(body, "stop_token_ids", lim.max_stop_token_ids),
        ignore_eos=boolean(body, "ignore_eos"),
        logprobs=logprobs,
        presence_penalty=_num(body, "presence_penalty", 0.0, lo=-2.0, hi=2.0),
        frequency_penalty=_num(body, "frequency_penalty", 0.0, lo=-2.0, hi=2.0),
        repetition_penalty=_num(body, "repetition_penalty", 1.0, lo=0.0, hi=2.0, lo_open=True),
        min_tokens=min_tokens,
        n=n,
    )
    stream = boolean(body, "stream")
    opts = obj(body, "stream_options")
    if opts is not None and not stream:
        raise RequestError(
            400, "'stream_options' can only be given with 'stream': true", "stream_options"
        )
    include_usage = False
    if opts is not None:
        include_usage = boolean(opts, "include_usage")
        boolean(opts, "continuous_usage_stats")
    obj(body, "response_format")
    tc = body.get("tool_choice")
    if tc is not None and not isinstance(tc, str | dict):
        raise RequestError(400, "'tool_choice' must be a string or an object", "tool_choice")
    return Generation(
        sampling=sampling,
        model=string(body, "model"),
        stream=stream,
        include_usage=include_usage,
        return_token_ids=boolean(body, "return_token_ids"),
        user=string(body, "user"),
    )


def _num(
    body: dict[str, Any],
    name: str,
    default: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> float:
    v = number(body, name, default, lo=lo, hi=hi, lo_open=lo_open)
    assert v is not None
    return v


def completion_prompt(body: dict[str, Any]) -> str | list[int]:
    """One prompt: a string or a non-empty list of token IDs (or a list holding one of
    those, as the OpenAI client sends)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)
    ):
        return list(prompt)
    raise RequestError(
        400, "'prompt' must be a non-empty string or a list of token IDs (one prompt)", "prompt"
    )


_PART_TEXT = ("text", "refusal")


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages: a non-empty list of objects with a string role and a content that
    is a string, null, or a list of typed parts; ``name``, ``tool_call_id`` strings and
    ``tool_calls`` objects where present. Other keys pass through to the template."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(
            400, "'messages' must be a non-empty list of {role, content} objects", "messages"
        )
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(400, f"{where} must be an object, got {kind_of(m)}", "messages")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise RequestError(400, f"{where}.role must be a non-empty string", "messages")
        content = m.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise RequestError(
                        400, f"{where}.content[{j}] must be an object with a 'type'", "messages"
                    )
                for key in _PART_TEXT:
                    if key in part and not isinstance(part[key], str):
                        raise RequestError(
                            400, f"{where}.content[{j}].{key} must be a string", "messages"
                        )
        elif content is not None and not isinstance(content, str):
            raise RequestError(
                400,
                f"{where}.content must be a string, null or a list of parts, "
                f"got {kind_of(content)}",
                "messages",
            )
        for key in ("name", "tool_call_id", "reasoning_content"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise RequestError(400, f"{where}.{key} must be a string", "messages")
        calls = m.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                raise RequestError(400, f"{where}.tool_calls must be a list of objects", "messages")
            for j, c in enumerate(calls):
                fn = c.get("function")
                if fn is not None and not (
                    isinstance(fn, dict)
                    and isinstance(fn.get("name"), str)
                    and isinstance(fn.get("arguments", ""), str | dict)
                ):
                    raise RequestError(
                        400,
                        f"{where}.tool_calls[{j}].function must be an object with a string name",
                        "messages",
                    )
    return messages


def tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tools: null or a list of objects; a ``function`` tool names its function."""
    v = body.get("tools")
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
        raise RequestError(400, "'tools' must be a list of objects", "tools")
    for i, t in enumerate(v):
        fn = t.get("function")
        if fn is not None and not (isinstance(fn, dict) and isinstance(fn.get("name"), str)):
            raise RequestError(
                400, f"tools[{i}].function must be an object with a string name", "tools"
            )
        if t.get("type") is not None and not isinstance(t["type"], str):
            raise RequestError(400, f"tools[{i}].type must be a string", "tools")
    return v
