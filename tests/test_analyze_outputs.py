"""Output analyzers (stop-token drift, runaway generations, repetition) on records built here."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
import tokenizers
from conftest import make_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infdebug.analyzers.base import AnalysisContext, run_all
from infdebug.analyzers.output_drift import compare_rates, fisher_greater, holm
from infdebug.analyzers.repetition import tail_loop
from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Finding, Request, encode_records
from infdebug.store import Store
from infdebug.store.findings import store_findings
from infdebug.text.tokenizer import TokenizerBundle

EOS = 2
NAMES = ["stop", "repetition"]


def load(store: Store, tmp: Any, recs: list[Request], name: str = "log.jsonl") -> None:
    path = os.path.join(str(tmp), name)
    with open(path, "wb") as f:
        f.write(encode_records(list(recs)))
    rep = ingest_paths(store, [path], rejects_path=os.path.join(str(tmp), "rejects.jsonl"))
    assert rep.rejected == 0 and rep.rows["request"] == len(recs)


def analyze(store: Store, **kw: Any) -> list[Finding]:
    findings, failed = run_all(AnalysisContext(store=store, **kw), NAMES)
    assert failed == {}
    return findings


def fleet(
    n: int, *, replicas: int = 3, seed: int = 0, length_rate: float = 0.05, fault: Any = None
) -> list[Request]:
    """Random outputs (no EOS inside) ending in EOS unless they hit the length cap;
    ``fault(i, replica, output, finish)`` may rewrite one request's output and finish."""
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        rep = f"r{i % replicas}"
        out = [rng.randrange(10, 30000) for _ in range(rng.randrange(5, 60))]
        finish = "length" if rng.random() < length_rate else "stop"
        if finish == "stop":
            out.append(EOS)
        if fault is not None:
            out, finish = fault(i, rep, out, finish)
        recs.append(make_request(i, replica=rep, output_ids=out, finish_reason=finish))
    return recs


def bad(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity in ("warning", "error")]


# --- statistics -----------------------------------------------------------------------------


def test_fisher_matches_known_values() -> None:
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: one-sided p = 17/70.
    assert fisher_greater(3, 4, 1, 4) == pytest.approx(17 / 70)
    assert fisher_greater(0, 10, 5, 10) == 1.0
    assert fisher_greater(50, 100, 5, 100) < 1e-10


def test_holm_is_monotone_and_order_free() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    adj = holm(p)
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm(p[::-1]) == adj[::-1]


def test_compare_rates_needs_samples_and_effect() -> None:
    assert all(
        not t.flagged
        for t in compare_rates({"a": (5, 20), "b": (0, 20)}, min_diff=0.1, min_ratio=2)
    )
    tests = compare_rates(
        {"a": (60, 300), "b": (15, 300), "c": (14, 300)}, min_diff=0.1, min_ratio=2
    )
    assert [t.replica for t in tests if t.flagged] == ["a"]


# --- stop.end_of_turn_ignored ---------------------------------------------------------------


def test_eot_then_keeps_going_is_flagged_with_evidence(store: Store, tmp_path: Any) -> None:
    def fault(i: int, rep: str, out: list[int], finish: str) -> tuple[list[int], str]:
        if rep == "r1" and i % 9 == 1:  # r1 generates past EOS and hits the cap
            return [20] * 7 + [EOS] + [11, 12, 13, 14], "length"
        return out, finish

    load(store, tmp_path, fleet(900, fault=fault))
    found = [f for f in analyze(store) if f.kind == "stop.end_of_turn_ignored"]
    assert [(f.severity, (f.scope or {})["replica"]) for f in found] == [("error", "r1")]
    f = found[0]
    assert f.values and f.values["count"] == 100 and f.values["requests"] == 300
    ev = f.evidence or {}
    assert ev["request_ids"][:3] == ["req-1", "req-10", "req-19"] and len(ev["request_ids"]) == 10
    assert ev["eot_id"] == EOS and ev["first_eot_position"] == 7
    assert ev["stop_ids_in_force"] == [EOS] and ev["eot_in_stop_set"] is True
    assert ev["first_seen"] == pytest.approx(1_764_000_001.0)
    # r1's length rate is far above the rest of the fleet's, too.
    run = [f for f in analyze(store) if f.kind == "stop.runaway_rate"]
    assert [(f.scope or {})["replica"] for f in run] == ["r1"]


