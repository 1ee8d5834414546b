"""ClickHouse DDL, in one place, and the column maps that load contract records into it.

The same statements run on chDB (embedded) and on a ClickHouse server. Each table that
records land in is described once by its ``Column``s: the storage type, the type
ClickHouse reads the JSON field as (``read``), and the expression that turns the read
value into the stored one (``expr``). Ingest builds both the ``file()``/``input()``
structure and the ``INSERT … SELECT`` list from these, so DDL and loader cannot drift. A
column with an ``alias`` is an ``ALIAS`` in the store, read from the columns that hold its
data (the per-token times: migration 10), which a load fills instead.

Each ``Column`` (store/columns.py) also carries the fast ingest path's checks, derived from
its type: ``check`` on the value ClickHouse parsed, and ``raw`` on the field's JSON text in
the original line, because ClickHouse's JSONEachRow reader is more lenient than the
contract (``Table.line_guard`` lists how).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infdebug.store.columns import (
    RAW_NUM,
    RAW_OBJ,
    RAW_SHALLOW,
    RAW_STR,
    U32,
    Column,
    boolean,
    enum,
    json_text,
    raw_int,
    real,
    reals,
    text,
    texts,
    token_ids,
    uint,
)

# Rows are kept INFDEBUG_RETENTION_DAYS (default 30) after they were ingested, not after they
# happened: old incident logs must stay analysable the day they are loaded. The DDL carries
# this mark; ``Migration.sql`` puts the setting in when the migration runs, never at import.
RETENTION_MARK = "__RETENTION_DAYS__"
# Token arrays (IDs, times, logprobs) may be kept for fewer days than the rows: a column TTL
# (migration 9) with this mark, ``INFDEBUG_TRACE_RETENTION_DAYS`` (default: the same days).
TRACE_RETENTION_MARK = "__TRACE_RETENTION_DAYS__"

# Migration 10 keeps the per-token times as integer microseconds from arrival,
# ``token_offsets_us`` (Delta + ZSTD: 2.1 B/token where Float64 seconds took 6.7 with FPC,
# bench/storage.py); ``token_times_s``, the column every query reads, became an ALIAS that
# gives them in seconds, or for a row stored before, the Float64 seconds it had, kept under
# ``token_times_f64`` (renamed: a wide part's files are linked under the new name, a
# compact part, under 10 MB, is copied whole by ClickHouse). Inter-token gaps are
# milliseconds: rounding to the microsecond changes no analysis. A time past
# ``MAX_STORED_TIME_S`` (only with an infinite ``--max-latency``) is stored as that.
TIMES_F64 = "token_times_f64"
OFFSETS_TYPE = "Array(Int64)"
OFFSETS_CODEC = "Delta, ZSTD(1)"
MAX_STORED_TIME_S = 9e12  # seconds; in microseconds, within Int64
TO_MICROS = f"toInt64(round(least(x, {MAX_STORED_TIME_S!r}) * 1e6))"  # of seconds ``x``
TIMES_ALIAS = (
    f"if(empty(`token_offsets_us`), `{TIMES_F64}`, arrayMap(x -> x / 1e6, `token_offsets_us`))"
)

# The columns that only hold a field for its ALIAS (``token_times_s``): a whole row as a
# record shows has the ALIAS (``SELECT_STAR_SETTINGS``) and not these.
STORAGE_ONLY = frozenset({TIMES_F64, "token_offsets_us"})
# ``SELECT *`` with the ALIAS columns too (ClickHouse leaves them out by default).
SELECT_STAR_SETTINGS: dict[str, int] = {"asterisk_include_alias_columns": 1}

REQUEST_COLUMNS: tuple[Column, ...] = (
    text("request_id", required=True),
    text("replica", required=True, lc=True),
    real("t_arrival", required=True),
    text("deployment", lc=True),
    text("model", lc=True),
    text("engine", lc=True),
    text("engine_version", lc=True),
    text("tokenizer_fp", lc=True),
    text("template_fp", lc=True),
    real("queue_s"),
    real("prefill_s"),
    real("ttft_s"),
    real("e2e_s"),
    Column(  # an ALIAS (migration 10): the times stored as integers, read in seconds
        "token_times_s",
        "Array(Float64)",
        "Array(Float64)",
        "if(empty({c}), arrayMap(x -> x / 1e6, `token_offsets_us`), {c})",
        "isFinite(arraySum({c}))",
        raw=reals("token_times_s").raw,
        alias=TIMES_ALIAS,
    ),
    json_text("messages", "[", RAW_OBJ),
    text("prompt_text"),
    token_ids("prompt_ids"),
    text("output_text"),
    token_ids("output_ids"),
    reals("output_logprobs"),
    uint("cached_prompt_tokens", 32),
    uint("spec_draft_tokens", 32),
    uint("spec_accepted_tokens", 32),
    enum("finish_reason", ("stop", "length", "abort", "error")),
    json_text("sampling", "{"),
    text("error"),
    uint("v", 16, default=1),
    text("finish_reason_raw", lc=True),
    uint("prompt_tokens", 32),
    uint("output_tokens", 32),
    text("abort_message"),
    texts("derived"),
)

# Fields a request line may carry beside the columns above, each stored in a column of its
# own name that queries do not read: the per-token times in integer microseconds, filled from
# either form of the line (``token_times_s`` first, as the contract decoder does), which the
# ``token_times_s`` ALIAS reads back in seconds.
REQUEST_INPUTS: tuple[Column, ...] = (
    Column(
        "token_offsets_us",
        OFFSETS_TYPE,
        "Array(Int64)",
        f"if(empty(`token_times_s`), {{c}}, arrayMap(x -> {TO_MICROS}, `token_times_s`))",
        f"(empty({{c}}) OR (arrayMin({{c}}) >= 0 AND arrayMax({{c}}) <= {U32}))",
        raw=token_ids("token_offsets_us").raw,
    ),
)

GPU_COLUMNS: tuple[Column, ...] = (
    real("t", required=True),
    text("replica", required=True, lc=True),
    uint("gpu_index", 16, default=0),
    text("uuid", lc=True),
    real("power_w"),
    real("power_limit_w"),
    real("temp_c"),
    real("sm_clock_mhz"),
    real("mem_clock_mhz"),
    real("util_pct"),
    uint("mem_used_bytes", 64),
    texts("throttle_reasons"),
    real("energy_j"),
    boolean("simulated"),
    uint("v", 16, default=1),
    text("deployment", lc=True),
)

METRIC_COLUMNS: tuple[Column, ...] = (
    real("t", required=True),
    text("replica", required=True, lc=True),
    text("name", required=True, lc=True),
    enum("type", ("counter", "gauge", "histogram", "summary", "untyped"), default="untyped"),
    json_text("labels", "{", RAW_STR),
    real("value"),
    json_text("buckets", "{", RAW_NUM),
    real("sum"),
    real("count"),
    uint("v", 16, default=1),
)

EVENT_COLUMNS: tuple[Column, ...] = (
    real("t", required=True),
    text("replica", required=True, lc=True),
    text("name", required=True, lc=True),
    real("duration_s"),
    real("since_start_s"),
    text("deployment", lc=True),
    uint("pid", 32),
    json_text("detail", "{"),
    uint("v", 16, default=1),
)

PROFILE_COLUMNS: tuple[Column, ...] = (
    real("t", required=True),
    text("replica", required=True, lc=True),
    text("profile_id", required=True, lc=True),
    text("thread", required=True, lc=True),
    text("category", required=True, lc=True),
    text("stack", required=True),
    Column(
        "count",
        "UInt32",
        "Nullable(Int64)",
        "CAST(assumeNotNull({c}), 'UInt32')",
        f"({{c}} IS NOT NULL AND {{c}} BETWEEN 0 AND {U32})",
        raw=raw_int(U32),
    ),
    uint("pid", 32),
    real("rate_hz"),
    real("duration_s"),
    uint("v", 16, default=1),
)

FINDING_COLUMNS: tuple[Column, ...] = (
    text("kind", required=True, lc=True),
    text("analyzer", required=True, lc=True),
    enum("severity", ("info", "warning", "error"), required=True),
    text("summary", required=True),
    json_text("scope", "{"),
    json_text("values", "{"),
    json_text("evidence", "{"),
    real("t"),
    uint("v", 16, default=1),
)


@dataclass(frozen=True)
class Table:
    name: str
    kind: str  # contract kind whose records land here
    columns: tuple[Column, ...]
    order_by: str
    time_expr: str  # a DateTime expression for partitioning
    extra_guard: str = ""  # a fast-path condition beyond the columns' own (request_latency_guard)
    # What a load stores instead of the line's field, or in a column the contract lacks (that
    # the store added): (column, SQL expression of the read row, bound parameters only).
    # ``infdebug diff`` labels each row with its side this way as it loads.
    assign: tuple[tuple[str, str], ...] = ()
    # Fields read from a line (checked like columns) beside ``columns``, each stored in a
    # column of its own name that queries do not read (an ``alias`` column reads it):
    # ``REQUEST_INPUTS``. Not among the records' fields that ``columns`` give back.
    inputs: tuple[Column, ...] = ()

    @property
    def read_columns(self) -> tuple[Column, ...]:
        """The columns and the ``inputs``: every field a line is read and checked by."""
        return self.columns + self.inputs

    @property
    def stored_columns(self) -> tuple[Column, ...]:
        """What a load inserts: ``read_columns`` but the ``alias`` ones."""
        return tuple(c for c in self.read_columns if not c.alias)

    def ddl(self) -> str:
        """The ``CREATE TABLE`` of the migration that made the table: later ones change it
        (``ALTER``), so an ``alias`` column is here the plain column it was before its own
        migration turned it into an ALIAS, and the ``inputs`` are not here."""
        cols = ",\n  ".join(f"`{c.name}` {c.type}" for c in self.columns)
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name} (\n  {cols},\n"
            "  `_file` LowCardinality(String) DEFAULT '',\n"
            "  `_batch` UInt64 DEFAULT 0,\n"
            "  `_ingested_at` DateTime DEFAULT now()\n"
            ") ENGINE = MergeTree\n"
            f"PARTITION BY toDate({self.time_expr})\n"
            f"ORDER BY ({self.order_by})\n"
            f"TTL _ingested_at + toIntervalDay({RETENTION_MARK})"
        )

    def structure(self) -> str:
        """The ``file()``/``input()`` structure ClickHouse reads a JSONL line with.

        The ``kind`` tag is read too (as ``_kind``… except for findings, whose ``kind`` is a
        column of their own), so the fast path can check every line is of this table's kind.
        """
        cols = [f"`{c.name}` {c.read}" for c in self.read_columns]
        if self.kind != "finding":
            cols.append("`kind` Nullable(String)")
        return ", ".join(cols)

    def select_list(self) -> str:
        given = dict(self.assign)
        aliased = [c.name for c in self.columns if c.alias and c.name in given]
        if aliased:
            raise ValueError(f"{self.name}: {aliased[0]} is an ALIAS column, not stored")
        own = [given.pop(c.name, c.select) for c in self.stored_columns]
        return ", ".join([*own, *given.values()])

    def guard(self) -> str:
        """One condition every row must meet on the fast path (see ``Column``)."""
        kind = "position(`kind`, '.') > 0" if self.kind == "finding" else f"`kind` = '{self.kind}'"
        extra = [f"({self.extra_guard})"] if self.extra_guard else []
        checks = (c.guard for c in self.read_columns if c.check)
        return " AND ".join([kind, *checks, *extra])

    def line_guard(self, line: str = "line", fields: str = "fields") -> str:
        """A condition on one raw, non-blank JSONL ``line`` that holds only if ClickHouse's
        JSONEachRow reader reads it the way the contract decoder does; with ``guard`` on
        the parsed row, the fast path's whole check.

        ``fields`` is ``JSONExtractKeysAndValuesRaw(line)``, one simdjson parse of the line:
        empty unless the line is exactly one valid JSON object (strict JSON: no ``+1``,
        ``.5``, ``01``, ``1.``, ``NaN``, raw control characters, bad escapes, lone
        surrogates, invalid UTF-8, nor a second object after the first, as in ``{…}{…}``,
        ``{…},{…}``, ``{…}\\r{…}``). simdjson skips a byte-order mark, the contract does
        not, so a line that starts with one is doubted. Each field's JSON text must then
        meet its column's ``raw`` condition, because JSONEachRow (measured on chDB 26.9
        with ``JSONL_READ_SETTINGS``) reads ``"0.5"`` and ``["1"]`` as numbers, ``null``
        inside an array and null for a non-Optional scalar as the default, ``1``/``0`` as
        a Bool, an integer past 2^64 modulo 2^64, a JSON string where an array is kept as
        text, and a field name in any ASCII case as the column (``TTFT_S`` is ``ttft_s``),
        so a name that differs from a column's only in case is doubted too. Unknown fields
        may hold any JSON; it and the JSON columns' must not nest past ``MAX_NESTING``.
        """
        names = [c.name for c in self.read_columns]
        branches = [f"fk = '{c.name}', {c.raw_guard('fv')}" for c in self.read_columns]
        if self.kind != "finding":
            names.append("kind")
            branches.append(f"fk = 'kind', {RAW_STR.replace('{v}', 'fv')}")
        lowered = ", ".join(f"'{n.lower()}'" for n in names)
        unknown = RAW_SHALLOW.replace("{v}", "fv")  # any JSON, not nested too deeply
        per_field = f"multiIf({', '.join(branches)}, lowerUTF8(fk) IN ({lowered}), 0, {unknown})"
        return (
            f"notEmpty({fields}) AND NOT startsWith({line}, '\\xEF\\xBB\\xBF') "
            f"AND arrayAll((fk, fv) -> {per_field}, {fields}.1, {fields}.2)"
        )

    def insert_columns(self) -> str:
        own = [c.name for c in self.stored_columns]
        extra = [n for n, _ in self.assign if n not in own]
        return ", ".join(f"`{n}`" for n in [*own, *extra]) + ", `_file`, `_batch`"

    @property
    def json_columns(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns if c.json)


def _num(v: float) -> str:
    """A Float64 literal (ClickHouse reads ``inf`` as infinity)."""
    return "inf" if v == float("inf") else repr(float(v))


def request_latency_guard(ceiling_s: float, tol_abs_s: float, tol_rel: float) -> str:
    """Fast-path condition that every request latency is plausible (collectors/timing.py:
    not negative, not past ``ceiling_s``, not past ``e2e_s`` plus the tolerance). A row that
    fails it goes to the careful path, where ``sanitize_timing`` drops those fields."""
    lim = _num(ceiling_s)
    span = f"(`e2e_s` + greatest({_num(tol_abs_s)}, {_num(tol_rel)} * `e2e_s`))"
    conds = [f"(`e2e_s` IS NULL OR (`e2e_s` >= 0 AND `e2e_s` <= {lim}))"]
    for c in ("queue_s", "prefill_s", "ttft_s"):
        conds.append(
            f"(`{c}` IS NULL OR (`{c}` >= 0 AND `{c}` <= {lim} "
            f"AND (`e2e_s` IS NULL OR `{c}` <= {span})))"
        )
    conds.append(
        "(empty(`token_times_s`) OR (arrayMin(`token_times_s`) >= 0 "
        f"AND arrayMax(`token_times_s`) <= {lim} "
        f"AND (`e2e_s` IS NULL OR arrayMax(`token_times_s`) <= {span})))"
    )
    us = "(arrayMax(`token_offsets_us`) / 1e6)"  # the integer form, never negative
    conds.append(
        f"(empty(`token_offsets_us`) OR ({us} <= {lim} AND (`e2e_s` IS NULL OR {us} <= {span})))"
    )
    return " AND ".join(conds)


def _clamped_time(col: str) -> str:
    # A wild timestamp (0, 1e12) must not fail an insert; it lands in a clamped partition.
    return f"toDateTime(least(greatest({col}, 0), 4102444800))"


TABLES: dict[str, Table] = {
    "request": Table(
        "requests",
        "request",
        REQUEST_COLUMNS,
        "replica, t_arrival",
        _clamped_time("t_arrival"),
        inputs=REQUEST_INPUTS,
    ),
    "gpu": Table("gpu_samples", "gpu", GPU_COLUMNS, "replica, gpu_index, t", _clamped_time("t")),
    "metrics": Table(
        "metric_samples", "metrics", METRIC_COLUMNS, "replica, name, t", _clamped_time("t")
    ),
    "finding": Table(
        "findings", "finding", FINDING_COLUMNS, "severity, kind, _ingested_at", "_ingested_at"
    ),
    "event": Table("events", "event", EVENT_COLUMNS, "replica, t", _clamped_time("t")),
    "profile": Table(
        "profile_samples",
        "profile",
        PROFILE_COLUMNS,
        "replica, profile_id, thread",
        _clamped_time("t"),
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
OTEL_TRACES_DDL = """
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
TTL toDateTime(Timestamp) + toIntervalDay(__RETENTION_DAYS__)
SETTINGS ttl_only_drop_parts = 1
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]

    def sql(self, retention_days: int, trace_days: int | None = None) -> list[str]:
        """The statements to run, with the table TTL set to ``retention_days`` and the
        token arrays' column TTL to ``trace_days`` (default: the same)."""
        trace = str(int(trace_days if trace_days is not None else retention_days))
        return [
            s.replace(TRACE_RETENTION_MARK, trace).replace(RETENTION_MARK, str(int(retention_days)))
            for s in self.statements
        ]


