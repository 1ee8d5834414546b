"""The OTLP/HTTP trace receiver and the spool loader behind it (``infdebug collect otlp``).

``OtlpReceiver`` answers ``POST /v1/traces`` (protobuf or JSON, maybe gzip): it decodes the
body (collectors/otlp_decode.py), appends it to the spool (collectors/spool.py), durably, and
only then answers 200. ``SpoolLoader`` replays the spool's frames in sequence order into
``otel_traces`` (and request records, collectors/otlp_requests.py), exactly once: before a
chunk of frames is inserted, its last sequence number
is saved as pending in ``ingest_state`` (``pending_batch``); after, as loaded (``offset``).
A loader that died in between finds the pending chunk, deletes its spans (by trace and span
ID) and loads it again. While the store is held or unreachable it waits with backoff, says
so once, and loses nothing (the frames stay in the spool).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from infdebug.collectors.otlp_decode import OtlpDecodeError, decode_request, span_rows
from infdebug.collectors.otlp_requests import request_of
from infdebug.collectors.spool import Corruption, Spool, SpoolFull
from infdebug.schema import encode_record
from infdebug.store.base import Store, StoreBusy, StoreError, StoreFull
from infdebug.store.ddl import JSONL_READ_SETTINGS, TABLES
from infdebug.store.ingest_state import IngestState, load_state, rollback_batch, save_state

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 5.0
CHUNK_FRAMES = 64
RETRY_AFTER_S = 5
Say = Callable[[str], None]

_COLS = (
    ("Timestamp", "DateTime64(9)"),
    ("TraceId", "String"),
    ("SpanId", "String"),
    ("ParentSpanId", "String"),
    ("TraceState", "String"),
    ("SpanName", "String"),
    ("SpanKind", "String"),
    ("ServiceName", "String"),
    ("ResourceAttributes", "Map(String, String)"),
    ("ScopeName", "String"),
    ("ScopeVersion", "String"),
    ("SpanAttributes", "Map(String, String)"),
    ("Duration", "UInt64"),
    ("StatusCode", "String"),
    ("StatusMessage", "String"),
    ("Events.Timestamp", "Array(DateTime64(9))"),
    ("Events.Name", "Array(String)"),
    ("Events.Attributes", "Array(Map(String, String))"),
    ("Links.TraceId", "Array(String)"),
    ("Links.SpanId", "Array(String)"),
    ("Links.TraceState", "Array(String)"),
    ("Links.Attributes", "Array(Map(String, String))"),
)
_INSERT = (
    "INSERT INTO otel_traces ("
    + ", ".join(f"`{c}`" for c, _ in _COLS)
    + ") SELECT * FROM format(JSONEachRow, '"
    + ", ".join(f"`{c}` {t}" for c, t in _COLS)
    + "', {data:String})"
)


class SpoolLoader:
    """Load ``spool``'s frames into the store opened by ``open_store``."""

    def __init__(
        self,
        spool: Spool,
        open_store: Callable[[], Store],
        *,
        say: Say = lambda line: None,
        server: bool = False,
        interval: float = 0.2,
    ) -> None:
        self.spool = spool
        self._open = open_store
        self._say = say
        self.server = server
        self.interval = interval
        self.loaded_frames = 0
        self.loaded_spans = 0
        self.loaded_requests = 0
        self.corrupt: list[Corruption] = []
        self.waits = 0
        self._cid = (
            "otlp-spool:"
            + hashlib.sha256(os.path.realpath(spool.directory).encode()).hexdigest()[:24]
        )

    def stats(self) -> dict[str, Any]:
        return {
            "loaded_frames": self.loaded_frames,
            "loaded_spans": self.loaded_spans,
            "loaded_requests": self.loaded_requests,
            "corrupt_frames": len(self.corrupt),
            "store_waits": self.waits,
        }

    def _report(self, c: Corruption) -> None:
        if c not in self.corrupt:
            self.corrupt.append(c)
            self._say(f"spool: unreadable frame skipped: {c}")

    def load_once(self, store: Store) -> int:
        """Load every frame not loaded yet; spans loaded."""
        state = load_state(store, self._cid)
        if state.pending_batch:
            self._undo(store, state)
        n = 0
        chunk: list[tuple[int, bytes]] = []
        for seq, payload in self.spool.frames(state.offset, self._report):
            chunk.append((seq, payload))
            if len(chunk) >= CHUNK_FRAMES:
                n += self._load(store, state, chunk)
                chunk = []
        if chunk:
            n += self._load(store, state, chunk)
        self.spool.release(state.offset)
        return n

    def _rows(self, chunk: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for _, payload in chunk:
            try:
                rows.extend(span_rows(decode_request(payload, "application/x-protobuf")))
            except OtlpDecodeError as e:  # checked on receipt: cannot happen unless corrupted
                self._say(f"spool: a frame could not be decoded: {e}")
        return rows

    def _load(self, store: Store, state: IngestState, chunk: list[tuple[int, bytes]]) -> int:
        state.pending_batch = chunk[-1][0]
        save_state(store, state, self.spool.directory)
        rows = self._rows(chunk)
        if rows:
            data = "\n".join(json.dumps(r, separators=(",", ":")) for r in rows)
            store.command(_INSERT, {"data": data})
            self._requests(store, rows, self._batch(chunk[-1][0]))
        state.offset, state.pending_batch = chunk[-1][0], 0
        state.rows += len(rows)
        save_state(store, state, self.spool.directory)
        self.loaded_frames += len(chunk)
        self.loaded_spans += len(rows)
        return len(rows)

    def _batch(self, seq: int) -> int:
        """The ``_batch`` the request records of the chunk ending at ``seq`` carry."""
        h = hashlib.sha256(f"{self._cid}:{seq}".encode()).digest()
        return (int.from_bytes(h[:8], "big") >> 1) or 1

    def _requests(self, store: Store, rows: list[dict[str, Any]], batch: int) -> None:
        recs = [r for r in map(request_of, rows) if r is not None]
        if not recs:
            return
        with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as fh:
            for r in recs:
                fh.write(encode_record(r))
        settings = dict(JSONL_READ_SETTINGS, input_format_skip_unknown_fields=1)
        try:
            store.insert_jsonl(
                TABLES["request"],
                fh.name,
                "otlp:" + self.spool.directory,
                batch,
                settings,
                guarded=False,
            )
        finally:
            os.unlink(fh.name)
        self.loaded_requests += len(recs)

    def _undo(self, store: Store, state: IngestState) -> None:
        """Delete the spans of the chunk a loader died loading (pending, not loaded)."""
        chunk = [(s, p) for s, p in self.spool.frames(state.offset) if s <= state.pending_batch]
        keys = [r["TraceId"] + r["SpanId"] for r in self._rows(chunk)]
        if keys:
            store.command(
                "ALTER TABLE otel_traces DELETE WHERE has({k:Array(String)}, "
                "concat(TraceId, SpanId))",
                {"k": keys},
                {"mutations_sync": 2},
            )
        rollback_batch(store, self._batch(state.pending_batch), [TABLES["request"]])
        state.pending_batch = 0
        save_state(store, state, self.spool.directory)

    def run(self, stop: threading.Event) -> None:
        """Load until ``stop`` is set (and once more then), waiting for the store as needed."""
        delay, since = BACKOFF_MIN_S, None
        while True:
            final = stop.is_set()
            try:
                store = self._open()
            except (StoreBusy, StoreFull, StoreError) as e:
                if not self.server and not isinstance(e, (StoreBusy, StoreFull)):
                    raise
                if since is None:
                    since, self.waits = time.monotonic(), self.waits + 1
                    self._say(
                        f"waiting for the store: {e} (trying again, every {BACKOFF_MAX_S:.0f} s "
                        "at most; nothing is lost: what is received meanwhile stays in the "
                        "spool and is loaded when it is back)"
                    )
                if final:
                    return
                stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            try:
                if since is not None:
                    self._say(f"the store is back after {time.monotonic() - since:.1f} s")
                    since, delay = None, BACKOFF_MIN_S
                self.load_once(store)
            finally:
                store.close()
            if final:
                return
            stop.wait(self.interval)


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on ``host:port`` appending to ``spool``."""

    def __init__(
        self,
        spool: Spool,
        *,
        host: str = "127.0.0.1",
        port: int = 4318,
        token: str | None = None,
        max_body_bytes: int = 16 << 20,
        say: Say = lambda line: None,
    ) -> None:
        self.spool = spool
        self.token = token
        self.max_body_bytes = max_body_bytes
        self._say = say
        self.counts = {"received": 0, "spans": 0, "refused": 0, "malformed": 0, "unauthorized": 0}
        self._full_told = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.counts, spool_bytes=self.spool.size())

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def handle(self, headers: Any, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, extra headers) for one POST."""
        try:
            req = decode_request(
                body,
                headers.get("Content-Type", ""),
                headers.get("Content-Encoding", ""),
                max_bytes=self.max_body_bytes * 8,
            )
        except OtlpDecodeError as e:
            self._count("malformed")
            return 400, {"error": str(e)}, {}
        try:
            self.spool.append(req.SerializeToString())
        except SpoolFull as e:
            self._count("refused")
            if not self._full_told:
                self._full_told = True
                self._say(f"warning: {e}: refusing batches (503) until it is loaded")
            return 503, {"error": str(e)}, {"Retry-After": str(RETRY_AFTER_S)}
        self._full_told = False
        self._count("received")
        self._count(
            "spans", sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
        )
        return 200, {}, {}

    def start(self) -> OtlpReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(rx: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _send(self, code: int, doc: dict[str, Any], extra: dict[str, str]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != "/v1/traces":
                self._drain()
                self._send(404, {"error": "only POST /v1/traces is served"}, {})
                return
            if rx.token and self.headers.get("Authorization", "") != f"Bearer {rx.token}":
                rx._count("unauthorized")
                self._drain()
                self._send(401, {"error": "missing or wrong bearer token"}, {})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.close_connection = True
                self._send(411, {"error": "Content-Length required"}, {})
                return
            if length > rx.max_body_bytes:
                rx._count("malformed")
                self.close_connection = True
                self._send(413, {"error": f"body over {rx.max_body_bytes:,} bytes"}, {})
                return
            body = self.rfile.read(length)
            self._send(*rx.handle(self.headers, body))

        def _drain(self) -> None:
            try:
                n = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                n = 0
            if 0 < n <= rx.max_body_bytes:
                self.rfile.read(n)
            elif n:
                self.close_connection = True

    return Handler
