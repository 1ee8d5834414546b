"""Every finding kind from logs the reference engine really produces with the matching
``--inject`` fault: a tiny model trained to chat, served in-process by the ``infdebug serve``
app (real torch, real tokenizer and chat template, real tracer JSONL; see tests/livefleet.py),
clean replicas r1 and r2 beside one faulty replica per fault, all answering the same
conversations; the traces ingested into a real store and every analyzer run over them.

Each fault is checked in a fleet of r1, r2 and its own replica (the findings above info must
be exactly the fault's, on that replica), and all together in one fleet of six.

The model is trained (make-model --train), so the clean replicas end nearly every turn with
the end-of-turn ID: the replica whose stop set lacks it runs to ``max_tokens`` on nearly
every request, and ``stop.runaway_rate`` names it beside ``stop.end_of_turn_ignored``.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch", reason="the reference engine needs torch (pip install -e '.[engine]')")

from infdebug.analyzers.base import AnalysisContext, run_all  # noqa: E402
from infdebug.collectors.ingest import ingest_paths  # noqa: E402
from infdebug.schema import Finding  # noqa: E402
from infdebug.store import Store  # noqa: E402
from infdebug.text.template import load_template, template_fingerprint  # noqa: E402
from infdebug.text.tokenizer import load_tokenizer  # noqa: E402
from infdebug.tracer.engine.make_model import make_model  # noqa: E402
from tests.livefleet import CLEAN, LiveFleet, build, trained_model  # noqa: E402

N = 48  # conversations per replica: ≥ 30 for the rate tests, ≥ 10 in two template families
MAX_TOKENS = 256
FAULTS = {"r3": "double-bos", "r4": "template", "r5": "tokenizer", "r6": "ignore-eos"}
REPLICA = {fault: rep for rep, fault in FAULTS.items()}
# The findings above info each fault gives on its replica (kind → severity): without any
# reference, and what the model's own tokenizer and template as references add.
EXPECTED: dict[str, dict[str, str]] = {
    # the doubled BOS also makes the same text other IDs than elsewhere; cross_replica_ids
    # names it ("doubled_first_token") and points at template.double_bos
    "double-bos": {"template.double_bos": "error", "tokenizer.cross_replica_ids": "error"},
    "template": {"template.fingerprint_mismatch": "warning", "template.new_skeleton": "warning"},
    "tokenizer": {
        "tokenizer.fingerprint_mismatch": "error",
        "tokenizer.cross_replica_ids": "error",
    },
    # the clean replicas stop on ~all requests, r6 runs to the length cap on ~all: ≥ 30 points
    "ignore-eos": {"stop.end_of_turn_ignored": "error", "stop.runaway_rate": "error"},
}
WITH_REFERENCE: dict[str, dict[str, str]] = {
    "double-bos": {},
    "template": {"template.render_mismatch": "error"},
    "tokenizer": {"tokenizer.reencode_mismatch": "error"},
    "ignore-eos": {},
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> LiveFleet:
    return build(
        str(tmp_path_factory.mktemp("live")),
        trained_model(tmp_path_factory),
        n=N,
        max_tokens=MAX_TOKENS,
        faulty=FAULTS,
    )


def analyze(
    store: Store, tmp_path: Any, live: LiveFleet, replicas: list[str]
) -> dict[str, list[Finding]]:
    """Ingest the traces of ``replicas`` and run every analyzer, without references
    ("none") and with the model's tokenizer and template ("reference")."""
    report = ingest_paths(
        store, live.files(*replicas), rejects_path=str(tmp_path / "rejects.jsonl")
    )
    assert not report.errors and report.rejected == 0, report
    out = {}
    for name, tok, tpl in (("none", None, None), ("reference", live.tokenizer, live.template)):
        found, failed = run_all(AnalysisContext(store=store, tokenizer=tok, template=tpl))
        assert not failed, failed
        out[name] = found
    return out


def cut_utf8_outputs(live: LiveFleet, replica: str) -> int:
    """Outputs cut by max_tokens inside a UTF-8 character: their IDs decode to the logged text
    plus U+FFFD, the incomplete bytes the engine's incremental detokenizer held back."""
    n = 0
    for r in live.records(replica):
        full = live.tokenizer.decode(r["output_ids"], skip_special_tokens=True)
        if r["finish_reason"] == "length" and full.startswith(r["output_text"]):
            tail = full[len(r["output_text"]) :]
            n += bool(tail) and not tail.strip("\ufffd")
    return n


# The replicas here are served one after another in the test process on a shared CPU, so
# their latencies are the machine's at that moment, not their faults': the timing kinds are
# judged on fleets whose latency is controlled (tests/test_analyze_latency.py), not here.
TIMING_KINDS = frozenset({"replica.latency_regression", "replica.change_point"})


