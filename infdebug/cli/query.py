"""``infdebug query`` (ad-hoc SQL with bound parameters) and ``infdebug stats`` (latency
percentiles per replica): reading the store."""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from infdebug.cli.base import JsonCommand
from infdebug.cli.context import CliContext, pass_cli
from infdebug.cli.options import json_option, window_options
from infdebug.console import err_console, fail, id_column, out_console, print_json, to_jsonable
from infdebug.render import stats_table
from infdebug.store import StoreError
from infdebug.store.ddl import table_names


def _query_help() -> str:
    # The table list comes from the DDL, so a new table is listed without editing this text.
    tables = textwrap.fill(
        ", ".join(table_names()) + ".", width=88, initial_indent="Tables: ", subsequent_indent="  "
    )
    return f"""Run ad-hoc SQL against the store: one statement that only reads.

    \b
    {tables.replace(chr(10), chr(10) + "    ")}
    Example:
      infdebug query "SELECT replica, quantileExact(0.99)(ttft_s) FROM requests GROUP BY replica"
      infdebug query "SELECT * FROM requests WHERE replica = {{r:String}}" -p r=r3 --json

    The SQL runs under ClickHouse's readonly = 1 (no writes, no settings changes), after
    ClickHouse's own parser has said it is one statement. Table functions and functions that
    reach files, the network or other processes (file, url, s3, remote, cluster, mysql,
    executable …), INTO OUTFILE, SYSTEM, KILL, BACKUP and RESTORE are refused, with --write
    too. Parameter values are bound as given: -p 'p=a\\b' binds the three characters a, \\ and b.
    """


def _parse_params(params: tuple[str, ...]) -> dict[str, str]:
    bound: dict[str, str] = {}
    for p in params:
        name, eq, value = p.partition("=")
        if not eq:
            fail(f"--param expects NAME=VALUE, got {p!r}")
        if not _PARAM_NAME.fullmatch(name):
            fail(
                f"--param {name!r}: a parameter name is letters, digits and _ (as in {{r:String}})"
            )
        if name in bound:
            fail(f"--param {name} given twice")
        bound[name] = value
    return bound


_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@click.command("query", cls=JsonCommand, help=_query_help())
@click.argument("sql")
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Bind a query parameter: use {NAME:Type} in the SQL, e.g. "
    "-p r=replica-1 with WHERE replica = {r:String}. A String gets the value exactly as "
    "given; another type takes ClickHouse's text of it: -p ids='[1, 2]' for "
    "{ids:Array(UInt32)}, -p rs=\"['r1', 'r2']\" for {rs:Array(String)}.",
)
@click.option(
    "--write",
    is_flag=True,
    help="For an operator who means it: let the SQL change the store (INSERT … SELECT, ALTER, "
    "DELETE, DROP, CREATE …) and run several statements separated by ; one after another "
    "(the last one's rows are shown). What reaches files, the network or other processes "
    "stays refused, as do SET, dictionaries, non-local table engines and INSERT with inline "
    "data; it is not a sandbox.",
)
@json_option('Print a JSON array, one object per row; on failure {"error": …}.')
@click.option("--limit", default=1000, show_default=True, help="Rows to show in the table view.")
@pass_cli
def query(
    obj: CliContext, sql: str, params: tuple[str, ...], write: bool, as_json: bool, limit: int
) -> None:
    from infdebug.store.user_sql import QueryRefused, run_sql

    bound = _parse_params(params)
    with obj.store() as st:
        try:
            res = run_sql(st, sql, bound, write=write)
        except QueryRefused as e:
            fail(f"query refused: {e}")
        except StoreError as e:
            fail(f"query failed: {e}{_hint(str(e), write)}")
    cols, rows = res.columns, res.rows
    if as_json:
        print_json([dict(zip(cols, r, strict=True)) for r in rows])
        return
    if not cols:
        err_console.print(f"{res.statements} statement(s) run", style="dim")
        return
    t = Table(show_edge=False, header_style="bold")
    for c in cols:
        if _is_id_column(c):
            id_column(t, escape(c))
        else:
            t.add_column(escape(c), overflow="fold")
    for r in rows[:limit]:
        t.add_row(*(_cell(v) for v in r))
    out_console.print(t)
    more = f", showing {limit}" if len(rows) > limit else ""
    err_console.print(f"{len(rows)} row(s){more}", style="dim")


