"""An OpenAI-compatible HTTP server around the engine (Starlette + uvicorn).

``POST /v1/completions``, ``POST /v1/chat/completions`` (SSE streaming or not),
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus). ``return_token_ids``
returns prompt and output token IDs as vLLM does; ``logprobs`` as OpenAI does. Bad requests
get a 4xx with an OpenAI-style
error body and the server keeps serving. Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from infdebug.errors import InfdebugError
from infdebug.tracer.engine.engine import Engine, SamplingParams, Sequence, TokenEvent
from infdebug.tracer.engine.replica import Replica


class ApiError(InfdebugError):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 404:
            kind = "not_found_error"
        return JSONResponse(
            {
                "error": {
                    "message": self.message,
                    "type": kind,
                    "param": self.param,
                    "code": self.code,
                }
            },
            status_code=self.status,
        )


def _num(
    body: dict[str, Any],
    name: str,
    default: Any,
    typ: type,
    lo: float | None = None,
    hi: float | None = None,
) -> Any:
    v = body.get(name, default)
    if v is None:
        return default
    if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise ApiError(400, f"'{name}' must be an integer, got {v!r}", name)
    if typ is float and (isinstance(v, bool) or not isinstance(v, int | float)):
        raise ApiError(400, f"'{name}' must be a number, got {v!r}", name)
    if lo is not None and v < lo:
        raise ApiError(400, f"'{name}' must be >= {lo}, got {v}", name)
    if hi is not None and v > hi:
        raise ApiError(400, f"'{name}' must be <= {hi}, got {v}", name)
    return typ(v)


def sampling_from(body: dict[str, Any], *, chat: bool, replica: Replica) -> SamplingParams:
    max_tokens = (
        body.get("max_completion_tokens")
        if chat and body.get("max_completion_tokens") is not None
        else None
    )
    if max_tokens is None:
        max_tokens = _num(body, "max_tokens", 16 if not chat else None, int, lo=1)
    else:
        max_tokens = _num(body, "max_completion_tokens", None, int, lo=1)
    if max_tokens is None:  # chat default: as much as the context allows (capped)
        max_tokens = 512
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise ApiError(400, "'stop' must be a string or a list of strings", "stop")
    stop_ids = body.get("stop_token_ids") or []
    if not (isinstance(stop_ids, list) and all(isinstance(i, int) for i in stop_ids)):
        raise ApiError(400, "'stop_token_ids' must be a list of integers", "stop_token_ids")
    n = _num(body, "n", 1, int, lo=1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", "n")
    if chat:
        lp = body.get("logprobs")
        logprobs = _num(body, "top_logprobs", 0, int, lo=0, hi=20) if lp else None
    else:
        lp_n = body.get("logprobs")
        logprobs = None if lp_n is None else _num(body, "logprobs", 0, int, lo=0, hi=20)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_num(body, "temperature", 1.0, float, lo=0.0, hi=2.0),
        top_p=_num(body, "top_p", 1.0, float, lo=0.0, hi=1.0),
        top_k=_num(body, "top_k", 0, int, lo=-1) if body.get("top_k", 0) != -1 else 0,
        seed=_num(body, "seed", None, int),
        stop=tuple(stop or ()),
        stop_token_ids=tuple(stop_ids) + replica.extra_stop_ids,
        ignore_eos=bool(body.get("ignore_eos", False)),
        logprobs=logprobs,
    )


@dataclass
class _Stream:
    """Bridges engine-thread events into the request's asyncio loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[TokenEvent] = field(default_factory=asyncio.Queue)

    def __call__(self, ev: TokenEvent) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)

    async def events(self) -> AsyncIterator[TokenEvent]:
        while True:
            ev = await self.queue.get()
            yield ev
            if ev.finish_reason is not None:
                return


