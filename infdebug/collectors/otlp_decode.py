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
from collections.abc import Iterator
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
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class OtlpDecodeError(InputError):
    """An OTLP body that cannot be read: the message says why."""


def decode_request(
    body: bytes, content_type: str, encoding: str = "", *, max_bytes: int = 64 << 20
) -> ExportTraceServiceRequest:
    """The ``ExportTraceServiceRequest`` in ``body``."""
    return decode_body(body, content_type, encoding, max_bytes=max_bytes)[0]


def decode_body(
    body: bytes, content_type: str, encoding: str = "", *, max_bytes: int = 64 << 20
) -> tuple[ExportTraceServiceRequest, bytes | None]:
    """``decode_request``, and the request's protobuf bytes as they came (gzip undone) when
    the body was protobuf: they parse to the same request (None: a JSON body)."""
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
        return req, body
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
        return req, None
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
        return _COMPACT.encode(x)  # json.dumps(x, separators=(",", ":")), built once
    return "" if x is None else str(x)


# The strings of small array / kvlist values (finish reasons, stop lists …), by their wire
# bytes: a few distinct ones recur in every span, and ``_str`` of one is slow.
_SMALL: dict[bytes, str] = {}
_SMALL_ITEMS, _SMALL_KEEP = 8, 4096


def _str_composite(v: Any, items: int) -> str:
    if items > _SMALL_ITEMS:
        return _str(v)
    key = v.SerializeToString()
    got = _SMALL.get(key)
    if got is None:
        got = _str(v)
        if len(_SMALL) >= _SMALL_KEEP:
            _SMALL.clear()
        _SMALL[key] = got
    return got


def attrs(kvs: Any) -> dict[str, str]:
    """Attributes as strings (``_str``), the common value types without its detour."""
    out: dict[str, str] = {}
    for kv in kvs:
        v = kv.value
        which = v.WhichOneof("value")
        if which == "double_value":
            out[kv.key] = repr(v.double_value)  # str(float), str(int): their repr
        elif which == "string_value":
            out[kv.key] = v.string_value
        elif which == "int_value":
            out[kv.key] = repr(v.int_value)
        elif which == "array_value":
            out[kv.key] = _str_composite(v, len(v.array_value.values))
        elif which == "kvlist_value":
            out[kv.key] = _str_composite(v, len(v.kvlist_value.values))
        else:
            out[kv.key] = _str(v)
    return out


def span_rows(req: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """One ``otel_traces`` row per span (plus ``_resource``/``_attrs``: typed values)."""
    return list(iter_span_rows(req))


def iter_span_rows(req: ExportTraceServiceRequest) -> Iterator[dict[str, Any]]:
    """``span_rows`` one at a time (a caller done with each row before the next keeps few
    objects alive: nothing for the garbage collector to go through again and again)."""
    for rs in req.resource_spans:
        res = attrs(rs.resource.attributes)
        service = res.get("service.name", "")
        for ss in rs.scope_spans:
            scope_name, scope_version = ss.scope.name, ss.scope.version
            for s in ss.spans:
                start, kind, status = s.start_time_unix_nano, s.kind, s.status
                code, events, links = status.code, s.events, s.links
                row = {
                    "Timestamp": str(start),
                    "TraceId": s.trace_id.hex(),
                    "SpanId": s.span_id.hex(),
                    "ParentSpanId": s.parent_span_id.hex(),
                    "TraceState": s.trace_state,
                    "SpanName": s.name,
                    "SpanKind": KINDS[kind] if kind in KINDS else str(kind),
                    "ServiceName": service,
                    "ResourceAttributes": res,
                    "ScopeName": scope_name,
                    "ScopeVersion": scope_version,
                    "SpanAttributes": attrs(s.attributes),
                    "Duration": max(0, s.end_time_unix_nano - start),
                    "StatusCode": STATUS[code] if code in STATUS else str(code),
                    "StatusMessage": status.message,
                }
                if events:
                    row["Events.Timestamp"] = [str(e.time_unix_nano) for e in events]
                    row["Events.Name"] = [e.name for e in events]
                    row["Events.Attributes"] = [attrs(e.attributes) for e in events]
                else:
                    row["Events.Timestamp"], row["Events.Name"] = [], []
                    row["Events.Attributes"] = []
                if links:
                    row["Links.TraceId"] = [lk.trace_id.hex() for lk in links]
                    row["Links.SpanId"] = [lk.span_id.hex() for lk in links]
                    row["Links.TraceState"] = [lk.trace_state for lk in links]
                    row["Links.Attributes"] = [attrs(lk.attributes) for lk in links]
                else:
                    row["Links.TraceId"], row["Links.SpanId"] = [], []
                    row["Links.TraceState"], row["Links.Attributes"] = [], []
                yield row