def above_info(found: list[Finding], live: LiveFleet) -> list[Finding]:
    return [f for f in found if f.severity != "info" and f.kind not in TIMING_KINDS]


def kinds(found: list[Finding]) -> dict[tuple[str, str | None], str]:
    """(kind, replica) → severity."""
    out: dict[tuple[str, str | None], str] = {
        (f.kind, (f.scope or {}).get("replica")): f.severity for f in found
    }
    assert len(out) == len(found), [(f.kind, f.scope) for f in found]
    return out


def expected(fault: str, reference: bool) -> dict[tuple[str, str | None], str]:
    table = {**EXPECTED[fault], **(WITH_REFERENCE[fault] if reference else {})}
    return {(kind, REPLICA[fault]): sev for kind, sev in table.items()}


def one(found: list[Finding], kind: str) -> Finding:
    hits = [f for f in found if f.kind == kind]
    assert len(hits) == 1, [(f.kind, f.scope) for f in found]
    return hits[0]


# --- the logs are the engine's, with the faults really in them ------------------------------


def test_every_replica_served_the_same_conversations_with_its_fault(live: LiveFleet) -> None:
    tok, bos = live.tokenizer, live.tokenizer.bos_id
    recs = {rep: live.records(rep) for rep in live.faults}
    for rep, rs in recs.items():
        assert len(rs) == N and {r["replica"] for r in rs} == {rep}
        assert {r["request_id"] for r in rs} == {x["id"] for x in live.responses[rep]}
        assert all(r["output_ids"] and r["finish_reason"] in ("stop", "length") for r in rs)
    texts = {r["prompt_text"] for r in recs["r1"]}
    assert len(texts) == N and all(
        {r["prompt_text"] for r in recs[x]} == texts for x in ("r2", "r3", "r5", "r6")
    )
    # clean: one BOS (the template writes it), the model's tokenizer, template and stop set
    fps = (tok.fingerprint, template_fingerprint(live.template))
    for r in recs["r1"] + recs["r2"]:
        assert r["prompt_ids"] == tok.encode(r["prompt_text"]) and r["prompt_ids"][:2] != [bos, bos]
        assert (r["tokenizer_fp"], r["template_fp"]) == fps
        assert r["sampling"]["stop_ids"] == sorted(tok.eos_ids)
    assert all(r["prompt_ids"][:3] == [bos, bos, r["prompt_ids"][2]] for r in recs["r3"])
    variant = load_template(live.template_variant)
    assert all(
        "Cutting Knowledge Date: December 2023\nToday Date: " in r["prompt_text"]
        for r in recs["r4"]
    )
    assert {r["template_fp"] for r in recs["r4"]} == {template_fingerprint(variant)}
    other = load_tokenizer(live.tokenizer_variant)
    assert other.vocab_size == tok.vocab_size and other.fingerprint != tok.fingerprint
    assert all(r["tokenizer_fp"] == other.fingerprint for r in recs["r5"])
    assert all(
        r["prompt_ids"] == other.encode(r["prompt_text"]) != tok.encode(r["prompt_text"])
        for r in recs["r5"]
    )
    assert {tuple(r["sampling"]["stop_ids"]) for r in recs["r6"]} == {
        tuple(sorted(set(tok.eos_ids) - {live.eot_id}))
    }
    # the trained model ends its turns: the clean replicas stop at the end-of-turn ID on nearly
    # every request, in words (no output is one ID over and over)
    for rep in CLEAN:
        stopped = [r for r in recs[rep] if r["finish_reason"] == "stop"]
        assert len(stopped) >= 0.9 * N and all(r["output_ids"][-1] == live.eot_id for r in stopped)
        assert all(len(set(r["output_ids"])) >= 3 for r in recs[rep])
        assert sum(any(w.isalpha() for w in r["output_text"].split()) for r in recs[rep]) >= 0.9 * N


# --- each fault in a fleet of r1, r2 and its replica ----------------------------------------


# (live fleet, fault) → its fleet's findings: two tests look at the ignore-eos fleet's, which
# are analysed once
_FOUND: dict[tuple[int, str], dict[str, list[Finding]]] = {}


def found_for(store: Store, tmp_path: Any, live: LiveFleet, fault: str) -> dict[str, list[Finding]]:
    """The findings of a fleet of r1, r2 and the fault's replica, checked to be exactly the
    fault's (above info, on its replica), without and with references."""
    key = (id(live), fault)
    if key not in _FOUND:
        _FOUND[key] = analyze(store, tmp_path, live, [*CLEAN, REPLICA[fault]])
    found = _FOUND[key]
    assert kinds(above_info(found["none"], live)) == expected(fault, False)
    assert kinds(above_info(found["reference"], live)) == expected(fault, True)
    return found


