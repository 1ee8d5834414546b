"""Option bundles that several commands share, each written once: ``--json``, the reference
(``--tokenizer`` / ``--template`` / ``--model`` / ``--model-name``), ``--max-latency`` and
``--rejects`` for commands that load logs, and the store's ``--home`` / ``--clickhouse``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from infdebug.cli.base import CommandFailed
from infdebug.console import err_console

F = TypeVar("F", bound=Callable[..., Any])

MAX_LATENCY_HELP = (
    "Drop a request latency (queue, prefill, TTFT, e2e, a token time) longer than SECONDS, "
    "with a note; negative ones, and ones past the request's e2e, are dropped too. "
    "Env INFDEBUG_MAX_LATENCY_S; default 86400 (one day)."
)


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


stack = _stack  # for the option bundles of other modules (cli/collect_run.py)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def json_option(help: str = "Print JSON instead of tables.") -> Callable[[F], F]:
    """``--json`` into ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def store_options() -> Callable[[F], F]:
    """``--home`` and ``--clickhouse`` (the root group's; env INFDEBUG_HOME /
    INFDEBUG_CLICKHOUSE_URL)."""
    return _stack(
        click.option(
            "--home",
            envvar="INFDEBUG_HOME",
            metavar="DIR",
            help="Embedded store (chDB) directory. Env INFDEBUG_HOME; default ./.infdebug",
        ),
        click.option(
            "--clickhouse",
            envvar="INFDEBUG_CLICKHOUSE_URL",
            metavar="URL",
            help="Use a ClickHouse server instead of the embedded store, e.g. "
            "http://user:pass@host:8123/infdebug. Env INFDEBUG_CLICKHOUSE_URL. "
            "Many processes can share one.",
        ),
    )


def window_options() -> Callable[[F], F]:
    """``--since`` / ``--until``: the arrival-time window (unix seconds or ISO-8601)."""
    return _stack(
        click.option(
            "--since",
            metavar="T",
            help="Only requests that arrived at or after T (unix seconds or ISO-8601).",
        ),
        click.option(
            "--until",
            metavar="T",
            help="Only requests that arrived before T (unix seconds or ISO-8601).",
        ),
    )


def reference_options() -> Callable[[F], F]:
    """The reference tokenizer and chat template a command compares requests with:
    ``tokenizer``, ``template``, ``model_dir``, ``model_name`` (see :func:`load_reference`)."""
    return _stack(
        click.option(
            "--tokenizer",
            metavar="PATH",
            help="Reference tokenizer: tokenizer.json, vocab.json + merges.txt, a tiktoken rank "
            "file, tokenizer_config.json, or a directory holding them.",
        ),
        click.option(
            "--template",
            metavar="PATH",
            help="Reference chat template: a .jinja file, tokenizer_config.json or "
            "chat_template.json.",
        ),
        click.option(
            "--model",
            "model_dir",
            metavar="DIR",
            help="A model directory: gives both the reference tokenizer and chat template.",
        ),
        click.option(
            "--model-name",
            metavar="NAME",
            help="Compare the reference tokenizer/template only with requests of this served model "
            "(default: the --model directory's name; without either, every request).",
        ),
    )


def log_loading_options(command: str, prefix: str = "") -> Callable[[F], F]:
    """``--rejects FILE`` and ``--max-latency SECONDS`` for a command that loads log files."""
    return _stack(
        click.option(
            "--rejects",
            "rejects_path",
            metavar="FILE",
            help=_sentence(
                f"{prefix}where rejected lines go (JSONL: file, line, field, reason, raw). "
                f"Default: HOME/rejects/{command}-<time>.jsonl"
            ),
        ),
        click.option(
            "--max-latency", metavar="SECONDS", default=None, help=prefix + MAX_LATENCY_HELP
        ),
    )


def load_reference(
    tokenizer: str | None, template: str | None, model: str | None
) -> tuple[Any, str | None]:
    """The reference (tokenizer bundle, chat template source) that :func:`reference_options`
    name: ``--tokenizer`` / ``--template``, each falling back to ``--model``'s directory; a
    template named explicitly that cannot load fails the command, one from ``--model`` is a
    note. The tokenizer's own chat template serves when no other is found."""
    from infdebug.text.config import TextFormatError

    tok: Any = None
    tpl: str | None = None
    tok_path = tokenizer or model
    if tok_path:
        from infdebug.text.tokenizer import load_tokenizer

        try:
            tok = load_tokenizer(tok_path)
        except TextFormatError as e:
            raise CommandFailed(str(e)) from None
    tpl_path = template or model
    if tpl_path:
        from infdebug.text.template import load_template

        try:
            tpl = load_template(tpl_path)
        except TextFormatError as e:
            if template:  # asked for explicitly: a failure is fatal; from --model it is optional
                raise CommandFailed(str(e)) from None
            err_console.print(
                f"[yellow]note:[/] no chat template from {model}: {e}", highlight=False
            )
    if tpl is None and tok is not None and getattr(tok, "chat_template", None):
        tpl = tok.chat_template
    return tok, tpl


