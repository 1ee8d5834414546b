"""``infdebug diff``: two sets of logs (or two selections of the store) in, what changed
out; a CI gate (``--fail-on``) with diff(1)'s exit codes."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from typing import Any

import click

from infdebug.cli.base import CommandFailed, JsonCommand, exit_failed, resolve_max_latency
from infdebug.cli.context import CliContext, pass_cli
from infdebug.cli.options import json_option, load_reference, log_loading_options, reference_options
from infdebug.console import err_console, out_console, print_json
from infdebug.errors import InputError
from infdebug.store import StoreError

LEVELS = ("info", "warning", "error")


def parse_selector(text: str) -> dict[str, Any]:
    """``deployment=canary,replica=r3`` (and ``since=`` / ``until=``, unix seconds or
    ISO-8601) as a side selector on the store."""
    from infdebug.cli.analyze import parse_time
    from infdebug.store.q_diff import SELECTOR_FIELDS

    out: dict[str, Any] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not value.strip():
            raise InputError(f"selector {text!r}: expected FIELD=VALUE, got {part!r}")
        if key in ("since", "until"):
            try:
                out[key] = parse_time(value.strip())
            except click.BadParameter as e:
                raise InputError(f"selector {text!r}: {key}: {e.message}") from None
        elif key in SELECTOR_FIELDS:
            out[key] = value.strip()
        else:
            fields = ", ".join((*SELECTOR_FIELDS, "since", "until"))
            raise InputError(f"selector {text!r}: unknown field {key!r}; expected one of {fields}")
    if not out:
        raise InputError(f"selector {text!r}: empty")
    return out


@click.command("diff", cls=JsonCommand)
@click.argument("sides", nargs=-1, metavar="BASELINE CANDIDATE")
@click.option(
    "--store",
    "from_store",
    is_flag=True,
    help="Take both sides from the store (--home / --clickhouse), chosen by --baseline and "
    "--candidate selectors, instead of log files.",
)
@click.option("--baseline", "baseline_sel", metavar="SEL", help="With --store: FIELD=VALUE,…")
@click.option("--candidate", "candidate_sel", metavar="SEL", help="With --store: FIELD=VALUE,…")
@click.option(
    "--labels",
    default="baseline,candidate",
    show_default=True,
    metavar="A,B",
    help="What the two sides are called in the report.",
)
@reference_options()
@click.option(
    "--tolerance",
    metavar="REL",
    help="Latency: report a shift only beyond this share (10% or 0.1; default 10%).",
)
@click.option(
    "--fail-on",
    type=click.Choice(LEVELS),
    default="error",
    show_default=True,
    help="Exit 1 when a change of this severity or worse is found (a CI gate).",
)
@json_option('Print {"findings", "pairing", "sections", …} as JSON (stable, see README).')
@click.option("--markdown", "as_markdown", is_flag=True, help="Print Markdown (a PR or a channel).")
@log_loading_options("diff")
@pass_cli
def diff_cmd(obj: CliContext, /, **params: Any) -> None:
    """Compare two sets of logs: the canary against the baseline, today against yesterday,
    one engine build against another. What changed, most severe first.

    \b
    Each side is files, directories or globs in any format ingest reads (infdebug JSONL,
    vLLM and SGLang request logs, OpenAI request/response JSONL, .gz too), or with --store
    a selection of the store by replica, deployment, engine_version, model, engine, since
    and until. Requests pair by request ID, else by their prompt (messages, rendered text
    or token IDs) and sampling parameters.

    \b
    The analyzers run on both sides together, each row labelled with its side; a finding
    on one side and not the other is a change, one on both is listed as unchanged. The
    sections add what pairing shows: fingerprints, tokenization (the same prompt, other
    IDs), templates, stop behaviour, greedy outputs that diverge, latency (candidate over
    baseline within prompt-length and load strata), GPU, workload.

    \b
    Examples:
      infdebug diff sample_logs/baseline sample_logs/canary
      infdebug diff 'logs/2025-01-30/*.jsonl.gz' 'logs/2025-01-31/*.jsonl.gz' --json
      infdebug diff --store --baseline deployment=stable --candidate deployment=canary
      infdebug diff base/ cand/ --model ./Llama-3.1-8B-Instruct --fail-on warning

    Exit code (as diff(1)): 0 nothing at or above --fail-on changed, 1 something did,
    2 a usage or input error (a side missing, empty, or with no request the readers know).
    """
    as_json = bool(params["as_json"])
    try:
        _run(obj, params)
    except CommandFailed as e:
        exit_failed(e, as_json)
    except (InputError, StoreError) as e:
        exit_failed(CommandFailed(str(e)), as_json)


def _run(obj: CliContext, p: dict[str, Any]) -> None:
    from infdebug.cli.base import default_rejects_path

    labels = tuple(x.strip() for x in str(p["labels"]).split(","))
    if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
        raise CommandFailed(f"--labels: expected two different names A,B, got {p['labels']!r}")
    if p["as_json"] and p["as_markdown"]:
        raise CommandFailed("--json and --markdown: choose one")
    doc: dict[str, Any] = {}
    tok, tpl = load_reference(p["tokenizer"], p["template"], p["model_dir"])
    options: dict[str, Any] = {}
    served = p["model_name"] or (
        os.path.basename(os.path.normpath(p["model_dir"])) if p["model_dir"] else None
    )
    if served:
        options["model"] = served
    if p["model_dir"]:
        options["model_dir"] = p["model_dir"]
    if p["tolerance"] is not None:
        from infdebug.analyzers.latency_regression import parse_tolerance

        options["tolerance"] = parse_tolerance(p["tolerance"])
    ceiling = resolve_max_latency(p["max_latency"])
    base_rejects = p["rejects_path"] or default_rejects_path(obj.home, obj.clickhouse, "diff")

    def rejects(label: str) -> str:
        root, ext = os.path.splitext(base_rejects)
        return f"{root}.{label}{ext or '.jsonl'}"

    t0 = time.perf_counter()
    # the store's selections are exported before the temporary store opens: chDB allows one
    # embedded store per process
    with tempfile.TemporaryDirectory(prefix="infdebug-diff-sides-") as sides_dir:
        spec = _sides(obj, p, labels, sides_dir)
        _diff(obj, p, labels, spec, rejects, ceiling, tok, tpl, options, doc, t0)


def _sides(
    obj: CliContext, p: dict[str, Any], labels: tuple[str, ...], sides_dir: str
) -> list[tuple[str, list[str]]]:
    """Each side's paths: the arguments, or the store's selections exported as JSONL."""
    from infdebug.diff.sides import export_selection

    if not p["from_store"]:
        if len(p["sides"]) != 2:
            raise CommandFailed(
                f"expected BASELINE and CANDIDATE (two paths), got {len(p['sides'])}"
            )
        return [(labels[0], [p["sides"][0]]), (labels[1], [p["sides"][1]])]
    if p["sides"]:
        raise CommandFailed("--store takes no BASELINE CANDIDATE paths")
    if not p["baseline_sel"] or not p["candidate_sel"]:
        raise CommandFailed("--store needs --baseline SEL and --candidate SEL")
    sels = [parse_selector(p["baseline_sel"]), parse_selector(p["candidate_sel"])]
    spec: list[tuple[str, list[str]]] = []
    source = obj.open_store()
    try:
        for label, sel in zip(labels, sels, strict=True):
            paths, n = export_selection(source, sel, sides_dir, label)
            if not n:
                raise CommandFailed(f"{label} side: no request in the store matches {sel}")
            spec.append((label, paths))
    finally:
        source.close()
    return spec


def _diff(
    obj: CliContext,
    p: dict[str, Any],
    labels: Any,
    spec: list[tuple[str, list[str]]],
    rejects: Any,
    ceiling: float,
    tok: Any,
    tpl: str | None,
    options: dict[str, Any],
    doc: dict[str, Any],
    t0: float,
) -> None:
    from infdebug.cli.ingest import print_file_messages, print_notes, print_rejects
    from infdebug.cli.logstore import temporary_store
    from infdebug.diff import diff_store
    from infdebug.diff.render import markdown, print_terminal, to_json
    from infdebug.diff.sides import load_sides

    with temporary_store("infdebug-diff-") as (st, _tmp):
        loads = load_sides(st, spec, rejects_path=rejects, max_latency=ceiling)
        doc["ingest"] = {}
        for ld in loads:
            assert ld.report is not None
            doc["ingest"][ld.label] = ld.report.to_json()
            print_file_messages(ld.report)
            print_notes(ld.report)
            print_rejects(ld.report)
            if not ld.requests:
                raise CommandFailed(
                    f"{ld.label} side: {' '.join(ld.spec)}: no request the readers understand",
                    2,
                    doc,
                )
        read_s = time.perf_counter() - t0
        with contextlib.ExitStack() as stack:
            progress = None
            if err_console.is_terminal:  # a status line naming the analyzer running
                status = stack.enter_context(err_console.status("diffing …"))

                def progress(name: str, i: int, n: int) -> None:
                    status.update(f"analyzing: {name} ({i + 1}/{n})")

            res = diff_store(
                st,
                labels,
                tokenizer=tok,
                template=tpl,
                options=options,
                deployments={ld.label: ld.deployments for ld in loads},
                progress=progress,
            )
    res.seconds = {"read": read_s, **res.seconds}
    t = time.perf_counter()
    if p["as_json"]:
        print_json({**to_json(res), **doc})
    elif p["as_markdown"]:
        sys.stdout.write(markdown(res))
    else:
        print_terminal(res, out_console)
    res.seconds["render"] = time.perf_counter() - t
    sys.exit(1 if res.fails(p["fail_on"]) else 0)


def register(cli: click.Group) -> None:
    cli.add_command(diff_cmd)