def _hint(msg: str, write: bool) -> str:
    if "readonly mode" in msg and not write:
        return " (infdebug query is read-only by default; --write lifts that)"
    if "UNKNOWN_QUERY_PARAMETER" in msg:
        return " (give each {name:Type} a value with -p name=VALUE)"
    return ""


_ID_NAMES = {
    "replica",
    "deployment",
    "model",
    "engine",
    "kind",
    "name",
    "pid",
    "path",
    "content_id",
}


def _is_id_column(name: str) -> bool:
    """A column whose values are names or IDs, shown whole (never folded across lines)."""
    low = name.lower()
    return (
        low in _ID_NAMES
        or low in ("id", "uuid")
        or low.endswith(("_id", "_fp", "_uuid"))
        or name.endswith("Id")
    )


def _cell(v: Any) -> str:
    if v is None:
        return "[dim]NULL[/]"
    s = (
        json.dumps(to_jsonable(v), ensure_ascii=False)
        if isinstance(v, list | dict | tuple)
        else str(to_jsonable(v))
    )
    s = s.replace("[", "\\[")
    return s if len(s) <= 200 else s[:200] + "…"


@click.command("stats", cls=JsonCommand)
@click.option("--replica", default="", help="Only this replica.")
@click.option("--deployment", default="", help="Only this deployment (revision or canary label).")
@click.option(
    "--from-metrics",
    is_flag=True,
    help="From scraped Prometheus metrics (collect prometheus, .prom files) instead of "
    "request records: quantiles from histogram buckets, in one vocabulary for every engine.",
)
@click.option(
    "--window",
    default=None,
    metavar="DUR",
    help="With --from-metrics: one row per replica and window (30s, 5m, 1h).",
)
@window_options()
@json_option("Print JSON instead of a table.")
@pass_cli
def stats(
    obj: CliContext,
    replica: str,
    deployment: str,
    from_metrics: bool,
    window: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Request counts and TTFT / inter-token / end-to-end p50, p90, p99 per replica within
    its deployment: a replica name reused by two deployments is two rows, `r3 (canary)`.

    Each percentile group shows the number of samples (n) it was computed from. Inter-token
    latency pools every gap between consecutive output tokens.

    \b
    --from-metrics reads scraped engine metrics instead (vLLM V0/V1, SGLang, TGI,
    TensorRT-LLM, Dynamo, infdebug; docs/metrics-vocabulary.md): the increase of each
    histogram over the window (counter resets handled), its quantiles interpolated inside
    buckets as Prometheus's histogram_quantile does, and request / token rates:
      infdebug stats --from-metrics --window 5m --since 2026-12-01T10:00:00Z
    """
    from infdebug.cli.analyze import parse_time

    if from_metrics:
        _metric_stats(obj, replica, window, parse_time(since), parse_time(until), as_json)
        return
    if window or since or until:
        fail("--window, --since and --until go with --from-metrics")
    from infdebug.store.queries import replica_stats

    with obj.store() as st:
        res = replica_stats(st, replica=replica, deployment=deployment)
    if as_json:
        print_json({"replicas": [r.to_json() for r in res]})
        return
    if not res:
        err_console.print("no requests in the store yet; load some with: infdebug ingest PATH")
        return
    out_console.print(stats_table(res))


def _metric_stats(
    obj: CliContext,
    replica: str,
    window: str | None,
    since: float | None,
    until: float | None,
    as_json: bool,
) -> None:
    from infdebug.render import metric_stats_table
    from infdebug.store.q_metrics import known_names, metric_stats
    from infdebug.workload import WorkloadInputError, parse_duration

    try:
        window_s = parse_duration(window, "--window") if window else None
    except WorkloadInputError as e:
        fail(str(e))
    with obj.store() as st:
        res = metric_stats(st, replica=replica, since=since, until=until, window_s=window_s)
        names = [] if res else list(known_names(st))
    if as_json:
        print_json({"replicas": [r.to_json() for r in res]})
        return
    if not res:
        hint = (
            f"none of the {len(names)} stored metric names is a latency or rate the "
            "vocabulary knows (docs/metrics-vocabulary.md); stored: " + ", ".join(names[:12])
            if names
            else "no scraped metrics in the store yet; scrape some with: infdebug collect "
            "prometheus --target r1=http://HOST:PORT/metrics (or ingest .prom files)"
        )
        err_console.print(escape(hint))
        return
    out_console.print(metric_stats_table(res))


def register(group: click.Group) -> None:
    """Add ``query`` and ``stats`` to ``group``."""
    group.add_command(query)
    group.add_command(stats)
