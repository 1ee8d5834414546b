"""Reading the Hugging Face files that sit beside a tokenizer: ``tokenizer_config.json``,
``special_tokens_map.json``, ``added_tokens.json``, ``generation_config.json`` and
``chat_template.jinja`` / ``chat_template.json``.

Nothing here builds a tokenizer; it only turns those files into plain values (special-token
strings, flags, added-token tables, a chat template) with errors that name the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from infdebug.errors import InputError

SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
)


class TextFormatError(InputError):
    """A tokenizer or template file is not what it should be. The message names the file."""


@dataclass
class AddedTokenSpec:
    """One entry of ``added_tokens_decoder`` (or ``added_tokens.json``) with all its flags."""

    id: int
    content: str
    special: bool = True
    normalized: bool = False
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "content": self.content,
            "single_word": self.single_word,
            "lstrip": self.lstrip,
            "rstrip": self.rstrip,
            "normalized": self.normalized,
            "special": self.special,
        }


@dataclass
class TokenizerConfig:
    """What the files beside a tokenizer say. ``None`` where a file does not say."""

    path: str | None = None
    tokenizer_class: str | None = None
    model_type: str | None = None  # from config.json, e.g. "qwen2"
    special_tokens: dict[str, str] = field(default_factory=dict)
    add_bos_token: bool | None = None
    add_eos_token: bool | None = None
    chat_template: str | None = None
    added_tokens: list[AddedTokenSpec] = field(default_factory=list)
    generation_eos_ids: list[int] = field(default_factory=list)


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TextFormatError(
            f"{path}:{e.lineno}: expected JSON, found a syntax error: {e.msg}"
        ) from e
    except UnicodeDecodeError as e:
        raise TextFormatError(
            f"{path}: expected UTF-8 JSON, found undecodable bytes at {e.start}"
        ) from e
    except OSError as e:
        raise TextFormatError(f"{path}: cannot read: {e.strerror}") from e


def token_content(value: Any) -> str | None:
    """A special-token value as configs write it: a string, an AddedToken dict, or null."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def chat_template_from_config(cfg: dict[str, Any], path: str) -> str | None:
    """The ``chat_template`` of a tokenizer_config.json: a string, or the "default" entry of a
    list of ``{"name", "template"}`` dicts (the first one when there is no "default")."""
    tpl = cfg.get("chat_template")
    if tpl is None or isinstance(tpl, str):
        return tpl
    if isinstance(tpl, list):
        named = {}
        for item in tpl:
            if not (isinstance(item, dict) and isinstance(item.get("template"), str)):
                raise TextFormatError(
                    f"{path}: expected chat_template entries of the form "
                    f'{{"name": ..., "template": ...}}, found {str(item)[:80]!r}'
                )
            named[str(item.get("name"))] = item["template"]
        if "default" in named:
            return str(named["default"])
        return str(next(iter(named.values()))) if named else None
    raise TextFormatError(
        f"{path}: expected chat_template to be a string or a list of named templates, "
        f"found {type(tpl).__name__}"
    )


def _added_tokens_decoder(cfg: dict[str, Any], path: str) -> list[AddedTokenSpec]:
    out: list[AddedTokenSpec] = []
    table = cfg.get("added_tokens_decoder") or {}
    if not isinstance(table, dict):
        raise TextFormatError(
            f"{path}: expected added_tokens_decoder to be an object of id → token"
        )
    for key, entry in table.items():
        try:
            tid = int(key)
        except ValueError as e:
            raise TextFormatError(
                f"{path}: added_tokens_decoder key {key!r} is not an integer id"
            ) from e
        content = token_content(entry)
        if content is None:
            raise TextFormatError(f"{path}: added_tokens_decoder[{key}] has no content string")
        flags = entry if isinstance(entry, dict) else {}
        out.append(
            AddedTokenSpec(
                id=tid,
                content=content,
                special=bool(flags.get("special", True)),
                normalized=bool(flags.get("normalized", False)),
                lstrip=bool(flags.get("lstrip", False)),
                rstrip=bool(flags.get("rstrip", False)),
                single_word=bool(flags.get("single_word", False)),
            )
        )
    return sorted(out, key=lambda t: t.id)


def read_config_dir(directory: str) -> TokenizerConfig:
    """Everything the Hugging Face side files in ``directory`` say; absent files say nothing."""
    out = TokenizerConfig()
    tc_path = os.path.join(directory, "tokenizer_config.json")
    cfg: dict[str, Any] = {}
    if os.path.isfile(tc_path):
        raw = read_json(tc_path)
        if not isinstance(raw, dict):
            raise TextFormatError(f"{tc_path}: expected a JSON object, found {type(raw).__name__}")
        cfg = raw
        out.path = tc_path
    stm_path = os.path.join(directory, "special_tokens_map.json")
    stm = read_json(stm_path) if os.path.isfile(stm_path) else {}
    for key in SPECIAL_TOKEN_KEYS:
        # tokenizer_config.json wins; special_tokens_map.json fills what it leaves out
        value = token_content(cfg.get(key)) if key in cfg else token_content(stm.get(key))
        if value is not None:
            out.special_tokens[key] = value
    if isinstance(cfg.get("tokenizer_class"), str):
        out.tokenizer_class = cfg["tokenizer_class"]
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(cfg.get(key), bool):
            setattr(out, key, cfg[key])
    out.added_tokens = _added_tokens_decoder(cfg, tc_path)
    at_path = os.path.join(directory, "added_tokens.json")
    if not out.added_tokens and os.path.isfile(at_path):
        table = read_json(at_path)
        if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
            raise TextFormatError(f"{at_path}: expected an object of token → integer id")
        out.added_tokens = sorted(
            (AddedTokenSpec(id=v, content=k) for k, v in table.items()), key=lambda t: t.id
        )
    out.chat_template = chat_template_from_config(cfg, tc_path)
    # newer HF layout: the template lives in its own file, and then wins over the config's
    jinja_path = os.path.join(directory, "chat_template.jinja")
    json_path = os.path.join(directory, "chat_template.json")
    if os.path.isfile(jinja_path):
        with open(jinja_path, encoding="utf-8", newline="") as f:
            out.chat_template = f.read()
    elif os.path.isfile(json_path):
        out.chat_template = chat_template_from_config(read_json(json_path), json_path)
    mc_path = os.path.join(directory, "config.json")
    if os.path.isfile(mc_path):
        mc = read_json(mc_path)
        if isinstance(mc, dict) and isinstance(mc.get("model_type"), str):
            out.model_type = mc["model_type"]
    gc_path = os.path.join(directory, "generation_config.json")
    if os.path.isfile(gc_path):
        gc = read_json(gc_path)
        eos = gc.get("eos_token_id") if isinstance(gc, dict) else None
        if isinstance(eos, int):
            out.generation_eos_ids = [eos]
        elif isinstance(eos, list):
            out.generation_eos_ids = [int(x) for x in eos if isinstance(x, int)]
    return out


def read_special_tokens(path: str) -> dict[str, str]:
    """The special tokens (bos_token, eos_token, …) one tokenizer_config.json names."""
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise TextFormatError(f"{path}: expected a JSON object, found {type(cfg).__name__}")
    out: dict[str, str] = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = token_content(cfg.get(key))
        if value is not None:
            out[key] = value
    return out
