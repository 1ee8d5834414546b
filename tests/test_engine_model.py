"""The reference engine's model and checkpoints: make_model → load_checkpoint round trips,
strict loading errors, the trained tokenizer and chat templates, batched decode, and parity
with Hugging Face transformers (logits and greedy token IDs) for llama, mistral and qwen2."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, cast

import jinja2.sandbox
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from infdebug.tracer.engine.checkpoint import load_checkpoint, save_checkpoint
from infdebug.tracer.engine.make_model import (
    CHAT_FORMATS,
    PRESETS,
    make_model,
    random_model,
    train_tokenizer,
)
from infdebug.tracer.engine.model import DecoderLayer, KVCache, LlamaForCausalLM, ModelConfig

transformers: Any
try:
    import transformers as _transformers

    transformers = _transformers
except ImportError:  # pragma: no cover - the engine extra does not require transformers
    transformers = None

needs_transformers = pytest.mark.skipif(
    transformers is None, reason="transformers is not installed: HF parity checks need it"
)
CPU = torch.device("cpu")
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}
MESSAGES = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "Why is the sky blue?"},
    {"role": "assistant", "content": "Air scatters blue light the most."},
    {"role": "user", "content": "And at sunset? Give 2 reasons."},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_model(str(tmp_path_factory.mktemp("tiny") / "llama"))


def _config(d: str) -> dict[str, Any]:
    with open(os.path.join(d, "config.json")) as f:
        data: dict[str, Any] = json.load(f)
    return data


def _edit_config(d: str, **changes: Any) -> None:
    cfg = _config(d)
    cfg.update(changes)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)


def _prompt(
    d: str, text: str = "The lighthouse keeper wrote 3 lines in a green ledger."
) -> torch.Tensor:
    return torch.tensor(Tokenizer.from_file(os.path.join(d, "tokenizer.json")).encode(text).ids)


def _greedy(model: LlamaForCausalLM, cfg: ModelConfig, prompt: torch.Tensor, n: int) -> list[int]:
    """Our greedy loop: prefill into slot 0, then one decode per token; never stops early."""
    cache = KVCache(cfg, 1, len(prompt) + n, CPU, torch.float32)
    logits = model.prefill(prompt, 0, 0, cache)
    out: list[int] = []
    for pos in range(len(prompt), len(prompt) + n):
        out.append(int(logits[-1].argmax()))
        logits = model.decode(torch.tensor([out[-1]]), torch.tensor([pos]), cache)
    return out


# --- make_model and the checkpoint files ----------------------------------------------------


def test_round_trip_state_dict_equal(tiny: str, tmp_path: Any) -> None:
    model, cfg = load_checkpoint(tiny)
    on_disk = load_file(os.path.join(tiny, "model.safetensors"))
    state = model.state_dict()
    assert set(on_disk) == set(state)
    for k, v in on_disk.items():
        assert torch.equal(state[k], v), k
    assert (
        cfg.vocab_size
        == PRESETS["tiny"]["vocab_size"]
        == Tokenizer.from_file(os.path.join(tiny, "tokenizer.json")).get_vocab_size()
    )
    assert model.rope_len == 1024 and next(model.parameters()).dtype == torch.float32

    save_checkpoint(model, cfg, str(tmp_path))
    again, cfg2 = load_checkpoint(str(tmp_path), max_len=64)
    assert again.rope_len == 64
    for k, v in again.state_dict().items():
        assert torch.equal(state[k], v), k
    assert cfg2.to_hf() == cfg.to_hf()


def test_make_model_is_deterministic(tmp_path: Any) -> None:
    a, b, c = (make_model(str(tmp_path / n), seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name
    wa, wc = (
        load_file(os.path.join(a, "model.safetensors")),
        load_file(os.path.join(c, "model.safetensors")),
    )
    assert not torch.equal(wa["model.embed_tokens.weight"], wc["model.embed_tokens.weight"])
    assert 0.018 < float(wa["model.embed_tokens.weight"].std()) < 0.022


@pytest.mark.parametrize("chat_format", ["chatml", "llama3"])
def test_tokenizer_and_chat_template(chat_format: str, tmp_path: Any) -> None:
    d = make_model(str(tmp_path), chat_format=chat_format)
    fmt = CHAT_FORMATS[chat_format]
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json")) as f:
        tc = json.load(f)
    with open(os.path.join(d, "generation_config.json")) as f:
        gen = json.load(f)
    with open(os.path.join(d, "chat_template.jinja")) as f:
        assert f.read() == tc["chat_template"]
    assert tok.get_vocab_size() == _config(d)["vocab_size"]
    assert (tc["bos_token"], tc["eos_token"], tc["add_bos_token"]) == (
        fmt.bos,
        fmt.eos,
        fmt.add_bos,
    )
    assert (
        gen["eos_token_id"] == [tok.token_to_id(s) for s in fmt.stop] == _config(d)["eos_token_id"]
    )
    assert gen["bos_token_id"] == tok.token_to_id(fmt.bos)
    # specials come after the learned vocabulary and encode to one ID each
    for s in fmt.specials:
        assert (tok.token_to_id(s) or 0) >= 256 + 100
        assert tok.encode(s, add_special_tokens=False).ids == [tok.token_to_id(s)]
    text = "Q: What is 17 x 23?\nA: 17 x 23 = 391.\n    def f(x):\n        return x  # ok"
    ids = tok.encode(text).ids
    assert (ids[0] == tok.token_to_id(fmt.bos)) is fmt.add_bos
    assert tok.decode(ids, skip_special_tokens=True) == text
    prose = "The library was open every day, and the children read stories under the apple tree."
    assert len(tok.encode(prose).ids) < len(prose) / 3  # real merges were learned

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    render = env.from_string(tc["chat_template"]).render
    out = render(
        messages=MESSAGES, add_generation_prompt=True, bos_token=fmt.bos, eos_token=fmt.eos
    )
    if chat_format == "chatml":
        assert out.startswith(
            "<|im_start|>system\nAnswer in one sentence.<|im_end|>\n<|im_start|>user\n"
        )
        assert out.endswith("<|im_end|>\n<|im_start|>assistant\n")
    else:
        assert out.startswith(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer"
        )
        assert out.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert out.count(MESSAGES[2]["content"]) == 1
    assert not render(messages=MESSAGES, add_generation_prompt=False, bos_token=fmt.bos).endswith(
        "\n\n"
    )


def test_small_tokenizer_trains_quickly() -> None:
    import time

    t0 = time.perf_counter()
    tok = train_tokenizer(PRESETS["small"]["vocab_size"], "llama3")
    assert time.perf_counter() - t0 < 10
    assert tok.get_vocab_size() == 8192


def test_tied_embeddings(tmp_path: Any) -> None:
    d = make_model(str(tmp_path / "tied"), arch="qwen2", tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(os.path.join(d, "model.safetensors"))
    model, cfg = load_checkpoint(d)
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    save_checkpoint(model, cfg, str(tmp_path / "again"))
    assert "lm_head.weight" not in load_file(str(tmp_path / "again" / "model.safetensors"))
    again, _ = load_checkpoint(str(tmp_path / "again"))
    x = _prompt(d)
    a = model.prefill(x, 0, 0, KVCache(cfg, 1, 64, CPU, torch.float32), all_logits=True)
    b = again.prefill(x, 0, 0, KVCache(cfg, 1, 64, CPU, torch.float32), all_logits=True)
    assert torch.equal(a, b)


def test_sharded_checkpoint_loads(tiny: str, tmp_path: Any) -> None:
    d = str(tmp_path / "sharded")
    shutil.copytree(tiny, d)
    os.remove(os.path.join(d, "model.safetensors"))
    state = load_file(os.path.join(tiny, "model.safetensors"))
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, os.path.join(d, name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    model, _ = load_checkpoint(d)
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    os.remove(os.path.join(d, "model-00002-of-00002.safetensors"))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        load_checkpoint(d)


def test_dtype_defaults_and_override(tiny: str) -> None:
    model, _ = load_checkpoint(tiny, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.cos.dtype == torch.bfloat16


# --- errors ---------------------------------------------------------------------------------


def test_error_without_config(tmp_path: Any) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no config\.json") as e:
        load_checkpoint(str(tmp_path))
    assert str(tmp_path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope"))


def test_error_unsupported_architecture(tiny: str, tmp_path: Any) -> None:
    d = str(tmp_path / "gpt2")
    shutil.copytree(tiny, d)
    _edit_config(d, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ValueError, match="unsupported architecture.*GPT2LMHeadModel") as e:
        load_checkpoint(d)
    assert d in str(e.value)


def test_error_missing_unexpected_and_misshapen_weights(tiny: str, tmp_path: Any) -> None:
    d = str(tmp_path / "bad")
    shutil.copytree(tiny, d)
    path = os.path.join(d, "model.safetensors")
    state = load_file(path)
    state["model.layers.0.mlp.extra.weight"] = state.pop("model.layers.1.mlp.up_proj.weight")
    save_file(state, path)
    with pytest.raises(
        ValueError,
        match=r"1 missing: model\.layers\.1\.mlp\.up_proj\.weight; "
        r"1 unexpected: model\.layers\.0\.mlp\.extra\.weight",
    ) as e:
        load_checkpoint(d)
    assert d in str(e.value)
    shutil.copy(os.path.join(tiny, "model.safetensors"), path)
    _edit_config(d, intermediate_size=128)
    with pytest.raises(
        ValueError, match=r"shapes.*gate_proj\.weight \(172, 64\) \(expected \(128, 64\)\)"
    ):
        load_checkpoint(d)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        load_checkpoint(d)


def test_untied_checkpoint_needs_lm_head(tiny: str, tmp_path: Any) -> None:
    d = str(tmp_path / "nohead")
    shutil.copytree(tiny, d)
    path = os.path.join(d, "model.safetensors")
    state = load_file(path)
    del state["lm_head.weight"]
    save_file(state, path)
    with pytest.raises(ValueError, match=r"missing: lm_head\.weight"):
        load_checkpoint(d)


def test_sliding_window_bounds_max_len(tiny: str, tmp_path: Any) -> None:
    d = str(tmp_path / "window")
    shutil.copytree(tiny, d)
    _edit_config(d, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=64)
    model, _ = load_checkpoint(d)
    assert model.rope_len == 64  # within the window, full attention is the same computation
    with pytest.raises(ValueError, match="sliding attention window of 64 tokens"):
        load_checkpoint(d, max_len=128)


# --- batched decode -------------------------------------------------------------------------


def test_batched_decode_equals_each_sequence_alone(tiny: str) -> None:
    model, cfg = load_checkpoint(tiny)
    torch.manual_seed(0)
    prompts = [torch.randint(0, 900, (n,)) for n in (5, 13, 21)]
    steps = 10

    def run(seqs: list[torch.Tensor]) -> tuple[list[list[int]], list[torch.Tensor]]:
        cache = KVCache(cfg, len(seqs), 64, CPU, torch.float32)
        logits = torch.cat([model.prefill(p, i, 0, cache) for i, p in enumerate(seqs)])
        pos = torch.tensor([len(p) for p in seqs])
        toks: list[list[int]] = [[] for _ in seqs]
        all_logits = [logits]
        for _ in range(steps):
            nxt = logits.argmax(-1)
            for t, n in zip(toks, nxt.tolist(), strict=True):
                t.append(n)
            logits = model.decode(nxt, pos, cache)
            all_logits.append(logits)
            pos = pos + 1
        return toks, all_logits

    batch_toks, batch_logits = run(prompts)
    for i, p in enumerate(prompts):
        alone_toks, alone_logits = run([p])
        assert batch_toks[i] == alone_toks[0]
        for b, a in zip(batch_logits, alone_logits, strict=True):
            torch.testing.assert_close(b[i], a[0], atol=1e-5, rtol=0)


# --- parity with Hugging Face transformers --------------------------------------------------


def _sharpen_attention(d: str, factor: float = 4.0) -> None:
    """Scale q/k so attention is far from uniform: with N(0, 0.02) weights the scores are
    tiny and a RoPE mistake would move the logits by less than the tolerance."""
    model, cfg = load_checkpoint(d)
    with torch.no_grad():
        for layer in cast(list[DecoderLayer], model.model.layers):
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.mul_(factor)
                if proj.bias is not None:
                    proj.bias.mul_(factor)
    save_checkpoint(model, cfg, d)


def _hf_model(d: str) -> Any:
    assert transformers is not None
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    hf.eval()
    hf.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    return hf


VARIANTS: dict[str, dict[str, Any]] = {
    "llama": dict(arch="llama"),
    "mistral": dict(arch="mistral"),
    "qwen2": dict(arch="qwen2"),
    "llama-rope-llama3": dict(arch="llama", chat_format="llama3", rope_scaling=LLAMA3_ROPE),
    "qwen2-tied": dict(arch="qwen2", tie_word_embeddings=True),
}


@needs_transformers
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_transformers(variant: str, tmp_path: Any) -> None:
    d = make_model(str(tmp_path / variant), **VARIANTS[variant])
    _sharpen_attention(d)
    ours, cfg = load_checkpoint(d)
    hf = _hf_model(d)
    assert type(hf).__name__ == _config(d)["architectures"][0]

    # (a) full-sequence logits, over a prompt long enough for llama3 scaling to matter
    text = " ".join(m["content"] for m in MESSAGES) * 3
    x = _prompt(d, text)
    assert len(x) > 60
    with torch.no_grad():
        ref = hf(x[None]).logits[0].float()
    got = ours.prefill(x, 0, 0, KVCache(cfg, 1, len(x), CPU, torch.float32), all_logits=True)
    diff = float((got - ref).abs().max())
    print(f"{variant}: max |logit diff| = {diff:.2e} over {len(x)} positions")
    assert diff < 1e-4

    # (b) greedy generation: identical token IDs
    p = _prompt(d)
    with torch.no_grad():
        hf_ids = hf.generate(
            p[None],
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=0,
        )[0, len(p) :].tolist()
    assert len(hf_ids) == 24
    assert _greedy(ours, cfg, p, 24) == hf_ids


@needs_transformers
def test_parity_llama_with_attention_bias(tmp_path: Any) -> None:
    """HF's Llama puts ``attention_bias`` on o_proj too, not only on q/k/v."""
    cfg = ModelConfig(arch="llama", attention_bias=True, **PRESETS["tiny"])  # type: ignore[arg-type]
    model = random_model(cfg, seed=3)
    assert cast(DecoderLayer, model.model.layers[0]).self_attn.o_proj.bias is not None
    save_checkpoint(model, cfg, str(tmp_path))
    ours, cfg = load_checkpoint(str(tmp_path))
    x = torch.arange(5, 45)
    with torch.no_grad():
        ref = _hf_model(str(tmp_path))(x[None]).logits[0].float()
    got = ours.prefill(x, 0, 0, KVCache(cfg, 1, len(x), CPU, torch.float32), all_logits=True)
    assert float((got - ref).abs().max()) < 1e-4


