"""An OpenAI-compatible HTTP server around the engine (Starlette + uvicorn).

``POST /v1/completions``, ``POST /v1/chat/completions`` (SSE streaming or not),
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus). ``return_token_ids``
returns prompt and output token IDs as vLLM does; ``logprobs`` as OpenAI does. Binds
127.0.0.1 unless told otherwise.

``POST /tokenize`` and ``POST /detokenize`` in vLLM's shapes (``{"prompt"}`` or
``{"messages"}`` → ``{"count", "max_model_len", "tokens", "token_strs"}``; ``{"tokens"}`` →
``{"prompt"}``): a chat body is rendered and encoded by the very code ``/v1/chat/completions``
uses, so its IDs are that completion's ``prompt_token_ids``; neither leaves a trace record.

No request can hurt another:

- Every request is checked whole before it reaches the engine (:mod:`infdebug.limits`: the
  body cap, strict JSON, every field's type and range); a refused request gets a 4xx with
  an OpenAI-style error body (``{"error": {"message", "type", "param", "code"}}``) and
  leaves no trace record. Every accepted request leaves exactly one (its engine sequence is
  finished exactly once, also when its client goes away or the server stops).
- Slow clients time out (:mod:`infdebug.httpguard`: header and body deadlines, 408).
- Parsing, template rendering and tokenization run on worker threads, off the event loop
  (bodies over ``BIG_BODY`` bytes on a pool of their own, one at a time, so a flood of large
  prompts neither stalls ``/health`` nor holds much memory at once); after a large request
  the freed heap goes back to the OS.
- A failure inside the engine ends only the request that caused it: a non-streamed one gets
  a 500 with an OpenAI-style error, a streamed one an ``error`` event before ``[DONE]``.
  Accepted requests answer with an ``x-request-id`` header, the trace record's request ID.
- A non-streamed request whose client disconnects is aborted in the engine, as a streamed
  one is.

``/health`` reports ``preparing``: the requests being parsed, rendered or tokenized now.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from infdebug.httpguard import ClientGone, guarded_protocol, read_body, release_memory
from infdebug.limits import (
    Generation,
    Limits,
    RequestError,
    boolean,
    chat_messages,
    completion_prompt,
    generation,
    json_object,
    obj,
    tools,
)
from infdebug.tracer.engine import responses as out
from infdebug.tracer.engine.engine import Engine, SamplingParams, Sequence, TokenEvent
from infdebug.tracer.engine.replica import Replica

ApiError = RequestError  # the server's name for a refused request (4xx) or its own failure
BIG_BODY = 256 * 1024  # bodies over this are prepared on the one-at-a-time pool
CHAT_DEFAULT_MAX_TOKENS = 512  # chat without max_tokens: this, or what the context leaves
_log = logging.getLogger(__name__)
T = TypeVar("T")


def api_response(err: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    h = dict(headers or {})
    if err.status == 408:  # the body never came: do not wait for the rest of it
        h["connection"] = "close"
    return JSONResponse(err.payload(), status_code=err.status, headers=h)


def sampling_params(
    gen: Generation, ids: list[int], *, chat: bool, replica: Replica
) -> SamplingParams:
    """The engine's parameters for a checked request: ``n``/``best_of`` 1 only, stop IDs in
    the vocabulary, chat's default max_tokens what the context leaves (at most 512)."""
    s = gen.sampling
    if s.n != 1:
        raise ApiError(400, "only n=1 is supported", "n")
    bad = [i for i in s.stop_token_ids if i >= replica.vocab_size]
    if bad:
        raise ApiError(
            400,
            f"stop_token_ids out of the vocabulary (size {replica.vocab_size}): {bad[:5]}",
            "stop_token_ids",
        )
    max_tokens = s.max_tokens
    if max_tokens is None:
        room = replica.engine.cfg.max_model_len - len(ids)
        max_tokens = max(1, min(CHAT_DEFAULT_MAX_TOKENS, room))
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed,
        stop=s.stop,
        stop_token_ids=s.stop_token_ids + replica.extra_stop_ids,
        ignore_eos=s.ignore_eos,
        logprobs=s.logprobs,
    )


@dataclass
class _Prepared:
    """A request checked, rendered and tokenized: what goes to the engine."""

    gen: Generation
    ids: list[int]
    params: SamplingParams
    chat: bool
    prompt_text: str | None
    messages: list[dict[str, Any]] | None = None


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


