"""``infdebug query`` is read-only by default, parameters are bound exactly as given, file names
survive the store, and a store error is one line (JSON under --json) on every command.

Against a real chDB store in a temporary directory: in process through click's CliRunner where
that is safe, as a separate process (its own session, so a SIGTERM to its process group cannot
reach pytest) where it is not.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import REPO, copy_home, make_request
from hypothesis import HealthCheck, given, settings
from strategies import text

from infdebug.cli import cli
from infdebug.schema import encode_records
from infdebug.store import open_store

# Values a parameter must keep exactly: backslashes (alone, before letters, at the end),
# quotes, tabs, newlines, unicode, control characters, ClickHouse's NULL spelling, markup.
ODD_VALUES = [
    "a\\x41",
    "x\\",
    "\\",
    "\\\\",
    "\\N",
    "\\t\\n\\0",
    "it's",
    'say "hi"',
    "back`tick",
    "tab\there",
    "line\nbreak",
    "cr\rlf",
    "é 😀 日本",
    "\x01\x02\x1b[31m\x7f",
    "{x:String} %s %(x)s $$",
    "[bold]not markup[/]",
    "",
]


@pytest.fixture(autouse=True)
def _embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFDEBUG_CLICKHOUSE_URL", raising=False)
    monkeypatch.delenv("INFDEBUG_MAX_LATENCY_S", raising=False)


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store holding six requests (r0, r1, r2 twice each), ingested once per module."""
    root = tmp_path_factory.mktemp("seeded")
    h = str(root / "home")
    f = root / "seed.jsonl"
    f.write_bytes(encode_records([make_request(i) for i in range(6)]))
    with pytest.MonkeyPatch.context() as mp:  # the autouse fixture is per test
        mp.delenv("INFDEBUG_CLICKHOUSE_URL", raising=False)
        mp.delenv("INFDEBUG_MAX_LATENCY_S", raising=False)
        invoke(h, "ingest", str(f))
    return h


@pytest.fixture
def home(seeded_home: str, tmp_path: Any) -> str:
    """A store holding six requests (r0, r1, r2 twice each): a copy of ``seeded_home``."""
    return copy_home(seeded_home, str(tmp_path / "home"))