def _logprob_entry(
    replica: Replica, token_id: int, lp: float | None, top: list[tuple[int, float]] | None
) -> dict[str, Any]:
    piece = replica.token_text(token_id)
    return {
        "token": piece,
        "logprob": lp,
        "bytes": list(piece.encode("utf-8")),
        "top_logprobs": [
            {
                "token": replica.token_text(t),
                "logprob": v,
                "bytes": list(replica.token_text(t).encode("utf-8")),
            }
            for t, v in (top or [])
        ],
    }


class App:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.engine: Engine = replica.engine
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
        ]
        self.app = Starlette(
            routes=routes,
            exception_handlers={
                ApiError: self._api_error,
                404: self._not_found,
                405: self._not_allowed,
            },
            lifespan=self._lifespan,
        )
        self.app.state.infdebug = self
        self.extra_routes = routes

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.replica.lifecycle.mark("ready")
        yield
        self.replica.lifecycle.mark(
            "drain"
        )  # the server stopped accepting and finished in-flight requests

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return ApiError(404, f"no route {request.url.path}", code="not_found").response()

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return ApiError(405, f"{request.method} is not allowed on {request.url.path}").response()

    # -- routes --------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        running, waiting = self.engine.load
        return JSONResponse(
            {
                "status": "ok",
                "replica": self.replica.name,
                "model": self.replica.model_name,
                "injections": self.replica.injections,
                "running": running,
                "waiting": waiting,
                "tokenizer_fp": self.replica.tokenizer_fp,
                "template_fp": self.replica.template_fp,
            }
        )

    async def metrics(self, request: Request) -> Response:
        """Prometheus exposition of this replica's registry (vLLM-compatible names, prefix
        ``infdebug_``)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(
            generate_latest(self.replica.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.replica.model_name,
                        "object": "model",
                        "created": int(self.replica.started),
                        "owned_by": "infdebug",
                        "max_model_len": self.engine.cfg.max_model_len,
                    }
                ],
            }
        )

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.replica.model_name:
            raise ApiError(
                404,
                f"the model {model!r} does not exist; "
                f"this server serves {self.replica.model_name!r}",
                "model",
                "model_not_found",
            )
        return body

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = self.replica.encode_completion(prompt)
        elif (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)
        ):
            ids = list(prompt)
            bad = [i for i in ids if not 0 <= i < self.replica.vocab_size]
            if bad:
                raise ApiError(
                    400,
                    f"token IDs out of the vocabulary (size {self.replica.vocab_size}): {bad[:5]}",
                    "prompt",
                )
        else:
            raise ApiError(
                400,
                "'prompt' must be a non-empty string or a list of token IDs (one prompt)",
                "prompt",
            )
        params = sampling_from(body, chat=False, replica=self.replica)
        return await self._generate(
            body, ids, params, chat=False, prompt_text=prompt if isinstance(prompt, str) else None
        )

    async def chat(self, request: Request) -> Response:
        body = await self._body(request)
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and "role" in m for m in messages)
        ):
            raise ApiError(
                400, "'messages' must be a non-empty list of {role, content} objects", "messages"
            )
        try:
            text = self.replica.render(
                messages,
                tools=body.get("tools"),
                add_generation_prompt=body.get("add_generation_prompt", True),
            )
        except ValueError as e:
            raise ApiError(400, f"the chat template failed: {e}", "messages") from None
        ids = self.replica.encode_chat(text)
        params = sampling_from(body, chat=True, replica=self.replica)
        return await self._generate(
            body, ids, params, chat=True, prompt_text=text, messages=messages
        )

    async def _generate(
        self,
        body: dict[str, Any],
        ids: list[int],
        params: SamplingParams,
        *,
        chat: bool,
        prompt_text: str | None,
        messages: list[dict[str, Any]] | None = None,
    ) -> Response:
        stream = _Stream(asyncio.get_running_loop())
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[
            :24
        ]  # also the trace's request_id
        try:
            seq = self.replica.submit(
                ids, params, stream, prompt_text=prompt_text, messages=messages, request_id=rid
            )
        except ValueError as e:
            raise ApiError(
                400, str(e), "messages" if chat else "prompt", "context_length_exceeded"
            ) from None
        created = int(time.time())
        want_ids = bool(body.get("return_token_ids"))
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            gen = self._sse(
                seq, stream, rid, created, chat, want_ids, bool(opts.get("include_usage"))
            )
            return StreamingResponse(
                gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        out_ids: list[int] = []
        lps: list[dict[str, Any]] = []
        text = []
        reason = None
        try:
            async for ev in stream.events():
                if ev.token_id >= 0:
                    out_ids.append(ev.token_id)
                    if ev.logprob is not None:
                        lps.append(
                            _logprob_entry(self.replica, ev.token_id, ev.logprob, ev.top_logprobs)
                        )
                text.append(ev.text)
                reason = ev.finish_reason
        except asyncio.CancelledError:
            self.engine.abort(seq)
            raise
        usage = {
            "prompt_tokens": len(ids),
            "completion_tokens": len(out_ids),
            "total_tokens": len(ids) + len(out_ids),
            "prompt_tokens_details": {"cached_tokens": seq.cached_tokens},
        }
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": "".join(text)}
            choice["logprobs"] = {"content": lps} if params.logprobs is not None else None
        else:
            choice["text"] = "".join(text)
            choice["logprobs"] = (
                self._completion_logprobs(lps) if params.logprobs is not None else None
            )
        resp: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": self.replica.model_name,
            "choices": [choice],
            "usage": usage,
        }
        if want_ids:
            choice["token_ids"] = out_ids
            if chat:
                resp["prompt_token_ids"] = ids
            else:
                choice["prompt_token_ids"] = ids
        return JSONResponse(resp)

    @staticmethod
    def _completion_logprobs(lps: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "tokens": [e["token"] for e in lps],
            "token_logprobs": [e["logprob"] for e in lps],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in lps],
            "text_offset": [],
        }

    async def _sse(
        self,
        seq: Sequence,
        stream: _Stream,
        rid: str,
        created: int,
        chat: bool,
        want_ids: bool,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        model = self.replica.model_name
        n_out = 0

        def chunk(choice: dict[str, Any], **extra: Any) -> bytes:
            d = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice],
                **extra,
            }
            return b"data: " + json.dumps(d, ensure_ascii=False).encode() + b"\n\n"

        try:
            if chat:
                first: dict[str, Any] = {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                yield chunk(first, **({"prompt_token_ids": seq.prompt_ids} if want_ids else {}))
            async for ev in stream.events():
                has_tok = ev.token_id >= 0
                n_out += has_tok
                c: dict[str, Any] = {"index": 0, "finish_reason": ev.finish_reason}
                lp = (
                    _logprob_entry(self.replica, ev.token_id, ev.logprob, ev.top_logprobs)
                    if ev.logprob is not None
                    else None
                )
                if chat:
                    c["delta"] = {"content": ev.text} if ev.text or ev.finish_reason is None else {}
                    c["logprobs"] = {"content": [lp]} if lp else None
                else:
                    c["text"] = ev.text
                    c["logprobs"] = self._completion_logprobs([lp]) if lp else None
                if want_ids:
                    c["token_ids"] = [ev.token_id] if has_tok else []
                    if not chat and n_out == 1:
                        c["prompt_token_ids"] = seq.prompt_ids
                yield chunk(c)
            if include_usage:
                usage = {
                    "prompt_tokens": len(seq.prompt_ids),
                    "completion_tokens": n_out,
                    "total_tokens": len(seq.prompt_ids) + n_out,
                    "prompt_tokens_details": {"cached_tokens": seq.cached_tokens},
                }
                d = {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield b"data: " + json.dumps(d).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            self.engine.abort(seq)
            raise


def serve(
    replica: Replica, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning"
) -> None:
    import uvicorn

    app = App(replica)
    replica.start()
    try:
        uvicorn.run(
            app.app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10
        )
    finally:
        replica.stop()
