"""Engine values onto contract fields: the one finish-reason table, and sampling-parameter types.

Finish reasons. Engines name the end of a request in their own words; ``FINISH_REASONS`` maps
each known word onto the contract's four (``stop``, ``length``, ``abort``, ``error``). Only the
name is looked up (``FINISH_LENGTH: 128`` → ``FINISH_LENGTH``, SGLang's ``{'type': 'abort', …}``
→ ``abort``), case-insensitively, never by substring. ``finish(v)`` returns the contract name
and the raw reason: the raw one is kept whenever it is not exactly the contract name, and an
unknown one is kept as raw with no contract name (it is not dropped, and not guessed).

Sampling parameters. Engines log them as reprs (vLLM's ``SamplingParams(…)``, SGLang's
``sampling_params={…}``) or JSON (OpenAI request bodies); ``check_sampling`` gives each known
parameter its type — numbers for temperature, top_p, …; integers for top_k, max_tokens, seed,
n, …; a list of strings for ``stop``; a list of token IDs for ``stop_ids`` — or raises a
``LineError`` naming the field. A log shipper's timestamp spliced into a value (a long line
split by the container runtime and rejoined: ``top_p=2026-02-27T05:35:45.999662386Z 0.8``)
fails here, with that said, instead of being stored as a string.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, get_args

from infdebug.collectors.pyrepr import Call, Truncated
from infdebug.schema import FinishReason, LineError

CONTRACT_FINISH: frozenset[str] = frozenset(get_args(FinishReason))

# Every engine spelling we know, lower-cased, onto the contract's names. None: the word is
# known but does not say how the request ended.
FINISH_REASONS: dict[str, str | None] = {
    # the contract's own names (OpenAI, vLLM, SGLang's {'type': …}, llama.cpp)
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "error": "error",
    # a natural end: end-of-sequence token, stop string / token, a tool call
    "eos": "stop",
    "eos_token": "stop",  # TGI FinishReason::EndOfSequenceToken
    "end_of_sequence_token": "stop",
    "stop_sequence": "stop",  # TGI FinishReason::StopSequence, Anthropic
    "end_turn": "stop",  # Anthropic
    "end_id": "stop",  # TensorRT-LLM
    "stop_words": "stop",  # TensorRT-LLM
    "matched": "stop",
    "finish_matched_token": "stop",  # SGLang < 0.3: str(FINISH_MATCHED_TOKEN)
    "finish_matched_str": "stop",
    "tool_calls": "stop",  # OpenAI
    "tool_use": "stop",  # Anthropic
    "function_call": "stop",  # OpenAI (legacy)
    # the token budget ran out
    "finish_length": "length",
    "max_tokens": "length",  # Anthropic, Gemini (MAX_TOKENS)
    "model_length": "length",
    # ended by the server or the client before a natural end
    "finish_abort": "abort",
    "cancelled": "abort",
    "canceled": "abort",
    "timeout": "abort",
    "preempted": "abort",
    "content_filter": "abort",  # OpenAI: output cut by a content filter (not a natural stop)
    "safety": "abort",  # Gemini
    "recitation": "abort",  # Gemini
    # failures
    "internal_error": "error",
    "failed": "error",
    # known words that do not say how the request ended
    "streaming_complete": None,  # vLLM's "(streaming complete)" output log line
    "null": None,
    "none": None,
}

_NAME_RE = re.compile(r"[A-Za-z_][\w-]*")
_RAW_MAX = 200


def finish(v: Any) -> tuple[str | None, str | None]:
    """``(contract finish reason or None, the engine's raw reason or None)`` from what engines
    write: ``stop``, ``FINISH_LENGTH: 128``, ``{'type': 'length', 'length': 128}``, ``eos_token``.
    The raw reason is None when the engine wrote exactly the contract name."""
    if v is None or isinstance(v, Truncated):
        return None, None
    if isinstance(v, Call):
        v = v.name  # FinishReason.STOP printed as a call: rare, take the name
    if isinstance(v, dict):
        t = v.get("type")
        if not isinstance(t, str) or not t:
            return None, _clip(json.dumps({str(k): str(x) for k, x in v.items()}))
        v = t
    if not isinstance(v, str):
        return None, _clip(str(v))
    s = v.strip()
    if not s:
        return None, None
    if s in CONTRACT_FINISH:
        return s, None
    base = s.split(".", 1)[1] if s.lower().startswith("finishreason.") else s  # an enum's str()
    m = _NAME_RE.match(base)
    name = m.group(0).lower() if m else base.lower()
    return FINISH_REASONS.get(name), _clip(s)


def _clip(s: str) -> str:
    return s if len(s) <= _RAW_MAX else s[: _RAW_MAX - 1] + "…"


# --- sampling parameters -------------------------------------------------------------------

FLOAT_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "length_penalty",
        "typical_p",
        "top_a",
        "tfs",
        "epsilon_cutoff",
        "eta_cutoff",
        "dynatemp_min",
        "dynatemp_max",
    }
)
INT_PARAMS = frozenset(
    {"top_k", "max_tokens", "min_tokens", "seed", "n", "best_of", "min_new_tokens"}
)
_NUMERIC_STR_RE = re.compile(r"\s*[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)\s*")
SHIPPER_STAMP_RE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)(?: (?:stdout|stderr) [PF])? "
)


def _bad(key: str, expected: str, v: Any) -> LineError:
    shown = repr(v) if not isinstance(v, Truncated) else "a value the logger shortened"
    why = ""
    if isinstance(v, str) and SHIPPER_STAMP_RE.search(v + " "):
        why = (
            " — a log shipper's timestamp inside the value: the line was split by the container "
            "runtime (16 KiB) and rejoined with the next line's prefix"
        )
    return LineError(
        f"sampling.{key}: expected {expected}, found {shown[:80]}{why}", f"sampling.{key}"
    )


def _number(key: str, v: Any) -> float | int:
    if isinstance(v, bool):
        raise _bad(key, "a number", v)
    if isinstance(v, int | float):
        return v
    if isinstance(v, str) and _NUMERIC_STR_RE.fullmatch(v):
        f = float(v)
        return int(f) if re.fullmatch(r"\s*[-+]?\d+\s*", v) else f
    raise _bad(key, "a number", v)


def _integer(key: str, v: Any) -> int | None:
    n = _number(key, v)
    if isinstance(n, float):
        if math.isinf(n) and key in ("max_tokens", "best_of"):
            return None  # unbounded: the same as not set
        if not n.is_integer():
            raise _bad(key, "an integer", v)
        return int(n)
    return n


def _stop(key: str, v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]  # OpenAI allows one string
    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        return list(v)
    raise _bad(key, "a list of strings", v)


def _ids(key: str, v: Any) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return [v]
    if isinstance(v, list | tuple | set) and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v
    ):
        return sorted(v) if isinstance(v, set) else list(v)
    raise _bad(key, "a list of token IDs", v)


def check_sampling(s: dict[str, Any]) -> dict[str, Any] | None:
    """``s`` with each known parameter parsed to its type (Nones left out); LineError naming
    the field where a value is not of its type."""
    out: dict[str, Any] = {}
    for k, v in s.items():
        if v is None:
            continue
        if isinstance(v, Truncated):
            raise _bad(k, "a whole value", v)
        if k in FLOAT_PARAMS:
            x: Any = _number(k, v)
            if isinstance(x, float) and math.isnan(x):
                raise _bad(k, "a number", v)
        elif k in INT_PARAMS:
            x = _integer(k, v)
            if x is None:
                continue
        elif k == "stop":
            x = _stop(k, v)
        elif k in ("stop_ids", "stop_token_ids"):
            x = _ids(k, v)
        else:
            x = v
        out[k] = x
    return out or None
