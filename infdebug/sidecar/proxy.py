"""The sidecar: a transparent reverse proxy for an OpenAI-compatible engine that traces every
generation request through the same tracer, exporters, metrics and GPU sampler as the
reference engine (``infdebug.tracer.wiring.make_tracer``).

- ``POST /v1/chat/completions`` and ``POST /v1/completions`` are traced: the body goes to the
  upstream unchanged; a streamed answer (SSE) is passed on chunk by chunk as it arrives, each
  chunk handed to a parser beside the stream (``sse.py``) and timed; a non-streamed answer is
  read whole and answered byte for byte. What the exchange showed becomes one contract
  record (``capture.py``), built on the tracer's thread.
- Every other path and method (``/v1/models``, ``/health``, ``/metrics``, ``/tokenize`` …) is
  passed through untouched, streamed both ways. The sidecar's own metrics are at
  ``/infdebug/metrics`` and its health at ``/infdebug/health``.
- Headers pass unchanged except the hop-by-hop ones (RFC 9110 §7.6.1: ``Connection`` and the
  headers it names, ``Keep-Alive``, ``TE``, ``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``)
  and ``Host``; the proxy adds none (no ``Accept-Encoding`` of its own, so the upstream
  compresses only what the client asked to be compressed).

Failures are never turned into successes, nor swallowed: an upstream that refuses the
connection is a 502 and one that does not answer within ``--upstream-timeout`` a 504, each with
an OpenAI-style error body; an upstream 4xx/5xx reaches the client as sent. A stream that
breaks after its head was sent ends with an OpenAI-style ``error`` event (what vLLM sends, and
what the official client raises on), never with ``[DONE]``. Each is recorded as an errored
request. A client that disconnects closes the upstream request (the engine aborts it); the
record says ``abort``. The sidecar's own tracing failing (a parser, an exporter) never touches
the request; it is counted in ``infdebug_sidecar_capture_errors_total`` /
``infdebug_tracer_errors_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from prometheus_client import Counter, Gauge
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from infdebug.httpguard import ClientGone, read_body
from infdebug.limits import Limits, RequestError
from infdebug.sidecar.capture import KINDS, Exchange
from infdebug.sidecar.sse import SseReader
from infdebug.sidecar.upstream import UpstreamInfo
from infdebug.text.model_text import ModelText
from infdebug.tracer.wiring import Telemetry

_log = logging.getLogger(__name__)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
POOL_SIZE = 8  # connections per upstream pool
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def forward_headers(headers: Any, *, response: bool) -> list[tuple[str, str]]:
    """``headers`` less the hop-by-hop ones (and those ``Connection`` names); a request's
    also less ``Host`` and ``Content-Length`` (the client sets them for the upstream)."""
    items = headers.multi_items() if hasattr(headers, "multi_items") else headers.items()
    named = {
        h.strip().lower()
        for k, v in items
        if k.lower() == "connection"
        for h in v.split(",")
        if h.strip()
    }
    drop = HOP_BY_HOP | named | (set() if response else {"host", "content-length"})
    return [(k, v) for k, v in items if k.lower() not in drop]


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    kind = "bad_gateway" if status == 502 else "gateway_timeout" if status == 504 else "error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@dataclass
class SidecarConfig:
    upstream: str  # http://127.0.0.1:8000
    upstream_timeout_s: float = 600.0  # no byte from the upstream for this long: 504
    connect_timeout_s: float = 10.0
    limits: Limits = field(
        default_factory=lambda: Limits(max_body_bytes=64 << 20, body_timeout_s=60.0)
    )
    ask_tokenize: bool = True  # the engine's /tokenize of each prompt, off the request path
    max_connections: int = 1024


class Sidecar:
    """The proxy app (``.app``) around one upstream, tracing into ``telemetry``."""

    def __init__(
        self,
        config: SidecarConfig,
        telemetry: Telemetry,
        *,
        model_text: ModelText | None = None,
        engine_name: str | None = None,
    ) -> None:
        self.cfg = config
        self.telemetry = telemetry
        self.model_text = model_text
        self.inflight = 0
        base = config.upstream.rstrip("/")
        # Several small connection pools, not one large one: httpcore scans every connection
        # of a pool (a readability syscall each) to place each request, which at 64
        # concurrent streams was half the sidecar's CPU (py-spy).
        self.pools = [
            self._pool(base, config) for _ in range(max(1, config.max_connections // POOL_SIZE))
        ]
        self._busy = [0] * len(self.pools)
        self.client = self.pools[0]
        self.upstream = UpstreamInfo(self.client, telemetry, model_text, engine_name)
        r = telemetry.metrics.registry
        labels = (telemetry.metrics.replica,)
        self.m_requests = Counter(
            "infdebug_sidecar_requests",
            "Requests through the sidecar, by route kind and outcome.",
            ["replica", "kind", "outcome"],
            registry=r,
        )
        self.m_capture_errors = Counter(
            "infdebug_sidecar_capture_errors",
            "Requests whose tracing failed in the sidecar (the request itself was unaffected).",
            ["replica"],
            registry=r,
        ).labels(*labels)
        Gauge(
            "infdebug_sidecar_inflight",
            "Requests the sidecar is passing through now.",
            ["replica"],
            registry=r,
        ).labels(*labels).set_function(lambda: self.inflight)
        self._tasks: set[asyncio.Task[None]] = set()
        routes = [
            Route("/infdebug/metrics", self.metrics, methods=["GET"]),
            Route("/infdebug/health", self.health, methods=["GET"]),
            Route("/{path:path}", self.route, methods=_METHODS),
        ]
        self.app = Starlette(routes=routes, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._spawn(self.upstream.learn())
        yield
        for t in list(self._tasks):  # the /tokenize calls still out: their records wait on them
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(t), timeout=5)
        for c in self.pools:
            await c.aclose()

    @staticmethod
    def _pool(base: str, config: SidecarConfig) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=base,
            timeout=httpx.Timeout(
                config.upstream_timeout_s, connect=config.connect_timeout_s, pool=None
            ),
            limits=httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE),
            follow_redirects=False,
            trust_env=False,
        )
        for h in ("accept", "accept-encoding", "user-agent", "connection"):  # add nothing
            client.headers.pop(h, None)
        return client

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the sidecar's own routes --------------------------------------------------------
    async def metrics(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(
            generate_latest(self.telemetry.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    async def health(self, request: Request) -> Response:
        u = self.upstream
        return JSONResponse(
            {
                "status": "ok",
                "upstream": self.cfg.upstream,
                "engine": u.name,
                "engine_version": u.engine_version,
                "tokenize": u.has_tokenize,
                "inflight": self.inflight,
                "model_dir": self.model_text.source if self.model_text else None,
                "tracer_errors": self.telemetry.tracer.errors,
                "dropped": self.telemetry.tracer.dropped,
            }
        )

    # -- proxying ------------------------------------------------------------------------
    async def route(self, request: Request) -> Response:
        try:
            raw = await read_body(request, self.cfg.limits)
        except RequestError as e:
            return JSONResponse(e.payload(), status_code=e.status)
        except ClientGone:
            return Response(status_code=499)
        kind = KINDS.get(request.url.path) if request.method == "POST" else None
        ex = self._exchange(kind, raw, request) if kind else None
        self.inflight += 1
        try:
            return await self._forward(request, raw, ex)
        except Exception as e:  # the sidecar's own bug: an OpenAI-style 500, logged
            _log.exception("the sidecar failed on %s %s", request.method, request.url.path)
            self.m_capture_errors.inc()
            body = error_body(500, f"the infdebug sidecar failed: {type(e).__name__}", "sidecar")
            return JSONResponse(body, status_code=500)
        finally:
            self.inflight -= 1

    def _exchange(self, kind: str, raw: bytes, request: Request) -> Exchange | None:
        try:
            body = json.loads(raw)
        except ValueError:
            return None  # not JSON: not a generation the upstream will run; passed on as is
        if not isinstance(body, dict):
            return None
        rid = request.headers.get("x-request-id") or f"sidecar-{uuid.uuid4().hex}"
        return Exchange(
            kind, body, rid, stream=body.get("stream") is True, model_text=self.model_text
        )

    async def _forward(self, request: Request, raw: bytes, ex: Exchange | None) -> Response:
        url = httpx.URL(path=request.url.path, query=request.url.query.encode())
        i = min(range(len(self.pools)), key=self._busy.__getitem__)  # the least busy pool
        self._busy[i] += 1
        released = False

        def release() -> None:  # once the answer is over (a stream: when its relay ends)
            nonlocal released
            if not released:
                released = True
                self._busy[i] -= 1

        try:
            resp = await self._send(self.pools[i], request, url, raw, ex, release)
        except BaseException:
            release()
            raise
        if not isinstance(resp, _Relay):
            release()
        return resp

    async def _send(
        self,
        client: httpx.AsyncClient,
        request: Request,
        url: httpx.URL,
        raw: bytes,
        ex: Exchange | None,
        release: Callable[[], None],
    ) -> Response:
        req = client.build_request(
            request.method, url, headers=forward_headers(request.headers, response=False),
            content=raw,
        )  # fmt: skip
        try:
            resp = await client.send(req, stream=True)
        except httpx.TimeoutException as e:
            return self._failed(ex, 504, f"the upstream did not answer in time: {e!r}")
        except httpx.HTTPError as e:
            return self._failed(ex, 502, f"the upstream {self.cfg.upstream} failed: {e!r}")
        self.upstream.saw_headers(resp.headers)
        headers = forward_headers(resp.headers, response=True)
        if ex is not None:
            ex.status = resp.status_code
            ex.request_id = resp.headers.get("x-request-id") or ex.request_id
        sse = resp.headers.get("content-type", "").startswith("text/event-stream")
        if ex is None:  # untraced: streamed through both ways
            return _with_headers(
                _Relay(
                    self._relay(resp, None, release),
                    self._close(resp, None, release),
                    resp.status_code,
                ),
                headers,
            )
        if not (ex.stream and sse):  # a whole JSON answer (or an error): read, then answered
            try:
                content = b"".join([c async for c in resp.aiter_raw()])  # as sent, not decoded
            except httpx.TimeoutException as e:
                return self._failed(ex, 504, f"the upstream stopped answering: {e!r}")
            except httpx.HTTPError as e:
                return self._failed(ex, 502, f"the upstream's answer broke off: {e!r}")
            finally:
                await resp.aclose()
            ex.end()
            self._read_response(ex, content, resp)
            self._finish(ex)
            return _with_headers(
                Response(content, status_code=resp.status_code), headers, len(content)
            )
        return _with_headers(
            _Relay(
                self._relay(resp, ex, release), self._close(resp, ex, release), resp.status_code
            ),
            headers,
        )

    def _read_response(self, ex: Exchange, content: bytes, resp: httpx.Response) -> None:
        try:
            content = _decoded(content, resp.headers.get("content-encoding", ""))
            if "json" in resp.headers.get("content-type", "") or content[:1] == b"{":
                doc = json.loads(content)
                ex.response = doc if isinstance(doc, dict) else None
        except (ValueError, zlib.error):
            ex.error = ex.error or "the upstream's answer is not JSON"
        if resp.status_code >= 400:
            err = (ex.response or {}).get("error")
            msg = err.get("message") if isinstance(err, dict) else err
            ex.error = f"upstream {resp.status_code}: {msg or content[:200]!r}"

    async def _relay(
        self, resp: httpx.Response, ex: Exchange | None, release: Callable[[], None]
    ) -> AsyncIterator[bytes]:
        """The upstream's body as it arrives; an exchange's SSE events tapped beside it."""
        reader = SseReader() if ex is not None else None
        if ex is not None and resp.headers.get("content-encoding", "identity") != "identity":
            ex.error = "a compressed event stream: passed on, not traced"
            reader = None
        try:
            async for chunk in resp.aiter_raw():
                if reader is not None and ex is not None:
                    self._tap(reader, ex, chunk)
                    if ex.error is not None and reader is not None and ex.status == 200:
                        reader = None  # the tap gave up; the bytes still pass
                yield chunk
            if ex is not None and ex.error is None and not ex.complete and ex.status == 200:
                ex.error = "the upstream's stream ended before it was done (no finish reason)"
        except httpx.TimeoutException as e:
            if ex is not None:
                ex.error = f"the upstream stopped sending for {self.cfg.upstream_timeout_s:g} s"
            yield _error_event(504, f"the upstream stopped sending: {e!r}")
        except httpx.HTTPError as e:
            if ex is not None:
                ex.error = f"the upstream's stream broke off: {e!r}"
            yield _error_event(502, f"the upstream's stream broke off: {e!r}")
        except BaseException:  # the client went away (cancelled): the engine is told below
            if ex is not None:
                ex.aborted = True
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._close(resp, ex, release)

    async def _close(
        self, resp: httpx.Response, ex: Exchange | None, release: Callable[[], None]
    ) -> None:
        """Once per streamed answer, however it ended (also a client gone before the body
        began, when the relay never ran): the upstream connection closed (that aborts the
        engine's request), the pool's slot freed, the exchange traced."""
        if resp.extensions.get("infdebug_closed"):
            return
        resp.extensions["infdebug_closed"] = True
        release()
        await resp.aclose()
        if ex is not None:
            if ex.t_end is None and not ex.complete and ex.error is None:
                ex.aborted = True
            ex.end()
            self._finish(ex)

    def _tap(self, reader: SseReader, ex: Exchange, chunk: bytes) -> None:
        t = time.perf_counter()
        try:
            for data in reader.feed(chunk):
                ex.on_event(data, t)
        except Exception as e:  # the stream is not what it should be: pass it on, record it
            ex.error = ex.error or f"malformed SSE from the upstream: {type(e).__name__}: {e}"

    def _failed(self, ex: Exchange | None, status: int, message: str) -> Response:
        code = "upstream_timeout" if status == 504 else "upstream_unavailable"
        if ex is not None:
            ex.status, ex.error = status, message
            ex.end()
            self._finish(ex)
        return JSONResponse(error_body(status, message, code), status_code=status)

    def _finish(self, ex: Exchange) -> None:
        """Hand the exchange to the tracer, after the engine's /tokenize of its prompt where
        the upstream has one and the answer carried no prompt IDs (off the request path)."""
        try:  # the ID the engine gave the answer, where it gave one
            ex.request_id = str(ex.fields.get("request_id") or ex.request_id)
        except Exception:
            self.m_capture_errors.inc()
        outcome = "aborted" if ex.aborted else "error" if ex.finish_reason == "error" else "ok"
        self.m_requests.labels(self.telemetry.metrics.replica, ex.kind, outcome).inc()
        try:
            if self.cfg.ask_tokenize and not ex.aborted and self.upstream.has_tokenize is not False:
                self._spawn(self._tokenize_then_trace(ex))
            else:
                self.telemetry.tracer.finished(ex)
        except Exception:
            self.m_capture_errors.inc()
            _log.exception("could not trace %s", ex.request_id)

    async def _tokenize_then_trace(self, ex: Exchange) -> None:
        try:
            if not ex.fields.get("prompt_ids"):
                ex.tokenize_ids = await self.upstream.tokenize(ex)
        except Exception:
            self.m_capture_errors.inc()
            _log.exception("could not ask the upstream to tokenize %s", ex.request_id)
        finally:
            self.telemetry.tracer.finished(ex)


def _error_event(status: int, message: str) -> bytes:
    code = "upstream_timeout" if status == 504 else "upstream_unavailable"
    return b"data: " + json.dumps(error_body(status, message, code)).encode() + b"\n\n"


class _Relay(StreamingResponse):
    """A streamed answer that runs its ``close`` coroutine however the response ends."""

    def __init__(self, body: AsyncIterator[bytes], close: Any, status: int) -> None:
        super().__init__(body, status_code=status)
        self._on_close = close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close


def _with_headers(
    resp: Response, headers: list[tuple[str, str]], length: int | None = None
) -> Response:
    """``resp`` with exactly the upstream's headers (repeated ones kept: ``Set-Cookie``), and
    a ``Content-Length`` for a whole body the upstream sent chunked."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if length is not None and not any(k == b"content-length" for k, _ in raw):
        raw.append((b"content-length", str(length).encode()))
    resp.raw_headers = raw
    return resp


def _decoded(content: bytes, encoding: str) -> bytes:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return content
    if enc in ("gzip", "x-gzip"):
        return zlib.decompress(content, 16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return zlib.decompress(content)
    raise ValueError(f"content-encoding {encoding!r}")
