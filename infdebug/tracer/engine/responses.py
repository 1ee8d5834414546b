"""The OpenAI response bodies of the reference server: a whole completion or chat completion,
its SSE chunks, and the logprobs in OpenAI's two shapes (completions and chat).

Pure functions of the engine's token events; the server (``server.py``) decides when to
send what. An engine failure in a stream is sent as a ``data: {"error": …}`` event before
``[DONE]``, as vLLM does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infdebug.tracer.engine.engine import TokenEvent

TokenText = Callable[[int], str]
ENGINE_FAILED = "the engine failed while generating this request's tokens"


def logprob_entry(
    token_text: TokenText, token_id: int, lp: float | None, top: list[tuple[int, float]] | None
) -> dict[str, Any]:
    piece = token_text(token_id)
    return {
        "token": piece,
        "logprob": lp,
        "bytes": list(piece.encode("utf-8")),
        "top_logprobs": [
            {
                "token": token_text(t),
                "logprob": v,
                "bytes": list(token_text(t).encode("utf-8")),
            }
            for t, v in (top or [])
        ],
    }


def completion_logprobs(lps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tokens": [e["token"] for e in lps],
        "token_logprobs": [e["logprob"] for e in lps],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in lps],
        "text_offset": [],
    }


def error_body(message: str, *, kind: str = "server_error", code: str | None = None) -> bytes:
    err = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": err}).encode()


@dataclass
class Meta:
    """What every body of one response carries."""

    rid: str
    created: int
    model: str
    chat: bool
    want_ids: bool
    with_logprobs: bool
    prompt_ids: list[int]
    token_text: TokenText


@dataclass
class Collected:
    """A non-streamed request's events, gathered."""

    out_ids: list[int] = field(default_factory=list)
    lps: list[dict[str, Any]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    reason: str | None = None

    def add(self, ev: TokenEvent, token_text: TokenText) -> None:
        if ev.token_id >= 0:
            self.out_ids.append(ev.token_id)
            if ev.logprob is not None:
                self.lps.append(logprob_entry(token_text, ev.token_id, ev.logprob, ev.top_logprobs))
        self.text.append(ev.text)
        self.reason = ev.finish_reason


def usage(n_prompt: int, n_out: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": n_prompt,
        "completion_tokens": n_out,
        "total_tokens": n_prompt + n_out,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def whole(m: Meta, got: Collected, cached: int) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": got.reason}
    if m.chat:
        choice["message"] = {"role": "assistant", "content": "".join(got.text)}
        choice["logprobs"] = {"content": got.lps} if m.with_logprobs else None
    else:
        choice["text"] = "".join(got.text)
        choice["logprobs"] = completion_logprobs(got.lps) if m.with_logprobs else None
    resp: dict[str, Any] = {
        "id": m.rid,
        "object": "chat.completion" if m.chat else "text_completion",
        "created": m.created,
        "model": m.model,
        "choices": [choice],
        "usage": usage(len(m.prompt_ids), len(got.out_ids), cached),
    }
    if m.want_ids:
        choice["token_ids"] = got.out_ids
        if m.chat:
            resp["prompt_token_ids"] = m.prompt_ids
        else:
            choice["prompt_token_ids"] = m.prompt_ids
    return resp


class Chunks:
    """The SSE events of one streamed request, in order."""

    def __init__(self, m: Meta) -> None:
        self.m = m
        self.obj = "chat.completion.chunk" if m.chat else "text_completion"
        self.n_out = 0

    def _data(self, d: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(d, ensure_ascii=False).encode() + b"\n\n"

    def chunk(self, choice: dict[str, Any], **extra: Any) -> bytes:
        m = self.m
        head = {"id": m.rid, "object": self.obj, "created": m.created, "model": m.model}
        return self._data({**head, "choices": [choice], **extra})

    def first(self) -> bytes | None:
        """Chat streams open with the assistant's role."""
        if not self.m.chat:
            return None
        c = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        extra = {"prompt_token_ids": self.m.prompt_ids} if self.m.want_ids else {}
        return self.chunk({**c, "finish_reason": None}, **extra)

    def event(self, ev: TokenEvent) -> bytes:
        m = self.m
        has_tok = ev.token_id >= 0
        self.n_out += has_tok
        c: dict[str, Any] = {"index": 0, "finish_reason": ev.finish_reason}
        lp = (
            logprob_entry(m.token_text, ev.token_id, ev.logprob, ev.top_logprobs)
            if ev.logprob is not None
            else None
        )
        if m.chat:
            c["delta"] = {"content": ev.text} if ev.text or ev.finish_reason is None else {}
            c["logprobs"] = {"content": [lp]} if lp else None
        else:
            c["text"] = ev.text
            c["logprobs"] = completion_logprobs([lp]) if lp else None
        if m.want_ids:
            c["token_ids"] = [ev.token_id] if has_tok else []
            if not m.chat and self.n_out == 1:
                c["prompt_token_ids"] = m.prompt_ids
        return self.chunk(c)

    def usage(self, cached: int) -> bytes:
        m = self.m
        head = {"id": m.rid, "object": self.obj, "created": m.created, "model": m.model}
        return self._data(
            {**head, "choices": [], "usage": usage(len(m.prompt_ids), self.n_out, cached)}
        )

    @staticmethod
    def error(message: str = ENGINE_FAILED) -> bytes:
        return b"data: " + error_body(message, code="engine_error") + b"\n\n"

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"