def tracing_options() -> Callable[[F], F]:
    """Where a traced server sends its traces: ``--trace-dir``, ``--otlp-endpoint``,
    ``--redact``, ``--trace-max-mb``, ``--trace-max-age``, ``--simulate-gpu``, ``--gpu-hz``
    (``infdebug serve`` and ``infdebug sidecar``: one tracer, one set of flags)."""
    return _stack(
        click.option(
            "--trace-dir",
            default=None,
            metavar="DIR",
            envvar="INFDEBUG_TRACE_DIR",
            help="Write one contract `request` record per finished request as JSONL here.",
        ),
        click.option(
            "--otlp-endpoint",
            default=None,
            metavar="URL",
            envvar="INFDEBUG_OTLP_ENDPOINT",
            help="Send one OpenTelemetry span per request over OTLP/HTTP here "
            "(a base URL gets /v1/traces). "
            "Default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT when "
            "set, else off.",
        ),
        click.option(
            "--redact",
            type=click.Choice(["none", "prompts", "all"]),
            default="none",
            show_default=True,
            envvar="INFDEBUG_REDACT",
            help="prompts: no prompt/message/output text in any trace (token IDs stay); "
            "all: no token IDs either.",
        ),
        click.option(
            "--trace-max-mb",
            default=256.0,
            show_default=True,
            envvar="INFDEBUG_TRACE_MAX_MB",
            help="Rotate the JSONL trace (and gzip the old file) past this size.",
        ),
        click.option(
            "--trace-max-age",
            default=0.0,
            show_default=True,
            metavar="SECONDS",
            envvar="INFDEBUG_TRACE_MAX_AGE",
            help="Rotate the JSONL trace after this many seconds (0: never by age).",
        ),
        click.option(
            "--simulate-gpu",
            is_flag=True,
            envvar="INFDEBUG_SIMULATE_GPU",
            help="Without a GPU: emit a synthetic GPU signal (labelled simulated) "
            "that follows the engine's load; "
            "--inject throttle makes it overheat and throttle.",
        ),
        click.option(
            "--gpu-hz",
            default=4.0,
            show_default=True,
            help="GPU samples per second (NVML or simulated).",
        ),
    )


def input_options(command: str) -> Callable[[F], F]:
    """How log files are read (``ingest`` and ``collect logs``): ``--strict``, the rejects
    and latency options, ``--format`` (the log-format registry's names) and ``--replica``."""
    from infdebug.collectors.readers import format_names

    return _stack(
        click.option(
            "--strict", is_flag=True, help="Reject lines with fields the contract does not know."
        ),
        log_loading_options(command),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["auto", *format_names()]),
            default="auto",
            show_default=True,
            help="Input format (the log-format registry's); auto-detected per file.",
        ),
        click.option(
            "--replica",
            default=None,
            help="Replica name for engine logs that do not carry one (default: file name).",
        ),
    )


def trace_sample_options() -> Callable[[F], F]:
    """``--trace-sample`` / ``--trace-seed``: which requests keep their token arrays and texts
    (collectors/sampling.py), for ``ingest`` and the log collectors."""
    return _stack(
        click.option(
            "--trace-sample",
            type=click.FloatRange(0, 1),
            default=None,
            help="Share of ordinary requests kept with their token arrays and texts; errors, "
            "non-stop finishes and slow requests are always kept whole, the rest keep their "
            "aggregates (default: $INFDEBUG_TRACE_SAMPLE, else 1: all).",
        ),
        click.option(
            "--trace-seed",
            type=click.IntRange(0, 2**63 - 1),
            default=0,
            help="Seed of that choice.",
        ),
    )


def trace_sample_assign(share: float | None, seed: int) -> dict[str, Any]:
    """``ingest_paths``' ``assign`` / ``assign_params`` for the share (None: the env's);
    an ``InputError`` for a bad one."""
    from infdebug import settings
    from infdebug.collectors.sampling import TraceSample

    sample = TraceSample(settings.trace_sample() if share is None else share, seed)
    return {"assign": sample.assign(), "assign_params": sample.params()}