def test_double_bos(store: Store, tmp_path: Any, live: LiveFleet) -> None:
    found = found_for(store, tmp_path, live, "double-bos")
    bos = live.tokenizer.bos_id
    r3_ids = {r["id"] for r in live.responses["r3"]}
    for name, source in (("none", "inferred"), ("reference", "tokenizer")):
        f = one(found[name], "template.double_bos")
        assert f.scope is not None and f.scope["replica"] == "r3" and f.severity == "error"
        assert f.values is not None and f.evidence is not None
        assert f.values["bos_id"] == bos and f.values["affected"] == f.values["requests"] == N
        assert f.values["bos_source"] == source
        if source == "inferred":
            assert f.values["bos_inferred_share"] == 1.0
            assert f.values["bos_text"] == "<|begin_of_text|>"
        assert f.evidence["first_ids"][:2] == [bos, bos]
        assert f.evidence["share_by_replica"] == {"r1": 0.0, "r2": 0.0, "r3": 1.0}
        assert f.evidence["request_ids"] and set(f.evidence["request_ids"]) <= r3_ids
        x = one(found[name], "tokenizer.cross_replica_ids")
        assert x.evidence is not None and x.evidence["cause"] == "doubled_first_token"
        assert x.evidence["example"]["first_diverging_index"] == 1
        assert x.evidence["example"]["this"]["id"] == bos


def test_another_chat_template(store: Store, tmp_path: Any, live: LiveFleet) -> None:
    found = found_for(store, tmp_path, live, "template")
    variant = load_template(live.template_variant)
    r4_ids = {r["id"] for r in live.responses["r4"]}
    for name in ("none", "reference"):  # the reference-free kinds are the same with references
        sk = one(found[name], "template.new_skeleton")
        assert sk.scope is not None and sk.scope["replica"] == "r4" and sk.values is not None
        assert sk.evidence is not None and set(sk.evidence["request_ids"]) <= r4_ids
        assert (
            "Cutting Knowledge Date: December 2023\nToday Date: {date}" in sk.evidence["skeleton"]
        )
        assert "Cutting Knowledge" not in sk.evidence["fleet_skeleton"]
        assert sk.values["share_elsewhere"] == 0.0 and "user" in sk.values["families_affected"]
        fp = one(found[name], "template.fingerprint_mismatch")
        assert fp.scope is not None and fp.scope["replica"] == "r4" and fp.values is not None
        assert fp.values["template_fp"] == template_fingerprint(variant)
        assert fp.values["fleet_template_fp"] == template_fingerprint(live.template)
        assert fp.values["requests"] == N
    rm = one(found["reference"], "template.render_mismatch")
    assert rm.scope is not None and rm.scope["replica"] == "r4" and rm.severity == "error"
    assert rm.values is not None and rm.values["mismatched"] == rm.values["checked"] == N
    assert rm.values["render_failed"] == 0
    assert rm.evidence is not None and "Cutting Knowledge Date" in rm.evidence["diff"]["logged"]
    assert "Cutting Knowledge Date" not in (rm.evidence["diff"]["reference"] or "")


def test_another_tokenizer(store: Store, tmp_path: Any, live: LiveFleet) -> None:
    found = found_for(store, tmp_path, live, "tokenizer")
    other = load_tokenizer(live.tokenizer_variant)
    header_end, newline = (live.tokenizer.tok.token_to_id(t) for t in ("<|end_header_id|>", "Ċ"))
    r5_ids = {r["id"] for r in live.responses["r5"]}
    for name in ("none", "reference"):
        fp = one(found[name], "tokenizer.fingerprint_mismatch")
        assert fp.scope is not None and fp.scope["replica"] == "r5" and fp.evidence is not None
        assert fp.evidence["majority_fingerprint"] == live.tokenizer.fingerprint
        assert fp.evidence["by_fingerprint"][other.fingerprint]["replicas"] == ["r5"]
        assert set(fp.evidence["request_ids"]) <= r5_ids
        x = one(found[name], "tokenizer.cross_replica_ids")
        assert x.scope is not None and x.scope["replica"] == "r5" and x.values is not None
        assert x.values["prompts_differing"] == N and x.values["share"] == 1.0
        assert x.evidence is not None and "cause" not in x.evidence
        # the first difference: the blank line after the first header, eaten on r5
        this, ref = x.evidence["example"]["this"], x.evidence["example"]["reference"]
        assert this["replica"] == "r5" and ref["replica"] in CLEAN
        assert ref["ids_around"][1:3] == [header_end, newline] and ref["id"] == newline
        assert this["ids_around"][1] == header_end and this["id"] != newline
    re_ = one(found["reference"], "tokenizer.reencode_mismatch")
    assert re_.scope is not None and re_.scope["replica"] == "r5" and re_.values is not None
    assert re_.values["requests_affected"] == re_.values["requests_checked"] == N
    assert re_.evidence is not None and re_.evidence["cause"] == "special_tokens"
    assert re_.evidence["reference_fingerprint"] == live.tokenizer.fingerprint
    example = re_.evidence["example"]
    assert example["reference"]["pieces_around"][1:3] == ["<|end_header_id|>", "Ċ"]
    assert example["logged"]["pieces_around"][1] == "<|end_header_id|>"
    assert example["logged"]["piece"] != "Ċ"


