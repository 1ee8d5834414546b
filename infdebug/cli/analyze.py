"""``infdebug analyze``: run the analyzers over the store (or over log files) and report.

With ``--json`` stdout is one JSON document whatever happens: the findings, or
``{"error": …}`` with what was done before it failed (the ingest report of LOGS).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import click
import msgspec
from rich.markup import escape

from infdebug.analyzers.base import AnalysisContext, AnalysisResult, analyze, analyzer_names
from infdebug.cli.base import CommandFailed, JsonCommand, exit_failed
from infdebug.cli.context import CliContext, pass_cli
from infdebug.cli.logstore import loaded_logs
from infdebug.cli.options import (
    json_option,
    load_reference,
    log_loading_options,
    reference_options,
    window_options,
)
from infdebug.console import err_console, one_line, print_json
from infdebug.render import print_findings
from infdebug.schema import Finding
from infdebug.store import Store, StoreError


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
    reference: str | None
    tolerance: str | None
    only: tuple[str, ...]
    as_json: bool
    no_store: bool
    store_findings: bool
    rejects_path: str | None
    max_latency: str | None


@click.command("analyze", cls=JsonCommand)
@click.argument("logs", nargs=-1, metavar="[LOGS]...")
@window_options()
@click.option(
    "--replica", "replicas", multiple=True, metavar="R", help="Only this replica (repeatable)."
)
@reference_options()
@click.option(
    "--reference",
    metavar="FILE",
    help="Train/eval reference for the skew.* analyzers: JSONL of chat conversations "
    '({"messages": [...]}) or token IDs ({"prompt_ids": [...], "output_ids": [...]}), '
    'optionally with "sampling"; bad lines are reported and skipped.',
)
@click.option(
    "--tolerance",
    metavar="REL",
    help="Latency regressions and change points: flag a shift only beyond this share of "
    "the comparison's median (10% or 0.1; default 10%).",
)
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
      infdebug analyze --model ./m --reference train.jsonl   train-serve skew (skew.*)
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
    except StoreError as e:  # one not caught on the way (the temporary store, …): one line
        exit_failed(CommandFailed(str(e)), args.as_json)


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
    if args.model_dir:  # skew.logprobs re-scores with the checkpoint, where it is one
        ctx_kw.setdefault("options", {})["model_dir"] = args.model_dir
    if args.tolerance is not None:
        from infdebug.analyzers.latency_regression import parse_tolerance
        from infdebug.errors import InputError

        try:
            ctx_kw.setdefault("options", {})["tolerance"] = parse_tolerance(args.tolerance)
        except InputError as e:
            _fail(f"--tolerance: {e}")
    home, clickhouse = obj.home, obj.clickhouse
    doc: dict[str, Any] = {}
    if args.reference:
        ctx_kw.setdefault("options", {})["reference"] = _skew_reference(args.reference, doc)

    if args.logs:
        with loaded_logs(
            list(args.logs),
            command="analyze",
            home=home,
            clickhouse=clickhouse,
            rejects_path=args.rejects_path,
            max_latency=args.max_latency,
            doc=doc,
            empty={"findings": []},
        ) as (st, report):
            result = _analyze_or_fail(st, ctx_kw, list(args.only), doc)
        findings = result.findings
        if report.rejected:
            err_console.print(
                "[yellow]note:[/] rejected lines are not part of the analysis", highlight=False
            )
        if args.store_findings and not args.no_store and findings:
            _store(obj, findings, doc)
    else:
        try:
            st = obj.open_store()
        except StoreError as e:
            _fail(str(e))
        try:
            result = _analyze_or_fail(st, ctx_kw, list(args.only), doc)
            findings = result.findings
            if not args.no_store and findings:
                _put_or_note(st, findings, doc)
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


def _store(obj: CliContext, findings: list[Finding], doc: dict[str, Any]) -> None:
    try:
        st = obj.open_store()
    except StoreError as e:
        _not_stored(e, doc)
        return
    try:
        _put_or_note(st, findings, doc)
    finally:
        st.close()


def _put_or_note(st: Store, findings: list[Finding], doc: dict[str, Any]) -> None:
    """Store the findings; a store that refuses them (read-only, full, gone) is a note (and
    ``findings_not_stored`` in the JSON), not a failure of the analysis."""
    from infdebug.store.findings import store_findings

    try:
        store_findings(st, findings)
    except StoreError as e:
        _not_stored(e, doc)


def _not_stored(e: StoreError, doc: dict[str, Any]) -> None:
    msg = one_line(str(e))
    doc["findings_not_stored"] = msg
    err_console.print(
        f"[yellow]note:[/] findings not stored: {escape(msg)}", highlight=False, soft_wrap=True
    )


def _skew_reference(path: str, doc: dict[str, Any]) -> Any:
    """``--reference FILE``, read: a file that cannot be read fails the command; its bad
    lines are reported (file:line: field: reason) and set aside, the rest is used."""
    from infdebug.errors import InputError
    from infdebug.skew_reference import load_reference_file

    try:
        ref = load_reference_file(path)
    except InputError as e:
        _fail(str(e))
    doc["reference"] = {**ref.summary(), "rejects": [r.to_json() for r in ref.rejects]}
    for r in ref.rejects:
        err_console.print(f"[yellow]reference:[/] {escape(str(r))}", highlight=False)
    if ref.rejected > len(ref.rejects):
        err_console.print(
            f"[yellow]reference:[/] … and {ref.rejected - len(ref.rejects)} more lines set aside",
            highlight=False,
        )
    if ref.rejected:
        err_console.print(
            f"[yellow]note:[/] {ref.rejected} of {ref.lines} reference lines set aside; "
            "the rest are used",
            highlight=False,
        )
    if not ref.records and not ref.sampling:
        err_console.print(
            f"[yellow]note:[/] {escape(path)} holds nothing usable as a reference", highlight=False
        )
    return ref


def register(group: click.Group) -> None:
    """Add ``analyze`` to ``group``."""
    group.add_command(analyze_cmd)
