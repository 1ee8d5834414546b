"""``replica.output_divergence`` on generated fleets with known truth, in a real chDB store:
every replica answers the same greedy prompts; the ones made to diverge are found at the
position they were made to diverge at, a clean fleet gives nothing, rare late divergences
(the batch-shape noise of engines that are not batch-invariant) stay info, and the result
does not depend on what the replicas are called or the order their records arrive in."""

from __future__ import annotations

import os
import random
from typing import Any

import msgspec
import pytest
import tokenizers
from conftest import make_request

from infdebug.analyzers.base import AnalysisContext, run_all
from infdebug.analyzers.output_divergence import WARN_SHARE, first_difference
from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Finding, Request, encode_records
from infdebug.store import Store, open_store
from infdebug.text.tokenizer import TokenizerBundle

NAME = "replica.output_divergence"
EOS = 2
T0 = 1_765_000_000.0


def tokenizer() -> TokenizerBundle:
    vocab = {f"t{i}": i for i in range(1000)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    return TokenizerBundle(
        tok=tok,
        bos_token="t1",
        eos_token="t2",
        bos_id=1,
        eos_ids=[EOS],
        add_bos=False,
        chat_template=None,
        special_tokens={},
        source="test",
    )


def fleet(
    replicas: list[str],
    prompts: int,
    *,
    seed: int = 0,
    diverge: dict[str, dict[int, int]] | None = None,
    deployments: dict[str, str] | None = None,
    sampling: dict[str, Any] | None = None,
    logprobs: bool = True,
) -> list[Request]:
    """Every replica answers prompts 0..prompts-1 greedily with the same output, except
    ``diverge[replica][prompt] = position``: from there on, that replica's own tokens."""
    rng = random.Random(seed)
    recs: list[Request] = []
    for k in range(prompts):
        prompt = [1] + [rng.randrange(10, 1000) for _ in range(rng.randrange(8, 30))]
        out = [rng.randrange(10, 1000) for _ in range(rng.randrange(20, 60))] + [EOS]
        lps = [round(-rng.random() * 2, 4) for _ in out]
        at = {rep: d[k] for rep, d in (diverge or {}).items() if k in d}
        for pos in at.values():
            lps[pos] = -0.69  # a near-tie where the outputs part
        for j, rep in enumerate(replicas):
            o, lp = list(out), list(lps)
            pos = at.get(rep)
            if pos is not None:  # every replica that diverges here takes the same other way
                alt = random.Random(f"{seed}-{k}-{pos}")
                o = out[:pos] + [10 + (out[pos] - 10 + 1 + alt.randrange(900)) % 990]
                o += [alt.randrange(10, 1000) for _ in range(len(out) - pos - 2)] + [EOS]
                lp = lps[:pos] + [-0.70] + [round(-alt.random() * 2, 4) for _ in o[pos + 1 :]]
            recs.append(
                make_request(
                    0,
                    request_id=f"{rep}-{seed}-{k}",
                    replica=rep,
                    deployment=(deployments or {}).get(rep, "prod"),
                    t_arrival=T0 + 10 * k + j + seed * 100_000,
                    prompt_ids=prompt,
                    output_ids=o,
                    output_logprobs=lp if logprobs else None,
                    sampling=sampling or {"temperature": 0.0, "max_tokens": 64, "stop_ids": [EOS]},
                )
            )
    return recs


def load(store: Store, tmp: Any, recs: list[Request], name: str = "fleet.jsonl") -> None:
    path = os.path.join(str(tmp), name)
    with open(path, "wb") as f:
        f.write(encode_records(list(recs)))
    rep = ingest_paths(store, [path], rejects_path=os.path.join(str(tmp), "rejects.jsonl"))
    assert rep.rejected == 0 and rep.rows["request"] == len(recs)


def analyze(store: Store, **kw: Any) -> list[Finding]:
    found, failed = run_all(AnalysisContext(store=store, **kw), [NAME])
    assert failed == {}
    return found


def scope(f: Finding) -> tuple[str | None, str | None]:
    s = f.scope or {}
    return s.get("replica"), s.get("deployment")


def test_first_difference() -> None:
    assert first_difference([1, 2, 3], [1, 2, 4]) == 2
    assert first_difference([1, 2, 3], [1, 2]) is None  # a prefix: a shorter cap
    assert first_difference([], [1]) is None
    assert first_difference([5], [6]) == 0


def test_divergent_replica_found_at_its_first_position(store: Store, tmp_path: Any) -> None:
    reps = [f"r{i}" for i in range(5)]
    div = {k: 3 + k % 5 for k in range(0, 60, 3)}  # 20 of 60 prompts
    recs = fleet(reps, 60, diverge={"r3": div})
    load(store, tmp_path, recs)
    found = analyze(store, tokenizer=tokenizer())
    assert [(f.severity, scope(f)) for f in found] == [("warning", ("r3", "prod"))]
    f = found[0]
    assert f.values is not None and f.evidence is not None
    assert (f.values["diverging"], f.values["decided"], f.values["groups_compared"]) == (20, 60, 60)
    assert f.values["pairs"] == 60 * 4 and f.values["pairs_agree"] == 40 * 4
    assert f.values["rest_diverging"] == 0
    first = f.evidence["first_divergence"]
    mine = next(r for r in recs if r.request_id == "r3-0-0")
    other = next(r for r in recs if r.request_id == first["other_request_id"])
    assert first["request_id"] == "r3-0-0" and first["position"] == 3 == div[0]
    assert other.replica != "r3" and other.request_id == "r0-0-0"  # the earliest of the rest
    assert mine.output_ids is not None and other.output_ids is not None
    assert first["id"] == mine.output_ids[3] and first["other_id"] == other.output_ids[3]
    assert first["piece"] == f"t{first['id']}" and first["other_piece"] == f"t{first['other_id']}"
    assert first["logprob"] == -0.70 and first["other_logprob"] == -0.69
    assert first["logprob_gap"] == pytest.approx(0.01)
    assert f.values["first_position_min"] == 3 and f.values["logged_logprobs"] == 20
    assert "position 3" in f.summary and f"t{first['id']}" in f.summary
    assert sorted(f.evidence["request_ids"]) == sorted(f"r3-0-{k}" for k in sorted(div)[:10])


def test_clean_fleet_sampled_requests_and_shorter_caps_give_nothing(
    store: Store, tmp_path: Any
) -> None:
    reps = ["r0", "r1", "r2"]
    recs = fleet(reps, 40)
    # the same prompts sampled (no seed): outputs differ, and nothing says they should not
    sampled = fleet(
        reps,
        40,
        seed=1,
        diverge={"r1": {k: 0 for k in range(40)}},
        sampling={"temperature": 0.7, "max_tokens": 64},
    )
    # a client with a smaller cap: r2's outputs are prefixes of the others'
    capped = [
        msgspec.structs.replace(
            r,
            output_ids=(r.output_ids or [])[:5],
            output_logprobs=(r.output_logprobs or [])[:5],
            finish_reason="length",
        )
        if r.replica == "r2"
        else r
        for r in fleet(reps, 40, seed=2)
    ]
    load(store, tmp_path, recs + sampled + capped)
    assert analyze(store) == []


def test_same_seed_is_compared_other_seeds_are_not(store: Store, tmp_path: Any) -> None:
    reps = ["r0", "r1", "r2", "r3"]
    div = {"r2": {k: 1 for k in range(30)}}
    same = fleet(reps, 30, diverge=div, sampling={"temperature": 0.8, "seed": 7, "top_p": 0.9})
    load(store, tmp_path, same, "same.jsonl")
    found = analyze(store)
    assert [(f.severity, scope(f)) for f in found] == [("error", ("r2", "prod"))]
    other = [
        msgspec.structs.replace(r, sampling={"temperature": 0.8, "seed": i, "top_p": 0.9})
        for i, r in enumerate(fleet(reps, 30, seed=5, diverge=div))
    ]
    st = open_store(home=str(tmp_path / "other"))
    try:
        load(st, tmp_path, other, "other.jsonl")
        assert analyze(st) == []
    finally:
        st.close()


def test_rare_late_divergences_are_info_and_no_warning_across_seeds(
    store: Store, tmp_path: Any
) -> None:
    """The batch noise of a real engine: here and there a late flip on any replica. 30 fleets
    of 6 replicas and 60 greedy prompts, 2 of them flipping late on a random replica: at most
    an info finding, never a warning, never a replica named."""
    reps = [f"r{i}" for i in range(6)]
    recs: list[Request] = []
    for seed in range(30):
        rng = random.Random(seed)
        div: dict[str, dict[int, int]] = {}
        for k in rng.sample(range(60), 2):
            div.setdefault(f"r{rng.randrange(6)}", {})[k] = 15 + rng.randrange(5)
        recs += [
            msgspec.structs.replace(r, replica=f"s{seed}{r.replica}")
            for r in fleet(reps, 60, seed=seed, diverge=div)
        ]
    load(store, tmp_path, recs)
    for seed in range(30):
        found = analyze(store, replicas=[f"s{seed}{r}" for r in reps])
        assert [(f.severity, scope(f)) for f in found] == [("info", (None, "prod"))], seed
        assert found[0].values is not None
        assert found[0].values["share"] < WARN_SHARE
        assert found[0].values["first_position_min"] >= 15
        assert "batch-invariant" in found[0].summary


def test_two_replicas_are_named_as_a_pair(store: Store, tmp_path: Any) -> None:
    recs = fleet(["a", "b"], 40, diverge={"b": {k: 2 for k in range(0, 40, 4)}})
    load(store, tmp_path, recs)
    found = analyze(store)
    assert [(f.severity, scope(f)) for f in found] == [("warning", (None, "prod"))]
    assert "between a (prod) and b (prod)" in found[0].summary
    assert found[0].values is not None and found[0].values["diverging_groups"] == 10


def test_canary_deployment_that_diverges_from_baseline(store: Store, tmp_path: Any) -> None:
    """Replica names are reused across deployments; the canary's two replicas answer alike
    and unlike the baseline's three."""
    reps = ["r0", "r1", "r2", "c0", "c1"]
    div = {k: 4 for k in range(0, 40, 2)}
    canary = {"c0": "canary", "c1": "canary"}
    recs = fleet(reps, 40, diverge={"c0": div, "c1": div}, deployments=canary)
    recs = [msgspec.structs.replace(r, replica=r.replica.replace("c", "r")) for r in recs]
    load(store, tmp_path, recs)
    found = analyze(store)
    assert sorted((f.severity, scope(f)) for f in found) == [
        ("error", ("r0", "canary")),  # half the prompts: an error
        ("error", ("r1", "canary")),
    ]


def _key(f: Finding, back: dict[str, str]) -> tuple[Any, ...]:
    rep, dep = scope(f)
    v = dict(f.values or {})
    first = (f.evidence or {}).get("first_divergence", {})
    return (
        f.severity,
        back.get(rep or "", rep),
        dep,
        v.get("diverging"),
        v.get("decided"),
        v.get("share"),
        v.get("pairs_agree"),
        first.get("position"),
        first.get("id"),
    )


def test_invariant_to_replica_names_and_order(tmp_path: Any) -> None:
    reps = [f"r{i}" for i in range(5)]
    recs = fleet(
        reps, 30, diverge={"r1": {k: k % 7 for k in range(0, 30, 2)}}, deployments={"r4": "canary"}
    )
    results = []
    for trial, mapping in enumerate(
        [{r: r for r in reps}, {"r0": "zz", "r1": "aa", "r2": "mm", "r3": "r1", "r4": "r0"}]
    ):
        mine = [msgspec.structs.replace(r, replica=mapping[r.replica]) for r in recs]
        random.Random(trial).shuffle(mine)
        back = {v: k for k, v in mapping.items()}
        st = open_store(home=str(tmp_path / f"h{trial}"))
        try:
            load(st, tmp_path, mine, f"f{trial}.jsonl")
            results.append(sorted(_key(f, back) for f in analyze(st)))
        finally:
            st.close()
    assert results[0] == results[1]
    assert [(k[0], k[1]) for k in results[0]] == [("error", "r1")]
