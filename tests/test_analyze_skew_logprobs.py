"""``skew.logprobs`` on logs the reference engine really produces: the same tiny checkpoint
served by three in-process engines, two in float32 and one in float16 (what
``serve --inject dtype=float16`` loads), each answering the same prompts greedily and logging
each token's logprob; re-scoring with the checkpoint in float32 names the float16 one.

The engines run synchronously (``Engine.step``), batched as the server batches them, with
``trace_logprobs`` on (``serve --trace-logprobs``): the records are the tracer's own, with
the chosen tokens' logprobs in ``output_logprobs`` though no client asked for them."""

from __future__ import annotations

import os
import random
import shutil
from typing import Any

import msgspec
import pytest
import torch

from infdebug.analyzers.base import AnalysisContext, run_all
from infdebug.analyzers.skew_numerics import FLEET_RATIO, FP32_TOL
from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Finding, Request, encode_records
from infdebug.store import Store
from infdebug.text.tokenizer import load_tokenizer
from infdebug.tracer.engine.checkpoint import load_checkpoint
from infdebug.tracer.engine.engine import Engine, EngineConfig, SamplingParams
from infdebug.tracer.engine.make_model import make_model
from infdebug.tracer.exporters import InMemoryExporter
from infdebug.tracer.tracer import ReplicaInfo, Tracer

NAME = "skew.logprobs"
DTYPES = {"r1": torch.float32, "r2": torch.float32, "r3": torch.float16}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """A 64-wide model runs as fast on one thread, and on a shared machine two threads that
    spin-wait for each other run it thirty times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_model(
        str(tmp_path_factory.mktemp("m") / "tiny"), preset="tiny", chat_format="llama3"
    )


def serve(
    model_dir: str, replica: str, dtype: torch.dtype, prompts: list[list[int]]
) -> list[Request]:
    """The prompts through one engine of ``dtype``, greedily, traced by the real tracer."""
    tok = load_tokenizer(model_dir)
    model, _ = load_checkpoint(model_dir, dtype=dtype)
    memory = InMemoryExporter()
    tracer = Tracer(ReplicaInfo(replica=replica, model="tiny"), [memory])
    eng = Engine(
        model,
        eos_ids=tok.eos_ids,
        decode_text=lambda ids: tok.decode(ids),
        config=EngineConfig(max_batch=8, max_model_len=256, trace_logprobs=True),
        hooks=tracer,
    )
    params = SamplingParams(max_tokens=24, temperature=0.0)  # no client asks for logprobs
    seqs = [eng.submit(p, params, lambda ev: None, f"{replica}-{i}") for i, p in enumerate(prompts)]
    while any(s.finish_reason is None for s in seqs):
        eng.step()
    assert tracer.force_flush(10_000)
    tracer.close()
    recs = sorted(memory.records, key=lambda r: int(r.request_id.rsplit("-", 1)[1]))
    assert [r.request_id for r in recs] == [s.request_id for s in seqs]
    for r in recs:
        assert r.output_ids and r.output_logprobs and len(r.output_logprobs) == len(r.output_ids)
    return recs


@pytest.fixture(scope="module")
def fleet(model_dir: str) -> list[Request]:
    rng = random.Random(0)
    prompts = [[rng.randrange(4, 1000) for _ in range(rng.randrange(8, 40))] for _ in range(24)]
    return [r for rep, dt in DTYPES.items() for r in serve(model_dir, rep, dt, prompts)]


def load(store: Store, tmp: Any, recs: list[Request]) -> None:
    path = os.path.join(str(tmp), "fleet.jsonl")
    with open(path, "wb") as f:
        f.write(encode_records(recs))
    rep = ingest_paths(store, [path], rejects_path=os.path.join(str(tmp), "rejects.jsonl"))
    assert rep.rejected == 0 and rep.rows["request"] == len(recs)


def analyze(store: Store, model_dir: str, **kw: Any) -> list[Finding]:
    ctx = AnalysisContext(store=store, options={"model_dir": model_dir}, **kw)
    found, failed = run_all(ctx, [NAME])
    assert failed == {}
    return found


def test_float16_replica_found_float32_ones_not(
    store: Store, tmp_path: Any, model_dir: str, fleet: list[Request]
) -> None:
    load(store, tmp_path, fleet)
    found = analyze(store, model_dir)
    assert [((f.scope or {}).get("replica"), f.severity) for f in found] == [("r3", "warning")]
    f = found[0]
    v = f.values or {}
    assert "logprobs" in v["flagged_by"] and v["requests"] == 24
    assert v["mean_abs_delta"] >= FP32_TOL
    assert v["mean_abs_delta"] >= FLEET_RATIO * v["fleet_median_mean_abs_delta"]
    assert v["fleet_median_mean_abs_delta"] < FP32_TOL / 10  # float32 agrees with float32
    assert v["greedy_requests"] == 24 and v["greedy_agreement"] is not None
    worst = (f.evidence or {})["largest_delta"]
    assert worst["request_id"].startswith("r3-") and worst["abs_delta"] == v["max_abs_delta"]
    # the float32 replicas alone: nothing
    assert analyze(store, model_dir, replicas=["r1", "r2"]) == []


def test_greedy_agreement_without_logged_logprobs(
    store: Store, tmp_path: Any, model_dir: str, fleet: list[Request]
) -> None:
    """Engines that log no logprobs: greedy agreement is what is left; float32 replicas take
    the float32 argmax at every position."""
    load(store, tmp_path, [msgspec.structs.replace(r, output_logprobs=None) for r in fleet])
    ctx = AnalysisContext(store=store, options={"model_dir": model_dir}, replicas=["r1", "r2"])
    assert run_all(ctx, [NAME]) == ([], {})
    from infdebug.analyzers.skew_numerics import _measure, rescorer
    from infdebug.store.q_skew import rescore_sample

    rows = rescore_sample(store, ctx.window(), "", 32)
    units = _measure(ctx, rescorer(model_dir, "cpu"), rows)
    assert {u.split("\x1f")[0]: s.agreement for u, s in units.items()} == {"r1": 1.0, "r2": 1.0}


def test_a_directory_without_weights_is_not_rescored(
    store: Store, tmp_path: Any, fleet: list[Request], model_dir: str
) -> None:
    load(store, tmp_path, fleet)
    tok_only = tmp_path / "tok"
    tok_only.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(model_dir, name), tok_only / name)
    assert analyze(store, str(tok_only)) == []


def test_another_checkpoint_is_a_fleet_wide_warning(
    store: Store, tmp_path: Any, fleet: list[Request]
) -> None:
    """Re-scored with other weights of the same shape and vocabulary: every replica departs
    alike, which no replica-vs-fleet comparison sees; the fleet-level finding does."""
    other = make_model(str(tmp_path / "other"), preset="tiny", chat_format="llama3", seed=1)
    load(store, tmp_path, [r for r in fleet if r.replica != "r3"])
    found = analyze(store, other)
    assert [(f.scope, f.severity) for f in found] == [(None, "warning")]
    v = found[0].values or {}
    assert v["median_mean_abs_delta"] > 0.1 and v["greedy_agreement"] < 0.9
    assert "not the checkpoint" in found[0].summary