def test_ignored_end_of_turn(store: Store, tmp_path: Any, live: LiveFleet) -> None:
    found = found_for(store, tmp_path, live, "ignore-eos")
    eot = live.eot_id
    # the outputs on r6 that hold the end-of-turn ID and went on past it
    ran_on = {
        r["request_id"]: r["output_ids"].index(eot)
        for r in live.records("r6")
        if eot in r["output_ids"][:-1]
        or (eot in r["output_ids"] and r["finish_reason"] == "length")
    }
    assert len(ran_on) >= 2, "the tiny model emitted the end-of-turn ID on fewer than 2 outputs"
    for name, source in (("none", "fleet stop sets"), ("reference", "tokenizer")):
        f = one(found[name], "stop.end_of_turn_ignored")
        assert f.scope is not None and f.scope["replica"] == "r6" and f.severity == "error"
        assert f.values is not None and f.evidence is not None
        assert f.values["count"] == len(ran_on) and f.values["requests"] == N
        assert eot in f.values["eot_ids"] and f.values["eot_source"] == source
        assert f.evidence["eot_id"] == eot and f.evidence["eot_in_stop_set"] is False
        assert eot not in f.evidence["stop_ids_in_force"]
        assert f.evidence["eot_piece"] == ("<|eot_id|>" if name == "reference" else None)
        assert set(f.evidence["request_ids"]) <= set(ran_on)
        assert all(ex["position"] == ran_on[ex["request_id"]] for ex in f.evidence["examples"])


def test_runaway_rate(store: Store, tmp_path: Any, live: LiveFleet) -> None:
    found = found_for(store, tmp_path, live, "ignore-eos")
    capped = {
        rep: sum(r["finish_reason"] == "length" for r in live.records(rep)) for rep in live.faults
    }
    assert capped["r6"] >= 0.9 * N and capped["r1"] + capped["r2"] <= 0.2 * N
    r6_ids = {r["id"] for r in live.responses["r6"]}
    for name in ("none", "reference"):
        f = one(found[name], "stop.runaway_rate")
        assert f.scope is not None and f.scope["replica"] == "r6" and f.severity == "error"
        assert f.values is not None and f.evidence is not None
        assert f.values["count"] == capped["r6"] and f.values["requests"] == N
        assert f.values["rest_rate"] == pytest.approx((capped["r1"] + capped["r2"]) / (2 * N))
        assert f.evidence["request_ids"] and set(f.evidence["request_ids"]) <= r6_ids


# --- no false alarms ------------------------------------------------------------------------


def test_clean_fleet_reports_nothing(store: Store, tmp_path: Any, live: LiveFleet) -> None:
    found = analyze(store, tmp_path, live, list(CLEAN))
    assert above_info(found["none"], live) == [] and above_info(found["reference"], live) == []


def test_whole_fleet_every_fault_on_its_replica(
    store: Store, tmp_path: Any, live: LiveFleet
) -> None:
    found = analyze(store, tmp_path, live, list(live.faults))
    for name, reference in (("none", False), ("reference", True)):
        want = {k: v for fault in EXPECTED for k, v in expected(fault, reference).items()}
        assert kinds(above_info(found[name], live)) == want, name


@pytest.fixture(scope="module")
def random_live(tmp_path_factory: pytest.TempPathFactory) -> LiveFleet:
    """r1 and r2 serving a random-weight model: its outputs are random IDs, byte tokens
    among them, cut by ``max_tokens`` anywhere (the trained model writes ASCII and stops)."""
    root = tmp_path_factory.mktemp("live-random")
    model_dir = make_model(str(root / "tiny-random-llama3"), preset="tiny", chat_format="llama3")
    return build(str(root), model_dir, n=N, max_tokens=32)


def test_an_output_cut_inside_a_utf8_character_is_no_decode_mismatch(
    store: Store, tmp_path: Any, random_live: LiveFleet
) -> None:
    cut = {rep: cut_utf8_outputs(random_live, rep) for rep in CLEAN}
    if not any(cut.values()):
        pytest.skip("no output of r1 or r2 ends inside a UTF-8 character on this machine")
    found = analyze(store, tmp_path, random_live, list(CLEAN))["reference"]
    assert [f for f in found if f.kind == "tokenizer.decode_mismatch"] == []
