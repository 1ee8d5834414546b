"""make-model --train: the chat conversations made from the corpus and their labels, the
training forward pass against the engine's, seeded determinism, the CLI, and what training is
for: greedy decoding on held-out prompts ends its turn with the end-of-turn ID, in words."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="make-model needs torch (pip install -e '.[engine]')")

from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from infdebug.cli import cli  # noqa: E402
from infdebug.fleet.prompts import unique_text  # noqa: E402
from infdebug.text.template import load_template  # noqa: E402
from infdebug.text.tokenizer import load_tokenizer  # noqa: E402
from infdebug.tracer.engine.checkpoint import load_checkpoint, read_config  # noqa: E402
from infdebug.tracer.engine.engine import Engine, EngineConfig, SamplingParams, TokenEvent  # noqa: E402
from infdebug.tracer.engine.make_model import (  # noqa: E402
    CORPUS,
    TRAINING,
    is_trained,
    make_model,
    random_model,
)
from infdebug.tracer.engine.model import KVCache  # noqa: E402
from infdebug.tracer.engine.replica import Replica  # noqa: E402
from infdebug.tracer.engine.train import (  # noqa: E402
    IGNORE,
    RECIPES,
    conversations,
    encode_conversations,
    hidden_states,
    pack,
)
from tests.livefleet import conversation, trained_model  # noqa: E402

with open(CORPUS, encoding="utf-8") as _f:
    CORPUS_TEXT = _f.read()
# held out: none of these is in the corpus or in the training conversations
QUESTIONS = (
    "Hello! How are you today?",
    "What should I cook for dinner tonight?",
    "Can you recommend a good book about ships?",
    "Write two lines about the moon.",
    "How far is it from Paris to Rome?",
    "Tell me something about mountains.",
    "Why do dogs bark at night?",
    "What is your favourite colour, and why?",
)


@pytest.fixture(scope="module")
def random_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("random")
    return {f: make_model(str(root / f), chat_format=f) for f in ("chatml", "llama3")}


def _held_out() -> list[list[dict[str, Any]]]:
    """Arithmetic questions as the live fleet asks them (some with a system message or a
    second turn), word prompts as the load generator makes them, and plain questions."""
    rng = random.Random(3)
    words = [
        [{"role": "user", "content": unique_text(11, i, rng.choice((8, 30, 80, 200)))}]
        for i in range(8)
    ]
    return (
        [conversation(100 + i) for i in range(8)]
        + words
        + [[{"role": "user", "content": q}] for q in QUESTIONS]
    )


# --- the data -------------------------------------------------------------------------------


def test_conversations_are_deterministic_chats_from_the_corpus() -> None:
    a, b, c = (
        conversations(CORPUS_TEXT, 200, 0),
        conversations(CORPUS_TEXT, 200, 0),
        conversations(CORPUS_TEXT, 200, 1),
    )
    assert a == b and a != c
    for msgs in a:
        roles = [m["role"] for m in msgs]
        assert roles in (
            ["user", "assistant"],
            ["system", "user", "assistant"],
            ["user", "assistant"] * 2,
            ["system"] + ["user", "assistant"] * 2,
        )
        for m in msgs:
            if m["role"] == "assistant":  # answers are corpus text, a sentence or two
                assert m["content"] and " ".join(m["content"].split()[:4]) in " ".join(
                    CORPUS_TEXT.split()
                )
    assert sum(len(m) >= 4 for m in a) > 20 and sum(m[0]["role"] == "system" for m in a) > 20


@pytest.mark.parametrize("chat_format", ["chatml", "llama3"])
def test_labels_are_the_answers_and_their_end_of_turn(
    chat_format: str, random_dirs: dict[str, str]
) -> None:
    d = random_dirs[chat_format]
    tok, template = load_tokenizer(d), load_template(d)
    assert tok.eos_token is not None
    eot = tok.tok.token_to_id(tok.eos_token)
    msgs = [
        {"role": "system", "content": "Keep your answers short."},
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Air scatters blue light the most."},
        {"role": "user", "content": "And at sunset?"},
        {"role": "assistant", "content": "The light crosses more air."},
    ]
    rep = Replica(d, device="cpu")
    for turns in (False, True):
        ((ids, labels),) = encode_conversations(tok, template, [msgs], turns=turns)
        # the IDs are what the engine serves for this conversation (up to each answer)
        assert ids == rep.encode_chat(rep.render(msgs, add_generation_prompt=False))
        assert len(labels) == len(ids)
        labelled = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE]
        assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels, strict=True))
        text = tok.decode(labelled)
        answers = f"Air scatters blue light the most.{tok.eos_token}"
        last = f"The light crosses more air.{tok.eos_token}"
        assert "sky" not in text and "short" not in text  # the system and first user message
        if turns:  # everything after the first answer is labelled
            assert labelled.count(eot) == 3 and text.startswith(answers) and "sunset" in text
            assert text.removesuffix("\n").endswith(last)
        else:
            assert labelled.count(eot) == 2 and text == answers + last and "sunset" not in text
        # the generation prompt before each answer is not labelled: a label starts at each answer
        first = labels.index(next(lab for lab in labels if lab != IGNORE))
        assert rep.render(msgs[:2]) == tok.decode(ids[:first])


def test_training_forward_is_the_engines(random_dirs: dict[str, str]) -> None:
    """One sequence, and several packed into rows: the logits prefill gives for each alone."""
    d = random_dirs["llama3"]
    cfg = read_config(d)
    model = random_model(cfg, 0)
    model.setup_rope(64)
    tok = load_tokenizer(d)
    texts = [
        "The lighthouse keeper wrote three lines.",
        "Knead the dough.",
        "A fox slept in the coal shed all winter.",
        "Mix the flour and yeast in a large bowl, then add the water.",
    ]
    seqs = [tok.encode(t, add_special_tokens=True) for t in texts]

    def alone(ids: list[int]) -> Any:
        cache = KVCache(cfg, 1, 64, torch.device("cpu"), torch.float32)
        return model.prefill(torch.tensor(ids), 0, 0, cache, all_logits=True)

    with torch.no_grad():
        ours = model.lm_head(hidden_states(model, torch.tensor([seqs[0]])))[0]
        assert float((ours - alone(seqs[0])).abs().max()) < 1e-4
        p = pack([(ids, ids) for ids in seqs], 32, pad_id=0)
        assert p.inputs.shape[0] < len(seqs)  # some share a row
        logits = model.lm_head(hidden_states(model, p.inputs, p.pos, p.mask))
    for ids in seqs:  # each example's inputs are ids[:-1], from position 0, its targets ids[1:]
        (r, at), *_ = [
            (r, a)
            for r in range(p.inputs.shape[0])
            for a in range(p.inputs.shape[1])
            if p.pos[r, a] == 0 and p.inputs[r, a : a + len(ids) - 1].tolist() == ids[:-1]
        ]
        assert p.targets[r, at : at + len(ids) - 1].tolist() == ids[1:]
        got = logits[r, at : at + len(ids) - 1]
        assert float((got - alone(ids)[:-1]).abs().max()) < 1e-4


# --- training -------------------------------------------------------------------------------


def test_training_is_seeded_and_deterministic(tmp_path: Any) -> None:
    a, b, c = (
        make_model(str(tmp_path / n), chat_format="llama3", seed=s, train_steps=3)
        for n, s in (("a", 0), ("b", 0), ("c", 1))
    )
    with (
        open(os.path.join(a, "model.safetensors"), "rb") as fa,
        open(os.path.join(b, "model.safetensors"), "rb") as fb,
    ):
        assert (
            fa.read() == fb.read()
        )  # the same call, the same bytes (one process, one thread count)
    wa, wc = (load_file(os.path.join(x, "model.safetensors")) for x in (a, c))
    assert not torch.equal(wa["lm_head.weight"], wc["lm_head.weight"])
    rnd = load_file(
        os.path.join(make_model(str(tmp_path / "r"), chat_format="llama3"), "model.safetensors")
    )
    assert set(rnd) == set(wa) and not torch.equal(rnd["lm_head.weight"], wa["lm_head.weight"])
    with open(os.path.join(a, TRAINING)) as f:
        report = json.load(f)
    assert report["steps"] == 3 and report["config"]["seed"] == 0 and report["tokens"] > 0
    assert report["loss"] > 0 and is_trained(a)
    load_checkpoint(a)  # the engine loads it as any other checkpoint
    make_model(a, chat_format="llama3")  # remade with random weights: no longer trained
    assert not is_trained(a)


def test_cli_make_model_train(tmp_path: Any) -> None:
    out = CliRunner().invoke(
        cli, ["make-model", str(tmp_path / "m"), "--train-steps", "2", "--json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["trained"] is True and data["training"]["steps"] == 2
    assert is_trained(str(tmp_path / "m"))
    out = CliRunner().invoke(
        cli, ["make-model", str(tmp_path / "m"), "--train", "--train-steps", "2"]
    )
    assert (
        out.exit_code == 0
        and "trained 2 steps" in out.stdout
        and "training: step 2/2" in out.stderr
    )
    out = CliRunner().invoke(cli, ["make-model", str(tmp_path / "m"), "--json"])
    assert json.loads(out.stdout)["trained"] is False and not is_trained(str(tmp_path / "m"))


def test_trained_model_ends_its_turn_in_words(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Greedy decoding (where a random-weight model loops on every request) on held-out
    prompts: most outputs end with the end-of-turn ID, few end in one ID over and over."""
    d = trained_model(tmp_path_factory)
    with open(os.path.join(d, TRAINING)) as f:
        assert json.load(f)["steps"] == RECIPES["tiny"].steps
    rep = Replica(d, device="cpu")
    tok = rep.tokenizer
    eot = tok.tok.token_to_id("<|eot_id|>")
    model, _ = load_checkpoint(d, max_len=512)
    engine = Engine(
        model,
        eos_ids=list(tok.eos_ids),
        decode_text=lambda ids: tok.decode(ids, skip_special_tokens=True),
        config=EngineConfig(max_batch=32, max_model_len=512),
    )
    prompts = _held_out()
    events: list[list[TokenEvent]] = [[] for _ in prompts]
    for i, msgs in enumerate(prompts):
        engine.submit(
            rep.encode_chat(rep.render(msgs)),
            SamplingParams(max_tokens=96, temperature=0),
            events[i].append,
        )
    while engine.running or engine.waiting:
        engine.step()
    outputs = [[e.token_id for e in ev] for ev in events]
    stopped = [
        ev[-1].finish_reason == "stop" and out[-1] == eot
        for ev, out in zip(events, outputs, strict=True)
    ]
    texts = [tok.decode(out, skip_special_tokens=True) for out in outputs]
    report = [(s, t[:80]) for s, t in zip(stopped, texts, strict=True)]
    assert sum(stopped) >= 0.7 * len(prompts), report  # measured: 24 of 24
    # a random-weight model ends every output in one ID over and over; this one seldom does
    loops = [
        t
        for out, t in zip(outputs, texts, strict=True)
        if len(out) >= 10 and len(set(out[-10:])) == 1
    ]
    assert len(loops) <= 0.2 * len(prompts), loops  # measured: 0 of 24
    # words: an answer may be empty (the turn ended at once), but most answers say something
    worded = [t for t in texts if any(len(w) >= 3 and w.isalpha() for w in t.split())]
    assert len(worded) >= 0.8 * len(prompts), texts
