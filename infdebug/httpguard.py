"""HTTP-level guards for infdebug's servers (uvicorn + Starlette), so that no client can hold
a server up: deadlines on a request's headers and body in uvicorn's HTTP/1.1 protocol, a body
reader with the size cap and a deadline, and handing memory a large request freed back to
the operating system.

- :func:`guarded_protocol` subclasses uvicorn's h11 protocol: a connection that has not sent
  a complete request head within ``header_timeout_s`` of connecting (or of the first byte of
  its next request on a kept-alive connection) is closed, and so is one whose body is still
  arriving ``body_timeout_s`` (plus a grace for the app's own 408) after its head. uvicorn
  has no header timeout of its own, and its keep-alive timer only runs between requests.
- :func:`read_body` reads a Starlette request's body: 413 when ``Content-Length`` or the
  bytes received pass ``max_body_bytes`` (the rest is discarded by uvicorn, up to the body
  deadline), 408 when the body has not arrived within ``body_timeout_s``.
- :func:`release_memory` runs glibc's ``malloc_trim``: the heap pages a large request's
  parse and tokenization freed go back to the OS instead of staying in the process's RSS.

The limits themselves (and the request validation) are :mod:`infdebug.limits`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
from typing import Any

import h11
from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from infdebug.limits import Limits, RequestError, content_length, too_large

BODY_GRACE_S = 2.0  # the protocol's body deadline waits this much longer than the app's 408
_log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client disconnected before its request was read: nothing to answer."""


def guarded_protocol(limits: Limits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the header and body deadlines of ``limits``
    (``uvicorn.run(app, http=guarded_protocol(limits))``)."""
    return type(
        "GuardedH11Protocol",
        (_GuardedH11Protocol,),
        {"header_timeout_s": limits.header_timeout_s, "body_timeout_s": limits.body_timeout_s},
    )


class _GuardedH11Protocol(H11Protocol):
    header_timeout_s = 10.0
    body_timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._phase: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._enter("head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        self._follow(new_bytes=bool(data))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._follow(new_bytes=bool(self.conn.trailing_data[0]))

    def _follow(self, *, new_bytes: bool) -> None:
        """Move the deadline along with the client's side of the connection."""
        state = self.conn.their_state
        if state is h11.IDLE:
            # Idle between requests: uvicorn's keep-alive timeout governs. Once bytes of the
            # next request arrive, its head has header_timeout_s to complete.
            if new_bytes and self._phase != "head":
                self._enter("head")
            elif not new_bytes and self._phase == "done":
                self._enter(None)
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._enter("body")
        elif self._phase != "done":
            self._enter("done")  # the request is in; the app takes as long as it needs

    def _enter(self, phase: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        limit = {"head": self.header_timeout_s, "body": self.body_timeout_s + BODY_GRACE_S}.get(
            phase or ""
        )
        if limit is not None:
            self._deadline = self.loop.call_later(limit, self._expire, phase)

    def _expire(self, phase: str | None) -> None:
        if self._phase != phase or self.transport.is_closing():
            return
        what = "its request head" if phase == "head" else "its request body"
        _log.info("closing a connection from %s: too slow sending %s", self.client, what)
        self._phase = None
        self.transport.close()


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request's body, within the size cap and the body deadline."""
    content_length(request.headers.get("content-length"), limits)  # 413 before reading
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise too_large(limits)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(
            408,
            f"the request body did not arrive within {limits.body_timeout_s:g} s "
            "(see --body-timeout)",
            code="request_timeout",
        ) from None
    except ClientDisconnect:
        raise ClientGone from None
    return b"".join(chunks)


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_memory() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim(0)``, which trims every
    arena, the worker threads' too). A no-op where the C library has no ``malloc_trim``."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
