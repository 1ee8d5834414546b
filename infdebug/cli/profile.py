"""``infdebug profile``: sample a replica's host stacks with py-spy and say where the time goes."""

from __future__ import annotations

import os
import tempfile

import click
from rich.table import Table

from infdebug.cli.context import CliContext, pass_cli
from infdebug.cli.options import json_option
from infdebug.console import (
    err_console,
    fail,
    fmt_percent,
    fmt_seconds,
    id_column,
    out_console,
    print_json,
)


@click.command("profile")
@click.option("--pid", type=int, default=None, help="The replica process to sample.")
@click.option(
    "--replica", default=None, help="Find the running `infdebug serve --replica NAME` process."
)
@click.option("--duration", default=10.0, show_default=True, help="Seconds to sample.")
@click.option("--rate", default=100, show_default=True, help="Samples per second.")
@click.option(
    "--out",
    "out_path",
    default=None,
    metavar="FILE",
    help="Also write the samples as contract JSONL here.",
)
@click.option("--no-store", is_flag=True, help="Do not load the samples into the store.")
@json_option()
@pass_cli
def profile_cmd(
    obj: CliContext,
    pid: int | None,
    replica: str | None,
    duration: float,
    rate: int,
    out_path: str | None,
    no_store: bool,
    as_json: bool,
) -> None:
    """Record a replica with py-spy and report the share of the engine thread's wall time
    spent in tokenization, detokenization, scheduling, sampling, the tracer itself, the
    model step, and idle; other threads (the HTTP server's, where prompts are rendered and
    tokenized) are reported too. The stacks are stored (table profile_samples).

    py-spy comes with the profile extra: pip install 'infdebug[profile]' (in a checkout:
    .venv/bin/pip install -e '.[profile]'; make demo installs only the engine extra)."""
    from infdebug.schema import encode_records
    from infdebug.tracer.profile import (
        ENGINE_THREAD,
        ProfilerError,
        find_replica_pid,
        profile,
        py_spy_binary,
    )

    if (pid is None) == (replica is None):
        fail("give exactly one of --pid PID or --replica NAME")
    try:
        # first: a missing py-spy is the likelier problem after `make demo`, and has a fix
        py_spy_binary()
        target = pid if pid is not None else find_replica_pid(str(replica))
        if not as_json:
            err_console.print(
                f"sampling pid {target} for {fmt_seconds(duration)} at {rate} Hz …", highlight=False
            )
        summary, records = profile(
            target, duration, replica=replica or f"pid-{target}", rate_hz=rate
        )
    except ProfilerError as e:
        fail(str(e))
    if out_path:
        with open(out_path, "wb") as f:
            f.write(encode_records(list(records)))
    if not no_store and records:
        from infdebug.collectors.ingest import ingest_paths

        with tempfile.TemporaryDirectory() as d:
            path = out_path or os.path.join(d, f"{summary.profile_id}.jsonl")
            if not out_path:
                with open(path, "wb") as f:
                    f.write(encode_records(list(records)))
            with obj.store() as st:
                ingest_paths(st, [path], rejects_path=os.path.join(d, "rejects.jsonl"))
    if as_json:
        print_json(summary.to_json())
        return
    t = Table(
        show_edge=False,
        header_style="bold",
        title=f"where replica {summary.replica}'s host time goes",
    )
    id_column(t, "thread")
    t.add_column("activity")
    t.add_column("share", justify="right")
    t.add_column("samples", justify="right", style="dim")
    threads = sorted(
        summary.by_thread, key=lambda n: (n != ENGINE_THREAD, -sum(summary.by_thread[n].values()))
    )
    for name in threads:
        c = summary.by_thread[name]
        total = sum(c.values())
        for i, (cat, n) in enumerate(c.most_common()):
            t.add_row(name if i == 0 else "", cat, fmt_percent(n / total), str(n))
    out_console.print(t)
    if ENGINE_THREAD not in summary.by_thread:
        err_console.print(
            f"[yellow]no thread named {ENGINE_THREAD} in pid {summary.pid}: "
            "is it an infdebug replica?[/]"
        )


def register(group: click.Group) -> None:
    group.add_command(profile_cmd)
