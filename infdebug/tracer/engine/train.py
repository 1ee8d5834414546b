"""Train a make-model checkpoint to chat, on conversations made from the shipped corpus.

Greedy decoding of a random-weight model loops on every request and almost never ends its
turn; seconds of training on ``corpus.txt`` (the text the tokenizer is trained on) make it
answer in words and end each answer with the chat format's end-of-turn token.

The conversations (deterministic in the seed; fresh ones for every batch): the corpus's Q/A
pairs; prose sentences that ask for the sentence after them; and user messages of random
corpus words (like the load generator's prompts, ``prompts.py``) answered with a corpus
sentence. Answers are one sentence or two short ones, so that ending the turn is learned
fast. Some conversations get a system message first, a quarter a second exchange. Each is
rendered with the model's own chat template and encoded as the engine encodes a rendered
prompt. The loss is on the assistant turns, their end-of-turn token included, and on
everything after the first answer (the next turn's header and message, in the quarter of
conversations that have one): with ``ignore_eos``, as the load generator sends, the model
then goes on into another turn, in words, instead of repeating a newline or the end-of-turn
ID. User messages are up to ~300 tokens long, as the demo's prompts are.

Batches are drawn in a seeded order and ``torch.manual_seed`` is set, so the same call on
the same machine and thread count gives the same weights (another thread count may sum in
another order: close weights, not identical bytes).
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
from infdebug.text.tokenizer import TokenizerBundle
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
SALADS = (3, 8, 16, 32, 64, 128, 256)  # most words in a random-word user message (~1.2 tokens each)


@dataclass(frozen=True)
class TrainConfig:
    """The recipe: AdamW (betas 0.9/0.95), linear warm-up, cosine decay to lr/10, gradients
    clipped at norm 1, float32; batches of ``batch_size`` conversations, each at most
    ``seq_len`` tokens (longer ones are left out)."""

    steps: int
    lr: float = 1e-2
    batch_size: int = 16
    seq_len: int = 384
    warmup: int = 10
    weight_decay: float = 0.0
    seed: int = 0


# The default recipe per make-model preset.
RECIPES: dict[str, TrainConfig] = {
    "tiny": TrainConfig(steps=100, batch_size=32, lr=1e-2),  # ~15 s on one CPU thread
    "small": TrainConfig(steps=140, lr=5e-3, warmup=25),  # ~50 s on two CPU cores
}


@dataclass(frozen=True)
class TrainReport:
    steps: int
    loss: float  # mean loss (per labelled token) over the last tenth of the steps
    first_loss: float
    seconds: float
    tokens: int  # tokens run through the model (padding excluded)
    padded_tokens: int  # …and with the padding of the packed rows
    curve: list[float]  # the loss of every tenth step (and of the last)
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
    if (
        start + 1 < len(sents)
        and rng.random() < 0.3
        and len(f"{out} {sents[start + 1]}".split()) <= MAX_WORDS
    ):
        out += " " + sents[start + 1]
    return out


def conversations(text: str, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` chat conversations made from the corpus ``text``, deterministic in ``seed``."""
    qa, prose, words = corpus_parts(text)
    rng = random.Random(f"infdebug-train:{seed}")
    multi = [p for p in prose if len(p) >= 2]

    def exchange(salad: bool) -> tuple[str, str]:
        kind = rng.random() * (1.0 if salad else 0.55)
        if kind < 0.25:
            q, a = rng.choice(qa)
            return q, _answer(rng, _sentences(a), 0)
        if kind < 0.55:
            p = rng.choice(multi)
            i = rng.randrange(len(p) - 1)
            return p[i], _answer(rng, p, i + 1)
        k = rng.choice(SALADS)
        user = " ".join(rng.choice(words).lower() for _ in range(rng.randint(max(1, k // 2), k)))
        p = rng.choice(prose)
        return user, _answer(rng, p, rng.randrange(len(p)))

    out = []
    for _ in range(n):
        msgs: list[dict[str, str]] = []
        if rng.random() < 0.3:
            msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
        for turn in range(2 if rng.random() < 0.25 else 1):
            user, answer = exchange(salad=turn == 0)
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


def _label_spans(
    text: str, msgs: list[dict[str, str]], eot: str, turns: bool
) -> list[tuple[int, int]]:
    """Character spans of ``text`` to label: assistant content through its end-of-turn
    token, or with ``turns`` everything from the first answer on."""
    spans: list[tuple[int, int]] = []
    at = 0
    for m in msgs:  # each message's content is in the text as given, in order (both templates)
        start = text.index(m["content"], at)
        at = start + len(m["content"])
        if m["role"] == "assistant":
            at = text.index(eot, at) + len(eot)
            spans.append((start, at))
    if turns and spans:
        spans = [(spans[0][0], len(text))]
    return spans


def encode_conversations(
    tok: TokenizerBundle, template: str, convs: list[list[dict[str, str]]], *, turns: bool = True
) -> list[tuple[list[int], list[int]]]:
    """Each conversation's token IDs as the engine encodes a rendered prompt
    (``encode_prompt``), and its labels: each assistant turn's tokens through its end-of-turn
    token, IGNORE elsewhere. With ``turns``, everything after the first answer as well (the
    next turn's header and message), so that a model made to go on past an end-of-turn
    (``ignore_eos``) writes another turn rather than repeating one ID; the system message
    and the first user message are never labelled."""
    if tok.eos_token is None:
        raise ValueError("the tokenizer has no eos_token: nothing marks the end of a turn")
    texts = [_render(tok, template, msgs, gen=False) for msgs in convs]
    out = []
    for text, msgs, enc in zip(
        texts, convs, tok.tok.encode_batch(texts, add_special_tokens=False), strict=True
    ):
        keep = bytearray(len(text) + 1)  # per character: 1 where a label goes
        for s, e in _label_spans(text, msgs, tok.eos_token, turns):
            keep[s:e] = b"\x01" * (e - s)
        ids = list(enc.ids)
        labels = [
            i if keep[a] and keep[b - 1] else IGNORE
            for i, (a, b) in zip(ids, enc.offsets, strict=True)
        ]
        # as encode_prompt: the tokenizer's BOS in front unless the template wrote it
        if (
            tok.add_bos
            and tok.bos_id is not None
            and tok.bos_token
            and not text.startswith(tok.bos_token)
        ):
            ids, labels = [tok.bos_id, *ids], [IGNORE, *labels]
        out.append((ids, labels))
    return out


# --- the model, with gradients --------------------------------------------------------------


def hidden_states(
    model: LlamaForCausalLM,
    ids: torch.Tensor,
    pos: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The final-norm hidden states for ``ids`` [B, T], with autograd: the same modules and
    math as ``prefill`` without the KV cache (RoPE tables from ``setup_rope``). By default
    each row is one sequence from position 0, causal; packed rows give each token's position
    ``pos`` [B, T] and the attention ``mask`` [B, 1, T, T] (True: may attend)."""
    B, T = ids.shape
    m = model.model
    h = m.embed_tokens(ids)
    if pos is None:
        cos, sin = model.cos[:T], model.sin[:T]
    else:
        cos, sin = model.cos[pos].unsqueeze(1), model.sin[pos].unsqueeze(1)
    for layer in cast(list[DecoderLayer], m.layers):
        a = layer.self_attn
        qx, kx, vx = a.qkv(layer.input_layernorm(h))
        q = qx.reshape(B, T, a.h, a.d).transpose(1, 2)
        k = kx.reshape(B, T, a.kv, a.d).transpose(1, 2)
        v = vx.reshape(B, T, a.kv, a.d).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=a.kv != a.h
        )
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


@dataclass(frozen=True)
class Packed:
    """A step's examples packed into rows (no padding between them): inputs, targets (the
    next token's label), each token's position in its own example, the attention mask."""

    inputs: torch.Tensor
    targets: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor


def pack(rows: list[tuple[list[int], list[int]]], width: int, pad_id: int) -> Packed:
    """Pack (ids, labels) examples into rows of at most ``width`` inputs, longest first into
    the first row with room; an example attends only to itself, from position 0, as if alone."""
    shifted = [(ids[:-1], labels[1:]) for ids, labels in rows]  # position t predicts token t+1
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(shifted)), key=lambda i: (-len(shifted[i][0]), i)):
        n = len(shifted[i][0])
        b = next((b for b, r in enumerate(room) if n <= r), None)
        if b is None:
            bins.append([])
            room.append(width)
            b = len(bins) - 1
        bins[b].append(i)
        room[b] -= n
    T = width - min(room)
    inputs = torch.full((len(bins), T), pad_id, dtype=torch.long)
    targets = torch.full((len(bins), T), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(bins), T), dtype=torch.long)
    seg = torch.full((len(bins), T), -1, dtype=torch.long)  # -1: padding (attends to padding)
    for r, members in enumerate(bins):
        at = 0
        for s, i in enumerate(members):
            x, y = shifted[i]
            n = len(x)
            inputs[r, at : at + n] = torch.tensor(x)
            targets[r, at : at + n] = torch.tensor(y)
            pos[r, at : at + n] = torch.arange(n)
            seg[r, at : at + n] = s
            at += n
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal
    return Packed(inputs, targets, pos, mask.unsqueeze(1))


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
    # every batch fresh conversations (no epochs): the corpus repeats, the mixes do not
    convs = conversations(corpus_text, cfg.steps * cfg.batch_size, cfg.seed)
    data = [x for x in encode_conversations(tok, template, convs) if len(x[0]) <= cfg.seq_len]
    if not data:
        raise ValueError(f"no conversation fits in seq_len {cfg.seq_len}")
    model.setup_rope(cfg.seq_len)
    model.train()
    model.requires_grad_(True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    try:  # the fused step is ~10× faster on a CPU than the per-tensor one (torch >= 2.4)
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), foreach=True)
    losses: list[float] = []
    tokens = padded = 0
    for step, batch in enumerate(_batches(data, cfg)):
        p = pack([data[i] for i in batch], cfg.seq_len, pad_id)
        tokens += sum(len(data[i][0]) for i in batch)
        padded += p.inputs.numel()
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        h = hidden_states(model, p.inputs, p.pos, p.mask)
        keep = p.targets != IGNORE
        logits = model.lm_head(
            h[keep]
        )  # only where there is a label: the head is the largest matmul
        loss = F.cross_entropy(logits.float(), p.targets[keep])
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
        steps=cfg.steps,
        loss=sum(tail) / len(tail),
        first_loss=losses[0],
        seconds=time.perf_counter() - t0,
        tokens=tokens,
        padded_tokens=padded,
        curve=[round(x, 4) for i, x in enumerate(losses) if i % 10 == 0 or i == len(losses) - 1],
        config=asdict(cfg),
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
    return train(
        model,
        load_tokenizer(model_dir),
        load_template(model_dir),
        text,
        cfg,
        pad_id=pad_id,
        on_step=on_step,
    )
