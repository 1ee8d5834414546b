"""``infdebug template render``, ``tokenize``, ``detokenize`` and ``fingerprint``: look at
what a tokenizer and a chat template do to a prompt, offline, without opening the store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
from typing import Any, NoReturn

import click
from rich.table import Table
from rich.text import Text

from infdebug.cli.options import json_option
from infdebug.console import fail, id_column, out_console, print_json
from infdebug.text.config import TextFormatError, read_special_tokens
from infdebug.text.fingerprint import template_fingerprint
from infdebug.text.template import ChatTemplateError, fixed_now, load_template, render_chat
from infdebug.text.tokenizer import TokenizerBundle, load_tokenizer

_VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "→", "\r": "␍"})


def visible(s: str) -> str:
    """``s`` with whitespace drawn: space ␣, newline ↵, tab →, carriage return ␍."""
    return s.translate(_VISIBLE)


def _fail(msg: str) -> NoReturn:
    """cli.fail(), typed as not returning (it exits 2 with msg on stderr)."""
    fail(msg)
    raise SystemExit(2)


def _load_tokenizer(path: str) -> TokenizerBundle:
    try:
        return load_tokenizer(path)
    except TextFormatError as e:
        _fail(str(e))


def _read_json_arg(path: str, what: str) -> Any:
    try:
        if path == "-":
            return json.load(sys.stdin)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        _fail(f"{path}: cannot read {what}: {e.strerror}")
    except json.JSONDecodeError as e:
        _fail(f"{path}:{e.lineno}: expected JSON {what}, found a syntax error: {e.msg}")
    except UnicodeDecodeError as e:
        _fail(f"{path}: expected UTF-8 JSON {what}, found undecodable bytes at {e.start}")


_OWN_OPTIONS = {
    "messages": "--messages",
    "tools": "--tools",
    "add_generation_prompt": "--no-generation-prompt",
    "documents": 'a messages file\'s "documents"',
}


def _parse_var(spec: str) -> tuple[str, Any]:
    name, sep, raw = spec.partition("=")
    if not sep or not name.isidentifier():
        _fail(f"--var {spec!r}: expected NAME=VALUE with a template variable name")
    if name in _OWN_OPTIONS:
        _fail(f"--var {name}: set it with {_OWN_OPTIONS[name]} instead")
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw  # a bare string


# --- template render --------------------------------------------------------------------------


@click.group("template")
def template_group() -> None:
    """Render chat templates exactly as transformers' apply_chat_template does."""


