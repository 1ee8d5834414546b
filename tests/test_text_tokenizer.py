"""Tokenizer loading, golden encodings of real tokenizers, BOS handling and fingerprints.

Real tokenizers come from ../shared/data (skipped where it is absent); the rest runs on a
tokenizer trained here, in the test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from infdebug.text.config import AddedTokenSpec, TextFormatError
from infdebug.text.convert import llama3_special_tokens, read_merges, with_added_tokens
from infdebug.text.fingerprint import canonical_tokenizer, tokenizer_fingerprint
from infdebug.text.tokenizer import (
    TokenizerBundle,
    TokenizerLoadError,
    encode_prompt,
    load_tokenizer,
)


@cache
def _load_cached(path: str) -> TokenizerBundle:
    return load_tokenizer(path)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture
def real(shared_data: str) -> Callable[[str], TokenizerBundle]:
    """Load ../shared/data/tokenizers/NAME once per test session."""
    return lambda name: _load_cached(os.path.join(shared_data, "tokenizers", name))


# --- a tokenizer trained in the test ---------------------------------------------------------

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, hello tokenizer; hello again",
    "inference fleets misbehave silently in production",
] * 20


def _train(specials: list[str]) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _write_model_dir(path: Any, tok: tokenizers.Tokenizer, config: dict[str, Any] | None) -> str:
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    if config is not None:
        with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f)
    return str(path)


@pytest.fixture(scope="module")
def trained() -> tokenizers.Tokenizer:
    return _train(["<s>", "</s>", "<|eot_id|>"])


# --- golden encodings (../shared/data/README.md) ---------------------------------------------


def test_gpt2_golden_from_vocab_and_merges(real: Callable[[str], TokenizerBundle]) -> None:
    b = real("gpt2")
    assert b.encode("Hello world!") == [15496, 995, 0]
    assert b.source.endswith("vocab.json")
    # no config: GPT-2's defaults, and GPT-2 adds no BOS
    assert (b.bos_token, b.eos_token, b.eos_ids, b.add_bos) == (
        "<|endoftext|>",
        "<|endoftext|>",
        [50256],
        False,
    )
    assert b.encode("Hello world!", add_special_tokens=True) == [15496, 995, 0]
    assert b.decode([15496, 995, 0]) == "Hello world!"


def test_qwen2_golden_crlf_merges_nfc_and_split_regex(
    real: Callable[[str], TokenizerBundle],
) -> None:
    b = real("qwen2-1.5b-instruct-finetune")
    assert b.encode("Hello world!") == [9707, 1879, 0]
    # Qwen2 splits digits one by one (GPT-2's regex would keep "12345" together)
    assert len(b.encode("12345")) == 5
    # NFC: a decomposed "é" encodes like the composed one
    assert b.encode("caf\u0065\u0301") == b.encode("caf\u00e9")
    # added tokens from tokenizer_config.json, at their own IDs
    assert b.encode("<|im_start|>user<|im_end|>") == [151644, 872, 151645]
    assert b.eos_ids == [151645, 151643]  # <|im_end|>, then generation_config's <|endoftext|>
    assert b.bos_id is None and b.add_bos is False


def test_qwen2_merges_have_no_carriage_returns(shared_data: str) -> None:
    path = os.path.join(shared_data, "tokenizers", "qwen2-1.5b-instruct-finetune", "merges.txt")
    with open(path, "rb") as f:
        assert b"\r\n" in f.read(4096), (
            "the shared Qwen2 merges.txt is expected to have CRLF line ends"
        )
    merges = read_merges(path)
    assert merges and not any("\r" in a or "\r" in b for a, b in merges)


def test_merges_crlf_and_lf_read_the_same(tmp_path: Any) -> None:
    body = ["#version: 0.2", "Ġ t", "h e", "Ġt he"]
    (tmp_path / "lf.txt").write_bytes(("\n".join(body) + "\n").encode())
    (tmp_path / "crlf.txt").write_bytes(("\r\n".join(body) + "\r\n").encode())
    assert (
        read_merges(str(tmp_path / "lf.txt"))
        == read_merges(str(tmp_path / "crlf.txt"))
        == [
            ("Ġ", "t"),
            ("h", "e"),
            ("Ġt", "he"),
        ]
    )
    (tmp_path / "bad.txt").write_text("#version: 0.2\na b\nabc\n")
    with pytest.raises(TextFormatError, match=r"bad\.txt:3: expected 'left right'"):
        read_merges(str(tmp_path / "bad.txt"))


def test_llama3_rank_file_golden(real: Callable[[str], TokenizerBundle]) -> None:
    """The README's golden [128000, 2028, 374, 264, 1296, 11914, 13, 128001] is what Meta's
    reference tokenizer gives with encode(bos=True, eos=True). Hugging Face's Llama-3
    tokenizer adds BOS only (its post-processor is "<|begin_of_text|> $A"), so
    add_special_tokens=True gives the golden without the final EOS; appending EOS by hand
    reproduces the golden exactly."""
    golden = [128000, 2028, 374, 264, 1296, 11914, 13, 128001]
    b = real("llama3")
    ids = b.encode("This is a test sentence.", add_special_tokens=True)
    assert ids == golden[:-1]
    assert ids + [b.eos_ids[0]] == golden
    assert b.encode("This is a test sentence.") == golden[1:-1]
    assert b.decode(golden, skip_special_tokens=True) == "This is a test sentence."
    assert b.add_bos is True and b.bos_id == 128000 and b.vocab_size == 128_256


def test_llama3_special_tokens(real: Callable[[str], TokenizerBundle]) -> None:
    b = real("llama3")
    for token, tid in {
        "<|begin_of_text|>": 128000,
        "<|end_of_text|>": 128001,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|eom_id|>": 128008,  # Llama-3.1's name; Llama-3.0 had a reserved token here
        "<|eot_id|>": 128009,
        "<|finetune_right_pad_id|>": 128004,
        "<|reserved_special_token_2|>": 128005,
        "<|python_tag|>": 128010,
        "<|reserved_special_token_247|>": 128255,
    }.items():
        assert b.tok.token_to_id(token) == tid, token
    assert b.encode("<|start_header_id|>user<|end_header_id|>") == [128006, 882, 128007]
    assert set(b.eos_ids) == {128001, 128008, 128009}
    # Llama-3.0's names for the same IDs
    assert llama3_special_tokens("3.0")[8] == "<|reserved_special_token_4|>"
    assert llama3_special_tokens("3.0")[-1] == "<|reserved_special_token_250|>"
    assert len(set(llama3_special_tokens("3.0"))) == len(set(llama3_special_tokens("3.1"))) == 256


def test_phi3_revisions_differ_only_in_added_token_flags(
    real: Callable[[str], TokenizerBundle],
) -> None:
    text = "<|user|>\nHello<|end|>\n<|assistant|>\n"
    a, b = real("phi-3"), real("phi-3-mini")
    # rstrip=False keeps "\n" after each special token as "▁" + "<0x0A>"; rstrip=True eats it
    assert a.encode(text) == [32010, 29871, 13, 10994, 32007, 29871, 13, 32001, 29871, 13]
    assert b.encode(text) == [32010, 15043, 32007, 32001]
    # phi-3's config says add_bos_token=true and LlamaTokenizer honours it; phi-3-mini's says false
    assert a.encode(text, add_special_tokens=True)[:2] == [1, 32010]
    assert b.encode(text, add_special_tokens=True) == [32010, 15043, 32007, 32001]
    assert 32007 in a.eos_ids and a.eos_ids[0] == 32000


# --- fingerprints ----------------------------------------------------------------------------


def test_phi3_fingerprints_differ(shared_data: str, real: Callable[[str], TokenizerBundle]) -> None:
    assert real("phi-3").fingerprint != real("phi-3-mini").fingerprint
    # the tokenizer.json files alone, configs aside: only added-token flags differ
    raw = [
        _read_json(os.path.join(shared_data, "tokenizers", n, "tokenizer.json"))
        for n in ("phi-3", "phi-3-mini")
    ]
    canon = [canonical_tokenizer(r) for r in raw]
    assert {k for k in canon[0] if canon[0][k] != canon[1][k]} == {"added_tokens"}
    assert tokenizer_fingerprint(raw[0]) != tokenizer_fingerprint(raw[1])


def test_fingerprint_survives_reserialisation_and_reformatting(
    tmp_path: Any, real: Callable[[str], TokenizerBundle]
) -> None:
    b = real("phi-3")
    again = tokenizers.Tokenizer.from_str(b.tok.to_str())
    cfg = b.config_for_fingerprint()
    assert tokenizer_fingerprint(again.to_str(), cfg) == b.fingerprint
    # the same tokenizer.json with reversed key order and other whitespace, same config
    src = os.path.join(os.path.dirname(b.source))
    data = _read_json(b.source)

    def reverse_keys(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: reverse_keys(x[k]) for k in reversed(list(x))}
        return [reverse_keys(v) for v in x] if isinstance(x, list) else x

    out = tmp_path / "phi3-reformatted"
    out.mkdir()
    (out / "tokenizer.json").write_text(json.dumps(reverse_keys(data), indent=3), encoding="utf-8")
    with open(os.path.join(src, "tokenizer_config.json"), "rb") as f:
        (out / "tokenizer_config.json").write_bytes(f.read())
    assert load_tokenizer(str(out)).fingerprint == b.fingerprint


def test_fingerprint_sees_every_id_determining_part(trained: tokenizers.Tokenizer) -> None:
    base = json.loads(trained.to_str())
    fp = tokenizer_fingerprint(base)
    assert fp.startswith("tok-") and len(fp) == 4 + 20

    def changed(edit: Callable[[dict[str, Any]], None]) -> str:
        data = json.loads(json.dumps(base))
        edit(data)
        return tokenizer_fingerprint(data)

    def set_flag(flag: str) -> Callable[[dict[str, Any]], None]:
        def edit(d: dict[str, Any]) -> None:
            d["added_tokens"][0][flag] = not d["added_tokens"][0][flag]

        return edit

    variants = {
        "merge order": lambda d: d["model"]["merges"].reverse(),
        "vocab id": lambda d: d["model"]["vocab"].update({"the": 399}),
        "normalizer": lambda d: d.update(normalizer={"type": "NFC"}),
        "pre_tokenizer": lambda d: d["pre_tokenizer"].update(add_prefix_space=True),
        "decoder": lambda d: d.update(decoder=None),
        "post_processor": lambda d: d.update(
            post_processor={"type": "ByteLevel", "trim_offsets": False}
        ),
        **{
            flag: set_flag(flag)
            for flag in ("special", "normalized", "lstrip", "rstrip", "single_word")
        },
    }
    fps = {name: changed(edit) for name, edit in variants.items()}
    assert fp not in fps.values()
    assert len(set(fps.values())) == len(fps)
    # not what only shapes batches
    assert changed(lambda d: d.update(padding={"strategy": "BatchLongest"})) == fp
    # merges written as "a b" strings (older tokenizers) or pairs (newer) are the same merges
    as_strings = json.loads(json.dumps(base))
    as_strings["model"]["merges"] = [
        " ".join(m) if isinstance(m, list) else m for m in base["model"]["merges"]
    ]
    assert tokenizer_fingerprint(as_strings) == fp
    # config flags count
    assert tokenizer_fingerprint(base, {"add_bos": True}) != tokenizer_fingerprint(
        base, {"add_bos": False}
    )


def test_added_tokens_keep_their_ids_and_flags(tmp_path: Any) -> None:
    tok = _train([])
    size = tok.get_vocab_size()
    specs = [
        AddedTokenSpec(size, "<|a|>", special=True, rstrip=True),
        AddedTokenSpec(size + 1, "<|b|>", special=False, lstrip=True, normalized=True),
    ]
    out = with_added_tokens(tokenizers.Tokenizer.from_str(tok.to_str()), specs)
    assert json.loads(out.to_str())["added_tokens"] == [s.to_json() for s in specs]
    assert out.encode("x<|a|>  y").ids[1] == size
    # a token already in the vocabulary keeps its id (through the JSON)
    hello = tok.token_to_id("hello")
    again = with_added_tokens(
        tokenizers.Tokenizer.from_str(tok.to_str()), [AddedTokenSpec(hello, "hello")]
    )
    assert again.token_to_id("hello") == hello and again.get_added_tokens_decoder()[hello].special
    # tokenizers renumbers added tokens after a gap: refused, with the file named
    with pytest.raises(
        TextFormatError, match=r"cfg\.json: expected '<\|a\|>' at id \d+, but it gets id"
    ):
        with_added_tokens(tok, [AddedTokenSpec(size + 5, "<|a|>")], "cfg.json")


# --- BOS handling and encode_prompt ----------------------------------------------------------


def test_config_add_bos_honoured_for_llama_class(
    tmp_path: Any, trained: tokenizers.Tokenizer
) -> None:
    cfg = {
        "tokenizer_class": "LlamaTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "add_bos_token": True,
    }
    b = load_tokenizer(_write_model_dir(tmp_path / "llama", trained, cfg))
    assert b.add_bos and b.bos_id == 0
    assert b.encode("hello world", add_special_tokens=True)[0] == 0
    assert b.encode("hello world")[0] != 0
    assert b.notes == []
    cfg["add_eos_token"] = True
    b = load_tokenizer(_write_model_dir(tmp_path / "llama-eos", trained, cfg))
    ids = b.encode("hello world", add_special_tokens=True)
    assert (ids[0], ids[-1]) == (0, 1)


def test_config_add_bos_ignored_by_generic_fast_class_is_noted(
    tmp_path: Any, trained: tokenizers.Tokenizer
) -> None:
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "add_bos_token": True}
    b = load_tokenizer(_write_model_dir(tmp_path / "generic", trained, cfg))
    assert b.add_bos is False
    assert b.encode("hello", add_special_tokens=True) == b.encode("hello")
    assert len(b.notes) == 1 and "add_bos_token=true is ignored" in b.notes[0]


def test_add_bos_inferred_from_post_processor(tmp_path: Any, trained: tokenizers.Tokenizer) -> None:
    tok = tokenizers.Tokenizer.from_str(trained.to_str())
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 0)]
    )
    b = load_tokenizer(
        _write_model_dir(tmp_path / "pp", tok, {"bos_token": "<s>", "eos_token": "<|eot_id|>"})
    )
    assert b.add_bos is True and b.eos_ids == [2]
    assert b.encode("hello", add_special_tokens=True) == [0] + b.encode("hello")


def test_encode_prompt_adds_bos_once(tmp_path: Any, trained: tokenizers.Tokenizer) -> None:
    cfg = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "add_bos_token": True}
    b = load_tokenizer(_write_model_dir(tmp_path / "m", trained, cfg))
    plain = b.encode("hello world")
    assert encode_prompt(b, "hello world") == [0] + plain
    # a template that writes {{ bos_token }} itself: no second BOS
    assert encode_prompt(b, "<s>hello world") == [0] + plain
    assert b.encode("<s>hello world", add_special_tokens=True) == [0, 0] + plain
    cfg["add_bos_token"] = False
    nob = load_tokenizer(_write_model_dir(tmp_path / "n", trained, cfg))
    assert encode_prompt(nob, "hello world") == plain


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_byte_level_round_trip(text: str) -> None:
    b = _trained_bundle()
    assert b.decode(b.encode(text)) == text


@lru_cache(maxsize=1)
def _trained_bundle() -> TokenizerBundle:
    import tempfile

    d = tempfile.mkdtemp(prefix="infdebug-tok-")
    return load_tokenizer(_write_model_dir(d, _train(["<s>", "</s>"]), None))


# --- what is refused, and how ----------------------------------------------------------------


def test_sentencepiece_is_refused_with_the_supported_formats(shared_data: str) -> None:
    path = os.path.join(shared_data, "tokenizers", "llama2", "tokenizer.model")
    with pytest.raises(TokenizerLoadError) as e:
        load_tokenizer(os.path.dirname(path))
    msg = str(e.value)
    assert path in msg and "SentencePiece" in msg and "not supported" in msg
    assert "tokenizer.json" in msg and "vocab.json + merges.txt" in msg and "tiktoken" in msg


def test_load_errors_name_the_file(tmp_path: Any) -> None:
    with pytest.raises(TokenizerLoadError, match="no such file"):
        load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(TokenizerLoadError, match="no tokenizer here"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(TokenizerLoadError, match=r"tokenizer\.json.*\"model\""):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerLoadError, match="could not read it as JSON"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))
    spm = tmp_path / "spm" / "tokenizer.model"
    spm.parent.mkdir()
    spm.write_bytes(b"\x0a\x0b\x0a\x05<unk>\x15\x00\x00\x00\x00")
    with pytest.raises(TokenizerLoadError, match="SentencePiece"):
        load_tokenizer(str(spm))
    ranks = tmp_path / "ranks" / "tokenizer.model"
    ranks.parent.mkdir()
    ranks.write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(TokenizerLoadError, match=r"2 ranks; only Llama-3's"):
        load_tokenizer(str(ranks))
    ranks.write_text("IQ== 0\nnot-base64! 1\n")
    with pytest.raises(TextFormatError, match=r"tokenizer\.model:2: expected 'base64-token rank'"):
        load_tokenizer(str(ranks))
    (tmp_path / "bpe").mkdir()
    (tmp_path / "bpe" / "vocab.json").write_text("{}")
    with pytest.raises(TokenizerLoadError, match=r"merges\.txt: missing"):
        load_tokenizer(str(tmp_path / "bpe"))


def test_tokenizer_config_path_loads_its_directory(
    real: Callable[[str], TokenizerBundle], shared_data: str
) -> None:
    b = load_tokenizer(
        os.path.join(shared_data, "tokenizers", "phi-3-mini", "tokenizer_config.json")
    )
    assert b.fingerprint == real("phi-3-mini").fingerprint
    assert b.chat_template is not None and "<|assistant|>" in b.chat_template
    assert b.special_tokens == {
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "pad_token": "<|endoftext|>",
    }
