"""Train a make-model checkpoint to chat, on conversations made from the shipped corpus.

Greedy decoding of a random-weight model loops on every request and almost never ends its
turn; a few seconds of training on ``corpus.txt`` (the text the tokenizer is trained on) make
it answer in words and end each answer with the chat format's end-of-turn token.

The conversations (all deterministic in the seed): the corpus's Q/A pairs (the answer cut to
its first sentences); prose paragraphs, whose first sentence asks for the next ones; and
user messages of random corpus words (like the load generator's prompts, ``prompts.py``)
answered with a run of corpus sentences. Some get a system message first, some a second
exchange. Each is rendered with the model's own chat template and encoded as the engine
encodes a rendered prompt; the loss is on the assistant turns only, their end-of-turn token
included. Batches are drawn in a seeded order, so the same call gives the same weights.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import torch
import torch.nn.functional as F

from infdebug.text.template import render_chat
from infdebug.text.tokenizer import TokenizerBundle, encode_prompt
from infdebug.tracer.engine.model import DecoderLayer, LlamaForCausalLM, _rotate_half

IGNORE = -100
SYSTEMS = (
    "You are a helpful assistant.",
    "Answer the question in plain words.",
    "Keep your answers short.",
    "You write clear, friendly replies.",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"[A-Za-z]{2,12}")
MAX_WORDS = 30  # the longest answer sentence (or pair of sentences)


@dataclass(frozen=True)
class TrainConfig:
    """The recipe: AdamW (betas 0.9/0.95), linear warm-up, cosine decay to lr/10, gradients
    clipped at norm 1, float32; batches of ``batch_size`` conversations, each at most
    ``seq_len`` tokens (longer ones are left out)."""

    steps: int
    lr: float = 1e-2
    batch_size: int = 16
    seq_len: int = 256
    warmup: int = 10
    weight_decay: float = 0.0
    seed: int = 0


# The default recipe per make-model preset.
RECIPES: dict[str, TrainConfig] = {
    "tiny": TrainConfig(steps=150),
    "small": TrainConfig(steps=120),
}


@dataclass(frozen=True)
class TrainReport:
    steps: int
    loss: float  # mean assistant-token loss over the last tenth of the steps
    first_loss: float
    seconds: float
    tokens: int  # tokens run through the model (padding excluded)
    config: dict[str, Any]


# --- conversations from the corpus ------------------------------------------------------


def _sections(text: str) -> list[list[str]]:
    """The corpus's sections (split at ``---`` lines) as lists of paragraphs; the first
    section's first line (a header about the corpus itself) is dropped."""
    out = []
    for i, sec in enumerate(text.split("\n---\n")):
        paras = [p.strip() for p in sec.strip().split("\n\n") if p.strip()]
        if i == 0:
            paras = paras[1:]
        out.append(paras)
    return out


def _sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(" ".join(paragraph.split())) if s.strip()]


def corpus_parts(text: str) -> tuple[list[tuple[str, str]], list[list[str]], list[str]]:
    """(question, answer) pairs, prose paragraphs as sentence lists, and the corpus's words."""
    qa: list[tuple[str, str]] = []
    prose: list[list[str]] = []
    for paras in _sections(text):
        for p in paras if paras and paras[0].startswith("Q:") else paras[1:]:  # [0]: a title
            if p.startswith("Q:") and "\nA:" in p:
                q, a = p.split("\nA:", 1)
                qa.append((q[2:].strip(), " ".join(a.split())))
            elif not any(line.startswith((" ", "\t")) for line in p.splitlines()):  # no code
                sents = [s for s in _sentences(p) if 3 <= len(s.split()) <= MAX_WORDS]
                if sents:
                    prose.append(sents)
    return qa, prose, _WORD.findall(text)


