"""A real OTLP/HTTP trace endpoint for tests (opentelemetry-proto's protobuf types)."""

from __future__ import annotations

import gzip
import http.server
import threading
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class OtlpReceiver:
    """A real OTLP/HTTP endpoint: decodes ExportTraceServiceRequest protobufs POSTed to
    /v1/traces and keeps every span with its resource attributes."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                outer._add(req)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _add(self, req: ExportTraceServiceRequest) -> None:
        for rs in req.resource_spans:
            res = {a.key: _any(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    with self.lock:
                        self.spans.append(
                            {
                                "name": sp.name,
                                "span_id": sp.span_id.hex(),
                                "parent": sp.parent_span_id.hex(),
                                "trace_id": sp.trace_id.hex(),
                                "start": sp.start_time_unix_nano,
                                "end": sp.end_time_unix_nano,
                                "events": len(sp.events),
                                "attrs": {a.key: _any(a.value) for a in sp.attributes},
                                "resource": res,
                            }
                        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _any(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_any(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None
