"""The OTLP/HTTP trace receiver and the spool loader behind it (``infdebug collect otlp``).

``OtlpReceiver`` answers ``POST /v1/traces`` (protobuf or JSON, maybe gzip): it decodes the
body (collectors/otlp_decode.py), appends it to the spool (collectors/spool.py), durably, and
only then answers 200. The spool's frames are loaded by a ``SpoolLoader``
(collectors/spool_loader.py: in order, exactly once, waiting while the store is away) with
``OtlpSink``: every span into ``otel_traces``, and the spans that describe a request as
``request`` records (collectors/otlp_requests.py). A chunk cut short is undone by trace and
span ID and by its request records' ``_batch``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from infdebug.collectors import spool_loader
from infdebug.collectors.otlp_decode import (
    OtlpDecodeError,
    decode_body,
    decode_request,
    iter_span_rows,
    span_rows,
)
from infdebug.collectors.otlp_requests import request_of
from infdebug.collectors.spool import Spool, SpoolFull
from infdebug.schema import encode_record
from infdebug.store.base import Store
from infdebug.store.cluster import mutation_target
from infdebug.store.ddl import JSONL_READ_SETTINGS, TABLES
from infdebug.store.filepath import literal_path
from infdebug.store.ingest_state import rollback_batch

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
_INTO = "INSERT INTO otel_traces (" + ", ".join(f"`{c}`" for c, _ in _COLS) + ") SELECT * FROM "
_STRUCTURE = ", ".join(f"`{c}` {t}" for c, t in _COLS)
# A server gets the rows as a bound parameter; chDB reads them from a file, as clickhouse-
# connect escapes a bound string one character at a time in Python (most of a load's time).
_INSERT = _INTO + f"format(JSONEachRow, '{_STRUCTURE}', {{data:String}})"
_INSERT_FILE = _INTO + f"file({{path:String}}, 'JSONEachRow', '{_STRUCTURE}')"
_ENCODER = msgspec.json.Encoder()


class OtlpSink:
    """Spool frames that are OTLP ``ExportTraceServiceRequest`` protobufs: every span into
    ``otel_traces``, the spans that describe a request also as ``request`` records."""

    label = "otlp"

    def __init__(self, spool_directory: str, say: Say = lambda line: None) -> None:
        self._source = "otlp:" + spool_directory
        self._say = say

    def _decode(self, payload: bytes) -> ExportTraceServiceRequest | None:
        try:
            return decode_request(payload, "application/x-protobuf")
        except OtlpDecodeError as e:  # checked on receipt: cannot happen unless corrupted
            self._say(f"spool: a frame could not be decoded: {e}")
            return None

    def _rows(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        reqs = (self._decode(p) for p in payloads)
        return [row for req in reqs if req is not None for row in span_rows(req)]

    def load(self, store: Store, payloads: list[bytes], batch: int) -> Counter[str]:
        # One insert per table for the whole chunk: chDB's cost per insert (a part, its
        # merges) is high enough that inserting a chunk in pieces costs more than it saves.
        got: Counter[str] = Counter()
        lines: tuple[list[bytes], list[bytes]] = ([], [])
        n_spans = n_recs = 0
        for payload in payloads:
            req = self._decode(payload)
            if req is not None:
                n, r = self._encode(req, lines)
                n_spans, n_recs = n_spans + n, n_recs + r
        if n_spans:
            self._spans(store, lines[0])
            if n_recs:
                self._requests(store, lines[1], batch)
            got.update(spans=n_spans, requests=n_recs)
        return got

    @staticmethod
    def _encode(
        req: ExportTraceServiceRequest, into: tuple[list[bytes], list[bytes]]
    ) -> tuple[int, int]:
        """Append the request's spans' JSON lines and their request records' to ``into``;
        (spans, records). Span by span, each row done before the next: a chunk's rows, tens
        of thousands of dicts, are never alive together (which would make the garbage
        collector go through them again and again)."""
        buf, rbuf = bytearray(), bytearray()
        n = r = 0
        for row in iter_span_rows(req):
            _ENCODER.encode_into(row, buf, len(buf))
            buf += b"\n"
            n += 1
            rec = request_of(row)
            if rec is not None:
                rbuf += encode_record(rec)
                r += 1
        into[0].append(bytes(buf))
        into[1].append(bytes(rbuf))
        return n, r

    @staticmethod
    def _spans(store: Store, data: list[bytes]) -> None:
        if getattr(store, "home", None) is None:  # a server (it cannot read our files)
            store.command(_INSERT, {"data": b"".join(data).decode()})
            return
        with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as fh:
            fh.writelines(data)
        try:
            with literal_path(fh.name) as path:
                store.command(_INSERT_FILE, {"path": path})
        finally:
            os.unlink(fh.name)

    def _requests(self, store: Store, data: list[bytes], batch: int) -> None:
        with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as fh:
            fh.writelines(data)
        settings = dict(JSONL_READ_SETTINGS, input_format_skip_unknown_fields=1)
        try:
            store.insert_jsonl(
                TABLES["request"], fh.name, self._source, batch, settings, guarded=False
            )
        finally:
            os.unlink(fh.name)

    def undo(self, store: Store, payloads: list[bytes], batch: int) -> None:
        keys = [r["TraceId"] + r["SpanId"] for r in self._rows(payloads)]
        if keys:
            store.command(
                f"ALTER TABLE {mutation_target(store, 'otel_traces')} DELETE WHERE "
                "has({k:Array(String)}, concat(TraceId, SpanId))",
                {"k": keys},
                {"mutations_sync": 2},
            )
        rollback_batch(store, batch, [TABLES["request"]])


class SpoolLoader(spool_loader.SpoolLoader):
    """The loader of an OTLP spool (``OtlpSink``)."""

    def __init__(
        self,
        spool: Spool,
        open_store: Callable[[], Store],
        *,
        say: Say = lambda line: None,
        server: bool = False,
        interval: float = 0.2,
    ) -> None:
        super().__init__(
            spool,
            open_store,
            OtlpSink(spool.directory, say),
            say=say,
            server=server,
            interval=interval,
        )

    def load_once(self, store: Store) -> int:
        """Load every frame not loaded yet; spans loaded."""
        before = self.loaded_spans
        super().load_once(store)
        return self.loaded_spans - before

    def stats(self) -> dict[str, Any]:
        return {
            "loaded_frames": self.loaded_frames,
            "loaded_spans": self.loaded_spans,
            "loaded_requests": self.loaded_requests,
            "corrupt_frames": len(self.corrupt),
            "store_waits": self.waits,
        }

    @property
    def loaded_spans(self) -> int:
        return self.loaded["spans"]

    @property
    def loaded_requests(self) -> int:
        return self.loaded["requests"]


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
            req, raw = decode_body(
                body,
                headers.get("Content-Type", ""),
                headers.get("Content-Encoding", ""),
                max_bytes=self.max_body_bytes * 8,
            )
        except OtlpDecodeError as e:
            self._count("malformed")
            return 400, {"error": str(e)}, {}
        try:
            # a protobuf body is spooled as it came (it parsed: it is the same request)
            self.spool.append(raw if raw is not None else req.SerializeToString())
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
