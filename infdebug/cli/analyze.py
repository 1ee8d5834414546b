"""``infdebug analyze``: run the analyzers over the store (or over log files) and report.

With ``--json`` stdout is one JSON document whatever happens: the findings, or
``{"error": …}`` with what was done before it failed (the ingest report of LOGS).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import click
import msgspec

from infdebug.analyzers.base import AnalysisContext, AnalysisResult, analyze, analyzer_names
from infdebug.cli.base import (
    CommandFailed,
    JsonCommand,
    default_rejects_path,
    exit_failed,
    failure_reasons,
    resolve_max_latency,
)
from infdebug.cli.context import CliContext, pass_cli
from infdebug.cli.ingest import print_file_messages, print_notes, print_rejects
from infdebug.cli.options import json_option, load_reference, log_loading_options, reference_options
from infdebug.console import err_console, print_json
from infdebug.render import print_findings
from infdebug.schema import Finding
from infdebug.store import Store, StoreError
from infdebug.store.base import migrate


def _fail(msg: str, doc: dict[str, Any] | None = None) -> NoReturn:
    raise CommandFailed(msg, 2, doc)


def parse_time(value: str | None) -> float | None:
    """Unix seconds or ISO-8601 (naive times are UTC)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"expected unix seconds or ISO-8601 (2025-01-31T12:00:00Z), got {value!r}"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


@contextmanager
def _temporary_store() -> Iterator[tuple[Store, str]]:
    """A throwaway embedded chDB store (never a server, whatever the environment says)."""
    from infdebug.store.client import open_embedded

    with tempfile.TemporaryDirectory(prefix="infdebug-analyze-") as tmp:
        st = open_embedded(os.path.join(tmp, "home"))
        try:
            migrate(st)
            yield st, tmp
        finally:
            st.close()


def _analyze(st: Store, ctx_kw: dict[str, Any], only: list[str]) -> AnalysisResult:
    from infdebug.store.q_template import models

    ctx = AnalysisContext(store=st, **ctx_kw)
    if (ctx.tokenizer is not None or ctx.template) and not ctx.options.get("model"):
        served = [m for m in models(st, ctx.window()) if m]
        if len(served) > 1:
            err_console.print(
                "[yellow]note:[/] the reference tokenizer/template is compared with every "
                "request, yet "
                f"{len(served)} models are served ({', '.join(served[:5])}); "
                "name the one it belongs to "
                "with --model-name",
                highlight=False,
            )
    if err_console.is_terminal:  # progress on long work (a million requests take ~30 s)
        with err_console.status("analyzing …") as status:
            return analyze(
                ctx,
                only or None,
                lambda name, i, n: status.update(f"analyzing: {name} ({i + 1}/{n}) …"),
            )
    return analyze(ctx, only or None)


@dataclass(frozen=True)
class AnalyzeArgs:
    """The ``analyze`` command's options, typed (the names click gives them)."""

    logs: tuple[str, ...]
    since: str | None
    until: str | None
    replicas: tuple[str, ...]
    tokenizer: str | None
    template: str | None
    model_dir: str | None
    model_name: str | None
    only: tuple[str, ...]
    as_json: bool
    no_store: bool
    store_findings: bool
    rejects_path: str | None
    max_latency: str | None


@click.command("analyze", cls=JsonCommand)
@click.argument("logs", nargs=-1, metavar="[LOGS]...")
@click.option(
    "--since",
    metavar="T",
    help="Only requests that arrived at or after T (unix seconds or ISO-8601).",
)
@click.option(
    "--until", metavar="T", help="Only requests that arrived before T (unix seconds or ISO-8601)."
)
@click.option(
    "--replica", "replicas", multiple=True, metavar="R", help="Only this replica (repeatable)."
)
@reference_options()
@click.option("--only", multiple=True, metavar="NAME", help="Run only this analyzer (repeatable).")
@json_option(
    'Print {"findings": [...]} (and "failed", "ingest") as JSON; on failure {"error": ...}.'
)
@click.option("--no-store", is_flag=True, help="Do not store the findings.")
@click.option(
    "--store-findings",
    is_flag=True,
    help="With LOGS: also store the findings in the store (--home / --clickhouse).",
)
@log_loading_options("analyze", prefix="With LOGS: ")
@pass_cli
def analyze_cmd(obj: CliContext, /, **params: Any) -> None:
    """Find tokenizer, chat-template, stop-token and output drift in what the fleet logged.

    \b
    Without LOGS, analyzes the store (--home / --clickhouse) and stores the findings there.
    With LOGS (JSONL files, engine logs, directories, globs — whatever ingest reads), loads
    them into a temporary embedded store first; findings are then not stored unless
    --store-findings is given. Lines that do not satisfy the contract are reported with
    file:line and written to the rejects file (as ingest does), and skipped.

    \b
    Examples:
      infdebug analyze                                  everything in the store
      infdebug analyze incident.jsonl --json            a log file on its own
      infdebug analyze --since 2025-01-31T12:00Z --replica r3
      infdebug analyze --model ./Llama-3.1-8B-Instruct  with the reference tokenizer + template
      infdebug analyze --only stop --only repetition

    \b
    Findings are grouped by severity (error, warning, info); each names its replica, what was
    measured (counts, rates, test statistic, p-value) and evidence: request IDs to pull up,
    first seen, the first diverging token with its ID and piece.

    Exit code: 0 no warning or error, 1 a warning or error was found, 2 nothing could be done.
    """
    args = AnalyzeArgs(**params)
    try:
        _run(obj, args)
    except CommandFailed as e:
        exit_failed(e, args.as_json)