TRACE_TTL = f" TTL _ingested_at + toIntervalDay({TRACE_RETENTION_MARK})"

# Ordered; never edit a released migration, append a new one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial tables: requests, gpu_samples, metric_samples, findings, ingest_state, "
        "otel_traces",
        tuple(t.ddl() for k, t in TABLES.items() if k not in ("event", "profile"))
        + (INGEST_STATE_DDL, OTEL_TRACES_DDL),
    ),
    Migration(2, "events: replica lifecycle (process start … shutdown)", (TABLES["event"].ddl(),)),
    Migration(3, "profile_samples: py-spy host stacks per replica", (TABLES["profile"].ddl(),)),
    Migration(
        4,
        "requests: prompt_text_hash, prompt_ids_hash (materialized at insert; "
        "what the drift analyzers "
        "group and sample by, without reading the prompts)",
        (
            "ALTER TABLE requests ADD COLUMN IF NOT EXISTS prompt_text_hash UInt64 "
            "MATERIALIZED cityHash64(ifNull(prompt_text, ''))",
            "ALTER TABLE requests ADD COLUMN IF NOT EXISTS prompt_ids_hash UInt64 "
            "MATERIALIZED cityHash64(prompt_ids)",
        ),
    ),
    Migration(
        5,
        "requests: finish_reason_raw, prompt_tokens, output_tokens, abort_message "
        "(engine-reported, additive)",
        (
            "ALTER TABLE requests ADD COLUMN IF NOT EXISTS finish_reason_raw "
            "LowCardinality(Nullable(String))",
            "ALTER TABLE requests ADD COLUMN IF NOT EXISTS prompt_tokens Nullable(UInt32)",
            "ALTER TABLE requests ADD COLUMN IF NOT EXISTS output_tokens Nullable(UInt32)",
            "ALTER TABLE requests ADD COLUMN IF NOT EXISTS abort_message Nullable(String)",
        ),
    ),
    Migration(
        6,
        "ingest_state: head_hash, tail_hash (what was read of a file is still its prefix), "
        "batches (the loads that gave its rows: store check finds files whose rows are gone)",
        (
            "ALTER TABLE ingest_state ADD COLUMN IF NOT EXISTS head_hash String DEFAULT ''",
            "ALTER TABLE ingest_state ADD COLUMN IF NOT EXISTS tail_hash String DEFAULT ''",
            "ALTER TABLE ingest_state ADD COLUMN IF NOT EXISTS batches Array(UInt64)",
        ),
    ),
    Migration(
        7,
        "gpu_samples: deployment (additive: GPU samples of one replica name in two "
        "deployments, or of the two sides of a diff, kept apart)",
        (
            "ALTER TABLE gpu_samples ADD COLUMN IF NOT EXISTS deployment "
            "LowCardinality(Nullable(String))",
        ),
    ),
    Migration(
        8,
        "requests: derived (additive: the fields a sidecar tracer computed itself, not the "
        "engine's)",
        ("ALTER TABLE requests ADD COLUMN IF NOT EXISTS derived Array(LowCardinality(String))",),
    ),
    Migration(
        9,
        "requests: codecs measured by bench/storage.py on the heavy columns (ZSTD(3) for "
        "token IDs and texts, FPC+ZSTD for token times) and a column TTL that may drop the "
        "token arrays before the rows (INFDEBUG_TRACE_RETENTION_DAYS); new parts and merges "
        "use them",
        tuple(
            f"ALTER TABLE requests MODIFY COLUMN {name} {typ} CODEC({codec}){ttl}"
            for name, typ, codec, ttl in (
                ("token_times_s", "Array(Float64)", "FPC, ZSTD(1)", TRACE_TTL),
                ("prompt_ids", "Array(UInt32)", "ZSTD(3)", TRACE_TTL),
                ("output_ids", "Array(UInt32)", "ZSTD(3)", TRACE_TTL),
                ("output_logprobs", "Array(Float64)", "ZSTD(3)", TRACE_TTL),
                ("prompt_text", "Nullable(String)", "ZSTD(3)", ""),
                ("output_text", "Nullable(String)", "ZSTD(3)", ""),
                ("messages", "Nullable(String)", "ZSTD(3)", ""),
            )
        ),
    ),
    Migration(
        10,
        "requests: the per-token times stored as integer microseconds from arrival "
        "(token_offsets_us, Delta+ZSTD); token_times_s an ALIAS that reads them in seconds, "
        "or a row stored before in its Float64 seconds, kept as token_times_f64 (renamed)",
        (
            f"ALTER TABLE requests RENAME COLUMN IF EXISTS token_times_s TO {TIMES_F64}",
            "ALTER TABLE requests ADD COLUMN IF NOT EXISTS token_offsets_us "
            f"{OFFSETS_TYPE} AFTER {TIMES_F64}",
            # Not MATERIALIZE TTL, as a MODIFY with a TTL does by default: it would rewrite
            # every part's token_times_f64, and the old parts hold no offsets to expire.
            f"ALTER TABLE requests MODIFY COLUMN token_offsets_us {OFFSETS_TYPE} "
            f"CODEC({OFFSETS_CODEC}){TRACE_TTL} SETTINGS materialize_ttl_after_modify = 0",
            "ALTER TABLE requests ADD COLUMN IF NOT EXISTS token_times_s Array(Float64) "
            f"ALIAS {TIMES_ALIAS} AFTER token_offsets_us",
        ),
    ),
)

MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  version UInt32,
  name String,
  applied_at DateTime DEFAULT now()
) ENGINE = MergeTree ORDER BY version
"""


def table_names() -> list[str]:
    """Every table infdebug creates: the contract kinds' tables, then the others (ingest
    state, OpenTelemetry spans, schema migrations), read from their DDL."""
    others = [
        m.group(1)
        for ddl in (INGEST_STATE_DDL, OTEL_TRACES_DDL, MIGRATIONS_DDL)
        for m in [re.search(r"CREATE TABLE IF NOT EXISTS (\w+)", ddl)]
        if m
    ]
    return [t.name for t in TABLES.values()] + others


# Settings for reading contract JSONL: as strict about types as JSONEachRow goes (a number
# is not read as a string), objects and arrays of objects kept as their JSON text. It still
# reads a quoted number as a number, a null as the default and more (``Table.line_guard``
# lists what the fast path checks on the raw line because of it).
JSONL_READ_SETTINGS: dict[str, int | str] = {
    "input_format_json_read_numbers_as_strings": 0,
    "input_format_json_read_bools_as_numbers": 0,
    "input_format_json_read_bools_as_strings": 0,
    "input_format_json_read_objects_as_strings": 1,
    "input_format_json_read_arrays_as_strings": 1,
    "input_format_json_try_infer_numbers_from_strings": 0,
    "input_format_json_ignore_unnecessary_fields": 0,  # skipped fields must still be valid JSON
    "input_format_json_throw_on_bad_escape_sequence": 1,
    "input_format_null_as_default": 1,
    "input_format_allow_errors_num": 0,
    "input_format_allow_errors_ratio": 0,
    "date_time_input_format": "best_effort",
    "throw_on_max_partitions_per_insert_block": 0,
    # Parse in 4 MB segments and blocks of 8192 rows, write parts of ~64 MB: measured on a
    # 1 GB file, peak RSS 1.85 GB instead of 2.3 GB at the same speed (bench/ingest.py).
    "min_chunk_bytes_for_parallel_parsing": 4 << 20,
    "max_insert_block_size": 8192,
    "min_insert_block_size_rows": 0,
    "min_insert_block_size_bytes": 64 << 20,
}
