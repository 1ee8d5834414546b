"""``infdebug store check`` and ``infdebug store repair``: find and mend what can leave the
store unopenable or its ingest bookkeeping wrong (store/health.py says what is looked for)."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape

from infdebug.cli.context import CliContext, pass_cli
from infdebug.cli.options import json_option
from infdebug.console import err_console, fail, out_console, print_json
from infdebug.store import StoreError


@click.group("store")
def store_group() -> None:
    """Check and mend the store (--home / --clickhouse).

    \b
    What is looked for:
      a mutation file a full disk left empty or cut short (chDB cannot start)
      a mutation that keeps failing (every later one, ingest's rollbacks too, waits)
      a table that is gone (dropped by hand)
      a load that did not finish (its rows may be half there)
      ingest state that lists files whose rows are all gone (so ingest would skip them)
    """


def _where(obj: CliContext) -> tuple[str | None, str | None]:
    """``(server URL, None)`` or ``(None, embedded home)``."""
    from infdebug import settings

    url = settings.clickhouse_url(obj.clickhouse)
    return (url, None) if url else (None, obj.home or settings.home())


@store_group.command("check")
@json_option('Print {"store", "ok", "problems": [{"kind", "what", "fix"}]}.')
@pass_cli
def check(obj: CliContext, as_json: bool) -> None:
    """Say what is wrong with the store, and what `store repair` would do about it.

    Exit code: 0 nothing is wrong, 1 something is (listed), 2 the store could not be checked.
    """
    from infdebug.store.health import check_files, check_store, open_unmended

    url, home = _where(obj)
    problems = check_files(home) if home else []
    where = f"chDB at {home}" if home else str(url)
    if not any(p.kind == "broken_mutation_file" for p in problems):
        try:
            st = open_unmended(url, home)
        except StoreError as e:
            fail(str(e))
        try:
            where = st.description
            problems += check_store(st)
        except StoreError as e:
            fail(f"checking {where} failed: {e}")
        finally:
            st.close()
    if as_json:
        print_json(
            {"store": where, "ok": not problems, "problems": [p.to_json() for p in problems]}
        )
    else:
        _print_problems(where, problems)
    sys.exit(1 if problems else 0)


@store_group.command("repair")
@json_option('Print {"store", "done": [...], "problems": [...] (those left)}.')
@pass_cli
def repair(obj: CliContext, as_json: bool) -> None:
    """Mend what `store check` finds: move broken mutation files to HOME/quarantine/, kill
    mutations that keep failing, re-create missing tables (empty), roll back loads that did
    not finish, and forget files whose rows are gone (the next ingest loads them again).

    Run it while nothing else writes to the same store. Exit code: 0 nothing is left
    wrong, 1 something is (listed), 2 the store could not be opened or mended.
    """
    from infdebug.store.health import (
        check_files,
        check_store,
        open_unmended,
        repair_files,
        repair_store,
    )

    url, home = _where(obj)
    done: list[str] = []
    try:
        if home:
            done += repair_files(home, check_files(home))
    except OSError as e:
        fail(f"cannot move the broken mutation files of {home} aside: {e}")
    try:
        st = open_unmended(url, home)
    except StoreError as e:
        fail(str(e))
    where = st.description
    try:
        done += repair_store(st, check_store(st))
        left = check_store(st)
    except StoreError as e:
        _report(where, done, None, as_json)
        fail(f"repairing {where} failed: {e}")
    finally:
        st.close()
    _report(where, done, left, as_json)
    sys.exit(1 if left else 0)


@store_group.command("init")
@click.option(
    "--cluster",
    "cluster",
    default=None,
    help="Create the schema on this ClickHouse cluster (remote_servers name): each table as "
    "a Replicated <name>_local ON CLUSTER plus a Distributed table under its own name. "
    "Needs --clickhouse (one node of the cluster).",
)
@click.option(
    "--database",
    default=None,
    help="The database on the cluster (default: the --clickhouse URL's).",
)
@json_option('Print {"store", "cluster", "database", "applied": [versions]}.')
@pass_cli
def init(obj: CliContext, cluster: str | None, database: str | None, as_json: bool) -> None:
    """Create or migrate the schema: on one store, or (--cluster) on every node of a cluster.

    Run it again after an upgrade: it applies the migrations the store lacks. Exit code: 0
    done, 2 the store could not be reached or a statement failed.
    """
    from infdebug.errors import InputError
    from infdebug.store.base import migrate
    from infdebug.store.client import open_embedded, open_server
    from infdebug.store.cluster import Cluster, migrate_cluster

    url, home = _where(obj)
    try:
        if cluster is None:
            st = open_server(url) if url else open_embedded(home or "")
            where, applied = st.description, migrate(st)
            db = None
        else:
            if not url:
                fail("--cluster needs --clickhouse URL (a node of the cluster)")
            st = open_server(url)
            where = st.description
            _, rows = st.query("SELECT currentDatabase()")
            db = database or str(rows[0][0])
            applied = migrate_cluster(st, Cluster(cluster, db))
        st.close()
    except (StoreError, InputError) as e:
        fail(str(e))
    if as_json:
        print_json({"store": where, "cluster": cluster, "database": db, "applied": applied})
    else:
        done = ", ".join(map(str, applied)) or "none (up to date)"
        on = f" (cluster {cluster}, database {db})" if cluster else ""
        out_console.print(f"{escape(where)}{escape(on)}: migrations applied: {done}")


def _report(where: str, done: list[str], left: Any, as_json: bool) -> None:
    if as_json:
        if left is not None:
            print_json({"store": where, "done": done, "problems": [p.to_json() for p in left]})
        return
    for line in done:
        out_console.print(f"[green]done:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if left is None:
        return
    if not done and not left:
        out_console.print(f"{escape(where)}: nothing to repair", highlight=False)
    if left:
        _print_problems(where, left)


def _print_problems(where: str, problems: Any) -> None:
    if not problems:
        out_console.print(f"{escape(where)}: no problems found", highlight=False)
        return
    n = len(problems)
    err_console.print(
        f"[red]{escape(where)}: {n} problem{'s' if n != 1 else ''}[/]",
        highlight=False,
        soft_wrap=True,
    )
    for p in problems:
        out_console.print(
            f"  [bold]{p.kind}[/]: {escape(p.what)}\n    repair: {escape(p.fix)}",
            highlight=False,
            soft_wrap=True,
        )


def register(group: click.Group) -> None:
    """Add the ``store`` group (``init``, ``check``, ``repair``) to ``group``."""
    group.add_command(store_group)
