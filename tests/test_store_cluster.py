"""The cluster schema (store/cluster.py): its DDL's shape against the single-node DDL for
every table, and its local tables' DDL, with the plain engine put back, run on chDB."""

from __future__ import annotations

import re

import pytest

from infdebug.errors import InputError
from infdebug.store.base import Store
from infdebug.store.cluster import SHARDING, Cluster, as_single_node
from infdebug.store.ddl import MIGRATIONS, MIGRATIONS_DDL, table_names

C = Cluster("fleet_c1", "infdebug")


def _create(stmts: list[str] | tuple[str, ...], name: str) -> str:
    hits = [s for s in stmts if re.match(rf"\s*CREATE TABLE IF NOT EXISTS \S*\b{name} ", s)]
    assert len(hits) == 1, (name, hits)
    return hits[0]


def _columns(ddl: str) -> str:
    """The column/index list between the first ``(`` and ``) ENGINE``, normalised."""
    body = ddl[ddl.index("(") + 1 : ddl.index(") ENGINE")]
    return re.sub(r"\s+", " ", body).strip()


def _after_engine(ddl: str) -> str:
    tail = ddl[ddl.index(") ENGINE") :]
    return re.sub(r"\s+", " ", re.sub(r"ENGINE = \w+(\([^)]*\))?", "", tail, count=1)).strip()


def _single_node_creates() -> dict[str, str]:
    out = {}
    for s in [st for m in MIGRATIONS for st in m.statements] + [MIGRATIONS_DDL]:
        m = re.match(r"\s*CREATE TABLE IF NOT EXISTS (\w+)", s)
        if m:
            out[m.group(1)] = s
    return out


def test_every_table_has_a_local_replicated_and_a_distributed_table() -> None:
    single = _single_node_creates()
    assert sorted(single) == sorted(table_names())
    rewritten = [s for m in C.migrations() for s in m.statements] + C.migrations_ddl()
    for name, plain in single.items():
        local = _create(rewritten, f"{name}_local")
        dist = _create(rewritten, name)
        engine = re.search(r"ENGINE = (\w+)", plain)
        assert engine
        zk = f"'/clickhouse/tables/{{shard}}/infdebug/{name}_local', '{{replica}}'"
        assert f"ENGINE = Replicated{engine.group(1)}({zk}" in local
        assert local.startswith(
            f"CREATE TABLE IF NOT EXISTS infdebug.{name}_local ON CLUSTER fleet_c1 ("
        )
        # the same columns, types, codecs, indexes, and PARTITION/ORDER/TTL/SETTINGS
        assert _columns(local) == _columns(plain)
        assert _after_engine(local) == _after_engine(plain)
        if "TTL" in plain:
            assert "TTL" in local
        assert dist == (
            f"CREATE TABLE IF NOT EXISTS infdebug.{name} ON CLUSTER fleet_c1 AS "
            f"infdebug.{name}_local ENGINE = Distributed(fleet_c1, infdebug, {name}_local, "
            f"{SHARDING[name]})"
        )


def test_engine_arguments_are_kept_after_the_zookeeper_path() -> None:
    rewritten = [s for m in C.migrations() for s in m.statements]
    local = _create(rewritten, "ingest_state_local")
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/infdebug/" in local
    assert local.rstrip().endswith("'{replica}', updated_at)\nORDER BY content_id")


def test_alters_go_to_the_local_tables_and_add_or_rename_column_to_the_distributed_too() -> None:
    for plain, rewritten in zip(MIGRATIONS, C.migrations(), strict=True):
        assert (plain.version, plain.name) == (rewritten.version, rewritten.name)
        for stmt in plain.statements:
            m = re.match(r"ALTER TABLE (\w+) (.*)", stmt, re.S)
            if not m:
                continue
            t, action = m.groups()
            assert f"ALTER TABLE infdebug.{t}_local ON CLUSTER fleet_c1 {action}" in (
                rewritten.statements
            )
            dist = f"ALTER TABLE infdebug.{t} ON CLUSTER fleet_c1 {action}"
            both = action.startswith(("ADD COLUMN", "RENAME COLUMN"))
            assert (dist in rewritten.statements) == both