def test_single_occurrence_is_info_and_ignore_eos_is_not_counted(
    store: Store, tmp_path: Any
) -> None:
    recs = fleet(300)
    recs[4] = make_request(4, replica="r1", output_ids=[5, EOS, 6, 7], finish_reason="length")
    recs[7] = make_request(
        7,
        replica="r1",
        output_ids=[5, EOS, 6, 7],
        finish_reason="length",
        sampling={"stop_ids": [EOS], "ignore_eos": True},
    )
    load(store, tmp_path, recs)
    found = [f for f in analyze(store) if f.kind == "stop.end_of_turn_ignored"]
    assert [(f.severity, (f.evidence or {})["request_ids"]) for f in found] == [("info", ["req-4"])]


def test_eot_from_tokenizer_missing_from_stop_set(store: Store, tmp_path: Any) -> None:
    """The Qwen2 <|im_end|> case: the engine's stop set lacks the end-of-turn token."""
    vocab = {"[UNK]": 0, "<|endoftext|>": 1, "<|im_end|>": 151645 % 1000, "hello": 5}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    bundle = TokenizerBundle(
        tok=tok,
        bos_token=None,
        eos_token="<|endoftext|>",
        bos_id=None,
        eos_ids=[1],
        add_bos=False,
        chat_template=None,
        special_tokens={},
        source="test",
    )
    im_end = 151645 % 1000
    recs = [
        make_request(
            i,
            output_ids=[5, 5, im_end, 5, 5, 5],
            finish_reason="length",
            sampling={"stop_ids": [1]},
        )
        for i in range(30)
    ]
    load(store, tmp_path, recs)
    assert not [
        f for f in analyze(store) if f.kind == "stop.end_of_turn_ignored"
    ]  # unknown without it
    found = [f for f in analyze(store, tokenizer=bundle) if f.kind == "stop.end_of_turn_ignored"]
    assert {(f.scope or {})["replica"] for f in found} == {"r0", "r1", "r2"}
    ev = found[0].evidence or {}
    assert (
        ev["eot_id"] == im_end
        and ev["eot_piece"] == "<|im_end|>"
        and ev["eot_in_stop_set"] is False
    )
    assert ev["stop_ids_in_force"] == [1] and ev["first_eot_position"] == 2


def test_real_qwen2_vocabulary_im_end_missing_from_one_replicas_stop_set(
    store: Store, tmp_path: Any, shared_data: str
) -> None:
    """Qwen2's real vocabulary: <|im_end|> is 151645, <|endoftext|> 151643. Replica q2 was
    started with only <|endoftext|> as its stop set (the generation config's eos list not
    applied): its outputs run past <|im_end|> into a made-up next turn until the length cap."""
    from infdebug.text.tokenizer import load_tokenizer

    tok = load_tokenizer(os.path.join(shared_data, "tokenizers", "qwen2-1.5b-instruct-finetune"))
    im_end, eot = tok.tok.token_to_id("<|im_end|>"), tok.tok.token_to_id("<|endoftext|>")
    assert (im_end, eot) == (151645, 151643)
    answer = tok.encode("The answer is four.")
    runaway = [*answer, im_end, *tok.encode("\n<|im_start|>user\nAnd five?<|im_end|>\n")]
    recs = []
    for i in range(90):
        rep = f"q{i % 3}"
        if rep == "q2":
            recs.append(
                make_request(
                    i,
                    replica=rep,
                    model="qwen2",
                    output_ids=runaway,
                    finish_reason="length",
                    sampling={"stop_ids": [eot]},
                )
            )
        else:
            recs.append(
                make_request(
                    i,
                    replica=rep,
                    model="qwen2",
                    output_ids=[*answer, im_end],
                    finish_reason="stop",
                    sampling={"stop_ids": [im_end, eot]},
                )
            )
    load(store, tmp_path, recs)
    for reference in (
        None,
        tok,
    ):  # from the fleet's stop sets (2 of 3 hold 151645), or the tokenizer
        found = [f for f in analyze(store, tokenizer=reference) if f.severity != "info"]
        eot_f = [f for f in found if f.kind == "stop.end_of_turn_ignored"]
        assert [(f.scope or {})["replica"] for f in eot_f] == ["q2"], reference
        ev = eot_f[0].evidence or {}
        assert (
            ev["eot_id"] == 151645
            and ev["eot_in_stop_set"] is False
            and ev["stop_ids_in_force"] == [eot]
        )
        assert ev["first_eot_position"] == len(answer)
        if reference is not None:
            assert ev["eot_piece"] == "<|im_end|>"
        assert [(f.scope or {})["replica"] for f in found if f.kind == "stop.runaway_rate"] == [
            "q2"
        ]


