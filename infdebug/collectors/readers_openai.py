"""OpenAI-style request/response JSONL into contract requests.

One line per request: ``{"request": {…chat or completion request…}, "response": {…}}``,
optionally with a time (``t`` / ``t_arrival`` / ``timestamp``: unix seconds or ISO 8601),
``replica`` and ``request_id``. Token IDs come from vLLM's ``return_token_ids``
(``choices[0].token_ids``; ``prompt_token_ids`` at the top level of the response or on the
choice) or from ``return_tokens_as_token_ids`` logprobs (``"token_id:128009"``); plain
logprobs give output logprobs only (IDs unknown: ``[]``). Messages are kept as received.
``usage`` gives the engine's own counts (``prompt_tokens``, ``completion_tokens`` → prompt_tokens /
output_tokens; ``prompt_tokens_details.cached_tokens``). Sampling values are parsed to their
types and finish reasons mapped by ``readers_fields`` (a line with a bad value is rejected).
``record_fields`` is shared with the Batch API reader (``readers_batch``), whose lines carry
the same request and response bodies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from infdebug.collectors.readers_base import Context, ReaderSpec, as_ids, build_request, json_lines
from infdebug.collectors.readers_fields import check_sampling, finish
from infdebug.schema import LineError, Request

_TOKEN_ID_RE = re.compile(r"token_id:(\d+)")
_SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "stop",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "logprobs",
    "top_logprobs",
    "include_stop_str_in_output",
    "spaces_between_special_tokens",
)


def _time(v: Any) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
        return float(v) / (1e9 if v > 1e17 else 1e3 if v > 1e11 else 1.0)
    if isinstance(v, str):
        try:
            d = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
        if d.tzinfo is None:
            d = d.replace(tzinfo=UTC)
        return d.timestamp()
    return None


def _sampling(req: dict[str, Any]) -> dict[str, Any] | None:
    s: dict[str, Any] = {k: req[k] for k in _SAMPLING_KEYS if req.get(k) is not None}
    mt = req.get("max_completion_tokens", req.get("max_tokens"))
    if mt is not None:
        s["max_tokens"] = mt
    if req.get("stop_token_ids") is not None:
        s["stop_ids"] = req["stop_token_ids"]
    return check_sampling(s)


def _logprobs(choice: dict[str, Any]) -> tuple[list[float] | None, list[int] | None]:
    """Output logprobs, and token IDs where the tokens are ``token_id:N``."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None, None
    tokens: list[Any]
    values: list[Any]
    if isinstance(lp.get("content"), list):  # chat
        tokens = [c.get("token") for c in lp["content"] if isinstance(c, dict)]
        values = [c.get("logprob") for c in lp["content"] if isinstance(c, dict)]
    elif isinstance(lp.get("tokens"), list):  # completions
        tokens, values = lp["tokens"], lp.get("token_logprobs") or []
    else:
        return None, None
    logprobs = (
        [float(v) for v in values]
        if all(isinstance(v, int | float) for v in values) and values
        else None
    )
    ids: list[int] | None = None
    matches = [_TOKEN_ID_RE.fullmatch(t) if isinstance(t, str) else None for t in tokens]
    if tokens and all(matches):
        ids = [int(m.group(1)) for m in matches if m]
    return logprobs, ids


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 else None


def record_fields(obj: Any) -> dict[str, Any]:
    """Request fields from ``{"request": {…}, "response": {…} | None, …}`` (LineError if not
    one)."""
    if not isinstance(obj, dict):
        raise LineError("expected a JSON object with 'request' and 'response'")
    req, resp = obj.get("request"), obj.get("response")
    if not isinstance(req, dict):
        raise LineError("'request' missing or not an object", "request")
    if resp is not None and not isinstance(resp, dict):
        raise LineError("'response' is not an object", "response")
    resp = resp or {}
    f: dict[str, Any] = {
        "request_id": obj.get("request_id") or resp.get("id") or req.get("request_id"),
        "replica": obj.get("replica") if isinstance(obj.get("replica"), str) else None,
        "model": resp.get("model") or req.get("model"),
        "sampling": _sampling(req),
    }
    for key in ("t_arrival", "t", "timestamp", "time"):
        t = _time(obj.get(key))
        if t is not None:
            f["t_arrival"] = t
            break
    else:
        f["t_arrival"] = _time(resp.get("created"))
    if isinstance(req.get("messages"), list):
        f["messages"] = req["messages"]
    prompt = req.get("prompt")
    if isinstance(prompt, str):
        f["prompt_text"] = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(x, int) for x in prompt):
        f["prompt_ids"] = prompt
    elif isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        f["prompt_text"] = prompt[0]
    choices = resp.get("choices")
    choice = (
        choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    )
    msg = choice.get("message")
    if isinstance(msg, dict):
        f["output_text"] = msg.get("content")
    elif isinstance(choice.get("text"), str):
        f["output_text"] = choice["text"]
    f["finish_reason"], f["finish_reason_raw"] = finish(choice.get("finish_reason"))
    pids = resp.get("prompt_token_ids", choice.get("prompt_token_ids"))
    if pids is not None:
        f["prompt_ids"] = as_ids(pids, "prompt_token_ids")
    f["output_logprobs"], lp_ids = _logprobs(choice)
    f["output_ids"] = (
        as_ids(choice.get("token_ids"), "token_ids")
        if choice.get("token_ids") is not None
        else lp_ids
    )
    usage = resp.get("usage")
    if isinstance(usage, dict):
        f["prompt_tokens"] = _count(usage.get("prompt_tokens"))
        f["output_tokens"] = _count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            f["cached_prompt_tokens"] = _count(details.get("cached_tokens"))
    if isinstance(resp.get("error"), dict | str):
        err = resp["error"]
        f["error"] = err.get("message", json.dumps(err)) if isinstance(err, dict) else err
        f["finish_reason"] = f.get("finish_reason") or "error"
    return f


def read_openai(
    lines: Iterable[tuple[int, str]], ctx: Context
) -> Iterator[tuple[int, Request | LineError]]:
    for n, obj in json_lines(lines, ctx):
        if isinstance(obj, LineError):
            yield n, obj
            continue
        if isinstance(obj, dict) and "request" not in obj and "response" not in obj:
            ctx.stats.ignored += 1
            continue
        try:
            f = record_fields(obj)
        except LineError as e:
            yield n, e
            continue
        yield n, build_request(ctx, n, f)


READER = ReaderSpec(
    "openai",
    'OpenAI-style {"request", "response"} JSONL',
    read=read_openai,
    json_line=lambda obj: (
        isinstance(obj.get("request"), dict) or isinstance(obj.get("response"), dict)
    ),
    order=30,
)