@needs_transformers
def test_loads_a_checkpoint_saved_by_transformers(tiny: str, tmp_path: Any) -> None:
    """transformers >= 5 writes RoPE as ``rope_parameters`` (theta inside); a non-default
    theta must reach our RoPE tables."""
    d = str(tmp_path / "src")
    shutil.copytree(tiny, d)
    _edit_config(d, rope_theta=500000.0)
    _sharpen_attention(d)
    hf = _hf_model(d)
    out = str(tmp_path / "hf-saved")
    hf.save_pretrained(out)
    ours, cfg = load_checkpoint(out)
    assert cfg.rope_theta == 500000.0
    x = _prompt(d)
    with torch.no_grad():
        ref = hf(x[None]).logits[0].float()
    got = ours.prefill(x, 0, 0, KVCache(cfg, 1, len(x), CPU, torch.float32), all_logits=True)
    assert float((got - ref).abs().max()) < 1e-4


@needs_transformers
def test_transformers_tokenizer_agrees(tmp_path: Any) -> None:
    assert transformers is not None
    d = make_model(str(tmp_path), chat_format="llama3")
    ht = transformers.AutoTokenizer.from_pretrained(d)
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    text = "Hello, world! It's 12:45 on 2024-05-17."
    assert ht(text).input_ids == tok.encode(text).ids
    rendered = str(ht.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True))
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system")
    assert not rendered.startswith("<|begin_of_text|><|begin_of_text|>")
