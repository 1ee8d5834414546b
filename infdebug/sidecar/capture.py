"""What the sidecar saw of one request, as the tracer's view of a request (``TracedRequest``).

The proxy records the request body, the arrival time, and for the response either its JSON
(not streamed) or each SSE event with its arrival time (:meth:`Exchange.on_event`). The
stream's events are folded into the shape of a non-streamed response, so that one reader,
the OpenAI request/response reader's ``record_fields`` (collectors/readers_openai.py), says
what both mean: token IDs from vLLM's ``return_token_ids`` or ``token_id:N`` logprobs, usage
counts, finish reasons, sampling parameters, errors.

What the engine did not say is derived with the model directory's tokenizer and chat template
(:class:`~infdebug.text.model_text.ModelText`) and named in the record's ``derived`` field,
never passed off as the engine's:

- a chat request's ``prompt_text`` is always the model directory's rendering (the engine's own
  is never on the wire);
- ``prompt_ids``: the engine's where it returned them, else its ``/tokenize`` of the same
  messages (the proxy asks, off the request path; those are the engine's own IDs), else the
  rendering encoded here;
- ``output_ids``: the engine's, else the output text encoded here;
- ``token_times_s``: one per output token. Where the engine's IDs came chunk by chunk, each
  token has its chunk's arrival time; for derived IDs, the time the chunk holding the
  token's last character arrived; with neither, one time per chunk (and named derived).

Derivation runs on the tracer's thread, when the record is built, never on the event loop.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from infdebug.collectors.readers_openai import record_fields
from infdebug.schema import LineError
from infdebug.text.model_text import ModelText

_log = logging.getLogger(__name__)
KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}


@dataclass
class Exchange:
    """One proxied generation request (``kind``: chat or completion)."""

    kind: str
    body: dict[str, Any]
    request_id: str
    stream: bool
    model_text: ModelText | None = None
    t_arrival: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    status: int | None = None
    response: dict[str, Any] | None = None  # a non-streamed response's JSON
    error: str | None = None  # what went wrong (upstream, transport, client)
    aborted: bool = False  # the client went away
    tokenize_ids: list[int] | None = None  # the engine's /tokenize of the same prompt
    t_end: float | None = None
    # streamed: per content event, its arrival (monotonic), its text and its token IDs
    chunk_times: list[float] = field(default_factory=list)
    chunk_text: list[str] = field(default_factory=list)
    chunk_ids: list[list[int] | None] = field(default_factory=list)
    _folded: dict[str, Any] = field(default_factory=dict)
    _lp_content: list[Any] = field(default_factory=list)
    _lp_tokens: list[Any] = field(default_factory=list)
    _lp_values: list[Any] = field(default_factory=list)

    # -- what the proxy feeds ------------------------------------------------------------
    def on_event(self, data: bytes, t: float) -> None:
        """One SSE event's data (``[DONE]`` included), arrived at monotonic ``t``."""
        if data.strip() == b"[DONE]":
            self._folded["done"] = True
            return
        ev = json.loads(data)
        if not isinstance(ev, dict):
            raise ValueError("an SSE event that is not a JSON object")
        if "error" in ev:
            err = ev["error"]
            self.error = err.get("message", json.dumps(err)) if isinstance(err, dict) else str(err)
        for k in ("id", "model", "prompt_token_ids"):
            if ev.get(k) is not None:
                self._folded.setdefault(k, ev[k])
        if isinstance(ev.get("usage"), dict):  # the last one counts (include_usage: the end)
            self._folded["usage"] = ev["usage"]
        choices = ev.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        c = choices[0]
        if c.get("prompt_token_ids") is not None:
            self._folded.setdefault("prompt_token_ids", c["prompt_token_ids"])
        delta = c.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else c.get("text")
        ids = c.get("token_ids") if isinstance(c.get("token_ids"), list) else None
        lp = c.get("logprobs")
        if isinstance(lp, dict):
            if isinstance(lp.get("content"), list):
                self._lp_content.extend(lp["content"])
            elif isinstance(lp.get("tokens"), list):
                self._lp_tokens.extend(lp["tokens"])
                self._lp_values.extend(lp.get("token_logprobs") or [None] * len(lp["tokens"]))
        if (isinstance(text, str) and text) or ids:
            self.chunk_times.append(t)
            self.chunk_text.append(text if isinstance(text, str) else "")
            self.chunk_ids.append([int(x) for x in ids] if ids is not None else None)
        if c.get("finish_reason") is not None:
            self._folded["finish_reason"] = c["finish_reason"]

    @property
    def complete(self) -> bool:
        """The stream said it was done: ``[DONE]``, or a finish reason (``transformers
        serve`` ends its streams without ``[DONE]``)."""
        return bool(self._folded.get("done")) or self._folded.get("finish_reason") is not None

    def end(self, t: float | None = None) -> None:
        if self.t_end is None:
            self.t_end = t if t is not None else time.perf_counter()

    # -- the response, as one JSON object ------------------------------------------------
    def folded(self) -> dict[str, Any]:
        """The response as a non-streamed one would have been (streamed events folded)."""
        if not self.stream:
            return dict(self.response or {})
        f = self._folded
        choice: dict[str, Any] = {"finish_reason": f.get("finish_reason")}
        text = "".join(self.chunk_text)
        if self.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if all(ids is not None for ids in self.chunk_ids) and self.chunk_ids:
            choice["token_ids"] = [i for ids in self.chunk_ids for i in ids or []]
        if self._lp_content:
            choice["logprobs"] = {"content": self._lp_content}
        elif self._lp_tokens:
            choice["logprobs"] = {"tokens": self._lp_tokens, "token_logprobs": self._lp_values}
        out: dict[str, Any] = {k: f[k] for k in ("id", "model", "usage") if k in f}
        if "prompt_token_ids" in f:
            out["prompt_token_ids"] = f["prompt_token_ids"]
        out["choices"] = [choice]
        return out

    @cached_property
    def fields(self) -> dict[str, Any]:
        """The contract fields the request and response say (``record_fields``)."""
        try:
            return record_fields({"request": self.body, "response": self.folded()})
        except (LineError, TypeError, ValueError) as e:
            self.error = self.error or f"unreadable response: {e}"
            return record_fields({"request": {}, "response": {}})

    # -- derivation (the tracer's thread) ------------------------------------------------
    @cached_property
    def _derived(self) -> dict[str, Any]:
        f = self.fields
        out: dict[str, Any] = {"derived": []}
        mt = self.model_text
        prompt_text = f.get("prompt_text")
        messages = self.body.get("messages") if self.kind == "chat" else None
        if self.kind == "chat" and isinstance(messages, list) and mt is not None:
            try:
                prompt_text = mt.render(
                    messages,
                    tools=self.body.get("tools"),
                    add_generation_prompt=bool(self.body.get("add_generation_prompt", True)),
                    **(self.body.get("chat_template_kwargs") or {}),
                )
                out["derived"].append("prompt_text")
            except (ValueError, TypeError) as e:
                _log.debug("cannot render %s with the model directory's template: %s", self, e)
                prompt_text = None
        out["prompt_text"] = prompt_text
        pids = f.get("prompt_ids") or self.tokenize_ids
        if not pids and prompt_text is not None and mt is not None:
            pids = mt.encode_prompt(prompt_text)
            out["derived"].append("prompt_ids")
        out["prompt_ids"] = list(pids or [])
        text = f.get("output_text") or ""
        oids = f.get("output_ids")
        ends: list[int] | None = None
        if not oids and text and mt is not None:
            oids, ends = mt.encode_output(text)
            out["derived"].append("output_ids")
        out["output_ids"] = list(oids or [])
        out["token_times"] = self._token_times(out["output_ids"], ends, out["derived"])
        return out

    def _token_times(
        self, ids: list[int], ends: list[int] | None, derived: list[str]
    ) -> list[float]:
        times = self.chunk_times
        if not self.stream or not times:
            return []
        if all(c is not None for c in self.chunk_ids):
            per = [t for t, c in zip(times, self.chunk_ids, strict=True) for _ in c or []]
            if len(per) == len(ids):
                return per
        if ends is not None:  # each derived token: when its last character arrived
            bounds, n = [], 0
            for s in self.chunk_text:
                n += len(s)
                bounds.append(n)
            last = len(times) - 1
            return [times[min(bisect.bisect_left(bounds, e), last)] for e in ends]
        derived.append("token_times_s")
        return list(times)

    # -- TracedRequest -------------------------------------------------------------------
    @property
    def prompt_ids(self) -> Sequence[int]:
        return self._derived["prompt_ids"]  # type: ignore[no-any-return]

    @property
    def output_ids(self) -> Sequence[int]:
        return self._derived["output_ids"]  # type: ignore[no-any-return]

    @property
    def output_logprobs(self) -> Sequence[float] | None:
        lp = self.fields.get("output_logprobs")
        return lp if lp and len(lp) == len(self.output_ids) else None

    @property
    def prompt_text(self) -> str | None:
        return self._derived["prompt_text"]  # type: ignore[no-any-return]

    @property
    def output_text(self) -> str:
        return str(self.fields.get("output_text") or "")

    @property
    def messages(self) -> list[dict[str, Any]] | None:
        m = self.body.get("messages") if self.kind == "chat" else None
        return m if isinstance(m, list) else None

    @property
    def cached_tokens(self) -> int:
        return int(self.fields.get("cached_prompt_tokens") or 0)

    @property
    def finish_reason(self) -> str | None:
        if self.aborted:
            return "abort"
        if self.error is not None or (self.status is not None and self.status >= 400):
            return "error"
        return self.fields.get("finish_reason")

    def timing(self) -> dict[str, Any]:
        tt = [t - self.t0 for t in self._derived["token_times"]]
        first = self.chunk_times[0] - self.t0 if self.chunk_times else None
        return {
            "t_arrival": self.t_arrival,
            "queue_s": None,
            "prefill_s": None,
            "ttft_s": first,
            "e2e_s": None if self.t_end is None else self.t_end - self.t0,
            "token_times_s": tt,
        }

    def sampling(self) -> dict[str, Any]:
        return dict(self.fields.get("sampling") or {})

    def extra(self) -> dict[str, Any]:
        """The contract fields beyond the hooks' view: the engine's counts and raw finish
        reason, the error, and which fields were derived."""
        f = self.fields
        out: dict[str, Any] = {
            "prompt_tokens": f.get("prompt_tokens"),
            "output_tokens": f.get("output_tokens"),
            "finish_reason_raw": f.get("finish_reason_raw"),
            "derived": sorted(self._derived["derived"]) or None,
        }
        if self.finish_reason == "error":
            out["error"] = self.error or f.get("error") or f"upstream answered {self.status}"
        if self.aborted:
            out["abort_message"] = "the client disconnected"
        return out