@template_group.command("render")
@click.argument("template_path", metavar="TEMPLATE")
@click.option(
    "--messages",
    "messages_path",
    required=True,
    metavar="FILE",
    help='JSON: a list of {"role", "content"} messages, or an object with "messages" (and "tools", '
    '"documents"); see examples/chat.json. "-" reads stdin.',
)
@click.option("--bos-token", default=None, metavar="S", help="bos_token for the template.")
@click.option("--eos-token", default=None, metavar="S", help="eos_token for the template.")
@click.option(
    "--tokenizer-config",
    "tokenizer_config",
    default=None,
    metavar="FILE",
    help="Take bos/eos/unk/pad tokens from this tokenizer_config.json "
    "(default: TEMPLATE itself when it is one). --bos-token/--eos-token win.",
)
@click.option(
    "--no-generation-prompt", is_flag=True, help="Render with add_generation_prompt=false."
)
@click.option(
    "--tools", "tools_path", default=None, metavar="FILE", help="JSON list of tool schemas."
)
@click.option(
    "--var",
    "variables",
    multiple=True,
    metavar="NAME=VALUE",
    help="Another template variable, e.g. enable_thinking=false "
    "(VALUE is JSON, else a string). Repeatable.",
)
@click.option(
    "--now",
    "now_iso",
    default=None,
    metavar="ISO-TIME",
    help="The time strftime_now() reports, e.g. a logged request's arrival time (default: now).",
)
@json_option('Print {"rendered", "template_fp"} as JSON.')
def template_render(
    template_path: str,
    messages_path: str,
    bos_token: str | None,
    eos_token: str | None,
    tokenizer_config: str | None,
    no_generation_prompt: bool,
    tools_path: str | None,
    variables: tuple[str, ...],
    now_iso: str | None,
    as_json: bool,
) -> None:
    """Render TEMPLATE (a .jinja file, tokenizer_config.json, chat_template.json or a model
    directory) over the messages, and print exactly the rendered prompt: no newline is added.

    \b
    The --messages file is JSON, a list of messages or an object that holds them:
      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
      {"messages": [...], "tools": [...], "documents": [...]}
    Each message has a "role" (system, user, assistant, tool) and its "content", plus what
    the template reads (tool_calls, name, …). examples/chat.json in the repository is one:
      infdebug template render llama3.1.jinja --messages examples/chat.json

    A template that fails (syntax error, raise_exception) exits 2 with its message on stderr.
    """
    try:
        template = load_template(template_path)
    except TextFormatError as e:
        _fail(str(e))
    data = _read_json_arg(messages_path, "messages")
    tools: Any = None
    documents: Any = None
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        messages, tools, documents = data["messages"], data.get("tools"), data.get("documents")
    elif isinstance(data, list):
        messages = data
    else:
        _fail(
            f'{messages_path}: expected a JSON list of messages or an object with "messages", '
            f"found {type(data).__name__}"
        )
    if not all(isinstance(m, dict) for m in messages):
        _fail(f"{messages_path}: expected every message to be a JSON object")
    if tools_path is not None:
        tools = _read_json_arg(tools_path, "tools")
    specials: dict[str, str] = {}
    config_path = tokenizer_config or (
        template_path if os.path.basename(template_path) == "tokenizer_config.json" else None
    )
    if config_path:
        try:
            specials = read_special_tokens(config_path)
        except TextFormatError as e:
            _fail(str(e))
    if bos_token is not None:
        specials["bos_token"] = bos_token
    if eos_token is not None:
        specials["eos_token"] = eos_token
    extra: dict[str, Any] = dict(specials)
    extra.update(_parse_var(v) for v in variables)
    now = None
    if now_iso is not None:
        try:
            now = dt.datetime.fromisoformat(now_iso)
        except ValueError:
            _fail(f"--now {now_iso!r}: expected an ISO 8601 time such as 2025-07-10T12:00:00")
    try:
        with fixed_now(now):
            rendered = render_chat(
                template,
                messages,
                add_generation_prompt=not no_generation_prompt,
                tools=tools,
                documents=documents,
                **extra,
            )
    except ChatTemplateError as e:
        _fail(f"{template_path}: {e}")
    if as_json:
        print_json({"rendered": rendered, "template_fp": template_fingerprint(template)})
    else:
        click.echo(rendered, nl=False)


# --- tokenize / detokenize --------------------------------------------------------------------


def _token_table(bundle: TokenizerBundle, ids: list[int], title: str) -> Table:
    specials = {i for i, t in bundle.tok.get_added_tokens_decoder().items() if t.special}
    t = Table(show_edge=False, header_style="bold", title=title, title_justify="left")
    t.add_column("#", justify="right", style="dim")
    t.add_column("id", justify="right")
    t.add_column("piece", overflow="fold")
    t.add_column("text", overflow="fold")
    for n, i in enumerate(ids):
        piece = bundle.piece(i)
        style = "bold magenta" if i in specials else ""
        t.add_row(
            str(n),
            str(i),
            Text("—" if piece is None else visible(piece), style=style),
            Text(visible(bundle.decode([i])), style=style),
        )
    return t


@click.command("tokenize")
@click.argument("tokenizer_path", metavar="TOKENIZER")
@click.argument("text")
@click.option(
    "--add-special-tokens",
    is_flag=True,
    help="Let the tokenizer add BOS/EOS as it is configured to.",
)
@json_option("Print ids, pieces and count as JSON.")
def tokenize_cmd(tokenizer_path: str, text: str, add_special_tokens: bool, as_json: bool) -> None:
    """Token IDs and pieces of TEXT. TOKENIZER: tokenizer.json, vocab.json+merges.txt
    directory, Llama-3 rank file, or a model directory."""
    bundle = _load_tokenizer(tokenizer_path)
    ids = bundle.encode(text, add_special_tokens=add_special_tokens)
    if as_json:
        print_json(
            {
                "ids": ids,
                "pieces": [bundle.piece(i) for i in ids],
                "count": len(ids),
                "add_special_tokens": add_special_tokens,
                "tokenizer_fp": bundle.fingerprint,
            }
        )
        return
    out_console.print(_token_table(bundle, ids, f"{len(ids)} tokens  ({bundle.fingerprint})"))


