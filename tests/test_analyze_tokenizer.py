"""Tokenizer-drift analyzers against real tokenizers (../shared/data/tokenizers)."""

from __future__ import annotations

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
QUESTIONS = ["Hello", "What is 2+2?", "Tell me a joke.", "Translate 'chat' into French.", "Why is the sky blue?"]


def _tok(shared_data: str, name: str) -> TokenizerBundle:
    path = os.path.join(shared_data, "tokenizers", name)
    if not os.path.isdir(path):
        pytest.skip(f"tokenizer {path} is absent")
    return load_tokenizer(path)


def _ingest(store: Store, tmp_path: Path, records: list[Request]) -> None:
    f = tmp_path / "requests.jsonl"
    f.write_bytes(encode_records(list(records)))
    ingest_paths(store, [str(f)], rejects_path=str(tmp_path / "rejects.jsonl"))


def _req(i: int, tok: TokenizerBundle, replica: str, text: str, **kw: Any) -> Request:
    out_text = kw.pop("output_text", "Sure, here you go.")
    out_ids = kw.pop("output_ids", tok.encode(out_text))
    return make_request(
        i, replica=replica, model="phi-3", tokenizer_fp=tok.fingerprint, prompt_text=text,
        prompt_ids=encode_prompt(tok, text), output_text=out_text, output_ids=out_ids, **kw,
    )


def _kinds(fs: list[Finding], severity: tuple[str, ...] = ("warning", "error")) -> dict[str, list[Finding]]:
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
    assert len(old.encode(CHAT.format(q="Hello"))) == 10 and len(new.encode(CHAT.format(q="Hello"))) == 4
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
    assert by_fp[old.fingerprint]["replicas"] == ["a (stable)"] and by_fp[new.fingerprint]["replicas"] == ["b (stable)"]
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
        recs.append(make_request(i, replica=f"r{i % 3}", model="phi-3", prompt_text=text, prompt_ids=ids))
    _ingest(store, tmp_path, recs)
    found = _kinds(tokenizer_drift(AnalysisContext(store=store, tokenizer=old)), ("warning", "error"))
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
    assert "tokenizer.reencode_mismatch" not in _kinds(tokenizer_drift(AnalysisContext(store=store, tokenizer=logged)))


def test_classify_causes(shared_data: str) -> None:
    gpt2 = _tok(shared_data, "gpt2")
    phi = _tok(shared_data, "phi-3")
    text = "Hello world"
    ids = phi.encode(text)
    assert classify_reencode(phi, text, [1, 1, *ids], [1, *ids])[0] == "bos"
    assert classify_reencode(gpt2, text, gpt2.encode(" " + text), gpt2.encode(text))[0] == "prefix_space"
    assert classify_reencode(phi, text, phi.encode(" " + text), ids)[0] == "sentencepiece_legacy"
    decomposed = "cafe\u0301"
    assert classify_reencode(gpt2, decomposed, gpt2.encode("café"), gpt2.encode(decomposed))[0] == "normalization"


def test_decode_mismatch_lost_space(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]
) -> None:
    old, _ = phi3
    good = "The answer is four, of course."
    recs = [_req(i, old, "r0", CHAT.format(q="What is 2+2?"), output_text=good) for i in range(10)]
    recs.append(
        _req(10, old, "r0", CHAT.format(q="What is 2+2?"), output_text="The answer isfour, of course.",
             output_ids=old.encode(good))
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
    recs = [_req(i, old, "r0", CHAT.format(q="Smile?"), output_text=good, output_ids=ids) for i in range(8)]
    recs.append(_req(8, old, "r0", CHAT.format(q="Smile?"), output_text="Sure \ufffd here it is.", output_ids=ids))
    recs.append(_req(9, old, "r0", CHAT.format(q="Smile?"), output_text=good + "<|end|>", output_ids=[*ids, end],
                     finish_reason="length"))
    # cut by max_tokens inside the emoji: the engine held its first bytes back; no mismatch
    cut = next(k for k in range(len(ids), 0, -1) if old.decode(ids[:k]).endswith("\ufffd"))
    assert old.decode(ids[:cut]).rstrip("\ufffd") == "Sure "
    recs.append(_req(10, old, "r0", CHAT.format(q="Smile?"), output_text="Sure ", output_ids=ids[:cut],
                     finish_reason="length"))
    _ingest(store, tmp_path, recs)
    found = _kinds(tokenizer_drift(AnalysisContext(store=store, tokenizer=old)))
    (f,) = found["tokenizer.decode_mismatch"]
    assert f.evidence["cause"] == "split_utf8" and f.values["requests_affected"] == 1  # type: ignore[index]
    assert f.evidence["request_ids"] == ["req-8"]  # type: ignore[index]


def test_out_of_vocab(store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]) -> None:
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


_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "2023", "café", "naïve", "東京", "Привет", "emoji", "🙂", "tab\tnew\nline", "don't", "it's", "e.g.", "x=y+1;", "print('hi')", "<html>", "3.14159", "$100", "50%", "C++", "α-β", "γ"]


def test_clean_fleet_gives_nothing_above_info(shared_data: str, store: Store, tmp_path: Path) -> None:
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
                i, replica=f"r{i % 3}", model="gpt2", tokenizer_fp=gpt2.fingerprint,
                prompt_text=text, prompt_ids=encode_prompt(gpt2, text),
                output_ids=gpt2.encode(out) + [50256], output_text=out,
            )
        )
    # the same prompts again on other replicas
    recs += [
        make_request(1000 + i, **{**_fields(r), "replica": f"r{(i + 1) % 3}", "request_id": f"dup-{i}"})
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
        recs.append(_req(i, old, f"r{i % 3}", text, output_text=out, output_ids=old.encode(out) + [old.eos_ids[0]]))
    _ingest(store, tmp_path, recs)
    assert [f for f in tokenizer_drift(AnalysisContext(store=store, tokenizer=old)) if f.severity != "info"] == []


def test_replica_filter_and_renaming(
    store: Store, tmp_path: Path, phi3: tuple[TokenizerBundle, TokenizerBundle]
) -> None:
    old, new = phi3
    recs = [_req(i, new if i % 3 == 0 else old, f"r{i % 3}", CHAT.format(q=QUESTIONS[i % 5])) for i in range(30)]
    recs += [
        make_request(100 + i, **{**_fields(r), "replica": "z" + r.replica, "request_id": f"z{i}", "model": "other"})
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
    recs = [_req(i, new if i % 2 else old, f"r{i % 2}", CHAT.format(q=QUESTIONS[i % 5])) for i in range(20)]
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
def test_a_tie_against_a_doubled_first_token_blames_the_doubled_side(store: Store, tmp_path: Path, doubled: str) -> None:
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
