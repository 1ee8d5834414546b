"""ClickHouse DDL, in one place, and the column maps that load contract records into it.

The same statements run on chDB (embedded) and on a ClickHouse server. Each table that
records land in is described once by its ``Column``s: the storage type, the type
ClickHouse reads the JSON field as (``read``), and the expression that turns the read
value into the stored one (``expr``). Ingest builds both the ``file()``/``input()``
structure and the ``INSERT … SELECT`` list from these, so DDL and loader cannot drift.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Rows are kept this many days after they were ingested (not after they happened: old
# incident logs must stay analysable the day they are loaded).
RETENTION_DAYS = int(os.environ.get("INFDEBUG_RETENTION_DAYS", "30"))

TOKEN_ID_CHECK = "accurateCast({col}, 'Array(UInt32)')"  # throws on a negative or > 2^32-1 ID


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # storage type
    read: str | None = None  # type of the JSON field as read (default: storage type sans LowCardinality)
    expr: str | None = None  # SELECT expression from the read field (default: the field)
    json: bool = False  # stored as JSON text (objects / arrays of objects)

    @property
    def read_type(self) -> str:
        if self.read:
            return self.read
        t = self.type
        if t.startswith("LowCardinality(") and t.endswith(")"):
            t = t[len("LowCardinality(") : -1]
        return t

    @property
    def select(self) -> str:
        return self.expr.format(col=self.name) if self.expr else self.name


def _lc(nullable: bool = True) -> str:
    return "LowCardinality(Nullable(String))" if nullable else "LowCardinality(String)"


def _ids(name: str) -> Column:
    return Column(name, "Array(UInt32)", read="Array(Int64)", expr=TOKEN_ID_CHECK)


REQUEST_COLUMNS: tuple[Column, ...] = (
    Column("request_id", "String"),
    Column("replica", _lc(False)),
    Column("t_arrival", "Float64"),
    Column("deployment", _lc()),
    Column("model", _lc()),
    Column("engine", _lc()),
    Column("engine_version", _lc()),
    Column("tokenizer_fp", _lc()),
    Column("template_fp", _lc()),
    Column("queue_s", "Nullable(Float64)"),
    Column("prefill_s", "Nullable(Float64)"),
    Column("ttft_s", "Nullable(Float64)"),
    Column("e2e_s", "Nullable(Float64)"),
    Column("token_times_s", "Array(Float64)"),
    Column("messages", "Nullable(String)", json=True),
    Column("prompt_text", "Nullable(String)"),
    _ids("prompt_ids"),
    Column("output_text", "Nullable(String)"),
    _ids("output_ids"),
    Column("output_logprobs", "Array(Float64)"),
    Column("cached_prompt_tokens", "Nullable(UInt32)"),
    Column("spec_draft_tokens", "Nullable(UInt32)"),
    Column("spec_accepted_tokens", "Nullable(UInt32)"),
    Column("finish_reason", _lc()),
    Column("sampling", "Nullable(String)", json=True),
    Column("error", "Nullable(String)"),
    Column("v", "UInt16"),
)

GPU_COLUMNS: tuple[Column, ...] = (
    Column("t", "Float64"),
    Column("replica", _lc(False)),
    Column("gpu_index", "UInt16"),
    Column("uuid", _lc()),
    Column("power_w", "Nullable(Float64)"),
    Column("power_limit_w", "Nullable(Float64)"),
    Column("temp_c", "Nullable(Float64)"),
    Column("sm_clock_mhz", "Nullable(Float64)"),
    Column("mem_clock_mhz", "Nullable(Float64)"),
    Column("util_pct", "Nullable(Float64)"),
    Column("mem_used_bytes", "Nullable(UInt64)"),
    Column("throttle_reasons", "Array(LowCardinality(String))", read="Array(String)"),
    Column("energy_j", "Nullable(Float64)"),
    Column("simulated", "Bool"),
    Column("v", "UInt16"),
)

METRIC_COLUMNS: tuple[Column, ...] = (
    Column("t", "Float64"),
    Column("replica", _lc(False)),
    Column("name", "LowCardinality(String)"),
    Column("type", "LowCardinality(String)"),
    Column("labels", "Nullable(String)", json=True),
    Column("value", "Nullable(Float64)"),
    Column("buckets", "Nullable(String)", json=True),
    Column("sum", "Nullable(Float64)"),
    Column("count", "Nullable(Float64)"),
    Column("v", "UInt16"),
)

FINDING_COLUMNS: tuple[Column, ...] = (
    Column("kind", "LowCardinality(String)"),
    Column("analyzer", "LowCardinality(String)"),
    Column("severity", "LowCardinality(String)"),
    Column("summary", "String"),
    Column("scope", "Nullable(String)", json=True),
    Column("values", "Nullable(String)", json=True),
    Column("evidence", "Nullable(String)", json=True),
    Column("t", "Nullable(Float64)"),
    Column("v", "UInt16"),
)


@dataclass(frozen=True)
class Table:
    name: str
    kind: str  # contract kind whose records land here
    columns: tuple[Column, ...]
    order_by: str
    time_expr: str  # a DateTime expression for partitioning

    def ddl(self) -> str:
        cols = ",\n  ".join(f"`{c.name}` {c.type}" for c in self.columns)
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name} (\n  {cols},\n"
            "  `_file` LowCardinality(String) DEFAULT '',\n"
            "  `_batch` UInt64 DEFAULT 0,\n"
            "  `_ingested_at` DateTime DEFAULT now()\n"
            ") ENGINE = MergeTree\n"
            f"PARTITION BY toDate({self.time_expr})\n"
            f"ORDER BY ({self.order_by})\n"
            f"TTL _ingested_at + toIntervalDay({RETENTION_DAYS})"
        )

    def structure(self) -> str:
        """The ``file()``/``input()`` structure ClickHouse reads a JSONL line with."""
        return ", ".join(f"`{c.name}` {c.read_type}" for c in self.columns)

    def select_list(self) -> str:
        return ", ".join(c.select for c in self.columns)

    def insert_columns(self) -> str:
        return ", ".join(f"`{c.name}`" for c in self.columns) + ", `_file`, `_batch`"

    @property
    def json_columns(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns if c.json)


def _clamped_time(col: str) -> str:
    # A wild timestamp (0, 1e12) must not fail an insert; it lands in a clamped partition.
    return f"toDateTime(least(greatest({col}, 0), 4102444800))"


TABLES: dict[str, Table] = {
    "request": Table("requests", "request", REQUEST_COLUMNS, "replica, t_arrival", _clamped_time("t_arrival")),
    "gpu": Table("gpu_samples", "gpu", GPU_COLUMNS, "replica, gpu_index, t", _clamped_time("t")),
    "metrics": Table("metric_samples", "metrics", METRIC_COLUMNS, "replica, name, t", _clamped_time("t")),
    "finding": Table(
        "findings", "finding", FINDING_COLUMNS, "severity, kind, _ingested_at", "_ingested_at"
    ),
}

INGEST_STATE_DDL = """
CREATE TABLE IF NOT EXISTS ingest_state (
  content_id String,
  path String,
  size UInt64,
  mtime Float64,
  offset UInt64,
  lines UInt64,
  rows UInt64,
  rejected UInt64,
  pending_batch UInt64,
  updated_at DateTime64(6)
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY content_id
"""

# Spans in the column layout of the OpenTelemetry Collector's ClickHouse exporter, so a
# fleet that already ships OTLP into ClickHouse through an OTel Collector can be read as is.
OTEL_TRACES_DDL = f"""
CREATE TABLE IF NOT EXISTS otel_traces (
  Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
  TraceId String CODEC(ZSTD(1)),
  SpanId String CODEC(ZSTD(1)),
  ParentSpanId String CODEC(ZSTD(1)),
  TraceState String CODEC(ZSTD(1)),
  SpanName LowCardinality(String) CODEC(ZSTD(1)),
  SpanKind LowCardinality(String) CODEC(ZSTD(1)),
  ServiceName LowCardinality(String) CODEC(ZSTD(1)),
  ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
  ScopeName String CODEC(ZSTD(1)),
  ScopeVersion String CODEC(ZSTD(1)),
  SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
  Duration UInt64 CODEC(ZSTD(1)),
  StatusCode LowCardinality(String) CODEC(ZSTD(1)),
  StatusMessage String CODEC(ZSTD(1)),
  Events Nested (
    Timestamp DateTime64(9),
    Name LowCardinality(String),
    Attributes Map(LowCardinality(String), String)
  ) CODEC(ZSTD(1)),
  Links Nested (
    TraceId String,
    SpanId String,
    TraceState String,
    Attributes Map(LowCardinality(String), String)
  ) CODEC(ZSTD(1)),
  INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
  INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
  INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
  INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
  INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
  INDEX idx_duration Duration TYPE minmax GRANULARITY 1
) ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp))
TTL toDateTime(Timestamp) + toIntervalDay({RETENTION_DAYS})
SETTINGS ttl_only_drop_parts = 1
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


# Ordered; never edit a released migration, append a new one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial tables: requests, gpu_samples, metric_samples, findings, ingest_state, otel_traces",
        tuple(t.ddl() for t in TABLES.values()) + (INGEST_STATE_DDL, OTEL_TRACES_DDL),
    ),
)

MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  version UInt32,
  name String,
  applied_at DateTime DEFAULT now()
) ENGINE = MergeTree ORDER BY version
"""

# Settings for reading contract JSONL: strict about types (a number is not a string, a bool
# is not a number), objects and arrays of objects kept as their JSON text.
JSONL_READ_SETTINGS: dict[str, int | str] = {
    "input_format_json_read_numbers_as_strings": 0,
    "input_format_json_read_bools_as_numbers": 0,
    "input_format_json_read_bools_as_strings": 0,
    "input_format_json_read_objects_as_strings": 1,
    "input_format_json_read_arrays_as_strings": 1,
    "input_format_json_try_infer_numbers_from_strings": 0,
    "input_format_null_as_default": 1,
    "input_format_allow_errors_num": 0,
    "input_format_allow_errors_ratio": 0,
    "date_time_input_format": "best_effort",
    "throw_on_max_partitions_per_insert_block": 0,
}
