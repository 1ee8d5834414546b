"""``infdebug analyze``: run the analyzers over the store (or over log files) and report."""

from __future__ import annotations

import datetime as dt
import importlib
import os
import pkgutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click
import msgspec

from infdebug.analyzers.base import ANALYZERS, AnalysisContext, run_all
from infdebug.console import err_console, fail, out_console, print_json
from infdebug.schema import Finding
from infdebug.store import Store, StoreError, open_store
from infdebug.store.base import migrate

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
KEY_VALUES = ("count", "requests", "share", "rate", "rest_rate", "p_value", "p_holm", "z")
EVIDENCE_KEYS = (
    "cause", "request_ids", "first_seen", "first_diverging_index", "first_diverging_token", "eot_id", "eot_piece",
    "first_eot_position", "stop_ids_in_force", "loop_ids", "loop_pieces", "period",
)


def _fail(msg: str) -> NoReturn:
    fail(msg)
    raise SystemExit(2)


def load_analyzers() -> tuple[list[str], dict[str, str]]:
    """Import every module of ``infdebug.analyzers`` (importing registers its analyzers);
    returns the analyzer names and the modules that failed to import (module → error)."""
    import infdebug.analyzers as pkg

    broken: dict[str, str] = {}
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "base":
            try:
                importlib.import_module(f"infdebug.analyzers.{mod.name}")
            except Exception as e:  # one broken module must not hide the others' findings
                broken[f"module {mod.name}"] = f"{type(e).__name__}: {e}"
    return sorted(ANALYZERS), broken


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
        raise click.BadParameter(f"expected unix seconds or ISO-8601 (2025-01-31T12:00:00Z), got {value!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


@contextmanager
def _temporary_store() -> Iterator[tuple[Store, str]]:
    """A throwaway embedded chDB store (never a server, whatever the environment says)."""
    from infdebug.store.embedded import EmbeddedStore

    with tempfile.TemporaryDirectory(prefix="infdebug-analyze-") as tmp:
        st = EmbeddedStore(os.path.join(tmp, "home"))
        try:
            migrate(st)
            yield st, tmp
        finally:
            st.close()


def _load_reference(tokenizer: str | None, template: str | None, model: str | None) -> tuple[Any, str | None]:
    from infdebug.text.config import TextFormatError

    tok: Any = None
    tpl: str | None = None
    tok_path = tokenizer or model
    if tok_path:
        from infdebug.text.tokenizer import load_tokenizer

        try:
            tok = load_tokenizer(tok_path)
        except TextFormatError as e:
            _fail(str(e))
    tpl_path = template or model
    if tpl_path:
        from infdebug.text.template import load_template

        try:
            tpl = load_template(tpl_path)
        except TextFormatError as e:
            if template:  # asked for explicitly: a failure is fatal; from --model it is optional
                _fail(str(e))
            err_console.print(f"[yellow]note:[/] no chat template from {model}: {e}", highlight=False)
    if tpl is None and tok is not None and getattr(tok, "chat_template", None):
        tpl = tok.chat_template
    return tok, tpl


def _analyze(st: Store, ctx_kw: dict[str, Any], only: list[str]) -> tuple[list[Finding], dict[str, str], int]:
    from infdebug.store.q_outputs import count_requests
    from infdebug.store.q_template import models

    ctx = AnalysisContext(store=st, **ctx_kw)
    if (ctx.tokenizer is not None or ctx.template) and not ctx.options.get("model"):
        served = [m for m in models(st, ctx.window()) if m]
        if len(served) > 1:
            err_console.print(
                f"[yellow]note:[/] the reference tokenizer/template is compared with every request, yet "
                f"{len(served)} models are served ({', '.join(served[:5])}); name the one it belongs to "
                "with --model-name",
                highlight=False,
            )
    if err_console.is_terminal:  # progress on long work (a million requests take ~30 s)
        with err_console.status("analyzing …") as status:
            findings, failed = run_all(
                ctx, only or None, lambda name, i, n: status.update(f"analyzing: {name} ({i + 1}/{n}) …")
            )
    else:
        findings, failed = run_all(ctx, only or None)
    return findings, failed, count_requests(st, ctx.window())


def _short(v: Any, limit: int = 120) -> str:
    s = v if isinstance(v, str) else msgspec.json.encode(v).decode()
    return s if len(s) <= limit else s[: limit - 1] + "…"


def print_findings(findings: list[Finding], failed: dict[str, str], n_requests: int) -> None:
    """Findings grouped by severity, each with its key values and evidence."""
    if not findings:
        out_console.print(f"[green]no findings[/] over {n_requests} requests")
    for sev in ("error", "warning", "info"):
        group = [f for f in findings if f.severity == sev]
        if not group:
            continue
        style = SEVERITY_STYLE[sev]
        out_console.print(f"\n[{style}]{sev.upper()}[/] ({len(group)})")
        for f in group:
            out_console.print(f"  [{style}]{f.kind}[/]: {f.summary}", highlight=False)
            vals = {k: v for k, v in (f.values or {}).items() if k in KEY_VALUES}
            if vals:
                out_console.print("    values: " + ", ".join(f"{k}={_short(v, 40)}" for k, v in vals.items()),
                                  highlight=False)
            for k in EVIDENCE_KEYS:
                v = (f.evidence or {}).get(k)
                if v is not None and v != []:
                    if k == "first_seen" and isinstance(v, int | float):
                        v = dt.datetime.fromtimestamp(v, dt.UTC).isoformat(timespec="seconds")
                    out_console.print(f"    {k}: {_short(v)}", highlight=False)
    for name, why in sorted(failed.items()):
        err_console.print(f"[bold red]analyzer {name} failed:[/] {why}", highlight=False)


@click.command("analyze")
@click.argument("logs", nargs=-1, metavar="[LOGS]...")
@click.option("--since", metavar="T", help="Only requests that arrived at or after T (unix seconds or ISO-8601).")
@click.option("--until", metavar="T", help="Only requests that arrived before T (unix seconds or ISO-8601).")
@click.option("--replica", "replicas", multiple=True, metavar="R", help="Only this replica (repeatable).")
@click.option("--tokenizer", metavar="PATH",
              help="Reference tokenizer: tokenizer.json, vocab.json + merges.txt, a tiktoken rank file, "
              "tokenizer_config.json, or a directory holding them.")
@click.option("--template", metavar="PATH",
              help="Reference chat template: a .jinja file, tokenizer_config.json or chat_template.json.")
@click.option("--model", "model_dir", metavar="DIR",
              help="A model directory: gives both the reference tokenizer and chat template.")
@click.option("--model-name", metavar="NAME",
              help="Compare the reference tokenizer/template only with requests of this served model "
              "(default: the --model directory's name; without either, every request).")
@click.option("--only", multiple=True, metavar="NAME", help="Run only this analyzer (repeatable).")
@click.option("--json", "as_json", is_flag=True, help='Print {"findings": [...]} (and "failed") as JSON.')
@click.option("--no-store", is_flag=True, help="Do not store the findings.")
@click.option("--store-findings", is_flag=True,
              help="With LOGS: also store the findings in the store (--home / --clickhouse).")
@click.pass_obj
def analyze_cmd(
    obj: Any,
    logs: tuple[str, ...],
    since: str | None,
    until: str | None,
    replicas: tuple[str, ...],
    tokenizer: str | None,
    template: str | None,
    model_dir: str | None,
    model_name: str | None,
    only: tuple[str, ...],
    as_json: bool,
    no_store: bool,
    store_findings: bool,
) -> None:
    """Find tokenizer, chat-template, stop-token and output drift in what the fleet logged.

    \b
    Without LOGS, analyzes the store (--home / --clickhouse) and stores the findings there.
    With LOGS (JSONL files, directories, globs), loads them into a temporary embedded store
    first; findings are then not stored unless --store-findings is given. Lines that do not
    satisfy the contract are reported and skipped.

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
    names, broken = load_analyzers()
    unknown = [n for n in only if n not in names]
    if unknown:
        _fail(f"unknown analyzer {', '.join(unknown)}; expected one of {', '.join(names)}")
    ctx_kw: dict[str, Any] = {
        "since": parse_time(since),
        "until": parse_time(until),
        "replicas": list(replicas) or None,
    }
    ctx_kw["tokenizer"], ctx_kw["template"] = _load_reference(tokenizer, template, model_dir)
    served = model_name or (os.path.basename(os.path.normpath(model_dir)) if model_dir else None)
    if served:
        ctx_kw["options"] = {"model": served}
    home = getattr(obj, "home", None)
    clickhouse = getattr(obj, "clickhouse", None)

    if logs:
        from infdebug.collectors.ingest import ingest_paths

        with _temporary_store() as (st, tmp):
            report = ingest_paths(st, list(logs), rejects_path=os.path.join(tmp, "rejects.jsonl"))
            rejected = report.rejected
            load_errors = report.errors + [f.message for f in report.files if f.status == "error"]
            if report.exit_code() == 2:
                _fail("nothing could be loaded: " + ("; ".join(load_errors) or "no input files"))
            findings, failed, n_requests = _analyze(st, ctx_kw, list(only))
            failed.update(broken)
        if rejected or load_errors:
            err_console.print(
                f"[yellow]note:[/] {rejected} line(s) rejected"
                + (f"; {'; '.join(load_errors)}" if load_errors else "")
                + " (not part of the analysis)",
                highlight=False,
            )
        if store_findings and not no_store and findings:
            _store(home, clickhouse, findings)
    else:
        try:
            st = open_store(clickhouse, home)
        except StoreError as e:
            _fail(str(e))
        try:
            findings, failed, n_requests = _analyze(st, ctx_kw, list(only))
            failed.update(broken)
            if not no_store and findings:
                from infdebug.store.findings import store_findings as _put

                _put(st, findings)
        finally:
            st.close()

    if as_json:
        doc: dict[str, Any] = {"findings": msgspec.to_builtins(findings), "requests": n_requests}
        if failed:
            doc["failed"] = failed
        print_json(doc)
    else:
        print_findings(findings, failed, n_requests)

    ran = [n for n in names if not only or n in only]
    if not ran or all(n in failed for n in ran):
        if not as_json:
            err_console.print("[bold red]infdebug:[/] every analyzer failed", highlight=False)
        sys.exit(2)
    if n_requests == 0 and not findings:
        if not as_json:
            err_console.print("[bold red]infdebug:[/] no requests in the window to analyze", highlight=False)
        sys.exit(2)
    sys.exit(1 if any(f.severity in ("warning", "error") for f in findings) else 0)


def _store(home: str | None, clickhouse: str | None, findings: list[Finding]) -> None:
    from infdebug.store.findings import store_findings as _put

    try:
        st = open_store(clickhouse, home)
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