def test_user_stop_token_is_not_end_of_turn(store: Store, tmp_path: Any) -> None:
    """One client's own stop token (newline 13) must not make every newline a finding."""
    recs = fleet(600)
    recs = [
        r
        if i % 50
        else make_request(i, replica=r.replica, output_ids=[13], sampling={"stop_ids": [EOS, 13]})
        for i, r in enumerate(recs)
    ]
    recs += [make_request(1000 + i, output_ids=[7, 13, 8, EOS]) for i in range(60)]
    load(store, tmp_path, recs)
    assert not bad(analyze(store))


# --- clean fleet ----------------------------------------------------------------------------


def test_clean_fleet_has_no_warning_or_error(store: Store, tmp_path: Any) -> None:
    load(store, tmp_path, fleet(4500, seed=3))
    findings = analyze(store)
    assert bad(findings) == []


# --- stop.runaway_rate ----------------------------------------------------------------------


def test_runaway_rate_real_difference_fires(store: Store, tmp_path: Any) -> None:
    def fault(i: int, rep: str, out: list[int], finish: str) -> tuple[list[int], str]:
        if rep == "r2" and i % 4 == 2:  # a quarter of r2's requests run to the cap, no EOS inside
            return [x for x in out if x != EOS], "length"
        return out, finish

    load(store, tmp_path, fleet(1500, fault=fault))
    found = [f for f in analyze(store) if f.kind == "stop.runaway_rate"]
    assert [(f.scope or {})["replica"] for f in found] == ["r2"]
    v = found[0].values or {}
    assert v["rate"] > 0.2 and v["rest_rate"] < 0.1 and v["p_holm"] < 1e-6
    assert v["requests"] == 500 and v["rest_requests"] == 1000 and v["z"] > 5


def test_runaway_rate_small_difference_does_not_fire(store: Store, tmp_path: Any) -> None:
    def fault(i: int, rep: str, out: list[int], finish: str) -> tuple[list[int], str]:
        if rep == "r2" and i % 25 == 2:  # +4 points on r2
            return [x for x in out if x != EOS], "length"
        return out, finish

    load(store, tmp_path, fleet(3000, fault=fault))
    assert [f for f in analyze(store) if f.kind == "stop.runaway_rate"] == []


# --- output.repetition ----------------------------------------------------------------------


def test_tail_loop() -> None:
    assert tail_loop([1, 2, 3] + [13] * 10) is not None
    lp = tail_loop([1, 2, 3] + [13] * 10)
    assert lp is not None and (lp.ids, lp.period, lp.repeats) == ([13], 1, 10)
    lp = tail_loop([9] + [4, 5, 6] * 12 + [EOS])
    assert lp is not None and (lp.ids, lp.period, lp.repeats) == ([4, 5, 6], 3, 12)
    assert tail_loop([1, 2, 3] + [13] * 9) is None
    assert tail_loop(list(range(9)) * 12) is None  # period 9 is not short
    assert tail_loop([]) is None


def test_repetition_flags_the_looping_replica(store: Store, tmp_path: Any) -> None:
    def fault(i: int, rep: str, out: list[int], finish: str) -> tuple[list[int], str]:
        if rep == "r0" and i % 12 == 0:
            return out[:5] + [7, 8] * 20, "length"
        if rep == "r1" and i == 1:  # one loop elsewhere: info at most
            return out[:5] + [13] * 10, "length"
        return out, finish

    load(store, tmp_path, fleet(1200, fault=fault))
    found = [f for f in analyze(store) if f.kind == "output.repetition"]
    by = {(f.scope or {})["replica"]: f for f in found}
    assert set(by) == {"r0", "r1"}
    assert by["r1"].severity == "info"
    f = by["r0"]
    assert f.severity == "error" and f.values and f.values["count"] == 100
    ev = f.evidence or {}
    assert (
        ev["loop_ids"] == [7, 8]
        and ev["period"] == 2
        and ev["request_ids"][:2] == ["req-0", "req-12"]
    )
    assert ev["examples"][0]["repeats"] == 20


