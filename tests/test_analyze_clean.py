"""No false alarms: on a clean fleet (no injections, thousands of requests, one model's
single version, every conversation shape its template renders) ``infdebug analyze`` reports
no warning or error — with and without the reference tokenizer and template, in process and
through the real CLI. And the same fleet with one fault knob turned on one replica IS found
there, so the clean result cannot pass vacuously.

The fleets come from ``fleetlogs``: the real Llama-3 tokenizer and Llama-3.1 chat template
(../shared/data). The tests at the end pin analyzer bugs found this way, since fixed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
from conftest import SHARED_DATA
from fleetlogs import (
    FAULTS,
    FleetSpec,
    Replica,
    conversation,
    decode,
    default_replicas,
    generate,
    llama31,
    qwen25,
    write_jsonl,
)

from infdebug.analyzers.base import AnalysisContext, run_all
from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Finding, Request
from infdebug.store import Store
from infdebug.text.tokenizer import encode_prompt

pytestmark = pytest.mark.skipif(
    not os.path.isdir(SHARED_DATA), reason=f"real data folder {SHARED_DATA} is absent"
)

CLEAN = FleetSpec(default_replicas(6, canary=2), 3600, seed=2024, natural_loop_rate=0.004)


@pytest.fixture(scope="module")
def clean() -> list[Request]:
    return generate(CLEAN, SHARED_DATA)


def load(store: Store, tmp: Any, recs: list[Request], name: str = "fleet.jsonl") -> str:
    path = write_jsonl(os.path.join(str(tmp), name), recs)
    rep = ingest_paths(store, [path], rejects_path=os.path.join(str(tmp), "rejects.jsonl"))
    assert rep.rejected == 0 and not rep.errors and rep.rows["request"] == len(recs)
    return path


def analyze(store: Store, reference: bool, **options: Any) -> list[Finding]:
    m = llama31(SHARED_DATA)
    kw: dict[str, Any] = {"tokenizer": m.tok, "template": m.template} if reference else {}
    found, failed = run_all(AnalysisContext(store=store, options=options, **kw))
    assert failed == {}
    return found


def alarms(found: list[Finding]) -> list[tuple[str, str, Any]]:
    return sorted(
        ((f.kind, f.severity, f.scope) for f in found if f.severity in ("warning", "error")),
        key=repr,
    )


def named(found: list[Finding], replica: str) -> set[str]:
    """Kinds of the warnings and errors whose scope names ``replica``."""
    return {
        f.kind for f in found if f.severity != "info" and (f.scope or {}).get("replica") == replica
    }


def shape(msgs: list[dict[str, Any]]) -> str:
    return ",".join(m["role"] for m in msgs)


# --- the clean fleet is what a correct engine logs -----------------------------------------


def test_the_clean_fleet_is_realistic_and_consistent(clean: list[Request]) -> None:
    m = llama31(SHARED_DATA)
    assert len(clean) == 3600 and len({r.request_id for r in clean}) == 3600
    assert {(r.replica, r.deployment) for r in clean} == {
        (x.name, x.deployment) for x in CLEAN.replicas
    }
    assert {r.deployment for r in clean} == {"stable", "canary"}
    shapes = Counter(shape(r.messages or []) for r in clean)
    assert {
        "user",
        "system,user",
        "user,assistant,user",
        "system,user,assistant,user",
        "user,assistant,tool",
    } <= set(shapes)
    assert min(shapes.values()) > 100
    finish = Counter(r.finish_reason for r in clean)
    assert 0.03 < finish["length"] / len(clean) < 0.25 and finish["stop"] + finish["length"] == len(
        clean
    )
    assert {r.tokenizer_fp for r in clean} == {m.tok.fingerprint} and {
        r.template_fp for r in clean
    } == {m.template_fp}
    assert len({r.prompt_text for r in clean}) > 300  # prompts repeat across replicas, and vary
    for r in clean[::37]:
        assert r.prompt_text is not None and r.output_ids and r.sampling
        assert r.prompt_ids == encode_prompt(m.tok, r.prompt_text) and r.prompt_ids[:2] == [
            128000,
            128006,
        ]
        stop_ids = r.sampling["stop_ids"]
        assert {128001, 128008, 128009} <= set(stop_ids) and r.sampling["max_tokens"] >= len(
            r.output_ids
        )
        if r.finish_reason == "stop":
            assert r.output_ids[-1] in stop_ids and not set(r.output_ids[:-1]) & set(stop_ids)
        else:
            assert len(r.output_ids) == r.sampling["max_tokens"] and 128009 not in r.output_ids
        cut = r.output_ids[:-1] if r.finish_reason == "stop" else r.output_ids
        assert r.output_text == decode(m, cut).rstrip("\ufffd")
        assert (
            len(r.token_times_s or []) == len(r.output_ids)
            and r.ttft_s is not None
            and r.ttft_s <= r.e2e_s
        )


def test_generation_is_deterministic_by_seed() -> None:
    spec = FleetSpec(default_replicas(4), 200, seed=5, faults={"r1": "repetition"})
    a, b = generate(spec, SHARED_DATA), generate(spec, SHARED_DATA)
    assert a == b
    assert generate(FleetSpec(default_replicas(4), 200, seed=6), SHARED_DATA) != a


# --- no false alarms --------------------------------------------------------------------------


def test_clean_fleet_has_no_warning_or_error(
    store: Store, tmp_path: Any, clean: list[Request]
) -> None:
    load(store, tmp_path, clean)
    without = analyze(store, reference=False)
    assert alarms(without) == []
    with_ref = analyze(store, reference=True)
    assert alarms(with_ref) == []
    # the rare natural loop shared by the whole fleet is reported, as info only
    assert [f for f in without if f.kind == "output.repetition"]


def test_clean_fleet_through_the_cli_exits_0(tmp_path: Any, clean: list[Request]) -> None:
    path = write_jsonl(str(tmp_path / "fleet.jsonl"), clean)
    script = os.path.join(
        os.path.dirname(sys.executable), "infdebug"
    )  # the installed console script
    exe = (
        [script]
        if os.path.isfile(script)
        else [sys.executable, "-c", "from infdebug.cli import main; main()"]
    )
    cmd = [
        *exe,
        "--home",
        str(tmp_path / "home"),
        "analyze",
        path,
        "--json",
        "--tokenizer",
        os.path.join(SHARED_DATA, "tokenizers", "llama3"),
        "--template",
        os.path.join(SHARED_DATA, "templates", "llama3.1.jinja"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["requests"] == len(clean) and "failed" not in doc
    assert [f for f in doc["findings"] if f["severity"] in ("warning", "error")] == []


# --- …and each fault on one replica is found there ----------------------------------------

# knob → (kinds that must name the replica without a reference, and with one)
EXPECTED: dict[str, tuple[set[str], set[str]]] = {
    "double_bos": ({"template.double_bos", "tokenizer.cross_replica_ids"},) * 2,
    "other_template": (
        {"template.fingerprint_mismatch"},
        {"template.fingerprint_mismatch", "template.render_mismatch"},
    ),
    "other_tokenizer": ({"tokenizer.fingerprint_mismatch"},) * 2,
    "eot_ignored": ({"stop.end_of_turn_ignored", "stop.runaway_rate"},) * 2,
    "repetition": ({"output.repetition"},) * 2,
    "decode_mismatch": (set(), {"tokenizer.decode_mismatch"}),
}
# a doubled BOS also makes the same prompt text other IDs than elsewhere (on its replica)


def _faulty(knob: str, victim: str, seed: int = 7, n: int = 1200) -> list[Request]:
    return generate(
        FleetSpec(default_replicas(6, canary=2), n, seed=seed, faults={victim: knob}), SHARED_DATA
    )


# (knob, victim, seed, reference) → the findings on that faulty fleet: the same fleet gives the
# same findings (test_analyze_invariance.py), so a fleet two tests look at is analysed once
_FOUND: dict[tuple[str, str, int, bool], list[Finding]] = {}


def faulty_found(
    store: Store, tmp: Any, knob: str, victim: str, reference: bool, seed: int = 7
) -> list[Finding]:
    """The findings on ``_faulty(knob, victim, seed)``, loaded into ``store`` (a test's own,
    holding this fleet or nothing) where they are not known yet."""
    key = (knob, victim, seed, reference)
    if key not in _FOUND:
        _, rows = store.query("SELECT count() FROM requests")
        if rows[0][0] == 0:
            load(store, tmp, _faulty(knob, victim, seed))
        _FOUND[key] = analyze(store, reference)
    return _FOUND[key]


@pytest.mark.parametrize("knob", FAULTS)
def test_each_fault_on_one_replica_is_found_there(store: Store, tmp_path: Any, knob: str) -> None:
    victim = "r4" if FAULTS.index(knob) % 2 else "r1"  # a canary replica or a stable one
    deployment = "canary" if victim == "r4" else "stable"
    for reference, expected in zip((False, True), EXPECTED[knob], strict=True):
        found = faulty_found(store, tmp_path, knob, victim, reference)
        assert expected <= named(found, victim), (reference, alarms(found))
        for f in found:
            if f.severity == "info":
                continue
            scope = f.scope or {}
            # on the victim, or (template.new_skeleton) on its deployment as a whole
            assert scope.get("replica") == victim or (
                scope.get("replica") is None and scope.get("deployment") == deployment
            ), (reference, f.kind, scope, f.summary)
    if knob == "other_template":  # one replica of the canary: named on its own, not the deployment
        sk = [f for f in found if f.kind == "template.new_skeleton"]
        assert [(f.scope or {}).get("replica") for f in sk] == [victim]


# --- analyzer bugs these fleets found (fixed; kept as regression tests) ---------------------


def test_double_bos_blames_no_healthy_replica(store: Store, tmp_path: Any) -> None:
    found = [
        f
        for f in faulty_found(store, tmp_path, "double_bos", "r4", reference=False, seed=5)
        if f.kind == "tokenizer.cross_replica_ids"
    ]
    assert {(f.scope or {}).get("replica") for f in found} == {"r4"}


def test_cross_replica_example_names_the_replica_that_served_it(
    store: Store, tmp_path: Any
) -> None:
    recs = _faulty("double_bos", "r4", seed=5)
    served = {r.request_id: f"{r.replica} ({r.deployment})" for r in recs}
    sides = [
        ex[side]
        for f in faulty_found(store, tmp_path, "double_bos", "r4", reference=False, seed=5)
        if f.kind == "tokenizer.cross_replica_ids"
        for ex in [(f.evidence or {}).get("example") or {}]
        for side in ("this", "reference")
        if side in ex
    ]
    assert len(sides) >= 2
    assert [
        (s["replica"], served[s["request_id"]])
        for s in sides
        if s["replica"] != served[s["request_id"]]
    ] == []


def test_one_replica_on_another_template_is_named(store: Store, tmp_path: Any) -> None:
    found = [
        f
        for f in faulty_found(store, tmp_path, "other_template", "r4", reference=False)
        if f.kind == "template.new_skeleton"
    ]
    assert [(f.scope or {}).get("replica") for f in found] == ["r4"]


def _tool_calls_to(conv: int) -> str | None:
    msgs = conversation(conv)
    calls = [m["tool_calls"][0]["function"]["arguments"] for m in msgs if m.get("tool_calls")]
    return json.dumps(calls[0], sort_keys=True) if calls else None


def test_tool_call_arguments_are_not_a_new_template(store: Store, tmp_path: Any) -> None:
    convs = range(400)
    args = Counter(a for a in map(_tool_calls_to, convs) if a is not None)
    tenant = args.most_common(1)[0][
        0
    ]  # the canary's tenant always asks about one city, in one unit
    canary = [c for c in convs if _tool_calls_to(c) == tenant] * 40 + [
        c for c in convs if _tool_calls_to(c) is None
    ]
    stable = [c for c in convs if _tool_calls_to(c) != tenant]
    spec = FleetSpec(
        default_replicas(6, canary=2),
        1200,
        seed=3,
        deployment_convs={"stable": stable, "canary": canary},
    )
    load(store, tmp_path, generate(spec, SHARED_DATA))
    assert alarms(analyze(store, reference=False)) == []


def test_second_model_on_its_own_deployment_is_not_a_new_template(
    store: Store, tmp_path: Any
) -> None:
    qwen25(SHARED_DATA)
    reps = [
        *default_replicas(4, canary=1),
        Replica("q0", "qwen", "qwen"),
        Replica("q1", "qwen", "qwen"),
    ]
    load(store, tmp_path, generate(FleetSpec(reps, 1200, seed=9), SHARED_DATA))
    without = alarms(analyze(store, reference=False))
    with_ref = alarms(analyze(store, reference=True, model=llama31(SHARED_DATA).name))
    assert (without, with_ref) == ([], [])
