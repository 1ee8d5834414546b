"""OTLP/HTTP trace bodies (protobuf or JSON, maybe gzip) decoded into ``otel_traces`` rows.

The rows follow the OpenTelemetry Collector ClickHouse exporter's layout: hex IDs, the span
kind and status code as the exporter writes them (``SPAN_KIND_SERVER``,
``STATUS_CODE_UNSET``/``_OK``/``_ERROR``: traceutil.SpanKindStr / StatusCodeStr), attribute
values as strings, ``Duration`` in nanoseconds. Anything that is not a well-formed body
raises ``OtlpDecodeError`` (an ``InputError``), never another exception.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from infdebug.errors import InputError

# as the collector-contrib exporter writes them (internal/coreinternal/traceutil SpanKindStr,
# StatusCodeStr: the proto's enum names)
KINDS = {
    0: "SPAN_KIND_UNSPECIFIED",
    1: "SPAN_KIND_INTERNAL",
    2: "SPAN_KIND_SERVER",
    3: "SPAN_KIND_CLIENT",
    4: "SPAN_KIND_PRODUCER",
    5: "SPAN_KIND_CONSUMER",
}
STATUS = {0: "STATUS_CODE_UNSET", 1: "STATUS_CODE_OK", 2: "STATUS_CODE_ERROR"}
_HEX_FIELDS = ("traceId", "spanId", "parentSpanId")


class OtlpDecodeError(InputError):
    """An OTLP body that cannot be read: the message says why."""


def decode_request(
    body: bytes, content_type: str, encoding: str = "", *, max_bytes: int = 64 << 20
) -> ExportTraceServiceRequest:
    """The ``ExportTraceServiceRequest`` in ``body``."""
    try:
        if encoding.strip().lower() == "gzip":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            body = d.decompress(body, max_bytes)
            if d.unconsumed_tail:
                raise OtlpDecodeError(f"gzip body expands past {max_bytes:,} bytes")
            if not d.eof:
                raise OtlpDecodeError("gzip body is truncated")
        elif encoding.strip() not in ("", "identity"):
            raise OtlpDecodeError(f"Content-Encoding {encoding!r} is not supported (gzip is)")
    except (zlib.error, EOFError, gzip.BadGzipFile) as e:
        raise OtlpDecodeError(f"malformed gzip: {e}") from None
    ct = content_type.split(";")[0].strip().lower()
    req = ExportTraceServiceRequest()
    if ct == "application/x-protobuf":
        try:
            req.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError) as e:
            raise OtlpDecodeError(f"malformed protobuf: {e}") from None
        return req
    if ct == "application/json":
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise OtlpDecodeError(f"OTLP JSON must be an object, found {type(doc).__name__}")
            _hex_to_b64(doc)
            json_format.ParseDict(doc, req, ignore_unknown_fields=True)
        except OtlpDecodeError:
            raise
        except (ValueError, TypeError, RecursionError, json_format.ParseError, AttributeError) as e:
            raise OtlpDecodeError(f"malformed OTLP JSON: {str(e)[:300]}") from None
        return req
    raise OtlpDecodeError(
        f"Content-Type {content_type!r} is not supported (application/x-protobuf or "
        "application/json)"
    )


def _hex_to_b64(node: Any, depth: int = 0) -> None:
    """OTLP JSON writes trace and span IDs in hex; protobuf's JSON mapping wants base64."""
    if depth > 64:
        raise OtlpDecodeError("OTLP JSON nested too deeply")
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _HEX_FIELDS and isinstance(v, str):
                try:
                    node[k] = base64.b64encode(bytes.fromhex(v)).decode()
                except ValueError:
                    raise OtlpDecodeError(f"field {k}: {v[:40]!r} is not hex") from None
            else:
                _hex_to_b64(v, depth + 1)
    elif isinstance(node, list):
        for v in node:
            _hex_to_b64(v, depth + 1)


def any_value(v: Any) -> Any:
    """An ``AnyValue`` as a Python value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, which)


def _str(v: Any) -> str:
    x = any_value(v)
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (list, dict)):
        return json.dumps(x, separators=(",", ":"))
    return "" if x is None else str(x)


def attrs(kvs: Any) -> dict[str, str]:
    return {kv.key: _str(kv.value) for kv in kvs}


def span_rows(req: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """One ``otel_traces`` row per span (plus ``_resource``/``_attrs``: typed values)."""
    rows: list[dict[str, Any]] = []
    for rs in req.resource_spans:
        res = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                rows.append(
                    {
                        "Timestamp": str(s.start_time_unix_nano),
                        "TraceId": s.trace_id.hex(),
                        "SpanId": s.span_id.hex(),
                        "ParentSpanId": s.parent_span_id.hex(),
                        "TraceState": s.trace_state,
                        "SpanName": s.name,
                        "SpanKind": KINDS.get(s.kind, str(s.kind)),
                        "ServiceName": res.get("service.name", ""),
                        "ResourceAttributes": res,
                        "ScopeName": ss.scope.name,
                        "ScopeVersion": ss.scope.version,
                        "SpanAttributes": attrs(s.attributes),
                        "Duration": max(0, s.end_time_unix_nano - s.start_time_unix_nano),
                        "StatusCode": STATUS.get(s.status.code, str(s.status.code)),
                        "StatusMessage": s.status.message,
                        "Events.Timestamp": [str(e.time_unix_nano) for e in s.events],
                        "Events.Name": [e.name for e in s.events],
                        "Events.Attributes": [attrs(e.attributes) for e in s.events],
                        "Links.TraceId": [lk.trace_id.hex() for lk in s.links],
                        "Links.SpanId": [lk.span_id.hex() for lk in s.links],
                        "Links.TraceState": [lk.trace_state for lk in s.links],
                        "Links.Attributes": [attrs(lk.attributes) for lk in s.links],
                    }
                )
    return rows
