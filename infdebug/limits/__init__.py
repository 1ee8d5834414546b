"""Limits and request validation for every HTTP surface infdebug serves (the reference
engine's OpenAI-compatible server, a sidecar proxy, an OTLP receiver): the body size cap,
strict JSON decoding, and the OpenAI request fields in the ranges vLLM accepts.

Nothing here knows an engine or a web framework: functions take bytes or decoded JSON and
return plain values, or raise :class:`RequestError`, which carries the HTTP status and the
OpenAI-style error body (``{"error": {"message", "type", "param", "code"}}``).

JSON is decoded strictly: UTF-8 only, no ``NaN``/``Infinity`` literals (nor numbers that
overflow to them), integers of at most 20 digits, at most ``max_depth`` nested containers,
and no lone UTF-16 surrogates (``"\\ud800"``) in any string or key. The OpenAI fields
(:func:`generation`, :func:`chat_messages`, :func:`completion_prompt`, :func:`tools`)
follow vLLM's ``SamplingParams`` checks: temperature finite and in [0, 2] (OpenAI's range),
top_p in (0, 1], top_k -1, 0 or >= 1, penalties in range, max_tokens >= 1, seed an int64,
logprobs in [0, max_logprobs], stop a string or a bounded list of non-empty strings.
Unknown fields are accepted and ignored, as OpenAI-compatible servers do.

``base``: :class:`Limits`, :class:`RequestError`; ``body``: the size cap and strict JSON;
``openai``: the request fields. The HTTP side (deadlines in uvicorn's protocol, the capped
body reader) is :mod:`infdebug.httpguard`.
"""

from infdebug.limits.base import (
    ENV,
    ENV_BODY_TIMEOUT,
    ENV_HEADER_TIMEOUT,
    ENV_MAX_BODY_MB,
    INT64,
    MAX_INT_DIGITS,
    Limits,
    MiB,
    RequestError,
)
from infdebug.limits.body import content_length, decode_json, json_object, too_large
from infdebug.limits.openai import (
    Generation,
    Sampling,
    boolean,
    chat_messages,
    completion_prompt,
    generation,
    integer,
    number,
    obj,
    stop_strings,
    string,
    tools,
)

__all__ = [
    "ENV",
    "ENV_BODY_TIMEOUT",
    "ENV_HEADER_TIMEOUT",
    "ENV_MAX_BODY_MB",
    "INT64",
    "MAX_INT_DIGITS",
    "Generation",
    "Limits",
    "MiB",
    "RequestError",
    "Sampling",
    "boolean",
    "chat_messages",
    "completion_prompt",
    "content_length",
    "decode_json",
    "generation",
    "integer",
    "json_object",
    "number",
    "obj",
    "stop_strings",
    "string",
    "too_large",
    "tools",
]
