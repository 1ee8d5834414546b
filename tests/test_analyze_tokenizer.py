"""Tokenizer-drift analyzers against real tokenizers (../shared/data/tokenizers)."""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import make_request

from infdebug.analyzers.base import AnalysisContext
from infdebug.analyzers.tokenizer_drift import classify_reencode, tokenizer_drift
from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Finding, Request, encode_records
from infdebug.store import Store
from infdebug.text.tokenizer import TokenizerBundle, encode_prompt, load_tokenizer

CHAT = "<|user|>\n{q}<|end|>\n<|assistant|>\n"
QUESTIONS = [
    "Hello",
    "What is 2+2?",
    "Tell me a joke.",
    "Translate 'chat' into French.",
    "Why is the sky blue?",
]


@functools.cache
def _load(path: str) -> TokenizerBundle:
    return load_tokenizer(path)  # Llama-3's from its ranks takes seconds: once per process


def _tok(shared_data: str, name: str) -> TokenizerBundle:
    path = os.path.join(shared_data, "tokenizers", name)
    if not os.path.isdir(path):
        pytest.skip(f"tokenizer {path} is absent")
    return _load(path)


def _ingest(store: Store, tmp_path: Path, records: list[Request]) -> None:
    f = tmp_path / "requests.jsonl"
    f.write_bytes(encode_records(list(records)))
    ingest_paths(store, [str(f)], rejects_path=str(tmp_path / "rejects.jsonl"))


def _req(i: int, tok: TokenizerBundle, replica: str, text: str, **kw: Any) -> Request:
    out_text = kw.pop("output_text", "Sure, here you go.")
    out_ids = kw.pop("output_ids", tok.encode(out_text))
    return make_request(
        i,
        replica=replica,
        model="phi-3",
        tokenizer_fp=tok.fingerprint,
        prompt_text=text,
        prompt_ids=encode_prompt(tok, text),
        output_text=out_text,
        output_ids=out_ids,
        **kw,
    )


def _kinds(
    fs: list[Finding], severity: tuple[str, ...] = ("warning", "error")
) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in fs:
        if f.severity in severity:
            out.setdefault(f.kind, []).append(f)
    return out


@pytest.fixture
def phi3(shared_data: str) -> tuple[TokenizerBundle, TokenizerBundle]:
    return _tok(shared_data, "phi-3"), _tok(shared_data, "phi-3-mini")


def test_phi3_revisions_give_fingerprint_and_cross_replica_findings(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]
) -> None:
    old, new = phi3
    assert (
        len(old.encode(CHAT.format(q="Hello"))) == 10
        and len(new.encode(CHAT.format(q="Hello"))) == 4
    )
    recs = []
    for i in range(40):
        text = CHAT.format(q=QUESTIONS[i % len(QUESTIONS)])
        recs.append(_req(i, old if i % 2 == 0 else new, "a" if i % 2 == 0 else "b", text))
    _ingest(store, tmp_path, recs)
    found = _kinds(tokenizer_drift(AnalysisContext(store=store)))

    (fp,) = found["tokenizer.fingerprint_mismatch"]
    assert fp.severity == "error"
    by_fp = fp.evidence["by_fingerprint"]  # type: ignore[index]
    # replicas are named within their deployment (make_request's default is "stable")
    assert by_fp[old.fingerprint]["replicas"] == ["a (stable)"] and by_fp[new.fingerprint][
        "replicas"
    ] == ["b (stable)"]
    assert by_fp[old.fingerprint]["requests"] == 20

    (ids,) = found["tokenizer.cross_replica_ids"]  # one side is the reference, the other flagged
    assert ids.severity == "error"
    assert ids.values["prompts_differing"] == len(QUESTIONS)  # type: ignore[index]
    ex = ids.evidence["example"]  # type: ignore[index]
    this, ref = ex["this"], ex["reference"]
    assert {this["replica"], ref["replica"]} == {"a (stable)", "b (stable)"}
    # old: [1 <s>, 32010 <|user|>, …]; new: [32010 <|user|>, …]: they differ at index 0 (the BOS)
    assert ex["first_diverging_index"] == 0
    assert {this["id"], ref["id"]} == {1, 32010}
    assert "piece" not in this  # no reference tokenizer: IDs only