def _run(obj: CliContext, args: AnalyzeArgs) -> None:
    names = analyzer_names()
    unknown = [n for n in args.only if n not in names]
    if unknown:
        _fail(f"unknown analyzer {', '.join(unknown)}; expected one of {', '.join(names)}")
    ctx_kw: dict[str, Any] = {"replicas": list(args.replicas) or None}
    for opt, value in (("since", args.since), ("until", args.until)):
        try:
            ctx_kw[opt] = parse_time(value)
        except click.BadParameter as e:
            _fail(f"--{opt}: {e.message}")
    ctx_kw["tokenizer"], ctx_kw["template"] = load_reference(
        args.tokenizer, args.template, args.model_dir
    )
    served = args.model_name or (
        os.path.basename(os.path.normpath(args.model_dir)) if args.model_dir else None
    )
    if served:
        ctx_kw["options"] = {"model": served}
    home, clickhouse = obj.home, obj.clickhouse
    doc: dict[str, Any] = {}

    if args.logs:
        from infdebug.collectors.ingest import ingest_paths

        ceiling = resolve_max_latency(args.max_latency)
        rejects = args.rejects_path or default_rejects_path(home, clickhouse, "analyze")
        with _temporary_store() as (st, _tmp):
            try:
                report = ingest_paths(
                    st, list(args.logs), rejects_path=rejects, max_latency=ceiling
                )
            except StoreError as e:
                _fail(f"loading the logs failed: {e}")
            doc["ingest"] = report.to_json()
            print_file_messages(report)
            print_notes(report)
            print_rejects(report)
            if report.exit_code() == 2:
                _fail(
                    "nothing could be loaded: "
                    + ("; ".join(failure_reasons(report)) or "no input files"),
                    {"findings": [], **doc},
                )
            result = _analyze_or_fail(st, ctx_kw, list(args.only), doc)
        findings = result.findings
        if report.rejected:
            err_console.print(
                "[yellow]note:[/] rejected lines are not part of the analysis", highlight=False
            )
        if args.store_findings and not args.no_store and findings:
            _store(obj, findings)
    else:
        try:
            st = obj.open_store()
        except StoreError as e:
            _fail(str(e))
        try:
            result = _analyze_or_fail(st, ctx_kw, list(args.only), doc)
            findings = result.findings
            if not args.no_store and findings:
                from infdebug.store.findings import store_findings as _put

                _put(st, findings)
        finally:
            st.close()

    failed, n_requests = result.failed, result.requests or 0
    error = None
    if result.all_failed:
        error = "every analyzer failed"
    elif n_requests == 0 and not findings:
        error = "no requests in the window to analyze"
    if args.as_json:
        out: dict[str, Any] = {"findings": msgspec.to_builtins(findings), "requests": n_requests}
        if failed:
            out["failed"] = failed
        if error:
            out["error"] = error
        print_json({**out, **doc})
    else:
        print_findings(findings, failed, n_requests)
        if error:
            err_console.print(f"[bold red]infdebug:[/] {error}", highlight=False)
    if error:
        sys.exit(2)
    sys.exit(1 if any(f.severity in ("warning", "error") for f in findings) else 0)


def _analyze_or_fail(
    st: Store, ctx_kw: dict[str, Any], only: list[str], doc: dict[str, Any]
) -> AnalysisResult:
    try:
        return _analyze(st, ctx_kw, only)
    except StoreError as e:
        _fail(f"analysis failed: {e}", {"findings": [], **doc})


def _store(obj: CliContext, findings: list[Finding]) -> None:
    from infdebug.store.findings import store_findings as _put

    try:
        st = obj.open_store()
    except StoreError as e:
        err_console.print(f"[yellow]note:[/] findings not stored: {e}", highlight=False)
        return
    try:
        _put(st, findings)
    finally:
        st.close()


def register(group: click.Group) -> None:
    """Add ``analyze`` to ``group``."""
    group.add_command(analyze_cmd)
