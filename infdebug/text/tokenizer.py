"""Loading a tokenizer from whatever a model directory ships, offline, into one shape.

Formats: ``tokenizer.json``; ``vocab.json`` + ``merges.txt`` (GPT-2 and Qwen2 byte-level BPE);
a tiktoken rank file (Llama-3's ``tokenizer.model``). A ``tokenizer_config.json`` (and the
other Hugging Face side files) beside any of these supplies special tokens, ``add_bos_token``
and the chat template. SentencePiece ``.model`` files are recognised and refused with the
reason: no maintained library converts a SentencePiece BPE model to a ``tokenizers``
tokenizer without ``transformers``.

IDs are what the ``tokenizers`` library gives for these files, which is what transformers 4.x
and the serving engines built on it use. BOS/EOS follow transformers 4.x: the post-processor
of ``tokenizer.json`` decides, except where the config's ``add_bos_token`` / ``add_eos_token``
is honoured — for tokenizers built here from vocab/merges or ranks, and for the
Llama/CodeLlama/Gemma tokenizer classes, whose implementations rewrite the post-processor
from those flags. A flag that is ignored that way is kept in ``notes``.

Beware: transformers 5 rebuilds Llama-class tokenizers from the vocabulary with its own
pre-tokenizer instead of running ``tokenizer.json``'s normalizer, so the same files can give
other IDs there (Phi-3's ``<|user|>\nHello<|end|>…`` is 10 IDs here and 7 under 5.24).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import tokenizers
from tokenizers import processors

from infdebug.text.config import TextFormatError, TokenizerConfig, read_config_dir
from infdebug.text.convert import (
    byte_level_bpe,
    llama3_from_ranks,
    looks_like_rank_file,
    with_added_tokens,
)
from infdebug.text.fingerprint import tokenizer_fingerprint

SUPPORTED_FORMATS = (
    "tokenizer.json; vocab.json + merges.txt (byte-level BPE: GPT-2, Qwen2); "
    "a tiktoken rank file (Llama-3 tokenizer.model); a directory holding one of these, "
    "optionally with tokenizer_config.json"
)

# end-of-turn / end-of-message tokens that also stop generation, where a tokenizer has them
END_OF_TURN_TOKENS = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|return|>",
    "<|call|>",
)
# HF tokenizer classes whose fast implementation rebuilds the post-processor from
# add_bos_token / add_eos_token
_CONFIG_DRIVEN_CLASSES = ("LlamaTokenizer", "CodeLlamaTokenizer", "GemmaTokenizer")


class TokenizerLoadError(TextFormatError):
    """A tokenizer could not be loaded; the message names the file and what was expected."""


class TextTokenizer(Protocol):
    """The seam the rest of infdebug codes against (a bundle, or a fake in tests)."""

    @property
    def fingerprint(self) -> str: ...

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...

    def piece(self, id: int) -> str | None: ...


@dataclass
class TokenizerBundle:
    """A loaded tokenizer with the settings around it that change IDs or stop generation."""

    tok: tokenizers.Tokenizer
    bos_token: str | None
    eos_token: str | None
    bos_id: int | None
    eos_ids: list[int]
    add_bos: bool
    chat_template: str | None
    special_tokens: dict[str, str]
    source: str
    add_eos: bool = False
    notes: list[str] = field(default_factory=list)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def piece(self, id: int) -> str | None:
        p = self.tok.id_to_token(id)
        return None if p is None else str(p)

    @property
    def vocab_size(self) -> int:
        """Size of the ID space, added tokens included."""
        return int(self.tok.get_vocab_size(with_added_tokens=True))

    @cached_property
    def fingerprint(self) -> str:
        return tokenizer_fingerprint(self.tok.to_str(), self.config_for_fingerprint())

    def config_for_fingerprint(self) -> dict[str, Any]:
        return {
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }


def encode_prompt(bundle: TokenizerBundle, rendered: str) -> list[int]:
    """IDs for a prompt that a chat template rendered: BOS is added only if the tokenizer adds
    BOS and the text does not already start with it (many templates write ``{{ bos_token }}``
    themselves, and encoding those with special tokens gives the double-BOS prompt).
    EOS is never appended to a prompt."""
    ids = bundle.encode(rendered, add_special_tokens=False)
    if (
        bundle.add_bos
        and bundle.bos_id is not None
        and bundle.bos_token is not None
        and not rendered.startswith(bundle.bos_token)
    ):
        ids.insert(0, bundle.bos_id)
    return ids


# --- loading --------------------------------------------------------------------------------


def _post_processor_state(tok: tokenizers.Tokenizer) -> dict[str, Any] | None:
    pp = tok.post_processor
    if pp is None:
        return None
    state = json.loads(pp.__getstate__())
    return state if isinstance(state, dict) else None


def _template_specials(state: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """The special tokens a post-processor puts before and after a single sequence."""
    if state is None:
        return None, None
    if state.get("type") == "Sequence":
        first: str | None = None
        last: str | None = None
        for sub in state.get("processors") or []:
            f, la = _template_specials(sub)
            first, last = first or f, last or la
        return first, last
    if state.get("type") != "TemplateProcessing":
        return None, None
    single = state.get("single") or []

    def special(item: dict[str, Any]) -> str | None:
        sp = item.get("SpecialToken")
        return str(sp["id"]) if isinstance(sp, dict) else None

    return (special(single[0]) if single else None, special(single[-1]) if single else None)


def _set_template_processor(
    tok: tokenizers.Tokenizer, bos: tuple[str, int] | None, eos: tuple[str, int] | None
) -> None:
    """Rebuild the post-processor as HF's Llama tokenizer does from add_bos/add_eos,
    keeping a byte-level offsets processor where there was one."""
    b = f"{bos[0]}:0 " if bos else ""
    e = f" {eos[0]}:0" if eos else ""
    b1 = f" {bos[0]}:1" if bos else ""
    e1 = f" {eos[0]}:1" if eos else ""
    single = f"{b}$A:0{e}"
    pair = f"{single}{b1} $B:1{e1}"
    specials = [t for t in (bos, eos) if t is not None]
    if bos and eos and bos[0] == eos[0]:
        specials = [bos]
    template = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    state = _post_processor_state(tok)
    has_byte_level = state is not None and (
        state.get("type") == "ByteLevel"
        or any(p.get("type") == "ByteLevel" for p in state.get("processors") or [])
    )
    if has_byte_level:
        tok.post_processor = processors.Sequence(
            [processors.ByteLevel(trim_offsets=False), template]
        )
    else:
        tok.post_processor = template


def _is_sentencepiece(path: str) -> bool:
    # a serialized ModelProto starts with field 1 (pieces), length-delimited: byte 0x0A
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head[:1] == b"\x0a"


def _refuse_sentencepiece(path: str) -> TokenizerLoadError:
    return TokenizerLoadError(
        f"{path}: a SentencePiece model (protobuf), which is not supported: no maintained "
        "library converts SentencePiece BPE models to a `tokenizers` tokenizer without "
        "`transformers`. Save the model's tokenizer.json (transformers: "
        "AutoTokenizer.from_pretrained(dir).save_pretrained(out)) and load that. "
        f"Supported: {SUPPORTED_FORMATS}"
    )


def _build(path: str, cfg: TokenizerConfig) -> tuple[tokenizers.Tokenizer, bool, str]:
    """The tokenizer at ``path``, whether it was built here (config flags honoured), and the
    file it came from."""
    if os.path.isdir(path):
        directory = path
        candidates = ("tokenizer.json", "vocab.json", "tokenizer.model")
        found = [c for c in candidates if os.path.isfile(os.path.join(path, c))]
        if not found:
            raise TokenizerLoadError(
                f"{path}: no tokenizer here; expected one of {SUPPORTED_FORMATS}"
            )
        file = os.path.join(path, found[0])
    else:
        directory, file = os.path.dirname(path) or ".", path
    name = os.path.basename(file)
    if name in ("vocab.json", "merges.txt"):
        for needed in ("vocab.json", "merges.txt"):
            if not os.path.isfile(os.path.join(directory, needed)):
                raise TokenizerLoadError(
                    f"{os.path.join(directory, needed)}: missing; "
                    "byte-level BPE needs vocab.json and merges.txt together"
                )
        is_qwen = (cfg.tokenizer_class or "").startswith("Qwen2") or (
            cfg.model_type or ""
        ).startswith("qwen")
        try:
            tok = byte_level_bpe(directory, "qwen2" if is_qwen else "gpt2")
        except Exception as e:
            if isinstance(e, TextFormatError):
                raise
            raise TokenizerLoadError(
                f"{directory}: vocab.json/merges.txt do not make a BPE model: {e}"
            ) from e
        return with_added_tokens(tok, cfg.added_tokens, cfg.path or directory), True, file
    if name.endswith(".json"):
        try:
            with open(file, encoding="utf-8") as f:
                raw = f.read()
            data = json.loads(raw)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerLoadError(
                f"{file}: expected a tokenizer.json, could not read it as JSON: {e}"
            ) from e
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise TokenizerLoadError(
                f'{file}: expected a tokenizer.json with a "model" object; found none'
            )
        try:
            return tokenizers.Tokenizer.from_str(raw), False, file
        except Exception as e:
            raise TokenizerLoadError(
                f"{file}: tokenizers could not load this tokenizer.json: {e}"
            ) from e
    if looks_like_rank_file(file):
        tok, _ = llama3_from_ranks(file)
        if cfg.added_tokens:  # a config beside the ranks may name the specials differently
            tok = with_added_tokens(tok, cfg.added_tokens, cfg.path or file)
        return tok, True, file
    if _is_sentencepiece(file):
        raise _refuse_sentencepiece(file)
    raise TokenizerLoadError(
        f"{file}: not a tokenizer format this knows; expected {SUPPORTED_FORMATS}"
    )


def _default_specials(tok: tokenizers.Tokenizer, cfg: TokenizerConfig) -> dict[str, str]:
    """Special tokens the config names, or the well-known defaults where there is no config."""
    specials = dict(cfg.special_tokens)
    if cfg.path is None:
        if tok.token_to_id("<|begin_of_text|>") is not None:
            specials.setdefault("bos_token", "<|begin_of_text|>")
            specials.setdefault("eos_token", "<|end_of_text|>")
        elif tok.token_to_id("<|endoftext|>") is not None:  # GPT-2's defaults
            for key in ("bos_token", "eos_token", "unk_token"):
                specials.setdefault(key, "<|endoftext|>")
    return specials


def load_tokenizer(path: str) -> TokenizerBundle:
    """Load the tokenizer at ``path`` (a file or a model directory). Never touches the network."""
    if not os.path.exists(path):
        raise TokenizerLoadError(f"{path}: no such file or directory; expected {SUPPORTED_FORMATS}")
    if os.path.basename(path) == "tokenizer_config.json":
        path = os.path.dirname(path) or "."
    directory = path if os.path.isdir(path) else (os.path.dirname(path) or ".")
    try:
        cfg = read_config_dir(directory)
        tok, built_here, source = _build(path, cfg)
    except TokenizerLoadError:
        raise
    except TextFormatError as e:  # from the config or converter readers: same message, one type
        raise TokenizerLoadError(str(e)) from e
    specials = _default_specials(tok, cfg)
    bos_token, eos_token = specials.get("bos_token"), specials.get("eos_token")
    bos_id = tok.token_to_id(bos_token) if bos_token else None
    eos_id = tok.token_to_id(eos_token) if eos_token else None
    notes: list[str] = []

    post_first, post_last = _template_specials(_post_processor_state(tok))
    post_bos = bos_token is not None and post_first == bos_token
    post_eos = eos_token is not None and post_last == eos_token
    cls = (cfg.tokenizer_class or "").removesuffix("Fast")
    honoured = built_here or cls in _CONFIG_DRIVEN_CLASSES
    add_bos = cfg.add_bos_token if (honoured and cfg.add_bos_token is not None) else post_bos
    add_eos = cfg.add_eos_token if (honoured and cfg.add_eos_token is not None) else post_eos
    if not honoured:
        for key, flag, actual in (
            ("add_bos_token", cfg.add_bos_token, add_bos),
            ("add_eos_token", cfg.add_eos_token, add_eos),
        ):
            if flag is not None and flag != actual:
                notes.append(
                    f"{cfg.path}: {key}={str(flag).lower()} is ignored by "
                    f"{cfg.tokenizer_class or 'this tokenizer class'}; "
                    "tokenizer.json's post-processor decides "
                    f"(it {'adds' if actual else 'does not add'} the token)"
                )
    if add_bos and bos_id is None:
        notes.append(
            f"BOS should be added but {bos_token!r} is not in the vocabulary; none is added"
        )
        add_bos = False
    if add_eos and eos_id is None:
        notes.append(
            f"EOS should be added but {eos_token!r} is not in the vocabulary; none is added"
        )
        add_eos = False
    if (add_bos, add_eos) != (post_bos, post_eos):
        _set_template_processor(
            tok,
            (bos_token, bos_id) if add_bos and bos_token and bos_id is not None else None,
            (eos_token, eos_id) if add_eos and eos_token and eos_id is not None else None,
        )

    eos_ids: list[int] = []
    added_special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    candidates = [eos_id] + [tok.token_to_id(t) for t in END_OF_TURN_TOKENS if t in added_special]
    for i in candidates + list(cfg.generation_eos_ids):
        if i is not None and i not in eos_ids:
            eos_ids.append(i)
    return TokenizerBundle(
        tok=tok,
        bos_token=bos_token,
        eos_token=eos_token,
        bos_id=bos_id,
        eos_ids=eos_ids,
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=cfg.chat_template,
        special_tokens=specials,
        source=source,
        notes=notes,
    )