def test_cross_replica_first_diverging_index_after_shared_prefix(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]
) -> None:
    old, new = phi3
    recs = []
    for i in range(30):
        text = CHAT.format(q=QUESTIONS[i % len(QUESTIONS)])
        tok = old if i % 3 else new
        ids = tok.encode(text)  # no BOS either side: the first difference is after <|user|>
        recs.append(
            make_request(i, replica=f"r{i % 3}", model="phi-3", prompt_text=text, prompt_ids=ids)
        )
    _ingest(store, tmp_path, recs)
    found = _kinds(
        tokenizer_drift(AnalysisContext(store=store, tokenizer=old)), ("warning", "error")
    )
    (ids,) = found["tokenizer.cross_replica_ids"]
    assert ids.scope == {"replica": "r0", "deployment": "stable", "t_start": ids.scope["t_start"]}  # type: ignore[index]
    assert ids.evidence["reference_replicas"] == ["r1 (stable)", "r2 (stable)"]  # type: ignore[index]
    ex = ids.evidence["example"]  # type: ignore[index]
    assert ex["first_diverging_index"] == 1
    assert ex["this"]["piece"] == old.piece(new.encode(ex["prompt_text"])[1])
    assert ex["reference"]["id"] == 29871 and ex["reference"]["piece"] == "▁"


@pytest.mark.parametrize("logged_with", ["phi-3-mini", "phi-3"])
def test_reencode_mismatch_is_special_tokens(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle], logged_with: str
) -> None:
    old, new = phi3
    logged, ref = (new, old) if logged_with == "phi-3-mini" else (old, new)
    recs = [_req(i, logged, "r0", CHAT.format(q=QUESTIONS[i % 5])) for i in range(20)]
    _ingest(store, tmp_path, recs)
    found = _kinds(tokenizer_drift(AnalysisContext(store=store, tokenizer=ref)))
    (f,) = found["tokenizer.reencode_mismatch"]
    assert f.severity == "error" and f.scope["replica"] == "r0"  # type: ignore[index]
    assert f.evidence["cause"] == "special_tokens"  # type: ignore[index]
    assert f.values["requests_affected"] == 20 and f.values["share"] == 1.0  # type: ignore[index]
    assert len(f.evidence["request_ids"]) == 10  # type: ignore[index]
    assert f.evidence["example"]["logged"]["piece"] is not None  # type: ignore[index]
    # the same logs against their own tokenizer: nothing
    assert "tokenizer.reencode_mismatch" not in _kinds(
        tokenizer_drift(AnalysisContext(store=store, tokenizer=logged))
    )


def test_classify_causes(shared_data: str) -> None:
    gpt2 = _tok(shared_data, "gpt2")
    phi = _tok(shared_data, "phi-3")
    text = "Hello world"
    ids = phi.encode(text)
    assert classify_reencode(phi, text, [1, 1, *ids], [1, *ids])[0] == "bos"
    assert (
        classify_reencode(gpt2, text, gpt2.encode(" " + text), gpt2.encode(text))[0]
        == "prefix_space"
    )
    assert classify_reencode(phi, text, phi.encode(" " + text), ids)[0] == "sentencepiece_legacy"
    decomposed = "cafe\u0301"
    assert (
        classify_reencode(gpt2, decomposed, gpt2.encode("café"), gpt2.encode(decomposed))[0]
        == "normalization"
    )


def test_decode_mismatch_lost_space(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]
) -> None:
    old, _ = phi3
    good = "The answer is four, of course."
    recs = [_req(i, old, "r0", CHAT.format(q="What is 2+2?"), output_text=good) for i in range(10)]
    recs.append(
        _req(
            10,
            old,
            "r0",
            CHAT.format(q="What is 2+2?"),
            output_text="The answer isfour, of course.",
            output_ids=old.encode(good),
        )
    )
    _ingest(store, tmp_path, recs)
    found = _kinds(tokenizer_drift(AnalysisContext(store=store, tokenizer=old)))
    (f,) = found["tokenizer.decode_mismatch"]
    ex = f.evidence["example"]  # type: ignore[index]
    assert ex["request_id"] == "req-10" and ex["first_differing_char"] == len("The answer is")
    assert ex["token_piece"] == "▁four"
    assert f.values["requests_affected"] == 1  # type: ignore[index]
    assert f.evidence["cause"] == "lost_space"  # type: ignore[index]
    assert set(found) == {"tokenizer.decode_mismatch"}


