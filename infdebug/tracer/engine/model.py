"""A Llama-family decoder in plain torch: RMSNorm, RoPE (with Llama-3 scaling), GQA, SwiGLU.

Module and parameter names follow Hugging Face's ``LlamaForCausalLM`` so a checkpoint's
state dict loads as is; Mistral is the same graph, Qwen2 adds biases on q/k/v.

The engine drives two entry points over a slot-based KV cache (``KVCache``):
``prefill`` runs one sequence's new prompt tokens into its slot, ``decode`` runs one token
for each of the first ``B`` slots. Slots ``0..B-1`` hold the running batch, so decode reads
the cache as a view, without gathering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


@dataclass
class ModelConfig:
    arch: str = "llama"
    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> ModelConfig:
        archs = d.get("architectures") or []
        arch = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            mt = d.get("model_type")
            if mt not in ("llama", "mistral", "qwen2"):
                raise ValueError(
                    f"unsupported architecture {archs or mt!r}: infdebug's engine runs "
                    f"{', '.join(ARCHITECTURES)} checkpoints"
                )
            arch = mt
        heads = int(d["num_attention_heads"])
        hidden = int(d["hidden_size"])
        # transformers >= 5 saves RoPE as ``rope_parameters`` (theta inside it); older
        # configs have top-level ``rope_theta`` and an optional ``rope_scaling``.
        rope = d.get("rope_parameters") or {}
        rope_theta = float(rope.get("rope_theta") or d.get("rope_theta") or 10000.0)
        rope_scaling = d.get("rope_scaling")
        if rope_scaling is None and rope.get("rope_type", "default") != "default":
            rope_scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        # HF's Qwen2 always has q/k/v biases and Mistral never has; only Llama reads the flag.
        bias = arch == "qwen2" or (arch == "llama" and bool(d.get("attention_bias", False)))
        return cls(
            arch=arch,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bias,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
        )

    def to_hf(self) -> dict[str, Any]:
        names = {v: k for k, v in ARCHITECTURES.items()}
        d: dict[str, Any] = {
            "architectures": [names[self.arch]],
            "model_type": self.arch,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        }
        if self.arch == "llama":
            d["attention_bias"] = self.attention_bias
            d["mlp_bias"] = False
        if self.arch == "qwen2":
            d["use_sliding_window"] = False
        if self.arch == "mistral":
            d["sliding_window"] = None  # this engine has no sliding window; say so to HF
        return d


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    sc = cfg.rope_scaling or {}
    kind = sc.get("rope_type") or sc.get("type")
    if kind == "llama3":
        factor = float(sc["factor"])
        lo, hi = float(sc.get("low_freq_factor", 1.0)), float(sc.get("high_freq_factor", 4.0))
        old = float(sc.get("original_max_position_embeddings", 8192))
        lo_wavelen, hi_wavelen = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > lo_wavelen, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= hi_wavelen) & (wavelen <= lo_wavelen)
        inv = torch.where(is_mid, mid, scaled)
    elif kind == "linear":
        inv = inv / float(sc["factor"])
    elif kind not in (None, "default"):
        raise ValueError(
            f"rope_scaling type {kind!r} is not supported (llama3, linear, default are)"
        )
    return inv.float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.h, self.kv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        b = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.h * self.d, bias=b)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv * self.d, bias=b)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv * self.d, bias=b)
        # HF's Llama puts ``attention_bias`` on o_proj as well; Qwen2 biases only q/k/v.
        self.o_proj = nn.Linear(self.h * self.d, cfg.hidden_size, bias=b and cfg.arch == "llama")
        self.qkv_w: torch.Tensor | None = None  # set by fuse(): one matmul instead of three
        self.qkv_b: torch.Tensor | None = None

    def fuse(self) -> None:
        """Put q/k/v weights (and biases) in one tensor; the projections become views of it,
        so the state dict keeps Hugging Face's names and no memory is duplicated."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        w = torch.cat([p.weight.data for p in projs])
        b = torch.cat([p.bias.data for p in projs]) if self.q_proj.bias is not None else None
        at = 0
        for p in projs:
            n = p.weight.shape[0]
            p.weight.data = w[at : at + n]
            if b is not None and p.bias is not None:
                p.bias.data = b[at : at + n]
            at += n
        self.qkv_w, self.qkv_b = w, b

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv_w is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        out = F.linear(x, self.qkv_w, self.qkv_b)
        hq, hk = self.h * self.d, self.kv * self.d
        return out[..., :hq], out[..., hq : hq + hk], out[..., hq + hk :]


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up_w: torch.Tensor | None = None

    def fuse(self) -> None:
        w = torch.cat([self.gate_proj.weight.data, self.up_proj.weight.data])
        n = self.gate_proj.weight.shape[0]
        self.gate_proj.weight.data, self.up_proj.weight.data = w[:n], w[n:]
        self.gate_up_w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_w is None:
            result: torch.Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
            return result
        g, u = F.linear(x, self.gate_up_w).chunk(2, dim=-1)
        result = self.down_proj(F.silu(g) * u)
        return result


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class KVCache:
    """Preallocated K/V for ``slots`` sequences of up to ``max_len`` tokens each."""

    def __init__(
        self, cfg: ModelConfig, slots: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        shape = (cfg.num_hidden_layers, slots, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slots, self.max_len = slots, max_len

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy a sequence's first ``length`` positions from slot ``src`` to ``dst``."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def read_block(self, slot: int, start: int, n: int) -> torch.Tensor:
        return torch.stack(
            (self.k[:, slot, :, start : start + n], self.v[:, slot, :, start : start + n])
        ).clone()

    def write_block(self, slot: int, start: int, block: torch.Tensor) -> None:
        n = block.shape[3]
        self.k[:, slot, :, start : start + n] = block[0]
        self.v[:, slot, :, start : start + n] = block[1]


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rope_len = 0
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    def fuse(self) -> None:
        """Fuse q/k/v and gate/up projections (fewer, larger matmuls per layer); call once
        after the weights are loaded."""
        for layer in cast(list[DecoderLayer], self.model.layers):
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def setup_rope(self, max_len: int) -> None:
        inv = rope_inv_freq(self.cfg).to(self.lm_head.weight.device)
        t = torch.arange(max_len, device=inv.device, dtype=torch.float32)
        freqs = torch.outer(t, inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        dtype = self.lm_head.weight.dtype
        self.cos, self.sin = emb.cos().to(dtype), emb.sin().to(dtype)
        self.rope_len = max_len

    def _attend(
        self,
        layer: int,
        attn: Attention,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache,
        slots: slice | int,
        mask: torch.Tensor | None,
        kv_len: int,
        write: Any,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        qx, kx, vx = attn.qkv(x)
        q = qx.reshape(B, T, attn.h, attn.d).transpose(1, 2)
        k = kx.reshape(B, T, attn.kv, attn.d).transpose(1, 2)
        v = vx.reshape(B, T, attn.kv, attn.d).transpose(1, 2)
        cos, sin = rope
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        write(cache.k[layer], k)
        write(cache.v[layer], v)
        if isinstance(slots, int):
            kk = cache.k[layer, slots : slots + 1, :, :kv_len]
            vv = cache.v[layer, slots : slots + 1, :, :kv_len]
        else:
            kk = cache.k[layer, slots, :, :kv_len]
            vv = cache.v[layer, slots, :, :kv_len]
        o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, enable_gqa=attn.kv != attn.h)
        result: torch.Tensor = attn.o_proj(o.transpose(1, 2).reshape(B, T, attn.h * attn.d))
        return result

    def _run(
        self,
        tokens: torch.Tensor,
        pos: torch.Tensor,
        cache: KVCache,
        slots: slice | int,
        mask: torch.Tensor | None,
        kv_len: int,
        write: Any,
    ) -> torch.Tensor:
        m = self.model
        h = m.embed_tokens(tokens)
        rope = (
            self.cos[pos].unsqueeze(1),
            self.sin[pos].unsqueeze(1),
        )  # [B, 1, T, D], once for all layers
        for i, layer in enumerate(cast(list[DecoderLayer], m.layers)):
            h = h + self._attend(
                i,
                layer.self_attn,
                layer.input_layernorm(h),
                rope,
                cache,
                slots,
                mask,
                kv_len,
                write,
            )
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        result: torch.Tensor = m.norm(h)
        return result

    @torch.inference_mode()
    def prefill(
        self, tokens: torch.Tensor, slot: int, start: int, cache: KVCache, all_logits: bool = False
    ) -> torch.Tensor:
        """Run ``tokens`` (1-D) into ``slot`` from position ``start``; logits of the last
        position (or of every position with ``all_logits``)."""
        T = tokens.shape[0]
        end = start + T
        pos = torch.arange(start, end, device=tokens.device).unsqueeze(0)
        # causal over the cached prefix plus the new tokens
        mask = torch.ones(T, end, dtype=torch.bool, device=tokens.device).tril(diagonal=start)

        def write(buf: torch.Tensor, new: torch.Tensor) -> None:
            buf[slot, :, start:end] = new[0]

        h = self._run(tokens.unsqueeze(0), pos, cache, slot, mask, end, write)
        out = h[0] if all_logits else h[0, -1:]
        result: torch.Tensor = self.lm_head(out).float()
        return result

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token for each of slots ``0..B-1`` at ``positions``; logits [B, vocab]."""
        B = tokens.shape[0]
        kv_len = int(positions.max().item()) + 1
        mask = (torch.arange(kv_len, device=tokens.device).unsqueeze(0) <= positions.unsqueeze(1))[
            :, None, None, :
        ]
        idx = torch.arange(B, device=tokens.device)

        def write(buf: torch.Tensor, new: torch.Tensor) -> None:
            buf[idx, :, positions] = new[:, :, 0]

        h = self._run(
            tokens.unsqueeze(1), positions.unsqueeze(1), cache, slice(0, B), mask, kv_len, write
        )
        result: torch.Tensor = self.lm_head(h[:, 0]).float()
        return result