def test_migration_10_keeps_the_distributed_table_reading_token_times_s() -> None:
    """The rename, the integer column and the ALIAS go to the Distributed table as to the
    local ones (an ALIAS there reads the columns it names); the codec and column TTL, which
    a Distributed table does not take, to the local tables only."""
    [m10] = [m for m in C.migrations() if m.version == 10]
    local = [s for s in m10.statements if "requests_local " in s]
    dist = [s for s in m10.statements if "infdebug.requests " in s]
    assert len(local) == 4 and len(dist) == 3
    assert [s.split(" ON CLUSTER fleet_c1 ")[1].split(" ")[0:2] for s in dist] == [
        ["RENAME", "COLUMN"],
        ["ADD", "COLUMN"],
        ["ADD", "COLUMN"],
    ]
    assert "RENAME COLUMN IF EXISTS token_times_s TO token_times_f64" in dist[0]
    assert "token_offsets_us Array(Int64) AFTER token_times_f64" in dist[1]
    assert "token_times_s Array(Float64) ALIAS if(empty(`token_offsets_us`)" in dist[2]
    assert not any("CODEC" in s or "TTL" in s for s in dist)
    [modify] = [s for s in local if " MODIFY COLUMN " in s]
    assert "CODEC(Delta, ZSTD(1)) TTL" in modify
    assert modify.endswith("SETTINGS materialize_ttl_after_modify = 0")


def test_a_cluster_migration_run_again_skips_a_rename_done(tmp_path) -> None:
    """``apply_statement`` asks the named table (database-qualified on a cluster) whether
    a rename was done; the local statements, engine swapped back, on chDB."""
    from infdebug.store.base import apply_statement
    from infdebug.store.client import open_embedded

    st = open_embedded(str(tmp_path / "rerun"))
    try:
        st.command("CREATE DATABASE IF NOT EXISTS infdebug")
        st.command(
            "CREATE TABLE infdebug.requests_local (token_times_s Array(Float64), "
            "_ingested_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY tuple()"
        )
        st.command("INSERT INTO infdebug.requests_local (token_times_s) VALUES ([0.5, 1.25])")
        [m10] = [m for m in C.migrations() if m.version == 10]
        stmts = [re.sub(r" ON CLUSTER \w+", "", s) for s in m10.sql(30) if "requests_local " in s]
        for _ in range(2):
            for s in stmts:
                apply_statement(st, s)
        _, rows = st.query("SELECT token_times_s, token_times_f64 FROM infdebug.requests_local")
        assert rows == [([0.5, 1.25], [0.5, 1.25])]
    finally:
        st.close()


@pytest.mark.parametrize("bad", ["", "a-b", "x; DROP TABLE requests", "1abc", "a b", "`x`"])
def test_identifiers_are_checked(bad: str) -> None:
    with pytest.raises(InputError):
        Cluster(bad, "infdebug")
    with pytest.raises(InputError):
        Cluster("c", bad)


def test_local_tables_ddl_runs_on_chdb_with_the_plain_engine(tmp_path) -> None:
    """Every rewritten local-table statement, engine swapped back, runs on chDB; the result
    has the same columns (names, types, codecs) as the single-node schema."""
    from infdebug.store import open_store
    from infdebug.store.client import open_embedded

    st = open_embedded(str(tmp_path / "cluster"))
    try:
        for stmt in [*C.migrations_ddl(), *(s for m in C.migrations() for s in m.sql(30))]:
            if (
                " ENGINE = Distributed(" in stmt
                or re.match(r"ALTER TABLE infdebug\.\w+ ON", stmt)
                and "_local " not in stmt
            ):
                continue
            st.command(as_single_node(stmt))
        local = st.query(
            "SELECT replaceRegexpOne(table, '_local$', ''), name, type, compression_codec, "
            "default_kind, default_expression FROM system.columns "
            "WHERE database = currentDatabase() ORDER BY table, position"
        )[1]
    finally:
        st.close()
    plain = open_store(home=str(tmp_path / "plain"))
    try:
        single = plain.query(
            "SELECT table, name, type, compression_codec, default_kind, default_expression "
            "FROM system.columns WHERE database = currentDatabase() ORDER BY table, position"
        )[1]
    finally:
        plain.close()
    assert local == single


def test_mutations_name_the_local_tables_on_a_cluster_and_the_table_itself_on_one_node(
    store: Store,
) -> None:
    from infdebug.store.cluster import distributed_parts, mutation_target

    c = Cluster("fleet", "infdebug")
    dist = [s for s in c.migrations_ddl() if "ENGINE = Distributed(" in s]
    assert dist
    for stmt in dist:
        engine = stmt[stmt.index("Distributed(") :]
        parts = distributed_parts(engine)
        assert parts is not None and parts[0] == "fleet" and parts[1] == "infdebug"
        assert parts[2].endswith("_local")
    # as system.tables writes it (quoted)
    assert distributed_parts("Distributed('fleet', 'infdebug', 'requests_local', rand())") == (
        "fleet",
        "infdebug",
        "requests_local",
    )
    assert distributed_parts("Distributed('x; DROP TABLE y', 'db', 't')") is None
    with pytest.raises(InputError):
        distributed_parts(f"Distributed('{'c' * 70}', 'db', 't')")
    assert distributed_parts("MergeTree ORDER BY t") is None
    assert mutation_target(store, "requests") == "requests"  # one node: the table itself