def test_decode_mismatch_split_utf8_and_kept_special_tokens(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]
) -> None:
    """An emoji whose bytes were detokenized apart is logged as U+FFFD: a split_utf8 mismatch.
    Text logged with the special tokens kept (skip_special_tokens=False) is no mismatch."""
    old, _ = phi3
    good = "Sure 🙂 here it is."
    ids = old.encode(good)
    assert len(ids) > len(good.split())  # the emoji is byte-fallback pieces
    end = old.tok.token_to_id("<|end|>")
    recs = [
        _req(i, old, "r0", CHAT.format(q="Smile?"), output_text=good, output_ids=ids)
        for i in range(8)
    ]
    recs.append(
        _req(
            8,
            old,
            "r0",
            CHAT.format(q="Smile?"),
            output_text="Sure \ufffd here it is.",
            output_ids=ids,
        )
    )
    recs.append(
        _req(
            9,
            old,
            "r0",
            CHAT.format(q="Smile?"),
            output_text=good + "<|end|>",
            output_ids=[*ids, end],
            finish_reason="length",
        )
    )
    # cut by max_tokens inside the emoji: the engine held its first bytes back; no mismatch
    cut = next(k for k in range(len(ids), 0, -1) if old.decode(ids[:k]).endswith("\ufffd"))
    assert old.decode(ids[:cut]).rstrip("\ufffd") == "Sure "
    recs.append(
        _req(
            10,
            old,
            "r0",
            CHAT.format(q="Smile?"),
            output_text="Sure ",
            output_ids=ids[:cut],
            finish_reason="length",
        )
    )
    _ingest(store, tmp_path, recs)
    found = _kinds(tokenizer_drift(AnalysisContext(store=store, tokenizer=old)))
    (f,) = found["tokenizer.decode_mismatch"]
    assert f.evidence["cause"] == "split_utf8" and f.values["requests_affected"] == 1  # type: ignore[index]
    assert f.evidence["request_ids"] == ["req-8"]  # type: ignore[index]


def test_out_of_vocab(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]
) -> None:
    old, _ = phi3
    recs = [_req(i, old, f"r{i % 2}", CHAT.format(q=QUESTIONS[i % 5])) for i in range(300)]
    text = CHAT.format(q="Hello")
    recs.append(_req(300, old, "r1", text, output_ids=[old.encode("Hi")[0], 4_000_000_000]))
    _ingest(store, tmp_path, recs)
    with_ref = _kinds(tokenizer_drift(AnalysisContext(store=store, tokenizer=old)))
    (f,) = with_ref["tokenizer.out_of_vocab"]
    assert f.severity == "error" and f.scope["replica"] == "r1"  # type: ignore[index]
    assert f.evidence["request_ids"] == ["req-300"] and f.values["limit"] == old.vocab_size  # type: ignore[index]
    without = _kinds(tokenizer_drift(AnalysisContext(store=store)))
    (g,) = without["tokenizer.out_of_vocab"]
    assert g.severity == "warning" and g.evidence["request_ids"] == ["req-300"]  # type: ignore[index]


_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "2023",
    "café",
    "naïve",
    "東京",
    "Привет",
    "emoji",
    "🙂",
    "tab\tnew\nline",
    "don't",
    "it's",
    "e.g.",
    "x=y+1;",
    "print('hi')",
    "<html>",
    "3.14159",
    "$100",
    "50%",
    "C++",
    "α-β",
    "γ",
]


