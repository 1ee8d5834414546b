"""``infdebug dashboard``: the Streamlit incident dashboard on the store, started in this
process so that ``--follow`` can load a running fleet's logs into the embedded store (which
admits one process) while the page shows them."""

from __future__ import annotations

import importlib.util
import os

import click

from infdebug.cli.context import CliContext, pass_cli
from infdebug.console import err_console, fail

APP = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dashboard", "app.py"
)


def streamlit_options(host: str, port: int) -> dict[str, object]:
    """Streamlit's configuration for the dashboard (flag names as ``streamlit run`` takes
    them): headless, no usage statistics sent anywhere, no file watching, no dev menu."""
    return {
        "server_address": host,
        "server_port": port,
        "server_headless": True,
        "server_fileWatcherType": "none",
        "server_runOnSave": False,
        "browser_gatherUsageStats": False,
        "browser_serverAddress": host,
        "browser_serverPort": port,
        "client_toolbarMode": "minimal",
        "global_developmentMode": False,
        "logger_level": "warning",
        "theme_base": "light",
    }


@click.command("dashboard")
@click.option(
    "--follow",
    "follow",
    multiple=True,
    metavar="PATH",
    help="Keep loading these trace / engine-log files or directories into the store while "
    "the dashboard runs (the log tailer of `infdebug collect logs --follow`, in this "
    "process). Repeatable.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    metavar="S",
    help="Seconds between polls of the followed files.",
)
@click.option(
    "--tokenizer",
    "--model",
    "tokenizer",
    type=click.Path(exists=True, file_okay=False),
    metavar="DIR",
    help="A tokenizer (or model) directory: token chips show each ID's piece, and the "
    "analyzers check the logged IDs against it (as `infdebug analyze --tokenizer`). Without "
    "it chips show IDs only.",
)
@click.option(
    "--clickhouse",
    "clickhouse",
    metavar="URL",
    help="A ClickHouse server to read (and --follow into) instead of the embedded store; "
    "the same as `infdebug --clickhouse URL dashboard`.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The dashboard has no login: 0.0.0.0 shows the fleet's prompts "
    "to anyone who can reach this machine.",
)
@pass_cli
def dashboard_cmd(
    obj: CliContext,
    follow: tuple[str, ...],
    interval: float,
    tokenizer: str | None,
    clickhouse: str | None,
    port: int,
    host: str,
) -> None:
    """Open the incident dashboard: fleet overview, replica drill-down, findings with their
    token diffs, request explorer, workload, and a downloadable incident report.

    \b
      infdebug ingest sample_logs/ && infdebug dashboard       then open http://127.0.0.1:8501
      infdebug dashboard --follow traces/ --model DIR           a running fleet, live
      infdebug --clickhouse http://host:8123 dashboard          a store shared with collectors

    The embedded store admits one process: while the dashboard runs, other commands on the
    same --home are refused (use --follow to load logs meanwhile, or a ClickHouse server).
    """
    if importlib.util.find_spec("streamlit") is None:
        fail("the dashboard needs Streamlit: pip install 'infdebug[dashboard]'")
    from infdebug.fleet.replicas import port_free

    if not port_free(host, port):
        fail(f"{host}:{port} is in use (another dashboard?); pick another with --port")
    from infdebug.dashboard import runtime

    rt = runtime.configure(
        runtime.Config(
            clickhouse=clickhouse or obj.clickhouse,
            home=obj.home,
            follow=list(follow),
            interval=interval,
            tokenizer=tokenizer,
        )
    )
    if rt.store is None:
        fail(f"cannot open the store: {rt.error}")
    rt.warm()
    from streamlit.web import bootstrap

    opts = streamlit_options(host, port)
    err_console.print(
        f"infdebug dashboard on [bold]http://{host}:{port}[/] ({rt.store.description})"
        + (f", following {', '.join(follow)}" if follow else "")
        + ". Ctrl-C stops it.",
        highlight=False,
    )
    try:
        bootstrap.load_config_options(opts)
        bootstrap.run(APP, False, [], opts)
    finally:
        rt.close()


def register(group: click.Group) -> None:
    """Add ``dashboard`` to ``group``."""
    group.add_command(dashboard_cmd)