class App:
    def __init__(
        self, replica: Replica, limits: Limits | None = None, *, prep_workers: int = 4
    ) -> None:
        self.replica = replica
        self.engine: Engine = replica.engine
        self.limits = limits or Limits()
        self.preparing = 0  # requests being parsed, rendered or tokenized now
        self._pool = ThreadPoolExecutor(prep_workers, thread_name_prefix="infdebug-prep")
        self._big_pool = ThreadPoolExecutor(1, thread_name_prefix="infdebug-prep-big")
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/completions", self._guarded(self.completions), methods=["POST"]),
            Route("/v1/chat/completions", self._guarded(self.chat), methods=["POST"]),
            Route("/tokenize", self._guarded(self.tokenize), methods=["POST"]),
            Route("/detokenize", self._guarded(self.detokenize), methods=["POST"]),
        ]
        self.app = Starlette(
            routes=routes,
            exception_handlers={
                RequestError: self._api_error,
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
        # the server stopped accepting and finished in-flight requests
        self.replica.lifecycle.mark("drain")
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._big_pool.shutdown(wait=False, cancel_futures=True)

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return api_response(exc)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return api_response(ApiError(404, f"no route {request.url.path}", code="not_found"))

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return api_response(ApiError(405, f"{request.method} is not allowed on {request.url.path}"))

    def _guarded(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A route that answers every failure of its own with an OpenAI-style 500 and logs
        it without the request's text under redaction (an exception's message may quote it)."""

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestError:
                raise
            except ClientGone:
                return Response(status_code=400)  # nobody is listening
            except Exception as e:
                self._log_failure(e, f"{request.url.path} failed")
                return api_response(ApiError(500, "the server failed on this request"))

        return route

    def _log_failure(self, err: BaseException, what: str) -> None:
        if self.engine.cfg.redact_logs:
            stack = "".join(traceback.format_tb(err.__traceback__))
            _log.error("%s: %s\n%s", what, type(err).__name__, stack)
        else:
            _log.error("%s: %s", what, err, exc_info=err)

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
                "preparing": self.preparing,
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

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, self.prepare_completion)

    async def chat(self, request: Request) -> Response:
        return await self._serve(request, self.prepare_chat)

    async def tokenize(self, request: Request) -> Response:
        return await self._answer(request, self.tokenize_body)

    async def detokenize(self, request: Request) -> Response:
        return await self._answer(request, self.detokenize_body)

    # -- preparing (worker threads) ------------------------------------------------------
    def _body(self, raw: bytes) -> dict[str, Any]:
        body = json_object(raw, self.limits)
        model = body.get("model")
        if model is not None and model != self.replica.model_name:
            raise ApiError(
                404,
                f"the model {str(model)[:100]!r} does not exist; "
                f"this server serves {self.replica.model_name!r}",
                "model",
                "model_not_found",
            )
        return body

    def prepare_completion(self, raw: bytes) -> _Prepared:
        """A ``/v1/completions`` body, checked and tokenized (raises :class:`RequestError`)."""
        body = self._body(raw)
        gen = generation(body, chat=False, limits=self.limits)
        prompt = completion_prompt(body)
        if isinstance(prompt, str):
            ids = self.encode_completion_text(body, prompt)
        else:
            ids = prompt
            bad = [i for i in ids if not 0 <= i < self.replica.vocab_size]
            if bad:
                raise ApiError(
                    400,
                    f"token IDs out of the vocabulary (size {self.replica.vocab_size}): {bad[:5]}",
                    "prompt",
                )
        params = sampling_params(gen, ids, chat=False, replica=self.replica)
        text = prompt if isinstance(prompt, str) else None
        return _Prepared(gen, ids, params, chat=False, prompt_text=text)

    def prepare_chat(self, raw: bytes) -> _Prepared:
        """A ``/v1/chat/completions`` body, checked, rendered and tokenized."""
        body = self._body(raw)
        gen = generation(body, chat=True, limits=self.limits)
        messages, text, ids = self.chat_prompt(body)
        params = sampling_params(gen, ids, chat=True, replica=self.replica)
        return _Prepared(gen, ids, params, chat=True, prompt_text=text, messages=messages)

    # -- text to IDs: one path for the generating routes and /tokenize -------------------
    def chat_prompt(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, list[int]]:
        """A chat body's messages, its rendered prompt and the prompt's IDs, as vLLM's chat
        fields say: ``add_generation_prompt`` (default true), ``continue_final_message``
        (the rendering cut after the final message's text, as transformers does; not with
        ``add_generation_prompt``), ``add_special_tokens`` (default false: the template writes
        them), ``tools``. ``/v1/chat/completions`` and ``/tokenize`` both come here, so their
        IDs agree for every body.

        ``chat_template_kwargs`` (an object) are template variables (``enable_thinking``),
        as vLLM passes them. A per-request ``chat_template`` is refused, as vLLM refuses it
        by default."""
        messages = chat_messages(body)
        tool_list = tools(body)
        add_generation_prompt = boolean(body, "add_generation_prompt", True)
        continue_final = boolean(body, "continue_final_message")
        add_special = boolean(body, "add_special_tokens", False)
        kwargs = obj(body, "chat_template_kwargs") or {}
        if body.get("chat_template") is not None:
            raise ApiError(
                400, "this server does not take a chat template per request", "chat_template"
            )
        if continue_final and add_generation_prompt:
            raise ApiError(
                400,
                "'continue_final_message' and 'add_generation_prompt' cannot both be true "
                "(add_generation_prompt defaults to true: set it to false)",
                "continue_final_message",
            )
        try:
            text = self.replica.render(
                messages, tools=tool_list, add_generation_prompt=add_generation_prompt, **kwargs
            )
            if continue_final:
                text = _open_final_message(text, messages)
        except ValueError as e:
            raise ApiError(400, f"the chat template failed: {e}", "messages") from None
        if add_special:  # on top of what the template wrote, as vLLM does
            ids = self.replica.tokenizer.encode(text, add_special_tokens=True)
        else:
            ids = self.replica.encode_chat(text)
        return messages, text, ids

    def encode_completion_text(self, body: dict[str, Any], prompt: str) -> list[int]:
        """A completion prompt's IDs: ``add_special_tokens`` (default true, as vLLM) adds BOS
        as the server's completions always have; false encodes the text alone."""
        if boolean(body, "add_special_tokens", True):
            return self.replica.encode_completion(prompt)
        return self.replica.tokenizer.encode(prompt, add_special_tokens=False)

    def tokenize_body(self, raw: bytes) -> dict[str, Any]:
        """A ``/tokenize`` body (vLLM's ``TokenizeCompletionRequest`` or
        ``TokenizeChatRequest``), answered as vLLM's ``TokenizeResponse``."""
        body = self._body(raw)
        want_strs = boolean(body, "return_token_strs")
        has_prompt, has_messages = body.get("prompt") is not None, "messages" in body
        if has_prompt and has_messages:
            raise ApiError(400, "give either 'prompt' or 'messages', not both", "messages")
        if has_messages:
            _, _, ids = self.chat_prompt(body)
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise ApiError(
                    400, "'prompt' must be a string (or give 'messages' to render a chat)", "prompt"
                )
            ids = self.encode_completion_text(body, prompt)
        tok = self.replica.tokenizer
        return {
            "count": len(ids),
            "max_model_len": self.engine.cfg.max_model_len,
            "tokens": ids,
            "token_strs": [tok.piece(i) or "" for i in ids] if want_strs else None,
        }

    def detokenize_body(self, raw: bytes) -> dict[str, Any]:
        """A ``/detokenize`` body (``{"tokens": [ids]}``): the text, special tokens kept (as
        vLLM decodes); an ID the tokenizer does not have is refused."""
        body = self._body(raw)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
        ):
            raise ApiError(400, "'tokens' must be a list of token IDs (integers >= 0)", "tokens")
        tok = self.replica.tokenizer
        size = tok.vocab_size
        bad = [i for i in ids if i >= size or tok.piece(i) is None]  # a gap in the IDs too
        if bad:
            raise ApiError(
                400,
                f"token IDs out of the vocabulary (size {size}): {bad[:5]}",
                "tokens",
            )
        return {"prompt": tok.decode(ids, skip_special_tokens=False)}

    async def _off_loop(self, size: int, fn: Callable[[], T]) -> T:
        big = size > BIG_BODY
        self.preparing += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._big_pool if big else self._pool, fn)
        finally:
            self.preparing -= 1

    async def _serve(self, request: Request, prepare: Callable[[bytes], _Prepared]) -> Response:
        raw = await read_body(request, self.limits)
        size = len(raw)
        try:
            prep = await self._off_loop(size, functools.partial(prepare, raw))
            del raw
            return await self._generate(request, prep)
        finally:
            self._release_after(size)

    async def _answer(self, request: Request, answer: Callable[[bytes], Any]) -> Response:
        """A route that only reads and answers (no engine, no trace record): the body is
        parsed, worked on and its JSON answer encoded off the event loop."""
        raw = await read_body(request, self.limits)
        size = len(raw)

        def work() -> bytes:
            return _json_bytes(answer(raw))

        try:
            return Response(await self._off_loop(size, work), media_type="application/json")
        finally:
            self._release_after(size)

    def _release_after(self, size: int) -> None:
        if size > BIG_BODY:  # what parsing and tokenizing it held goes back to the OS
            with contextlib.suppress(RuntimeError):  # the pool is shut down
                self._big_pool.submit(release_memory)

    # -- generating ----------------------------------------------------------------------
    async def _generate(self, request: Request, prep: _Prepared) -> Response:
        stream = _Stream(asyncio.get_running_loop())
        rid = ("chatcmpl-" if prep.chat else "cmpl-") + uuid.uuid4().hex[:24]  # the trace's ID
        try:
            seq = self.replica.submit(
                prep.ids,
                prep.params,
                stream,
                prompt_text=prep.prompt_text,
                messages=prep.messages,
                request_id=rid,
            )
        except ValueError as e:
            raise ApiError(
                400, str(e), "messages" if prep.chat else "prompt", "context_length_exceeded"
            ) from None
        meta = out.Meta(
            rid=rid,
            created=int(time.time()),
            model=self.replica.model_name,
            chat=prep.chat,
            want_ids=prep.gen.return_token_ids,
            with_logprobs=prep.params.logprobs is not None,
            prompt_ids=seq.prompt_ids,
            token_text=self.replica.token_text,
        )
        headers = {"x-request-id": rid}
        if prep.gen.stream:
            return StreamingResponse(
                self._sse(seq, stream, meta, prep.gen.include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", **headers},
            )
        got = out.Collected()
        collect = asyncio.ensure_future(self._collect(stream, got))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not collect.done():  # the client went away: stop generating for it
                self.engine.abort(seq)
                await collect
        except asyncio.CancelledError:
            self.engine.abort(seq)
            raise
        finally:
            gone.cancel()
            if not collect.done():
                collect.cancel()
        if got.reason == "error":
            return api_response(ApiError(500, out.ENGINE_FAILED, code="engine_error"), headers)
        return JSONResponse(out.whole(meta, got, seq.cached_tokens), headers=headers)

    async def _collect(self, stream: _Stream, got: out.Collected) -> None:
        async for ev in stream.events():
            got.add(ev, self.replica.token_text)

    async def _sse(
        self, seq: Sequence, stream: _Stream, meta: out.Meta, include_usage: bool
    ) -> AsyncIterator[bytes]:
        chunks = out.Chunks(meta)
        try:
            first = chunks.first()
            if first is not None:
                yield first
            async for ev in stream.events():
                if ev.finish_reason == "error":
                    yield chunks.error()
                    break
                yield chunks.event(ev)
            else:
                if include_usage:
                    yield chunks.usage(seq.cached_tokens)
            yield chunks.done()
        except (asyncio.CancelledError, GeneratorExit):
            self.engine.abort(seq)
            raise


def _json_bytes(payload: Any) -> bytes:
    """As Starlette's ``JSONResponse`` renders."""
    return json.dumps(
        payload, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def _open_final_message(rendered: str, messages: list[dict[str, Any]]) -> str:
    """``continue_final_message`` as transformers' ``apply_chat_template`` does it: the
    rendering cut right after the final message's text (its last text part), so the model
    continues that message instead of closing it. Raises ``ValueError``."""
    final: Any = messages[-1].get("content")
    if isinstance(final, list):
        texts = [p["text"] for p in final if isinstance(p, dict) and isinstance(p.get("text"), str)]
        if not texts:
            raise ValueError("continue_final_message: the final message has no text to continue")
        final = texts[-1]
    if not isinstance(final, str):
        raise ValueError("continue_final_message: the final message has no text to continue")
    if final.strip() not in rendered:
        raise ValueError(
            "continue_final_message: the final message does not appear in the rendered chat "
            "(the template changes it)"
        )
    at = rendered.rindex(final.strip())
    if rendered[at : at + len(final.lstrip())] == final:  # the template kept its spacing
        return rendered[: at + len(final.lstrip())]
    return rendered[: at + len(final.strip())]


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: the next message a
    server sends is ``http.disconnect``, at the latest once the response is complete)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def serve(
    replica: Replica,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    limits: Limits | None = None,
) -> None:
    import uvicorn

    limits = limits or Limits()
    app = App(replica, limits)
    replica.start()
    try:
        uvicorn.run(
            app.app,
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=10,
            http=guarded_protocol(limits),
        )
    finally:
        app.close()
        replica.stop()