@pytest.mark.parametrize(
    ("looping", "expected"),
    [
        (
            {"r0": 4, "r1": 3, "r2": 3},
            {"r0": "info", "r1": "info", "r2": "info"},
        ),  # the model's own loops
        ({"r0": 6, "r1": 0, "r2": 0}, {"r0": "error"}),  # one replica loops, the others never
    ],
    ids=["alike", "one-replica"],
)
def test_repetition_on_a_small_fleet_compares_descriptively(
    store: Store, tmp_path: Any, looping: dict[str, int], expected: dict[str, str]
) -> None:
    """29 requests per replica: too few for the Fisher test, yet the rest of the fleet says
    whether the loops are the model's (alike, 10-14 %: info) or one replica's (21 %: error).
    (This fleet had 8 requests a replica looping on 4 — 50 % — "alike", after a random-weight
    demo model; a rate that high is no model's own behaviour and is now at least a warning:
    test_a_fleet_wide_loop_rate_is_judged_in_absolute_terms.)"""

    def fault(i: int, rep: str, out: list[int], finish: str) -> tuple[list[int], str]:
        return (out[:5] + [9] * 12, "length") if i // 3 < looping[rep] else (out, finish)

    load(store, tmp_path, fleet(87, fault=fault))
    found = {
        (f.scope or {})["replica"]: f.severity
        for f in analyze(store)
        if f.kind == "output.repetition"
    }
    assert found == expected


@pytest.mark.parametrize(
    ("every", "expected"),
    [(33, "info"), (3, "warning"), (1, "error")],
    ids=["3%-healthy", "33%", "every-output"],
)
def test_a_fleet_wide_loop_rate_is_judged_in_absolute_terms(
    store: Store, tmp_path: Any, every: int, expected: str
) -> None:
    """Every replica loops alike, so no replica stands out; the shared rate decides. A few
    percent is a healthy model's own behaviour (info); a third of the outputs is a warning;
    every output collapsing into one repeated token — a known vLLM failure, and shared by the
    whole fleet by construction — is an error, not info."""

    def fault(i: int, rep: str, out: list[int], finish: str) -> tuple[list[int], str]:
        return (out[:2] + [13] * 40, "length") if (i // 3) % every == 0 else (out, finish)

    load(store, tmp_path, fleet(900, fault=fault))
    found = [f for f in analyze(store) if f.kind == "output.repetition"]
    assert {(f.scope or {})["replica"]: f.severity for f in found} == {
        "r0": expected,
        "r1": expected,
        "r2": expected,
    }
    v = found[0].values or {}
    assert (
        v["fleet_loop_rate"] == pytest.approx(1 / every, abs=0.01)
        and v["candidates_capped"] is False
    )
    assert all((f.evidence or {})["loop_ids"] == [13] for f in found)
    if expected != "info":
        assert "no healthy model" in found[0].summary


def test_capped_candidates_are_extrapolated() -> None:
    """Past the cap on candidates examined, the loop count is estimated from the examined
    share: a replica whose every output loops reads as every output, not 2,000 of them."""
    from infdebug.analyzers.repetition import _count
    from infdebug.store.q_outputs import RepetitionCandidates

    cands = [(f"req-{i}", float(i), [13] * 12) for i in range(2000)]
    assert _count(RepetitionCandidates("r0", 10_000, cands, True, 10_000), 2000) == 10_000
    assert _count(RepetitionCandidates("r0", 10_000, cands, True, 4000), 1000) == 2000
    assert _count(RepetitionCandidates("r0", 10_000, cands, False, 2000), 37) == 37


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        ({"max_tokens": 1024, "stop_ids": [EOS]}, ["warning"]),
        ({"max_tokens": 16, "stop_ids": [EOS]}, []),  # a tiny cap: hitting it says nothing
        ({"max_tokens": 1024, "stop_ids": [EOS], "ignore_eos": True}, []),
    ],  # a benchmark, by design
    ids=["roomy", "tiny-cap", "ignore-eos"],
)
def test_a_fleet_wide_runaway_rate_is_a_warning(
    store: Store, tmp_path: Any, sampling: dict[str, Any], expected: list[str]
) -> None:
    """Every replica runs to the length cap on ~70 % of requests: no replica stands out, yet a
    fleet that does not end its turns with room to is a warning — unless the cap was tiny or
    the requests asked to ignore EOS."""
    recs = [
        make_request(
            i,
            **{
                **{f: getattr(r, f) for f in r.__struct_fields__ if f not in ("kind", "v")},
                "sampling": sampling,
            },
        )
        for i, r in enumerate(fleet(600, length_rate=0.7))
    ]
    load(store, tmp_path, recs)
    found = [f for f in analyze(store) if f.kind == "stop.runaway_rate"]
    assert [f.severity for f in found] == expected
    if found:
        f = found[0]
        assert "replica" not in (f.scope or {}) and f.values is not None and f.evidence is not None
        assert (
            0.6 < f.values["rate"] < 0.8
            and f.values["requests"] == 600
            and f.values["min_max_tokens"] == 512
        )
        assert f.evidence["replicas_over_threshold"] == [
            "r0 (stable)",
            "r1 (stable)",
            "r2 (stable)",
        ]
        assert len(f.evidence["request_ids"]) == 10