@click.command("detokenize")
@click.argument("tokenizer_path", metavar="TOKENIZER")
@click.argument("ids", nargs=-1, required=True, type=int, metavar="ID...")
@click.option("--skip-special-tokens", is_flag=True, help="Leave special tokens out of the text.")
@json_option("Print text, ids and pieces as JSON.")
def detokenize_cmd(
    tokenizer_path: str, ids: tuple[int, ...], skip_special_tokens: bool, as_json: bool
) -> None:
    """Decode token IDs to text and print exactly the text (no newline is added)."""
    bundle = _load_tokenizer(tokenizer_path)
    bad = [i for i in ids if not 0 <= i < bundle.vocab_size]
    if bad:
        _fail(
            f"id {bad[0]} is outside the vocabulary of {tokenizer_path} "
            f"(ids 0..{bundle.vocab_size - 1})"
        )
    text = bundle.decode(list(ids), skip_special_tokens=skip_special_tokens)
    if as_json:
        print_json(
            {
                "text": text,
                "ids": list(ids),
                "pieces": [bundle.piece(i) for i in ids],
                "tokenizer_fp": bundle.fingerprint,
            }
        )
    else:
        click.echo(text, nl=False)


# --- fingerprint ------------------------------------------------------------------------------


def _is_template_file(path: str) -> bool:
    name = os.path.basename(path)
    return name.endswith(".jinja") or name == "chat_template.json"


@click.command("fingerprint")
@click.argument("path")
@json_option("Print the fingerprints as JSON.")
def fingerprint_cmd(path: str, as_json: bool) -> None:
    """Fingerprint a tokenizer (file or model directory) or a chat template.

    A .jinja file gives its template fingerprint; a tokenizer_config.json or a model
    directory gives both: the tokenizer's, when one is beside it, and its chat template's.
    Equal fingerprints mean equal token IDs (tokenizer) or the same template source.
    """
    if not os.path.exists(path):
        _fail(f"{path}: no such file or directory")
    out: dict[str, Any] = {"path": path, "tokenizer_fp": None, "template_fp": None}
    if _is_template_file(path):
        try:
            out["template_fp"] = template_fingerprint(load_template(path))
        except TextFormatError as e:
            _fail(str(e))
    else:
        is_config = os.path.basename(path) == "tokenizer_config.json"
        try:
            bundle = load_tokenizer(path)
        except TextFormatError as e:
            if not is_config:
                _fail(str(e))
            out["tokenizer_error"] = str(e)  # a config alone still has a template
        else:
            out["tokenizer_fp"] = bundle.fingerprint
            out["tokenizer_source"] = bundle.source
            if bundle.chat_template is not None and not is_config:
                out["template_fp"] = template_fingerprint(bundle.chat_template)
        if is_config:  # the template this very file holds
            with contextlib.suppress(TextFormatError):
                out["template_fp"] = template_fingerprint(load_template(path))
        if out["tokenizer_fp"] is None and out["template_fp"] is None:
            _fail(
                f"{path}: neither a tokenizer nor a chat template: {out.get('tokenizer_error', '')}"
            )
    if as_json:
        print_json(out)
        return
    t = Table(show_edge=False, show_header=False)
    t.add_column("what", style="bold")
    id_column(t, "fingerprint")
    t.add_column("from", style="dim", overflow="fold")
    if out["tokenizer_fp"]:
        t.add_row("tokenizer", out["tokenizer_fp"], Text(out.get("tokenizer_source", "")))
    elif out.get("tokenizer_error"):
        t.add_row("tokenizer", "—", Text("none beside this config"))
    if out["template_fp"]:
        t.add_row("template", out["template_fp"], Text(path))
    out_console.print(t)


def register(group: click.Group) -> None:
    """Add ``template render``, ``tokenize``, ``detokenize`` and ``fingerprint`` to ``group``."""
    group.add_command(template_group)
    group.add_command(tokenize_cmd)
    group.add_command(detokenize_cmd)
    group.add_command(fingerprint_cmd)