def test_clean_fleet_gives_nothing_above_info(
    shared_data: str, store: Store, tmp_path: Path
) -> None:
    gpt2 = _tok(shared_data, "gpt2")
    rnd = random.Random(7)
    recs = []
    for i in range(400):
        text = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(1, 40)))
        if i % 4 == 0:
            text = " " + text
        out = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(1, 20)))
        recs.append(
            make_request(
                i,
                replica=f"r{i % 3}",
                model="gpt2",
                tokenizer_fp=gpt2.fingerprint,
                prompt_text=text,
                prompt_ids=encode_prompt(gpt2, text),
                output_ids=gpt2.encode(out) + [50256],
                output_text=out,
            )
        )
    # the same prompts again on other replicas
    recs += [
        make_request(
            1000 + i, **{**_fields(r), "replica": f"r{(i + 1) % 3}", "request_id": f"dup-{i}"}
        )
        for i, r in enumerate(recs[:100])
    ]
    _ingest(store, tmp_path, recs)
    for ctx in (AnalysisContext(store=store), AnalysisContext(store=store, tokenizer=gpt2)):
        fs = tokenizer_drift(ctx)
        assert [f for f in fs if f.severity != "info"] == []


def _fields(r: Request) -> dict[str, Any]:
    return {k: getattr(r, k) for k in r.__struct_fields__ if k not in ("kind", "v")}


def test_clean_sentencepiece_fleet_with_bos_and_eos(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]
) -> None:
    old, _ = phi3
    recs = []
    for i in range(60):
        text = CHAT.format(q=QUESTIONS[i % 5] + f" ({i % 7})")
        out = f"Answer {i}: the sky is blue because of Rayleigh scattering."
        recs.append(
            _req(
                i,
                old,
                f"r{i % 3}",
                text,
                output_text=out,
                output_ids=old.encode(out) + [old.eos_ids[0]],
            )
        )
    _ingest(store, tmp_path, recs)
    assert [
        f
        for f in tokenizer_drift(AnalysisContext(store=store, tokenizer=old))
        if f.severity != "info"
    ] == []


def test_replica_filter_and_renaming(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]
) -> None:
    old, new = phi3
    recs = [
        _req(i, new if i % 3 == 0 else old, f"r{i % 3}", CHAT.format(q=QUESTIONS[i % 5]))
        for i in range(30)
    ]
    recs += [
        make_request(
            100 + i,
            **{**_fields(r), "replica": "z" + r.replica, "request_id": f"z{i}", "model": "other"},
        )
        for i, r in enumerate(recs)
    ]
    _ingest(store, tmp_path, recs)
    fs = _kinds(tokenizer_drift(AnalysisContext(store=store)))
    # the same drift under two models; the odd replica is named either way
    assert sorted(f.scope["replica"] for f in fs["tokenizer.cross_replica_ids"]) == ["r0", "zr0"]  # type: ignore[index]
    assert sorted(f.scope["replica"] for f in fs["tokenizer.fingerprint_mismatch"]) == ["r0", "zr0"]  # type: ignore[index]
    only = _kinds(tokenizer_drift(AnalysisContext(store=store, replicas=["r1", "r2"])))
    assert only == {}
    one = _kinds(tokenizer_drift(AnalysisContext(store=store, replicas=["r0", "r1"])))
    assert len(one["tokenizer.cross_replica_ids"]) == 1


def test_fingerprint_and_ids_blame_the_same_replica_on_a_tie(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]
) -> None:
    old, new = phi3
    recs = [
        _req(i, new if i % 2 else old, f"r{i % 2}", CHAT.format(q=QUESTIONS[i % 5]))
        for i in range(20)
    ]
    _ingest(store, tmp_path, recs)
    fs = _kinds(tokenizer_drift(AnalysisContext(store=store)))
    (fp,) = fs["tokenizer.fingerprint_mismatch"]
    (ids,) = fs["tokenizer.cross_replica_ids"]
    # one replica each side: nothing tells which is off, so neither is blamed (a replica's
    # name must never decide), and both findings say so and name both sides
    assert "replica" not in (fp.scope or {}) and "replica" not in (ids.scope or {})
    assert "no majority" in fp.summary and "no majority" in ids.summary
    assert ids.evidence["replicas"] == ["r0 (stable)", "r1 (stable)"]  # type: ignore[index]
    assert ids.values["decided"] is False  # type: ignore[index]


