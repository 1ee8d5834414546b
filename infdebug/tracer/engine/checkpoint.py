"""Load and save Hugging Face-format checkpoints for the reference engine's model.

A checkpoint directory holds ``config.json``, optionally ``generation_config.json``, and the
weights as safetensors: one ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Nothing here touches the network.

Loading is strict: every parameter of the model must come from the files and every tensor in
the files must be a parameter, except ``lm_head.weight`` when the embeddings are tied (HF
saves tied weights once) and the ``rotary_emb.inv_freq`` buffers old Llama exports carry
(the engine computes RoPE from the config).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from infdebug.tracer.engine.model import LlamaForCausalLM, ModelConfig

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
DEFAULT_MAX_LEN = 4096
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_SHOW_KEYS = 8


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_config(model_dir: str) -> ModelConfig:
    """``config.json`` (plus the eos/bos ids of ``generation_config.json``) as a ModelConfig."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir!r} does not exist")
    path = os.path.join(model_dir, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{model_dir}: no {CONFIG}; expected a Hugging Face model directory "
            f"({CONFIG} + *.safetensors), found {sorted(os.listdir(model_dir))[:12]}"
        )
    raw = _read_json(path)
    try:
        cfg = ModelConfig.from_hf(raw)
    except KeyError as e:
        raise ValueError(f"{path}: required field {e.args[0]!r} is missing") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    gen_path = os.path.join(model_dir, GENERATION_CONFIG)
    if os.path.isfile(gen_path):
        gen = _read_json(gen_path)
        # generate() reads its stop ids from here (e.g. end-of-turn as well as end-of-text).
        if gen.get("eos_token_id") is not None:
            cfg.eos_token_id = gen["eos_token_id"]
        if cfg.bos_token_id is None and gen.get("bos_token_id") is not None:
            cfg.bos_token_id = gen["bos_token_id"]
    window = _sliding_window(raw)
    if window is not None:
        cfg.extra["sliding_window"] = window
    return cfg


def _sliding_window(raw: dict[str, Any]) -> int | None:
    """The attention window HF applies for this config, or None for full attention."""
    if raw.get("model_type") == "qwen2" and not raw.get("use_sliding_window", False):
        return None
    w = raw.get("sliding_window")
    return int(w) if w else None


def weight_files(model_dir: str) -> list[str]:
    """The safetensors files of a checkpoint: the shards its index names, or every file."""
    index = os.path.join(model_dir, WEIGHTS_INDEX)
    if os.path.isfile(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: expected a non-empty 'weight_map' object")
        files = [os.path.join(model_dir, f) for f in sorted(set(weight_map.values()))]
        missing = [os.path.basename(f) for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(
                f"{index} names shards that are absent from {model_dir}: {missing}"
            )
        return files
    files = sorted(
        os.path.join(model_dir, f) for f in os.listdir(model_dir) if f.endswith(".safetensors")
    )
    if not files:
        other = [f for f in os.listdir(model_dir) if f.endswith((".bin", ".pt", ".pth", ".gguf"))]
        hint = (
            f"; found {other[:4]}, which the engine does not read (convert to safetensors)"
            if other
            else ""
        )
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights{hint}")
    return files


def _keys(keys: list[str]) -> str:
    more = f" … and {len(keys) - _SHOW_KEYS} more" if len(keys) > _SHOW_KEYS else ""
    return ", ".join(keys[:_SHOW_KEYS]) + more


def _read_state_dict(
    model_dir: str, device: str | torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for path in weight_files(model_dir):
        name = os.path.basename(path)
        for key, t in load_file(path, device=str(device)).items():
            if key in tensors:
                raise ValueError(f"{model_dir}: tensor {key!r} is in both {origin[key]} and {name}")
            if key.endswith(_IGNORED_SUFFIXES):
                continue
            if not t.is_floating_point():
                raise ValueError(
                    f"{path}: tensor {key!r} has dtype {t.dtype}; expected floating point"
                )
            tensors[key] = t.to(dtype)
            origin[key] = name
    return tensors


def default_dtype(device: str | torch.device) -> torch.dtype:
    """float32 on CPU, bfloat16 on an accelerator (a config's torch_dtype is only a hint)."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


def load_checkpoint(
    model_dir: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    max_len: int | None = None,
) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Build the model described by ``model_dir`` and load its weights, strictly.

    ``max_len`` sizes the RoPE tables (default ``min(max_position_embeddings, 4096)``); it may
    exceed ``max_position_embeddings`` (as HF allows) but not an active sliding window, which
    this engine does not implement.
    """
    cfg = read_config(model_dir)
    dtype = dtype or default_dtype(device)
    window = cfg.extra.get("sliding_window")
    if max_len is None:
        max_len = min(cfg.max_position_embeddings, DEFAULT_MAX_LEN, window or DEFAULT_MAX_LEN)
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    if window is not None and max_len > window:
        raise ValueError(
            f"{model_dir}: the config sets a sliding attention window of {window} tokens, which "
            f"this engine does not implement; max_len {max_len} must be <= {window}"
        )
    state = _read_state_dict(model_dir, device, dtype)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    expected = model.state_dict()
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # HF ties to the embeddings whatever the file holds
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_keys(unexpected)}")
        raise ValueError(
            f"{model_dir}: the weights do not match a {cfg.arch} model with this config.json "
            f"({'; '.join(parts)})"
        )
    bad = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if bad:
        raise ValueError(f"{model_dir}: tensor shapes do not match config.json: {_keys(bad)}")
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.requires_grad_(False)
    model.eval()
    model.fuse()
    model.setup_rope(max_len)
    return model, cfg


def save_checkpoint(model: LlamaForCausalLM, cfg: ModelConfig, model_dir: str) -> None:
    """Write ``config.json`` and ``model.safetensors`` (tied weights once, as HF does)."""
    os.makedirs(model_dir, exist_ok=True)
    # clone: fused projections are views of one tensor, and safetensors refuses shared storage
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    dtype = next(iter(state.values())).dtype
    hf = cfg.to_hf()
    hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    with open(os.path.join(model_dir, CONFIG), "w", encoding="utf-8") as f:
        json.dump(hf, f, indent=2)
        f.write("\n")
    save_file(state, os.path.join(model_dir, WEIGHTS), metadata={"format": "pt"})