def test_a_fleet_wide_runaway_rate_a_healthy_model_reaches_is_nothing(
    store: Store, tmp_path: Any
) -> None:
    recs = [
        make_request(
            i,
            **{
                **{f: getattr(r, f) for f in r.__struct_fields__ if f not in ("kind", "v")},
                "sampling": {"max_tokens": 1024, "stop_ids": [EOS]},
            },
        )
        for i, r in enumerate(fleet(600, length_rate=0.2))
    ]
    load(store, tmp_path, recs)
    assert [f for f in analyze(store) if f.kind == "stop.runaway_rate"] == []


def test_findings_are_stored(store: Store, tmp_path: Any) -> None:
    recs = fleet(
        300,
        fault=lambda i, rep, out, fin: (out + [13] * 12, "length") if rep == "r0" else (out, fin),
    )
    load(store, tmp_path, recs)
    findings = analyze(store)
    assert store_findings(store, findings) == len(findings) > 0
    _, rows = store.query(
        "SELECT kind, severity, JSONExtractString(scope, 'replica') FROM findings ORDER BY kind"
    )
    assert ("output.repetition", "error", "r0") in rows


# --- invariance -----------------------------------------------------------------------------


def _normal(findings: list[Finding], rename: dict[str, str]) -> list[tuple[Any, ...]]:
    back = {v: k for k, v in rename.items()}
    out = []
    for f in findings:
        rep = (f.scope or {}).get("replica")
        out.append((f.kind, f.severity, back.get(rep, rep), repr(f.values), repr(f.evidence)))
    return sorted(out)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    replicas=st.integers(2, 4),
    faults=st.lists(st.sampled_from(["eot", "loop", "runaway", "none"]), min_size=4, max_size=4),
    data=st.data(),
)
def test_same_findings_with_replicas_renamed_or_reordered(
    store: Store, tmp_path: Any, seed: int, replicas: int, faults: list[str], data: Any
) -> None:
    def fault(i: int, rep: str, out: list[int], finish: str) -> tuple[list[int], str]:
        kind = faults[int(rep[1:])]
        if i % 5 == 0 and kind == "eot":
            return out[:3] + [EOS, 9, 9], "length"
        if i % 5 == 0 and kind == "loop":
            return out[:3] + [13] * 11, "length"
        if i % 3 == 0 and kind == "runaway":
            return [x for x in out if x != EOS], "length"
        return out, finish

    recs = fleet(replicas * 40, replicas=replicas, seed=seed, fault=fault)
    names = [f"r{k}" for k in range(replicas)]
    new = data.draw(st.permutations([f"pod-{k}" for k in range(replicas)]))
    rename = dict(zip(names, new, strict=True))
    shuffled = [
        Request(**{**{f: getattr(r, f) for f in r.__struct_fields__}, "replica": rename[r.replica]})
        for r in recs
    ]
    random.Random(seed).shuffle(shuffled)
    results = []
    for k, batch in enumerate((recs, shuffled)):
        store.command("TRUNCATE TABLE requests")
        store.command("TRUNCATE TABLE ingest_state")
        load(store, tmp_path, batch, name=f"log-{seed}-{k}.jsonl")
        results.append(analyze(store))
    assert _normal(results[0], {}) == _normal(results[1], rename)


def test_a_whole_canary_deployment_running_away_is_found_at_deployment_level(
    store: Store, tmp_path: Any
) -> None:
    """Five canary replicas all run to the length cap on 40% of requests, four baseline ones on
    5%: against the rest pooled (its four siblings included) no canary replica stands out
    2×, so only deployment against deployment finds it."""
    rng = random.Random(5)
    recs = []
    for i in range(1800):
        canary = i % 9 < 5
        rep, dep = (f"c{i % 9}", "canary") if canary else (f"b{i % 9}", "baseline")
        length = rng.random() < (0.40 if canary else 0.05)
        out = [rng.randrange(10, 30000) for _ in range(rng.randrange(5, 40))] + (
            [] if length else [EOS]
        )
        recs.append(
            make_request(
                i,
                replica=rep,
                deployment=dep,
                output_ids=out,
                finish_reason="length" if length else "stop",
            )
        )
    load(store, tmp_path, recs)
    found = [f for f in analyze(store) if f.kind == "stop.runaway_rate"]
    assert [(f.scope or {}).get("deployment") for f in found] == ["canary"]
    assert "replica" not in (found[0].scope or {}) and found[0].severity == "error"  # 37% vs 5%
    assert found[0].values is not None and len(found[0].values["replicas"]) == 5
    assert found[0].evidence is not None and found[0].evidence["request_ids"]