def test_a_tie_is_decided_by_what_other_texts_showed(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]
) -> None:
    """Replica c uses the other tokenizer: texts seen on a, b and c blame c; a text seen only
    on a and c (one each) is then c's too, never a's, whatever the names."""
    old, new = phi3
    recs = []
    for i in range(30):
        rep = "abc"[i % 3]
        recs.append(_req(i, new if rep == "c" else old, rep, CHAT.format(q=QUESTIONS[i % 5])))
    recs.append(_req(30, old, "a", CHAT.format(q="A lone question?")))
    recs.append(_req(31, new, "c", CHAT.format(q="A lone question?")))
    _ingest(store, tmp_path, recs)
    fs = _kinds(tokenizer_drift(AnalysisContext(store=store)))
    (ids,) = fs["tokenizer.cross_replica_ids"]
    assert ids.scope["replica"] == "c" and ids.values["prompts_differing"] == 6  # type: ignore[index]


@pytest.mark.parametrize("doubled", ["a", "z"])
def test_a_tie_against_a_doubled_first_token_blames_the_doubled_side(
    store: Store, tmp_path: Path, doubled: str
) -> None:
    """Two replicas, one each side of every text (no majority), but one side starts with one
    ID twice: a doubled BOS is never the right encoding, whatever the replica is called."""
    clean = "z" if doubled == "a" else "a"
    recs = []
    for i in range(20):
        text, ids = f"<s>question {i}", [1, 500 + i, 900]
        recs.append(make_request(i, replica=clean, prompt_text=text, prompt_ids=ids))
        recs.append(make_request(100 + i, replica=doubled, prompt_text=text, prompt_ids=[1, *ids]))
    _ingest(store, tmp_path, recs)
    (ids_f,) = _kinds(tokenizer_drift(AnalysisContext(store=store)))["tokenizer.cross_replica_ids"]
    assert ids_f.scope["replica"] == doubled  # type: ignore[index]
    assert ids_f.evidence["cause"] == "doubled_first_token"  # type: ignore[index]


# --- another vocabulary altogether is not drift ------------------------------------------------

SYSTEMS = [
    "You are a helpful assistant.",
    "Answer in one sentence.",
    "Réponds en français, s'il te plaît.",
]
PROMPTS = [
    f"{s}\n\n{q} (case {k})" for k, (s, q) in enumerate((s, q) for s in SYSTEMS for q in QUESTIONS)
]


def _unnamed(i: int, replica: str, text: str, ids: list[int]) -> Request:
    """A request as a vLLM log line gives it: no model name, no fingerprint."""
    return make_request(
        i, replica=replica, model=None, tokenizer_fp=None, prompt_text=text, prompt_ids=ids
    )


def _two_models(shared_data: str, first: str, second: str, split: tuple[int, int]) -> list[Request]:
    """``split[0]`` replicas serve ``first``'s tokenizer, ``split[1]`` ``second``'s; every
    replica receives every prompt (the same benchmark sent to both fleets)."""
    toks = [_tok(shared_data, first), _tok(shared_data, second)]
    reps = [(f"a{k}", toks[0]) for k in range(split[0])] + [
        (f"b{k}", toks[1]) for k in range(split[1])
    ]
    return [
        _unnamed(i * len(reps) + k, rep, text, encode_prompt(tok, text))
        for i, text in enumerate(PROMPTS)
        for k, (rep, tok) in enumerate(reps)
    ]