def _answer(rng: random.Random, sents: list[str], start: int) -> str:
    """One sentence, or two while they stay short: a short answer ends in few tokens."""
    out = sents[start]
    if start + 1 < len(sents) and rng.random() < 0.3 and len((out + sents[start + 1]).split()) <= MAX_WORDS:
        out += " " + sents[start + 1]
    return out


def conversations(text: str, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` chat conversations made from the corpus ``text``, deterministic in ``seed``."""
    qa, prose, words = corpus_parts(text)
    rng = random.Random(f"infdebug-train:{seed}")
    multi = [p for p in prose if len(p) >= 2]

    def exchange() -> tuple[str, str]:
        kind = rng.random()
        if kind < 0.25:
            q, a = rng.choice(qa)
            return q, _answer(rng, _sentences(a), 0)
        if kind < 0.55:
            p = rng.choice(multi)
            i = rng.randrange(len(p) - 1)
            return p[i], _answer(rng, p, i + 1)
        k = rng.choice((3, 8, 16, 32, 64))
        user = " ".join(rng.choice(words).lower() for _ in range(rng.randint(max(1, k // 2), k)))
        p = rng.choice(prose)
        return user, _answer(rng, p, rng.randrange(len(p)))

    out = []
    for _ in range(n):
        msgs: list[dict[str, str]] = []
        if rng.random() < 0.3:
            msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
        for _ in range(2 if rng.random() < 0.25 else 1):
            user, answer = exchange()
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        out.append(msgs)
    return out


# --- encoding -------------------------------------------------------------------------------


def _render(tok: TokenizerBundle, template: str, msgs: list[dict[str, str]], gen: bool) -> str:
    special = dict(tok.special_tokens)
    if tok.bos_token is not None:
        special.setdefault("bos_token", tok.bos_token)
    if tok.eos_token is not None:
        special.setdefault("eos_token", tok.eos_token)
    return render_chat(template, msgs, add_generation_prompt=gen, **special)


def encode_conversation(
    tok: TokenizerBundle, template: str, msgs: list[dict[str, str]], *, turns: bool = True
) -> tuple[list[int], list[int]]:
    """The conversation's token IDs as the engine encodes a rendered prompt, and the labels:
    each assistant turn's tokens through its end-of-turn token, IGNORE elsewhere. With
    ``turns``, also the template's own text between turns after the first answer (the next
    turn's header), never a user or system message's content."""
    if tok.eos_token is None:
        raise ValueError("the tokenizer has no eos_token: nothing marks the end of a turn")
    text = _render(tok, template, msgs, gen=False)
    spans: list[tuple[int, int]] = []
    skip: list[tuple[int, int]] = []
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            start = len(_render(tok, template, msgs[:i], gen=True))
            end = text.index(tok.eos_token, start) + len(tok.eos_token)
            spans.append((start, end))
        elif turns and spans:
            start = text.index(m["content"], len(_render(tok, template, msgs[:i], gen=False)))
            skip.append((start, start + len(m["content"])))
    if turns and spans:
        spans.append((spans[0][0], len(text)))

    def label(i: int, a: int, b: int) -> int:
        if any(s < b and a < e for s, e in skip):
            return IGNORE
        return i if any(s <= a and b <= e for s, e in spans) else IGNORE

    enc = tok.tok.encode(text, add_special_tokens=False)
    ids = encode_prompt(tok, text)
    shift = len(ids) - len(enc.ids)  # a BOS the tokenizer adds in front
    labels = [IGNORE] * shift + [label(i, a, b) for i, (a, b) in zip(enc.ids, enc.offsets, strict=True)]
    return ids, labels


# --- the model, with gradients --------------------------------------------------------------


def hidden_states(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """The final-norm hidden states for ``ids`` [B, T] from position 0, causal, with autograd:
    the same modules and math as ``prefill`` without the KV cache (RoPE tables from
    ``setup_rope``, which must cover T)."""
    B, T = ids.shape
    m = model.model
    h = m.embed_tokens(ids)
    cos, sin = model.cos[:T], model.sin[:T]
    for layer in cast(list[DecoderLayer], m.layers):
        a = layer.self_attn
        qx, kx, vx = a.qkv(layer.input_layernorm(h))
        q = qx.reshape(B, T, a.h, a.d).transpose(1, 2)
        k = kx.reshape(B, T, a.kv, a.d).transpose(1, 2)
        v = vx.reshape(B, T, a.kv, a.d).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=a.kv != a.h)
        h = h + a.o_proj(o.transpose(1, 2).reshape(B, T, a.h * a.d))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    out: torch.Tensor = m.norm(h)
    return out


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _batches(data: list[tuple[list[int], list[int]]], cfg: TrainConfig) -> list[list[int]]:
    """Indices of each step's examples: seeded permutations, one after another."""
    g = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    need = cfg.steps * cfg.batch_size
    while len(order) < need:
        order += torch.randperm(len(data), generator=g).tolist()
    return [order[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(cfg.steps)]


def _pad(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for r, (i, lab) in enumerate(rows):
        ids[r, : len(i)] = torch.tensor(i)
        labels[r, : len(lab)] = torch.tensor(lab)
    return ids, labels


def train(
    model: LlamaForCausalLM,
    tok: TokenizerBundle,
    template: str,
    corpus_text: str,
    cfg: TrainConfig,
    *,
    pad_id: int,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainReport:
    """Train ``model`` in place (float32, AdamW, warm-up then cosine decay to a tenth of the
    learning rate); ``on_step(step, steps, loss)`` after each step."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    data: list[tuple[list[int], list[int]]] = []
    # every batch fresh conversations (no epochs): the corpus repeats, the mixes do not
    for msgs in conversations(corpus_text, cfg.steps * cfg.batch_size, cfg.seed):
        ids, labels = encode_conversation(tok, template, msgs)
        if len(ids) <= cfg.seq_len:
            data.append((ids, labels))
    if not data:
        raise ValueError(f"no conversation fits in seq_len {cfg.seq_len}")
    model.setup_rope(cfg.seq_len)
    model.train()
    model.requires_grad_(True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    losses: list[float] = []
    tokens = 0
    for step, batch in enumerate(_batches(data, cfg)):
        ids, labels = _pad([data[i] for i in batch], pad_id)
        tokens += sum(len(data[i][0]) for i in batch)
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        h = hidden_states(model, ids[:, :-1])
        target = labels[:, 1:]
        keep = target != IGNORE
        logits = model.lm_head(h[keep])  # only where there is a label: the head is the largest matmul
        loss = F.cross_entropy(logits.float(), target[keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, cfg.steps, losses[-1])
    model.eval()
    model.requires_grad_(False)
    tail = losses[-max(1, len(losses) // 10) :]
    return TrainReport(
        steps=cfg.steps, loss=sum(tail) / len(tail), first_loss=losses[0],
        seconds=time.perf_counter() - t0, tokens=tokens, config=asdict(cfg),
    )


def train_in_dir(
    model: LlamaForCausalLM,
    model_dir: str,
    preset: str,
    *,
    steps: int = 0,
    seed: int = 0,
    pad_id: int,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainReport:
    """Train ``model`` with ``preset``'s recipe (``steps`` > 0 overrides its step count) on
    the shipped corpus, with the tokenizer and chat template already written to
    ``model_dir``."""
    from infdebug.text.template import load_template
    from infdebug.text.tokenizer import load_tokenizer
    from infdebug.tracer.engine.make_model import CORPUS

    if steps < 0:
        raise ValueError(f"train steps must be positive (0: the {preset} default), got {steps}")
    base = RECIPES[preset]
    cfg = replace(base, steps=steps or base.steps, seed=seed)
    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()
    return train(model, load_tokenizer(model_dir), load_template(model_dir), text, cfg, pad_id=pad_id,
                 on_step=on_step)
