"""The engine loop: continuous batching, prefix cache, sampling and stopping, on a real
(tiny, random-weight) checkpoint."""

from __future__ import annotations

import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (pip install -e '.[engine]')")

from infdebug.text.tokenizer import load_tokenizer  # noqa: E402
from infdebug.tracer.engine.checkpoint import load_checkpoint  # noqa: E402
from infdebug.tracer.engine.engine import Engine, EngineConfig, SamplingParams, TokenEvent  # noqa: E402
from infdebug.tracer.engine.make_model import make_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_model(str(tmp_path_factory.mktemp("m") / "tiny"), preset="tiny", arch="llama")


def _engine(tiny: str, **cfg: Any) -> Engine:
    model, _ = load_checkpoint(tiny, max_len=256)
    tok = load_tokenizer(tiny)
    return Engine(
        model,
        eos_ids=[],
        decode_text=lambda ids: tok.decode(ids, skip_special_tokens=True),
        config=EngineConfig(max_model_len=256, **cfg),
    )


def _run(eng: Engine, jobs: list[tuple[list[int], SamplingParams]]) -> list[list[TokenEvent]]:
    """Submit all jobs (a step between submissions, so later ones join a running batch)."""
    out: list[list[TokenEvent]] = [[] for _ in jobs]
    seqs = []
    for i, (ids, p) in enumerate(jobs):
        seqs.append(eng.submit(ids, p, out[i].append))
        eng.step()
    while eng.running or eng.waiting:
        eng.step()
    return out


def _greedy_alone(tiny: str, ids: list[int], n: int) -> list[int]:
    eng = _engine(tiny, max_batch=1)
    return [
        e.token_id
        for e in _run(eng, [(ids, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))])[0]
    ]


def test_continuous_batching_gives_each_request_its_own_greedy_output(tiny: str) -> None:
    prompts = [list(range(3 + i, 20 + 5 * i)) for i in range(7)]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    eng = _engine(tiny, max_batch=3)  # fewer slots than requests: some wait, all join mid-flight
    got = _run(eng, [(p, params) for p in prompts])
    for p, events in zip(prompts, got, strict=True):
        assert [e.token_id for e in events] == _greedy_alone(tiny, p, 12)
        assert events[-1].finish_reason == "length" and events[-1].timing is not None


def test_greedy_through_the_engine_matches_transformers(tiny: str) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is a test dependency")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    prompts = [[5, 17, 42, 9, 100, 3], list(range(30, 70)), [7] * 12]
    eng = _engine(tiny, max_batch=4)
    got = _run(
        eng, [(p, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)) for p in prompts]
    )
    for p, events in zip(prompts, got, strict=True):
        with torch.inference_mode():
            ref = hf.generate(
                torch.tensor([p]),
                max_new_tokens=16,
                min_new_tokens=16,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(p) :].tolist()
        assert [e.token_id for e in events] == ref


def test_prefix_cache_hits_and_changes_nothing(tiny: str) -> None:
    eng = _engine(tiny, max_batch=2, block_size=8)
    shared = list(
        range(40, 80)
    )  # 40 tokens: 4 full blocks of 8 cacheable (at least one left to prefill)
    a = shared + [5, 6, 7]
    b = shared + [9, 9]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    _run(eng, [(a, params)])
    seq_holder: list[Any] = []
    done = threading.Event()
    seq_holder.append(eng.submit(b, params, lambda e: e.finish_reason and done.set()))
    while not done.is_set():
        eng.step()
    assert seq_holder[0].cached_tokens == 40
    assert seq_holder[0].output_ids == _greedy_alone(tiny, b, 8)


def test_seeded_sampling_is_reproducible(tiny: str) -> None:
    p = list(range(10, 30))
    s1 = SamplingParams(
        max_tokens=20, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True
    )
    a = [e.token_id for e in _run(_engine(tiny), [(p, s1)])[0]]
    b = [e.token_id for e in _run(_engine(tiny), [(p, s1)])[0]]
    c = [
        e.token_id
        for e in _run(_engine(tiny), [(p, SamplingParams(**{**s1.__dict__, "seed": 99}))])[0]
    ]
    assert a == b
    assert a != c


def test_stop_token_ids_and_stop_strings(tiny: str) -> None:
    p = list(range(10, 30))
    free = _run(
        _engine(tiny), [(p, SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))]
    )[0]
    ids = [e.token_id for e in free]
    stop_at = ids[3]
    cut = ids.index(stop_at)
    got = _run(
        _engine(tiny),
        [(p, SamplingParams(max_tokens=10, temperature=0, stop_token_ids=(stop_at,)))],
    )[0]
    assert [e.token_id for e in got] == ids[: cut + 1] and got[-1].finish_reason == "stop"
    text = "".join(e.text for e in free)
    if len(text.strip()) >= 4:
        needle = text.strip()[1:3]
        got = _run(
            _engine(tiny), [(p, SamplingParams(max_tokens=10, temperature=0, stop=(needle,)))]
        )[0]
        out = "".join(e.text for e in got)
        assert needle not in out and got[-1].finish_reason == "stop"
        assert text.startswith(out)


def test_an_oversized_request_is_refused_before_it_runs(tiny: str) -> None:
    eng = _engine(tiny)
    with pytest.raises(ValueError, match="exceeds the context"):
        eng.submit(list(range(250)), SamplingParams(max_tokens=10), lambda e: None)