@pytest.mark.parametrize(
    ("first", "second", "split"),
    [
        ("gpt2", "llama3", (2, 2)),
        ("gpt2", "llama3", (3, 1)),
        ("llama3", "qwen2-1.5b-instruct-finetune", (3, 2)),
        ("gpt2", "qwen2-1.5b-instruct-finetune", (1, 1)),
    ],
)
def test_two_unnamed_models_are_a_vocabulary_mismatch_not_drift(
    store: Store, tmp_path: Path, shared_data: str, first: str, second: str, split: tuple[int, int]
) -> None:
    """vLLM's request lines never name the model: two unrelated models' logs analysed together
    encode one prompt text to unrelated IDs. That is one warning naming both groups, not a
    cross-replica error on whichever side is outnumbered, nor IDs "out of vocabulary"."""
    _ingest(store, tmp_path, _two_models(shared_data, first, second, split))
    found = _kinds(tokenizer_drift(AnalysisContext(store=store)), ("info", "warning", "error"))
    assert set(found) == {"tokenizer.vocabulary_mismatch"}, {
        k: [f.summary for f in v] for k, v in found.items()
    }
    (f,) = found["tokenizer.vocabulary_mismatch"]
    assert f.severity == "warning" and "replica" not in (f.scope or {})
    assert "different vocabularies" in f.summary and "do not name" in f.summary
    v, ev = f.values or {}, f.evidence or {}
    assert v["vocabularies"] == 2 and v["texts"] == len(PROMPTS) and v["overlap"] < 0.5
    groups = ev["groups"]
    assert sorted(len(g["replicas"]) for g in groups) == sorted(split)
    a_side = next(g for g in groups if g["replicas"][0].startswith("a"))
    b_side = next(g for g in groups if g["replicas"][0].startswith("b"))
    assert a_side["replicas"] == [f"a{k} (stable)" for k in range(split[0])]
    toks = {first: _tok(shared_data, first), second: _tok(shared_data, second)}
    for side, name in (
        (a_side, first),
        (b_side, second),
    ):  # the first IDs each side logged: a BOS, or the text's
        assert encode_prompt(toks[name], PROMPTS[0])[0] in side["first_ids"]
        assert side["example"]["replica"] in side["replicas"]
        bos = name == "llama3"
        assert (
            (side["first_id"], side["first_id_share"]) == (128000, 1.0)
            if bos
            else side["first_id_share"] < 1.0
        )
    ex = ev["example"]
    assert ex["prompt_text"] == PROMPTS[0] and len(ex["sides"]) == 2
    assert {s["replica"][0] for s in ex["sides"]} == {"a", "b"}
    (pair,) = ev["pairs"]
    assert (
        pair["overlap"] == v["overlap"]
        and pair["texts"] == len(PROMPTS)
        and pair["ids_compared"] >= 16
    )


def _split_special(tok: TokenizerBundle, text: str, special: str) -> list[int]:
    """``text`` encoded with its first ``special`` read as plain text (the special token not
    registered on that replica): pieces instead of one ID."""
    i = text.index(special)
    return [
        *encode_prompt(tok, text[:i]),
        *tok.encode(special[:2]),
        *tok.encode(special[2:]),
        *tok.encode(text[i + len(special) :]),
    ]


@pytest.mark.parametrize("drift", ["double_bos", "special_as_text"])
def test_drift_within_one_unnamed_vocabulary_stays_cross_replica_ids(
    store: Store, tmp_path: Path, shared_data: str, drift: str
) -> None:
    """The same Llama-3 tokenizer everywhere, one replica off by a doubled BOS or one special
    token handled as text: a few IDs of otherwise equal sequences, drift (blamed on it)."""
    tok = _tok(shared_data, "llama3")
    texts = [f"<|start_header_id|>user<|end_header_id|>\n\n{p}<|eot_id|>" for p in PROMPTS]
    recs = []
    for i, text in enumerate(texts):
        for k in range(3):
            ids = encode_prompt(tok, text)
            if k == 2:
                ids = (
                    [ids[0], *ids]
                    if drift == "double_bos"
                    else _split_special(tok, text, "<|eot_id|>")
                )
            recs.append(_unnamed(i * 3 + k, f"r{k}", text, ids))
    _ingest(store, tmp_path, recs)
    found = _kinds(tokenizer_drift(AnalysisContext(store=store)), ("info", "warning", "error"))
    assert set(found) == {"tokenizer.cross_replica_ids"}
    (f,) = found["tokenizer.cross_replica_ids"]
    assert f.severity == "error" and (f.scope or {})["replica"] == "r2"


def test_thin_evidence_never_splits_a_vocabulary(
    store: Store, tmp_path: Path, shared_data: str
) -> None:
    """A prompt that is one special token, read as a token on one replica and as text on the
    other, shares no ID: it looks like two vocabularies, but one text of one ID is too little
    to tell, so it stays drift."""
    gpt2 = _tok(shared_data, "gpt2")
    text = "<|endoftext|>"
    assert gpt2.piece(50256) == text and 50256 not in gpt2.encode(text)
    _ingest(
        store,
        tmp_path,
        [_unnamed(0, "r0", text, [50256]), _unnamed(1, "r1", text, gpt2.encode(text))],
    )
    found = _kinds(tokenizer_drift(AnalysisContext(store=store)), ("info", "warning", "error"))
    assert set(found) == {"tokenizer.cross_replica_ids"}


