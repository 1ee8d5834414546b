"""Write a complete, local, HF-format checkpoint (random or trained weights, a real tokenizer).

The tokenizer is a byte-level BPE trained in-process with ``tokenizers`` on ``corpus.txt``
(English prose, Q&A, code and numbers written for this project), with the special tokens of
a chat format (ChatML or Llama 3 headers) appended after the learned vocabulary, as real
models do, and reserved special tokens filling the vocabulary up to the preset's size. The
chat templates are this project's own. Everything is deterministic in ``seed``.

Weights: matrices and embeddings ~ N(0, 0.02); q/k/v biases (qwen2) ~ N(0, 0.1); RMSNorm
weights 1 + N(0, 0.1), so that a mixed-up norm or bias shows in the logits. With
``train_steps``, those weights are the start of a short chat training on the same corpus
(``train.py``): the model then answers in words and ends its turns, where a random-weight one
loops under greedy decoding. ``training.json`` in the directory records the recipe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)

from infdebug.tracer.engine.checkpoint import GENERATION_CONFIG, save_checkpoint
from infdebug.tracer.engine.model import LlamaForCausalLM, ModelConfig

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.txt")
TRAINING = "training.json"  # written by a trained make_model: the recipe and the losses

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=172,
        vocab_size=1024,
        max_position_embeddings=1024,
    ),
    "small": dict(
        num_hidden_layers=4,
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=688,
        vocab_size=8192,
        max_position_embeddings=2048,
    ),
}
ARCHS = ("llama", "mistral", "qwen2")
WEIGHT_STD = 0.02
BIAS_STD = 0.1
NORM_STD = 0.1

# Pre-tokenizer splits in the style of recent byte-level BPEs: contractions, letter runs with
# one leading non-letter, digit groups, punctuation runs, newlines, spaces.
_SPLIT_1_DIGIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_3_DIGITS = _SPLIT_1_DIGIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")

# infdebug's own templates (not copied from any model): one line per turn, content as given.
CHATML_TEMPLATE = (
    "{#- infdebug test template, ChatML layout -#}\n"
    "{%- for message in messages -%}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}\n"
    "{{- raise_exception('unsupported role ' ~ message['role'] ~ "
    "'; expected system, user or assistant') -}}\n"
    "{%- endif -%}\n"
    "{%- if message['role'] == 'system' and not loop.first -%}\n"
    "{{- raise_exception('a system message may only come first') -}}\n"
    "{%- endif -%}\n"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)
LLAMA3_TEMPLATE = (
    "{#- infdebug test template, Llama 3 header layout; the text starts with bos_token -#}\n"
    "{{- bos_token -}}\n"
    "{%- for message in messages -%}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}\n"
    "{{- raise_exception('unsupported role ' ~ message['role'] ~ "
    "'; expected system, user or assistant') -}}\n"
    "{%- endif -%}\n"
    "{{- '<|start_header_id|>' ~ message['role'] ~ '<|end_header_id|>\\n\\n' -}}\n"
    "{{- message['content'] | trim -}}\n"
    "{{- '<|eot_id|>' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "{%- endif -%}\n"
)


@dataclass(frozen=True)
class ChatFormat:
    specials: tuple[str, ...]  # appended after the BPE vocabulary, in this order
    bos: str
    eos: str  # the tokenizer's eos_token: end of an assistant turn
    pad: str
    stop: tuple[str, ...]  # generation_config eos ids: every token that ends generation
    add_bos: bool  # the tokenizer's post-processor prepends bos
    template: str
    split: str


CHAT_FORMATS: dict[str, ChatFormat] = {
    "chatml": ChatFormat(
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos="<|endoftext|>",
        eos="<|im_end|>",
        pad="<|endoftext|>",
        stop=("<|im_end|>", "<|endoftext|>"),
        add_bos=False,
        template=CHATML_TEMPLATE,
        split=_SPLIT_1_DIGIT,
    ),
    "llama3": ChatFormat(
        specials=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|end_of_text|>",
        stop=("<|eot_id|>", "<|end_of_text|>"),
        add_bos=True,
        template=LLAMA3_TEMPLATE,
        split=_SPLIT_3_DIGITS,
    ),
}


def _choice(kind: str, value: str, allowed: Any) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(allowed)}")


def _token_id(tok: Tokenizer, token: str) -> int:
    i = tok.token_to_id(token)
    if i is None:
        raise KeyError(f"token {token!r} is not in the tokenizer's vocabulary")
    return i


def train_tokenizer(
    vocab_size: int, chat_format: str = "chatml", corpus: str = CORPUS
) -> Tokenizer:
    """A byte-level BPE of exactly ``vocab_size`` tokens: learned merges, then the chat
    format's special tokens, then ``<|reserved_special_token_N|>`` up to the size."""
    _choice("chat format", chat_format, CHAT_FORMATS)
    fmt = CHAT_FORMATS[chat_format]
    with open(corpus, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(fmt.split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(fmt.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    learned = tok.get_vocab_size()
    reserved = [
        f"<|reserved_special_token_{i}|>" for i in range(vocab_size - learned - len(fmt.specials))
    ]
    tok.add_special_tokens(
        [AddedToken(s, special=True, normalized=False) for s in (*fmt.specials, *reserved)]
    )
    byte_level = processors.ByteLevel(trim_offsets=False)
    if fmt.add_bos:
        bos_id = _token_id(tok, fmt.bos)
        tok.post_processor = processors.Sequence(
            [
                byte_level,
                processors.TemplateProcessing(
                    single=f"{fmt.bos}:0 $A:0",
                    pair=f"{fmt.bos}:0 $A:0 {fmt.bos}:1 $B:1",
                    special_tokens=[(fmt.bos, bos_id)],
                ),
            ]
        )
    else:
        tok.post_processor = byte_level
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    return tok


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_tokenizer(
    tok: Tokenizer, chat_format: str, out_dir: str, model_max_length: int
) -> dict[str, int]:
    """tokenizer.json, tokenizer_config.json and chat_template.jinja; returns special ids."""
    fmt = CHAT_FORMATS[chat_format]
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    ids = {s: _token_id(tok, s) for s in (fmt.bos, fmt.eos, fmt.pad, *fmt.stop)}
    added = {
        str(i): {
            "content": t.content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in sorted(tok.get_added_tokens_decoder().items())
    }
    _write_json(
        os.path.join(out_dir, "tokenizer_config.json"),
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": added,
            "bos_token": fmt.bos,
            "eos_token": fmt.eos,
            "pad_token": fmt.pad,
            "unk_token": None,
            "add_bos_token": fmt.add_bos,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": model_max_length,
            "chat_template": fmt.template,
        },
    )
    with open(os.path.join(out_dir, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write(fmt.template)
    return ids


def random_model(cfg: ModelConfig, seed: int) -> LlamaForCausalLM:
    """A model with seeded random weights (see the module docstring for the scales)."""
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1.0 + NORM_STD * noise)
            elif name.endswith(".bias"):
                p.copy_(BIAS_STD * noise)
            else:
                p.copy_(WEIGHT_STD * noise)
    return model


def make_model(
    out_dir: str,
    preset: str = "tiny",
    arch: str = "llama",
    chat_format: str = "chatml",
    seed: int = 0,
    *,
    tie_word_embeddings: bool = False,
    rope_scaling: dict[str, Any] | None = None,
    train_steps: int | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> str:
    """Write an ``arch`` model of ``preset`` size, with a trained tokenizer and
    ``chat_format``'s template, into ``out_dir`` as a HF checkpoint; returns the path.

    Random weights, or with ``train_steps`` (0: the preset's default) those weights trained
    to chat on the shipped corpus (``train.py``; ``on_step(step, steps, loss)`` reports
    progress), deterministic in ``seed`` as well."""
    _choice("preset", preset, PRESETS)
    _choice("architecture", arch, ARCHS)
    _choice("chat format", chat_format, CHAT_FORMATS)
    fmt = CHAT_FORMATS[chat_format]
    p = PRESETS[preset]
    os.makedirs(out_dir, exist_ok=True)
    tok = train_tokenizer(p["vocab_size"], chat_format)
    ids = write_tokenizer(tok, chat_format, out_dir, p["max_position_embeddings"])
    stop_ids = [ids[s] for s in fmt.stop]
    cfg = ModelConfig(
        arch=arch,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling=rope_scaling,
        tie_word_embeddings=tie_word_embeddings,
        attention_bias=arch == "qwen2",
        bos_token_id=ids[fmt.bos],
        eos_token_id=stop_ids,
        vocab_size=p["vocab_size"],
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_hidden_layers"],
        num_attention_heads=p["num_attention_heads"],
        num_key_value_heads=p["num_key_value_heads"],
        head_dim=p["head_dim"],
        max_position_embeddings=p["max_position_embeddings"],
    )
    _write_json(
        os.path.join(out_dir, GENERATION_CONFIG),
        {
            "bos_token_id": ids[fmt.bos],
            "eos_token_id": stop_ids,
            "pad_token_id": ids[fmt.pad],
        },
    )
    model = random_model(cfg, seed)
    training = os.path.join(out_dir, TRAINING)
    if os.path.exists(training):
        os.remove(training)  # a random-weight remake of a trained directory
    if train_steps is not None:
        from infdebug.tracer.engine.train import train_in_dir

        report = train_in_dir(
            model,
            out_dir,
            preset,
            steps=train_steps,
            seed=seed,
            pad_id=ids[fmt.pad],
            on_step=on_step,
        )
        save_checkpoint(model, cfg, out_dir)
        _write_json(training, asdict(report))
    else:
        save_checkpoint(model, cfg, out_dir)
    return os.path.abspath(out_dir)


def is_trained(model_dir: str) -> bool:
    """Whether ``model_dir`` holds a model make_model trained (it wrote ``training.json``)."""
    return os.path.isfile(os.path.join(model_dir, TRAINING))
