"""Rendering chat templates the way Hugging Face transformers' ``apply_chat_template`` does.

The environment is the one transformers builds: Jinja's immutable sandbox with
``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension and a
``{% generation %}…{% endgeneration %}`` tag that renders its body unchanged; globals
``raise_exception`` and ``strftime_now``; a ``tojson`` filter that is ``json.dumps`` with
``ensure_ascii=False`` and no HTML escaping. The variables are ``messages``, ``tools``,
``documents``, ``add_generation_prompt``, the special tokens that are set (an unset one stays
undefined rather than rendering "None"), and any extra template kwargs.

A template that fails — a syntax error, a ``raise_exception(...)`` call, or any error while
rendering — raises :class:`ChatTemplateError` carrying the template's own message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from infdebug.errors import InputError
from infdebug.text.config import TextFormatError, chat_template_from_config, read_json
from infdebug.text.fingerprint import template_fingerprint

__all__ = [
    "ChatTemplateError",
    "fixed_now",
    "load_template",
    "render_chat",
    "template_fingerprint",
]


class ChatTemplateError(InputError):
    """A chat template did not render. ``raised_by_template`` is true for the template's own
    ``raise_exception(...)``; ``lineno`` is the template line where Jinja knows it."""

    def __init__(
        self, message: str, *, raised_by_template: bool = False, lineno: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.raised_by_template = raised_by_template
        self.lineno = lineno


class _TemplateRaised(jinja2.exceptions.TemplateError):
    """What ``raise_exception`` throws inside Jinja, told apart from Jinja's own errors."""


class GenerationExtension(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}``: marks the assistant's part of a training
    sample. For rendering a prompt its body is output unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


# the time strftime_now() reports inside fixed_now(); None: the current local time
_RENDER_NOW: ContextVar[datetime | None] = ContextVar("infdebug_render_now", default=None)


def _strftime_now(fmt: str) -> str:
    return (_RENDER_NOW.get() or datetime.now()).strftime(fmt)


@contextmanager
def fixed_now(when: datetime | None) -> Iterator[None]:
    """Within this block templates' ``strftime_now()`` reports ``when`` (``None``: the real
    time). Re-render a logged request's prompt with its arrival time to get it as it was:
    Llama-3.1 and SmolLM3 templates write today's date into the system prompt."""
    reset = _RENDER_NOW.set(when)
    try:
        yield
    finally:
        _RENDER_NOW.reset(reset)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationExtension, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=64)
def compile_template(template: str) -> jinja2.Template:
    """The compiled template; a syntax error becomes :class:`ChatTemplateError`."""
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"template syntax error at line {e.lineno}: {e.message}", lineno=e.lineno
        ) from e


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    tools: Any = None,
    documents: Any = None,
    **extra: Any,
) -> str:
    """Render ``messages`` with ``template`` exactly as ``apply_chat_template(tokenize=False)``.

    ``extra`` holds further template variables: other special tokens (``unk_token``,
    ``pad_token`` …) and model kwargs such as ``enable_thinking``. Special tokens that are
    ``None`` are left undefined, as transformers leaves unset tokens out of its map.

    ``tools`` (JSON schemas) and ``documents`` are passed through as transformers does, ``None``
    included. The time ``strftime_now()`` reports is the current local time, or the one set
    with :func:`fixed_now`.
    """
    compiled = compile_template(template)
    variables: dict[str, Any] = {
        k: v for k, v in extra.items() if not (k.endswith("_token") and v is None)
    }
    if bos_token is not None:
        variables["bos_token"] = bos_token
    if eos_token is not None:
        variables["eos_token"] = eos_token
    variables.update(
        messages=messages,
        tools=tools,
        documents=documents,
        add_generation_prompt=add_generation_prompt,
    )
    try:
        return str(compiled.render(**variables))
    except _TemplateRaised as e:
        raise ChatTemplateError(e.message or "", raised_by_template=True) from e
    except jinja2.TemplateError as e:  # undefined names, sandbox refusals, …
        raise ChatTemplateError(
            e.message or type(e).__name__, lineno=getattr(e, "lineno", None)
        ) from e
    except Exception as e:  # the template did something Python refuses: 'str' + None, …
        raise ChatTemplateError(f"template failed: {type(e).__name__}: {e}") from e


def load_template(path: str) -> str:
    """The exact template source from a ``.jinja`` file, a ``tokenizer_config.json`` or
    ``chat_template.json`` (its ``chat_template``; the "default" one of a list), or a model
    directory (``chat_template.jinja``, else ``chat_template.json``, else
    ``tokenizer_config.json``)."""
    if os.path.isdir(path):
        for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return load_template(candidate)
        raise TextFormatError(
            f"{path}: no chat template here; expected chat_template.jinja, chat_template.json "
            "or tokenizer_config.json"
        )
    if path.endswith(".json"):
        data = read_json(path)
        if not isinstance(data, dict):
            raise TextFormatError(
                f"{path}: expected a JSON object with a chat_template, found {type(data).__name__}"
            )
        template = chat_template_from_config(data, path)
        if template is None:
            raise TextFormatError(f'{path}: expected a "chat_template" entry; this file has none')
        return template
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise TextFormatError(
            f"{path}: expected a UTF-8 Jinja template, found undecodable bytes at {e.start}"
        ) from e
    except OSError as e:
        raise TextFormatError(f"{path}: cannot read template: {e.strerror}") from e