def test_drift_inside_one_of_two_vocabularies_is_still_found(
    store: Store, tmp_path: Path, shared_data: str
) -> None:
    """GPT-2 on a0-a2, Llama-3 on b0-b2, and b2 doubles the BOS: the two vocabularies are one
    warning, and b2's doubled BOS is drift within Llama-3's (its peers b0, b1 the reference)."""
    recs = _two_models(shared_data, "gpt2", "llama3", (3, 3))
    recs = [
        make_request(
            int(r.request_id[4:]), **{**_fields(r), "prompt_ids": [r.prompt_ids[0], *r.prompt_ids]}
        )
        if r.replica == "b2"
        else r
        for r in recs
    ]
    _ingest(store, tmp_path, recs)
    found = _kinds(tokenizer_drift(AnalysisContext(store=store)), ("info", "warning", "error"))
    assert set(found) == {"tokenizer.vocabulary_mismatch", "tokenizer.cross_replica_ids"}
    (ids,) = found["tokenizer.cross_replica_ids"]
    assert (ids.scope or {})["replica"] == "b2" and (ids.evidence or {})[
        "cause"
    ] == "doubled_first_token"
    assert (ids.evidence or {})["reference_replicas"] == ["b0 (stable)", "b1 (stable)"]
    (voc,) = found["tokenizer.vocabulary_mismatch"]
    assert sorted(g["replicas"][0][0] for g in (voc.evidence or {})["groups"]) == ["a", "b"]


def test_out_of_vocab_compares_within_one_vocabulary(
    store: Store, tmp_path: Path, shared_data: str
) -> None:
    """Llama-3's IDs run to 128k, GPT-2's to 50k: without a reference, a Llama-3 replica is not
    "out of vocabulary" next to GPT-2 ones; a real out-of-range ID is still found."""
    one = _two_models(shared_data, "gpt2", "llama3", (2, 2))  # 8 rounds: ≥ 100 requests of peers
    recs = [
        make_request(
            i, **{**_fields(r), "request_id": f"x{i}-{k}", "t_arrival": r.t_arrival + 1000 * k}
        )
        for k in range(8)
        for i, r in enumerate(one)
    ]
    recs.append(
        _unnamed(
            99_999,
            "a0",
            PROMPTS[0] + "!",
            [*_tok(shared_data, "gpt2").encode(PROMPTS[0]), 4_000_000],
        )
    )
    _ingest(store, tmp_path, recs)
    found = _kinds(tokenizer_drift(AnalysisContext(store=store)))
    (oov,) = found["tokenizer.out_of_vocab"]
    assert (oov.scope or {})["replica"] == "a0" and (oov.evidence or {})["request_ids"] == [
        "req-99999"
    ]
    assert set(found) == {"tokenizer.vocabulary_mismatch", "tokenizer.out_of_vocab"}


def test_vocabulary_mismatch_does_not_depend_on_replica_names(
    store: Store, tmp_path: Path, shared_data: str
) -> None:
    recs = _two_models(shared_data, "gpt2", "llama3", (2, 2))
    rename = {"a0": "z9", "a1": "z8", "b0": "c1", "b1": "c0"}

    def vocab_finding(rs: list[Request], name: str) -> dict[str, Any]:
        store.command("TRUNCATE TABLE requests")
        store.command("TRUNCATE TABLE ingest_state")
        d = tmp_path / name
        d.mkdir()
        _ingest(store, d, rs)
        (f,) = _kinds(tokenizer_drift(AnalysisContext(store=store)))[
            "tokenizer.vocabulary_mismatch"
        ]
        return {"values": f.values, "evidence": f.evidence}

    base = vocab_finding(recs, "base")
    moved = vocab_finding(
        [make_request(0, **{**_fields(r), "replica": rename[r.replica]}) for r in reversed(recs)],
        "moved",
    )
    back = {f"{v} (stable)": f"{k} (stable)" for k, v in rename.items()}
    for g in moved["evidence"]["groups"]:
        g["replicas"] = sorted(back[x] for x in g["replicas"])
        g["example"]["replica"] = back[g["example"]["replica"]]
    for s in moved["evidence"]["example"]["sides"]:
        s["replica"] = back[s["replica"]]
    assert moved == base
