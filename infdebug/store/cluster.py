"""The store's schema on a ClickHouse cluster: each table as a replicated ``<name>_local``
on every node plus a ``Distributed`` table under its own name, so every query runs as is.

Nothing here is written by hand a second time: each migration's statements (store/ddl.py,
generated from the tables' ``Column``s) are rewritten. ``CREATE TABLE name (…) ENGINE = X``
becomes ``CREATE TABLE db.name_local ON CLUSTER c (…) ENGINE = ReplicatedX('/clickhouse/
tables/{shard}/db/name_local', '{replica}')`` with the same columns, codecs, PARTITION BY,
ORDER BY, TTL, indexes and settings, then ``CREATE TABLE db.name ON CLUSTER c AS
db.name_local ENGINE = Distributed(c, db, name_local, <sharding key>)``. ``ALTER TABLE name
ADD COLUMN`` and ``RENAME COLUMN`` go to both (the Distributed table must know a column to
read it, an ALIAS and the columns it reads included: migration 10); other ALTERs (codecs,
column TTLs, settings) to the local tables only, which is why migration 10 adds its column
plain and sets its codec and TTL with a ``MODIFY COLUMN`` of its own.

Sharding keys (``SHARDING``) keep together what the queries aggregate: the analyzers compare
replicas (latency, outputs, GPU samples, events per replica) and join a replica's requests to
its GPU samples by time, so every per-replica table is sharded by ``cityHash64(replica)``:
one replica's rows live on one shard and ``GROUP BY replica`` is complete per shard
(``optimize_distributed_group_by_sharding_key``). A fleet of 1,000 replicas spreads evenly
over a few shards this way; a single replica past one shard's capacity would not (shard
requests by ``cityHash64(request_id)`` then, at the cost of per-shard partial aggregates).
``ingest_state`` is a ReplacingMergeTree read ``FINAL``, which collapses rows only within a
shard: its key is ``content_id``, so the versions of one file's state meet on one shard.
Spans go by ``TraceId`` (a trace's spans together). Findings and migrations are small.

Identifiers (cluster, database) are checked against a strict pattern, never quoted from raw
input. Nothing in this repository ran against a real cluster (see README, "Beyond one
machine"); the tests compare the rewritten DDL with the single-node DDL and run the local
tables' DDL, with the plain engine put back, on chDB.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

from infdebug.errors import InputError
from infdebug.store.base import Store, apply_statement
from infdebug.store.ddl import MIGRATIONS, MIGRATIONS_DDL, Migration

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

SHARDING: dict[str, str] = {
    "requests": "cityHash64(replica)",
    "gpu_samples": "cityHash64(replica)",
    "metric_samples": "cityHash64(replica)",
    "events": "cityHash64(replica)",
    "profile_samples": "cityHash64(replica)",
    "findings": "rand()",
    "ingest_state": "cityHash64(content_id)",
    "otel_traces": "cityHash64(TraceId)",
    "schema_migrations": "version",
}

# ALTERs of the columns a query names, which the Distributed table must know as the local
# tables do (an ALIAS, or the columns one reads); the rest (codecs, TTLs) only the local.
BOTH_ALTERS = ("ADD COLUMN", "RENAME COLUMN")

_CREATE = re.compile(r"^\s*CREATE TABLE IF NOT EXISTS (\w+) \(", re.S)
_ENGINE = re.compile(r"\) ENGINE = (\w*MergeTree)(?:\(([^)]*)\))?")
_ALTER = re.compile(r"^\s*ALTER TABLE (\w+) (.*)$", re.S)


def ident(value: str, what: str) -> str:
    """``value`` if it is a plain ClickHouse identifier, else an ``InputError``."""
    if not IDENT.match(value or ""):
        raise InputError(
            f"{what} {value!r} is not a plain identifier (letters, digits, _; at most 63)"
        )
    return value


@dataclass(frozen=True)
class Cluster:
    """Where the schema goes: a cluster of ``remote_servers`` and the database on it."""

    name: str
    database: str

    def __post_init__(self) -> None:
        ident(self.name, "cluster name")
        ident(self.database, "database")

    def zk_path(self, local: str) -> str:
        return f"/clickhouse/tables/{{shard}}/{self.database}/{local}"

    def rewrite(self, stmt: str) -> list[str]:
        """One single-node statement as the statements that do it on the cluster."""
        db, on = self.database, f"ON CLUSTER {self.name}"
        m = _CREATE.match(stmt)
        if m:
            name = m.group(1)
            local = f"{name}_local"
            key = SHARDING.get(name)
            if key is None:
                raise InputError(f"no sharding key for table {name} (store/cluster.py)")
            e = _ENGINE.search(stmt)
            if e is None:
                raise InputError(f"table {name}: no MergeTree engine to replicate")
            args = ", ".join(
                a for a in (f"'{self.zk_path(local)}'", "'{replica}'", e.group(2) or "") if a
            )
            body = stmt[m.end() : e.start()]
            rest = stmt[e.end() :]
            create_local = (
                f"CREATE TABLE IF NOT EXISTS {db}.{local} {on} ({body}) "
                f"ENGINE = Replicated{e.group(1)}({args}){rest}"
            )
            create_dist = (
                f"CREATE TABLE IF NOT EXISTS {db}.{name} {on} AS {db}.{local} "
                f"ENGINE = Distributed({self.name}, {db}, {local}, {key})"
            )
            return [create_local.strip(), create_dist]
        a = _ALTER.match(stmt)
        if a:
            name, action = a.group(1), a.group(2).strip()
            out = [f"ALTER TABLE {db}.{name}_local {on} {action}"]
            if action.upper().startswith(BOTH_ALTERS):
                out.append(f"ALTER TABLE {db}.{name} {on} {action}")
            return out
        raise InputError(f"cannot rewrite for a cluster: {stmt.strip()[:80]}")

    def migrations(self) -> tuple[Migration, ...]:
        """``MIGRATIONS`` rewritten for the cluster (same versions and names)."""
        return tuple(
            Migration(m.version, m.name, tuple(s for st in m.statements for s in self.rewrite(st)))
            for m in MIGRATIONS
        )

    def migrations_ddl(self) -> list[str]:
        return self.rewrite(MIGRATIONS_DDL)


def as_single_node(stmt: str) -> str:
    """A rewritten local-table statement with ``ON CLUSTER``, the database and the
    Replicated engine taken out again: what the tests run on chDB, so a syntax error in the
    rewrite cannot pass."""
    s = re.sub(r" ON CLUSTER \w+", "", stmt)
    s = re.sub(r"\b\w+\.(\w+)_local\b", r"\1_local", s)
    return re.sub(
        r"ENGINE = Replicated(\w*MergeTree)\('[^']*', '\{replica\}'(?:, ([^)]*))?\)",
        lambda m: f"ENGINE = {m.group(1)}" + (f"({m.group(2)})" if m.group(2) else ""),
        s,
    )


def migrate_cluster(store: Store, cluster: Cluster) -> list[int]:
    """Apply the pending migrations on ``cluster`` (``ON CLUSTER``: every node at once);
    returns the versions applied. ``store`` is one of its nodes (``--clickhouse``)."""
    from infdebug import settings

    for stmt in cluster.migrations_ddl():
        store.command(stmt)
    table = f"{cluster.database}.schema_migrations"
    _, rows = store.query(f"SELECT max(version) FROM {table}")
    current = int(rows[0][0] or 0) if rows else 0
    applied = []
    retention = settings.retention_days()
    for m in cluster.migrations():
        if m.version <= current:
            continue
        for stmt in m.sql(retention, settings.trace_retention_days()):
            apply_statement(store, stmt)
        store.command(
            f"INSERT INTO {table} (version, name) VALUES ({{v:UInt32}}, {{n:String}})",
            {"v": m.version, "n": m.name},
            settings={"insert_distributed_sync": 1},
        )
        applied.append(m.version)
    return applied


# -- mutations on a cluster ------------------------------------------------------------------
_DIST = re.compile(r"^\s*Distributed\(\s*'?(\w+)'?\s*,\s*'?(\w+)'?\s*,\s*'?(\w+)'?")
_TARGETS: weakref.WeakKeyDictionary[Store, dict[str, str]] = weakref.WeakKeyDictionary()


def distributed_parts(engine_full: str) -> tuple[str, str, str] | None:
    """(cluster, database, local table) of a ``Distributed`` table's ``engine_full``."""
    m = _DIST.match(engine_full or "")
    if m is None:
        return None
    cluster, db, local = m.groups()
    return ident(cluster, "cluster name"), ident(db, "database"), ident(local, "table")


def mutation_target(store: Store, table: str) -> str:
    """What ``ALTER TABLE … DELETE`` of ``table`` names: the table itself on one node; on a
    cluster schema (``table`` is Distributed, which takes no mutation) its local table on
    every node, ``db.table_local ON CLUSTER c``. Asked of ``system.tables`` once per store."""
    try:
        cache = _TARGETS.setdefault(store, {})
    except TypeError:  # a store that takes no weak reference: ask each time
        cache = {}
    if table not in cache:
        _, rows = store.query(
            "SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
            "AND name = {t:String}",
            {"t": table},
        )
        parts = distributed_parts(str(rows[0][0])) if rows else None
        cache[table] = (
            f"{parts[1]}.{parts[2]} ON CLUSTER {parts[0]}" if parts is not None else table
        )
    return cache[table]