def invoke(home: str, *args: str, code: int | None = 0) -> Any:
    res = CliRunner().invoke(cli, ["--home", home, *args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    if code is not None:
        assert res.exit_code == code, res.output
    return res


def run(home: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in a session of its own."""
    env = {**os.environ, "INFDEBUG_HOME": home, "COLUMNS": "200"}
    env.pop("INFDEBUG_CLICKHOUSE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "infdebug.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        start_new_session=True,
    )


def rows(home: str, sql: str, *params: str, write: bool = False) -> list[dict[str, Any]]:
    args = [a for p in params for a in ("-p", p)] + (["--write"] if write else [])
    out: list[dict[str, Any]] = json.loads(invoke(home, "query", sql, *args, "--json").stdout)
    return out


def refused(home: str, *args: str) -> str:
    """Run ``query`` expecting a refusal; its one line on stderr."""
    res = invoke(home, "query", *args, code=2)
    assert res.stdout == "", res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def request_count(home: str) -> int:
    return int(rows(home, "SELECT count() AS n FROM requests")[0]["n"])


# --- read-only by default --------------------------------------------------------------------


def test_one_statement_only(home: str) -> None:
    msg = refused(home, "SELECT 1; DROP TABLE requests")
    assert "one statement at a time" in msg and "--write" in msg
    for sql in ("SELECT 1;\nDROP TABLE requests", "SELECT 1; -- x\nDROP TABLE requests;"):
        assert "one statement" in refused(home, sql)
    assert request_count(home) == 6
    # a trailing semicolon or comment is still one statement
    assert rows(home, "SELECT 1 AS one; -- done") == [{"one": 1}]
    assert rows(home, "SELECT 2 AS two;;") == [{"two": 2}]
    assert "no SQL statement" in refused(home, " -- nothing ")


WRITES = [
    "INSERT INTO requests (request_id, replica, t_arrival) VALUES ('x', 'r9', 1)",
    "INSERT INTO requests (request_id, replica, t_arrival) SELECT 'x', 'r9', 1",
    "ALTER TABLE requests DELETE WHERE 1",
    "DELETE FROM requests WHERE 1",
    "TRUNCATE TABLE requests",
    "DROP TABLE requests",
    "CREATE TABLE scratch (a String) ENGINE = Memory",
    "RENAME TABLE requests TO r2",
    "OPTIMIZE TABLE requests FINAL",
    "SET max_threads = 1",
    "USE system",
]


def test_writes_are_refused(home: str) -> None:
    for sql in WRITES:
        msg = refused(home, sql)
        assert "refused" in msg, (sql, msg)
        assert request_count(home) == 6, sql
    assert rows(home, "SELECT count() AS n FROM system.tables WHERE name = 'scratch'") == [{"n": 0}]
    assert "read-only by default" in refused(home, "DROP TABLE requests")


def test_settings_changes_are_refused(home: str) -> None:
    res = invoke(home, "query", "SELECT 1 SETTINGS max_threads = 1", code=2)
    assert "readonly" in res.stderr and "--write" in res.stderr


def test_files_are_neither_read_nor_written(home: str, tmp_path: Any) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-LINE\n")
    out = tmp_path / "out.tsv"
    for sql in (
        f"SELECT * FROM file('{secret}', 'LineAsString')",
        f"SELECT line FROM file('{secret}', 'LineAsString', 'line String')",
        f"SELECT file('{secret}')",
        f"SELECT length(file('{secret}')) AS n",
        f"SELECT * FROM requests WHERE request_id IN (SELECT * FROM file('{secret}'))",
        f"SELECT * FROM view(SELECT file('{secret}'))",
        f"SELECT * FROM fileCluster('default', '{secret}', 'LineAsString')",
        f"SELECT * FROM sqlite('{secret}', 't')",
        "SELECT * FROM file('../../../../etc/passwd', 'LineAsString')",
    ):
        res = invoke(home, "query", sql, "--json", code=2)
        assert "TOP-SECRET" not in res.stdout and "root:" not in res.stdout, sql
        assert "refused" in json.loads(res.stdout)["error"], sql
    for sql in (
        f"INSERT INTO FUNCTION file('{out}', 'TSV', 'a String') SELECT 'x'",
        f"SELECT * FROM requests INTO OUTFILE '{out}'",
        f"SELECT 1 INTO OUTFILE '{out}' APPEND",
        f"EXPLAIN SELECT 1 INTO OUTFILE '{out}'",
        "INSERT INTO FUNCTION file('../../escape.tsv', 'TSV', 'a String') SELECT 'x'",
    ):
        assert "refused" in refused(home, sql), sql
        assert not out.exists(), sql
    assert not os.path.exists(os.path.join(os.path.dirname(home), "..", "escape.tsv"))


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"leaked\n")

    do_HEAD = do_GET
    do_POST = do_GET
    do_PUT = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    _Recorder.hits = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


def test_no_network_or_processes(home: str, http_server: str) -> None:
    url = f"http://{http_server}/bucket/key.csv"
    for sql in (
        f"SELECT * FROM url('{url}', 'LineAsString')",
        f"SELECT * FROM url('{url}', 'LineAsString', 'x String')",
        f"SELECT * FROM s3('{url}', 'LineAsString', 'x String')",
        f"SELECT * FROM urlCluster('default', '{url}', 'LineAsString')",
        f"SELECT * FROM remote('{http_server}', system.one)",
        f"SELECT * FROM remoteSecure('{http_server}', system.one)",
        "SELECT * FROM cluster('default', system.one)",
        "SELECT * FROM clusterAllReplicas('default', system.one)",
        f"SELECT * FROM mysql('{http_server}', 'd', 't', 'u', 'p')",
        f"SELECT * FROM postgresql('{http_server}', 'd', 't', 'u', 'p')",
        f"SELECT * FROM azureBlobStorage('{url}', 'c', 'b', 'CSV')",
        f"SELECT * FROM hdfs('hdfs://{http_server}/x', 'CSV', 'x String')",
        "SELECT * FROM executable('x.sh', 'TSV', 'x String')",
        "SELECT * FROM jdbc('x', 'y', 'z')",
        "SELECT * FROM odbc('x', 'y', 'z')",
        "SELECT * FROM input('x String')",
        "SELECT * FROM python('x')",
        f"SELECT 1 IN (SELECT * FROM url('{url}', 'LineAsString'))",
        f"SELECT * FROM requests AS r JOIN url('{url}', 'LineAsString', 'x String') AS u ON 1",
    ):
        res = invoke(home, "query", sql, "--json", code=2)
        assert "refused" in json.loads(res.stdout)["error"], sql
        assert "leaked" not in res.stdout
    for sql in (
        "KILL QUERY WHERE 1",
        f"BACKUP TABLE requests TO S3('{url}')",
        f"RESTORE TABLE requests FROM S3('{url}')",
        "SYSTEM FLUSH LOGS",
        "ATTACH TABLE x FROM '/tmp/x' (a String) ENGINE = MergeTree ORDER BY a",
    ):
        assert "refused" in refused(home, sql), sql
    assert _Recorder.hits == []


def test_system_shutdown_is_refused_and_kills_nothing(home: str) -> None:
    # chDB's SYSTEM SHUTDOWN signals the whole process group of the process that runs it.
    for args in (
        ["SYSTEM SHUTDOWN; SELECT 1"],
        ["SYSTEM SHUTDOWN"],
        ["--write", "SYSTEM SHUTDOWN; SELECT 1"],
    ):
        p = run(home, "query", *args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert "refused" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert "SYSTEM" in p.stderr


def test_ordinary_reads_still_work(home: str) -> None:
    assert rows(
        home, "SELECT replica, count() AS n FROM requests GROUP BY replica ORDER BY replica"
    ) == [{"replica": "r0", "n": 2}, {"replica": "r1", "n": 2}, {"replica": "r2", "n": 2}]
    q = rows(home, "SELECT quantileExact(0.99)(ttft_s) AS p FROM requests")
    assert q[0]["p"] == pytest.approx(0.025)
    assert rows(home, "SELECT groupUniqArrayArray(prompt_ids) AS ids FROM requests WHERE 0") == [
        {"ids": []}
    ]
    tables = rows(
        home, "SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name"
    )
    assert {"requests", "gpu_samples", "findings"} <= {t["name"] for t in tables}
    assert rows(home, "SELECT count() AS n FROM requests WHERE request_id LIKE 'req-%'") == [
        {"n": 6}
    ]
    got = rows(home, "SELECT request_id FROM requests WHERE replica = {r:String} LIMIT 5", "r=r1")
    assert sorted(r["request_id"] for r in got) == ["req-1", "req-4"]
    assert rows(home, "WITH 2 AS k SELECT number * k AS x FROM numbers(3)") == [
        {"x": 0},
        {"x": 2},
        {"x": 4},
    ]
    assert rows(home, "SELECT * FROM view(SELECT 1 AS a) UNION ALL SELECT 2") == [
        {"a": 1},
        {"a": 2},
    ]
    assert invoke(home, "query", "DESCRIBE TABLE requests").exit_code == 0
    assert invoke(home, "query", "SHOW TABLES").exit_code == 0
    assert invoke(home, "query", "EXPLAIN SELECT count() FROM requests").exit_code == 0
    assert "FORMAT" in refused(home, "SELECT 1 FORMAT JSON")


def test_the_readonly_session_leaves_the_store_writable(tmp_path: Any) -> None:
    from infdebug.store.user_sql import QueryRefused, run_sql

    st = open_store(home=str(tmp_path / "home"))
    try:
        assert run_sql(st, "SELECT getSetting('readonly') AS ro").rows == [(1,)]
        with pytest.raises(QueryRefused):
            run_sql(st, "INSERT INTO findings (kind) SELECT 'x'")
        st.command("CREATE TABLE t (a String) ENGINE = Memory")  # the store's own session writes
        st.command("INSERT INTO t VALUES ('ok')")
        assert st.query("SELECT a, getSetting('readonly') FROM t")[1] == [("ok", 0)]
    finally:
        st.close()


# --- --write ---------------------------------------------------------------------------------


def test_write_runs_several_statements_and_still_refuses_the_outside(
    home: str, tmp_path: Any, http_server: str
) -> None:
    help_text = invoke(home, "query", "--help").stdout
    assert "--write" in help_text and "operator" in help_text
    out = rows(
        home,
        "CREATE TABLE scratch (a String) ENGINE = MergeTree ORDER BY a;\n"
        "INSERT INTO scratch SELECT {v:String};\n"
        "SELECT a, length(a) AS n FROM scratch -- the last statement's rows are shown\n;",
        "v=x\\y",
        write=True,
    )
    assert out == [{"a": "x\\y", "n": 3}]
    invoke(home, "query", "--write", "ALTER TABLE requests DELETE WHERE replica = 'r0'")
    assert request_count(home) == 4
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-LINE\n")
    url = f"http://{http_server}/x.csv"
    for sql in (
        f"SELECT 1; SELECT * FROM file('{secret}', 'LineAsString')",  # checked before any runs
        f"INSERT INTO scratch SELECT * FROM url('{url}', 'LineAsString')",
        f"INSERT INTO FUNCTION file('{tmp_path}/o.tsv', 'TSV', 'a String') SELECT 'x'",
        f"INSERT INTO scratch FROM INFILE '{secret}' FORMAT LineAsString",
        "INSERT INTO scratch VALUES ('inline')",
        f"CREATE TABLE u (a String) ENGINE = URL('{url}', CSV)",
        f"CREATE TABLE f (a String) ENGINE = File(CSV, '{secret}')",
        f"CREATE TABLE s AS s3('{url}', 'CSV', 'a String')",
        f"CREATE VIEW v AS SELECT * FROM url('{url}', 'LineAsString')",
        f"CREATE TABLE d (a String) ENGINE = MergeTree ORDER BY a "
        f"SETTINGS disk = disk(type = s3, endpoint = '{url}')",
        f"CREATE DICTIONARY dd (k UInt64) PRIMARY KEY k SOURCE(HTTP(url '{url}' format 'TSV')) "
        "LAYOUT(FLAT()) LIFETIME(0)",
        "CREATE DATABASE m ENGINE = MySQL('h:1', 'd', 'u', 'p')",
        "ALTER TABLE requests FREEZE",
        "SET dialect = 'prql'",
        "SYSTEM SHUTDOWN",
        "KILL QUERY WHERE 1",
        f"BACKUP TABLE requests TO S3('{url}')",
    ):
        msg = refused(home, "--write", sql)
        assert "refused" in msg, (sql, msg)
    assert _Recorder.hits == []
    assert not (tmp_path / "o.tsv").exists()
    assert rows(home, "SELECT a FROM scratch") == [{"a": "x\\y"}]


# --- parameters are bound exactly as given -------------------------------------------------


def test_query_parameters_are_bound_literally(home: str) -> None:
    for v in ODD_VALUES:
        got = rows(home, "SELECT {v:String} AS v, length({v:String}) AS n", f"v={v}")
        assert got == [{"v": v, "n": len(v.encode())}], repr(v)
    got = rows(home, "SELECT {a:String} AS a, {b:Nullable(String)} AS b", "a=x\\", "b=\\N")
    assert got == [{"a": "x\\", "b": "\\N"}]
    # a placeholder of another type takes ClickHouse's text of that type, as written
    got = rows(
        home,
        "SELECT {l:Array(String)} AS l, {n:Array(UInt32)} AS n, {d:Date} AS d, {f:Float64} AS f",
        "l=['it\\'s', 'c\\\\d', 'tab\there']",
        "n=[1, 2, 4294967295]",
        "d=2025-01-31",
        "f=-1.5e3",
    )
    assert got == [
        {
            "l": ["it's", "c\\d", "tab\there"],
            "n": [1, 2, 4294967295],
            "d": "2025-01-31",
            "f": -1500.0,
        }
    ]
    got = rows(
        home, "SELECT count() AS n FROM requests WHERE has({r:Array(String)}, replica)", "r=['r1']"
    )
    assert got == [{"n": 2}]
    assert "the SQL has no {x:Type}" in refused(home, "SELECT '%s'", "-p", "x=1")
    assert "given twice" in refused(home, "SELECT {x:String}", "-p", "x=1", "-p", "x=2")
    assert "parameter name" in refused(home, "SELECT 1", "-p", "a b=1")
    res = invoke(home, "query", "SELECT {x:String}", code=2)
    assert "-p" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def bare_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    st = open_store(home=str(tmp_path_factory.mktemp("bare") / "home"))
    yield st
    st.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=text, more=text)
def test_any_text_binds_as_itself(bare_store: Any, value: str, more: str) -> None:
    from infdebug.store.user_sql import run_sql

    sql = "SELECT {v:String} AS v, {l:Array(String)} AS l, {v:String} = {w:String} AS same"
    params = {"v": value, "l": [value, more], "w": more}
    assert bare_store.query(sql, params)[1] == [(value, [value, more], value == more)]
    checked = run_sql(bare_store, sql, {"v": value, "w": more, "l": f"[{_quoted(value)}]"})
    assert checked.rows == [(value, [value], value == more)]


def _quoted(s: str) -> str:
    """A ClickHouse string literal (for an Array(String) parameter given as text, as -p does)."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_store_queries_bind_replica_names_literally(tmp_path: Any) -> None:
    h = str(tmp_path / "home")
    names = ["x\\", "a\\x41", "it's", "tab\tname", 'q"u`o', "é😀"]
    f = tmp_path / "odd.jsonl"
    f.write_bytes(
        encode_records([make_request(i, replica=n) for i, n in enumerate(names)])
        + encode_records([make_request(10, replica="aA")])
    )
    invoke(h, "ingest", str(f))
    for n in names:
        out = json.loads(invoke(h, "stats", "--replica", n, "--json").stdout)["replicas"]
        assert [(r["replica"], r["requests"]) for r in out] == [(n, 1)], repr(n)
    # analyze binds the replicas as an Array(String)
    chosen = [a for n in names for a in ("--replica", n)]
    doc = json.loads(invoke(h, "analyze", *chosen, "--no-store", "--json", code=None).stdout)
    assert doc["requests"] == len(names), doc
    doc = json.loads(
        invoke(h, "analyze", "--replica", "a\\x41", "--no-store", "--json", code=None).stdout
    )
    assert doc["requests"] == 1, doc  # not "aA"
    out = json.loads(invoke(h, "stats", "--replica", "nobody\\", "--json").stdout)
    assert out == {"replicas": []}


def test_ingested_file_names_keep_backslashes_and_quotes(tmp_path: Any) -> None:
    h = str(tmp_path / "home")
    d = tmp_path / "logs"
    d.mkdir()
    odd = d / "a\\b'c\".jsonl"
    odd.write_bytes(encode_records([make_request(i) for i in range(3)]))
    doc = json.loads(invoke(h, "ingest", str(odd), "--json").stdout)
    assert doc["rows"]["request"] == 3 and doc["per_file"][0]["path"] == str(odd)
    assert rows(h, "SELECT DISTINCT _file AS f FROM requests") == [{"f": str(odd)}]
    assert {r["path"] for r in rows(h, "SELECT path FROM ingest_state")} == {str(odd)}
    again = json.loads(invoke(h, "ingest", str(odd), "--json").stdout)
    assert again["rows"]["request"] == 0  # known by its name and content: nothing added
    assert request_count(h) == 3


# --- store errors: one line, JSON under --json ---------------------------------------------


def test_a_busy_store_is_a_json_error_on_every_command(home: str, tmp_path: Any) -> None:
    log = tmp_path / "more.jsonl"
    log.write_bytes(encode_records([make_request(50)]))
    held = open_store(home=home)  # this process holds the embedded store
    try:
        for args in (
            ["query", "SELECT 1", "--json"],
            ["stats", "--json"],
            ["ingest", str(log), "--json"],
            ["analyze", "--json"],
        ):
            p = run(home, *args)
            assert p.returncode == 2, (args, p.stdout, p.stderr)
            doc = json.loads(p.stdout)  # the whole of stdout is one JSON document
            assert "in use by process" in doc["error"], (args, doc)
            assert "Traceback" not in p.stderr, p.stderr
        p = run(home, "stats")
        assert p.returncode == 2 and p.stdout == ""
        assert len(p.stderr.strip().splitlines()) == 1 and "in use by" in p.stderr
    finally:
        held.close()


def test_a_store_error_inside_a_command_is_one_line(home: str) -> None:
    st = open_store(home=home)
    try:
        st.command("ALTER TABLE requests DROP COLUMN ttft_s")  # a store stats no longer fits
    finally:
        st.close()
    res = invoke(home, "stats", code=2)
    assert len(res.stderr.strip().splitlines()) == 1 and "ttft_s" in res.stderr
    res = invoke(home, "stats", "--json", code=2)
    assert "ttft_s" in json.loads(res.stdout)["error"]
    res = invoke(home, "query", "SELECT ttft_s FROM requests", "--json", code=2)
    assert json.loads(res.stdout)["error"].startswith("query failed")
    res = invoke(home, "query", "--bogus", "--json", code=2)
    assert "--bogus" in json.loads(res.stdout)["error"]
