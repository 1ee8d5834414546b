"""The record contract: every part of infdebug speaks these records and nothing else.

Records are frozen ``msgspec.Struct``s written as JSON Lines. Every line carries a ``kind``
tag and a schema version ``v``. Changes are additive only: readers ignore unknown fields
(``strict=True`` rejects them).

Kinds: ``request``, ``gpu``, ``metrics``, ``event`` (replica lifecycle), ``profile`` (host
stack samples) and ``finding``. A finding's ``kind`` field is its
dotted finding kind (``template.double_bos``): any kind with a dot in it is a finding, so
the contract's field names stay as specified and the tag still tells every line apart.

Array fields (token IDs, token times, logprobs, throttle reasons) use ``[]`` for "not
recorded": a ``null`` in the input is read as ``[]``. Scalars and objects keep ``null``.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Annotated, Any, Literal

import msgspec

from infdebug.errors import InputError

SCHEMA_VERSION = 1
UINT32_MAX = 2**32 - 1

TokenId = Annotated[int, msgspec.Meta(ge=0, le=UINT32_MAX)]
UInt16 = Annotated[int, msgspec.Meta(ge=0, le=2**16 - 1)]
UInt32 = Annotated[int, msgspec.Meta(ge=0, le=UINT32_MAX)]
UInt64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # msgspec bounds stop at int64
Micros = Annotated[int, msgspec.Meta(ge=0, le=UINT32_MAX)]  # µs offsets: up to 71 minutes
FinishReason = Literal["stop", "length", "abort", "error"]
Severity = Literal["info", "warning", "error"]
MetricType = Literal["counter", "gauge", "histogram", "summary", "untyped"]


class _Record(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", omit_defaults=False):
    v: UInt16 = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # null in an array field means "not recorded", the same as [] (see module doc).
        for name in _ARRAY_FIELDS.get(type(self).__name__, ()):
            if getattr(self, name) is None:
                msgspec.structs.force_setattr(self, name, [])


class Request(_Record, frozen=True, tag="request"):
    """One finished request, as the engine saw it."""

    request_id: str
    replica: str
    t_arrival: float  # unix seconds
    deployment: str | None = None  # revision or canary label
    model: str | None = None
    engine: str | None = None
    engine_version: str | None = None
    tokenizer_fp: str | None = None
    template_fp: str | None = None
    queue_s: float | None = None
    prefill_s: float | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    token_times_s: list[float] | None = None  # offset from arrival of each output token
    messages: list[dict[str, Any]] | None = None
    prompt_text: str | None = None
    prompt_ids: list[TokenId] | None = None
    output_text: str | None = None
    output_ids: list[TokenId] | None = None
    output_logprobs: list[float] | None = None
    cached_prompt_tokens: UInt32 | None = None
    spec_draft_tokens: UInt32 | None = None
    spec_accepted_tokens: UInt32 | None = None
    finish_reason: FinishReason | None = None
    sampling: dict[str, Any] | None = (
        None  # temperature, top_p, top_k, max_tokens, seed, stop_ids …
    )
    error: str | None = None
    # Additive (v1): what engines report beside the fields above.
    finish_reason_raw: str | None = (
        None  # the engine's own finish reason, where it is not a contract name
    )
    prompt_tokens: UInt32 | None = None  # counts as the engine reported them (usage, meta_info);
    output_tokens: UInt32 | None = None  # they survive ``--redact all``, which drops the IDs
    abort_message: str | None = None  # why the engine aborted the request (SGLang's abort message)
    # Additive (v2): the fields this record's tracer computed itself rather than got from the
    # engine (a sidecar in front of an engine it cannot change re-encodes with the model
    # directory's tokenizer and chat template: ``prompt_text``, ``prompt_ids``,
    # ``output_ids``, ``token_times_s``); empty (null reads as []): every field is the engine's.
    derived: list[str] | None = None
    # Additive (v3): the per-token times as integer microseconds from arrival, the form the
    # store keeps compactly (bench/storage.py). A record may carry either form or both; one
    # with only this one gets ``token_times_s`` derived from it (``__post_init__``), so
    # every reader and the store see the same times from either form.
    token_offsets_us: list[Micros] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        us = self.token_offsets_us
        if us and not self.token_times_s:
            msgspec.structs.force_setattr(self, "token_times_s", [u / 1e6 for u in us])


def offsets_us(times_s: list[float]) -> list[int]:
    """``token_times_s`` as ``token_offsets_us`` (rounded to the microsecond)."""
    return [round(t * 1e6) for t in times_s]


class GpuSample(_Record, frozen=True, tag="gpu"):
    """One NVML sample of one GPU."""

    t: float
    replica: str
    gpu_index: UInt16 = 0
    uuid: str | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    util_pct: float | None = None
    mem_used_bytes: UInt64 | None = None
    throttle_reasons: list[str] | None = None  # DCGM names: power_cap, hw_thermal, …
    energy_j: float | None = None
    simulated: bool = False  # True for the synthetic signal of --simulate-gpu
    deployment: str | None = None  # the replica's deployment (additive: older samples lack it)


class MetricSample(_Record, frozen=True, tag="metrics"):
    """One scraped Prometheus sample (a histogram is one sample with its buckets)."""

    t: float
    replica: str
    name: str
    type: MetricType = "untyped"
    labels: dict[str, str] | None = None
    value: float | None = None
    buckets: dict[str, float] | None = None  # le -> cumulative count
    sum: float | None = None
    count: float | None = None


class Event(_Record, frozen=True, tag="event"):
    """A replica lifecycle event (additive kind): process_start, weights_loaded, warmup_done,
    ready, drain, shutdown — so start-up time, which decides how fast a fleet scales out, is
    measured per replica."""

    t: float  # unix seconds
    replica: str
    name: str
    duration_s: float | None = None  # how long the phase that this event ends took
    since_start_s: float | None = None  # since the process started
    deployment: str | None = None
    pid: UInt32 | None = None
    detail: dict[str, Any] | None = None


class ProfileSample(_Record, frozen=True, tag="profile"):
    """One collapsed host stack sampled by py-spy from a replica process (additive kind):
    ``count`` samples of ``stack`` (root;…;leaf) on ``thread``, classified by ``category``."""

    t: float  # when the recording started (unix seconds)
    replica: str
    profile_id: str
    thread: str
    category: str
    stack: str
    count: UInt32
    pid: UInt32 | None = None
    rate_hz: float | None = None
    duration_s: float | None = None


class Finding(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """What an analyzer found, with the evidence to act on it.

    Not a tagged union member: its ``kind`` is the dotted finding kind.
    """

    kind: str  # dotted: template.double_bos
    analyzer: str
    severity: Severity
    summary: str
    v: UInt16 = SCHEMA_VERSION
    scope: dict[str, Any] | None = None  # replica, deployment, t_start, t_end
    values: dict[str, Any] | None = None  # measured numbers, test statistic, p-value
    evidence: dict[str, Any] | None = None  # request IDs, first diverging token, …
    t: float | None = None  # when it was found


_ARRAY_FIELDS: dict[str, tuple[str, ...]] = {
    "Request": (
        "token_times_s",
        "prompt_ids",
        "output_ids",
        "output_logprobs",
        "derived",
        "token_offsets_us",
    ),
    "GpuSample": ("throttle_reasons",),
}

Record = Request | GpuSample | MetricSample | Event | ProfileSample | Finding
TaggedRecord = Request | GpuSample | MetricSample | Event | ProfileSample
RECORD_TYPES: dict[str, type[TaggedRecord]] = {
    "request": Request,
    "gpu": GpuSample,
    "metrics": MetricSample,
    "event": Event,
    "profile": ProfileSample,
}
KINDS: tuple[str, ...] = ("request", "gpu", "metrics", "event", "profile", "finding")


def kind_of(record: Record | msgspec.Struct) -> str:
    """The contract kind name of a decoded record: request, gpu, metrics, event, profile or
    finding — of the contract classes and of the strict twins ``RecordDecoder(strict=True)``
    decodes into alike. Only a finding has no tag (its ``kind`` field is its dotted kind)."""
    tag = record.__struct_config__.tag
    return tag if isinstance(tag, str) else "finding"


def is_finding_kind(kind: str) -> bool:
    return "." in kind


# --- decoders -----------------------------------------------------------------------------


def _strict_twin(base: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """A decoding twin of a record type that rejects unknown fields."""
    fields: list[Any] = []
    for f in msgspec.structs.fields(base):
        if f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT:
            fields.append((f.name, f.type))
        else:
            fields.append((f.name, f.type, f.default))
    cfg = base.__struct_config__
    extra: dict[str, Any] = {}
    if cfg.tag_field is not None:
        extra = {"tag_field": cfg.tag_field, "tag": cfg.tag}
    return msgspec.defstruct(
        base.__name__ + "Strict",
        fields,
        kw_only=True,
        frozen=True,
        forbid_unknown_fields=True,
        module=__name__,
        **extra,
    )


class _Head(msgspec.Struct):
    kind: str = ""


_HEAD = msgspec.json.Decoder(_Head)


class LineError(InputError):
    """A line that does not satisfy the contract; ``field`` names the offending field."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _utf8_error(line: bytes) -> LineError | None:
    """The contract's reject for a line that is not UTF-8, naming the byte offset."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        return LineError(f"invalid UTF-8 at byte {e.start}: {e.reason}")
    return None


def _field_of(msg: str) -> str | None:
    # msgspec: "Expected `float`, got `str` - at `$.t_arrival`"
    if "- at `$" in msg:
        path = msg.rsplit("- at `$", 1)[1].rstrip("`")
        return path.lstrip(".") or None
    if msg.startswith("Object missing required field `"):
        return msg.split("`")[1]
    if msg.startswith("Object contains unknown field `"):
        return msg.split("`")[1]
    return None


@dataclass(frozen=True)
class RecordDecoder:
    """Decodes one JSON line into a record, raising LineError with the field named.

    ``strict=True`` validates with twins that reject unknown fields, then decodes into the
    contract classes (strict is an opt-in check, not the hot path).
    """

    strict: bool = False
    # Set in __post_init__: the msgspec decoder of the tagged union (request|gpu|metrics)
    # and the class each kind decodes to.
    union: Any = None
    types: Any = None

    def __post_init__(self) -> None:
        if self.strict:
            types = [_strict_twin(t) for t in RECORD_TYPES.values()]
            finding: type = _strict_twin(Finding)
        else:
            types, finding = list(RECORD_TYPES.values()), Finding
        union: Any = types[0]
        for t in types[1:]:
            union = union | t
        object.__setattr__(self, "types", dict(zip(RECORD_TYPES, types, strict=True)))
        object.__setattr__(self, "union", msgspec.json.Decoder(union))
        object.__setattr__(self, "_finding", msgspec.json.Decoder(finding))

    def decode(self, line: bytes | str) -> Any:
        try:
            return self.union.decode(line)
        except msgspec.ValidationError as e:
            msg = str(e)
            if msg.startswith("Invalid value '") and "- at `$.kind`" in msg:
                head = _HEAD.decode(line)
                if is_finding_kind(head.kind):
                    return self._decode_finding(line)
                raise LineError(
                    f"unknown record kind {head.kind!r} (expected one of {', '.join(KINDS)}, "
                    "or a dotted finding kind)",
                    "kind",
                ) from None
            if msg.startswith("Object missing required field `kind`"):
                raise LineError("missing required field `kind`", "kind") from None
            raise LineError(msg, _field_of(msg)) from None
        except msgspec.DecodeError as e:
            # msgspec < 0.23 raised UnicodeDecodeError for bad UTF-8; 0.23 raises DecodeError
            # ("Invalid UTF-8 encoded string") without the offset, so find it here. Bytes that
            # are not UTF-8 are the root cause whatever JSON error they also make.
            if isinstance(line, bytes | bytearray | memoryview):
                utf8 = _utf8_error(bytes(line))
                if utf8 is not None:
                    raise utf8 from None
            raise LineError(f"malformed JSON: {e}") from None
        except UnicodeDecodeError as e:
            raise LineError(f"invalid UTF-8 at byte {e.start}: {e.reason}") from None

    def _decode_finding(self, line: bytes | str) -> Any:
        try:
            return self._finding.decode(line)  # type: ignore[attr-defined]
        except msgspec.ValidationError as e:
            raise LineError(str(e), _field_of(str(e))) from None


TOLERANT = RecordDecoder()
STRICT = RecordDecoder(strict=True)


def decode_record(line: bytes | str, *, strict: bool = False) -> Record:
    """Decode one JSON line into a contract record (LineError on anything else)."""
    if strict:
        STRICT.decode(line)
    rec: Record = TOLERANT.decode(line)
    return rec


_ENCODER = msgspec.json.Encoder()


def encode_record(record: Record) -> bytes:
    """One JSON line (with the trailing newline) for a record."""
    return _ENCODER.encode(record) + b"\n"


def encode_records(records: Sequence[Record]) -> bytes:
    buf = bytearray()
    for r in records:
        _ENCODER.encode_into(r, buf, len(buf))
        buf += b"\n"
    return bytes(buf)


def open_bytes(path: str) -> IO[bytes]:
    """Open a log file for binary reading; ``.gz`` is decompressed transparently."""
    if path.endswith(".gz"):
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    return open(path, "rb", buffering=io.DEFAULT_BUFFER_SIZE * 16)


def read_records(path: str, *, strict: bool = False) -> Iterator[tuple[int, Record | LineError]]:
    """Yield ``(line_number, record_or_error)`` for every non-blank line of a JSONL file."""
    with open_bytes(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield n, decode_record(line, strict=strict)
            except LineError as e:
                yield n, e
