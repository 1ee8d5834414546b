"""Train-serve skew (``skew.*``) against a ``--reference`` file, on generated fleets with known
truth in a real chDB store: the served traffic drawn from another distribution than the
reference (other conversations, another template, longer answers, a doubled BOS, another
temperature) is found, and traffic drawn from the same distribution is not, across 40 seeds;
a reference with bad lines is reported line by line and the rest is used.

Fleets come from ``fleetlogs`` (the real Llama-3 tokenizer and Llama-3.1 template); the
reference is drawn from the same pool of conversations and answers with the same popularity
weights, so "the same distribution" is true by construction.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from typing import Any

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, make_request
from fleetlogs import (
    FleetSpec,
    Model,
    Replica,
    answer,
    conversation,
    generate,
    llama31,
    write_jsonl,
)

from infdebug.analyzers.base import AnalysisContext, run_all
from infdebug.analyzers.skew_stats import gamma_sf, ks_two_sample, permutation_p, psi
from infdebug.collectors.ingest import ingest_paths
from infdebug.errors import InputError
from infdebug.schema import Finding, Request, encode_records
from infdebug.skew_reference import load_reference_file
from infdebug.store import Store

SKEW = ["skew.length", "skew.tokens", "skew.template", "skew.special_tokens", "skew.sampling"]
POOL = 400  # fleetlogs' conversation pool
WEIGHTS = [1.0 / (1 + k) ** 0.8 for k in range(POOL)]  # …and its popularity weights

needs_data = pytest.mark.skipif(
    not os.path.isdir(SHARED_DATA), reason=f"real data folder {SHARED_DATA} is absent"
)


@pytest.fixture(scope="module")
def llama() -> Model:
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return llama31(SHARED_DATA)


def reference_rows(
    seed: int,
    n: int,
    *,
    convs: list[int] | None = None,
    answers: int = 1,
    sampling: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Training conversations as fleetlogs' clients send them, each with its answer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        c = rng.choices(range(POOL), WEIGHTS)[0]
        if convs:
            c = convs[c % len(convs)]
        reply = " ".join(answer(rng.randrange(300)) for _ in range(answers))
        row: dict[str, Any] = {
            "messages": [*conversation(c), {"role": "assistant", "content": reply}]
        }
        if sampling is not None:
            row["sampling"] = sampling
        rows.append(row)
    return rows


def write_reference(path: str, rows: list[Any], extra_lines: dict[int, str] | None = None) -> str:
    lines = [json.dumps(r) for r in rows]
    for at, text in sorted((extra_lines or {}).items()):
        lines.insert(at - 1, text)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def load(store: Store, tmp: Any, recs: list[Request], name: str = "fleet.jsonl") -> None:
    path = write_jsonl(os.path.join(str(tmp), name), recs)
    rep = ingest_paths(store, [path], rejects_path=os.path.join(str(tmp), "rejects.jsonl"))
    assert rep.rejected == 0 and rep.rows["request"] == len(recs)


def run(
    store: Store, m: Model | None, ref: Any, names: list[str] = SKEW, **kw: Any
) -> list[Finding]:
    options = {"reference": ref, **kw.pop("options", {})}
    ctx = AnalysisContext(
        store=store,
        tokenizer=m.tok if m else None,
        template=m.template if m else None,
        options=options,
        **kw,
    )
    found, failed = run_all(ctx, names)
    assert failed == {}
    return found


def above_info(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.severity != "info"]


def by_kind(found: list[Finding], kind: str) -> list[Finding]:
    return [f for f in found if f.kind == kind]


# --- the reference file ---------------------------------------------------------------------


def test_reference_bad_lines_are_reported_with_file_line_and_field(tmp_path: Any) -> None:
    good = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"input_ids": [1, 2, 3], "output_ids": [4, 5]},
        {"prompt_ids": [1, 9], "sampling": {"temperature": 0.2, "top_p": 0.9}},
        {"sampling": {"temperature": 0.0, "max_tokens": 512}},  # an evaluation setting only
    ]
    bad = {
        2: "{not json",
        3: "[1, 2]",
        5: '{"messages": "hi"}',
        6: '{"prompt_ids": [1, -2]}',
        7: '{"messages": [{"role": "user", "content": "x"}], "sampling": {"temperature": "hot"}}',
        8: '{"foo": 1}',
        9: "",  # blank: not a line of data, not a reject
        11: '{"messages": [{"content": "no role"}]}',
    }
    path = write_reference(str(tmp_path / "ref.jsonl"), good, bad)
    ref = load_reference_file(path)
    where = [(r.line, r.field) for r in ref.rejects]
    assert where == [
        (2, "(line)"),
        (3, "(line)"),
        (5, "messages"),
        (6, "prompt_ids[1]"),
        (7, "sampling.temperature"),
        (8, "(line)"),
        (11, "messages[0].role"),
    ]
    assert all(str(r).startswith(f"{path}:{r.line}: ") for r in ref.rejects)
    assert "malformed JSON" in ref.rejects[0].reason and "-2" in ref.rejects[3].reason
    assert ref.rejected == 7 and ref.lines == 11  # the blank line is not counted
    assert [r.line for r in ref.records] == [1, 4, 10]  # the sampling-only line has no prompt
    conv, ids, _ = ref.records
    assert conv.messages == ({"role": "user", "content": "hi"},) and conv.answer == "yo"
    assert ids.prompt_ids == (1, 2, 3) and ids.output_ids == (4, 5)
    assert ref.sampling == {
        "max_tokens": (512.0, 512.0),
        "temperature": (0.0, 0.2),
        "top_p": (0.9, 0.9),
    }
    with pytest.raises(InputError, match="missing.jsonl"):
        load_reference_file(str(tmp_path / "missing.jsonl"))


def test_reference_sampled_beyond_its_cap_is_the_same_every_run(tmp_path: Any) -> None:
    rows = [{"prompt_ids": [1, i]} for i in range(300)]
    path = write_reference(str(tmp_path / "ref.jsonl"), rows)
    a, b = load_reference_file(path, max_records=50), load_reference_file(path, max_records=50)
    assert a.sampled and a.total_records == 300 and len(a.records) == 50
    assert [r.line for r in a.records] == [r.line for r in b.records]
    assert len({r.line for r in a.records}) == 50


def test_cli_reference_with_a_bad_line_reports_it_and_uses_the_rest(tmp_path: Any) -> None:
    """Through the real CLI: a token-ID reference with one bad line; the served prompts are
    far longer than the reference's, which the rest of the reference still shows."""
    rng = random.Random(3)
    recs = [
        make_request(
            i, prompt_ids=[1] + [rng.randrange(5, 900) for _ in range(rng.randrange(60, 90))]
        )
        for i in range(200)
    ]
    log = str(tmp_path / "fleet.jsonl")
    with open(log, "wb") as f:
        f.write(encode_records(recs))
    rows = [
        {"prompt_ids": [1] + [rng.randrange(5, 900) for _ in range(rng.randrange(5, 30))]}
        for _ in range(300)
    ]
    ref = write_reference(str(tmp_path / "ref.jsonl"), rows, {7: '{"prompt_ids": "oops"}'})
    env = {**os.environ, "INFDEBUG_HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    env.pop("INFDEBUG_CLICKHOUSE_URL", None)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "infdebug.cli",
            "analyze",
            log,
            "--reference",
            ref,
            "--json",
            "--only",
            "skew.length",
            "--only",
            "skew.tokens",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["reference"]["rejected"] == 1 and doc["reference"]["records"] == 300
    assert doc["reference"]["rejects"][0]["line"] == 7
    assert doc["reference"]["rejects"][0]["field"] == "prompt_ids"
    assert f"{ref}:7: prompt_ids:" in p.stderr
    kinds = Counter((f["kind"], f["severity"]) for f in doc["findings"])
    assert kinds[("skew.length", "warning")] == 1, doc["findings"]
    length = next(f for f in doc["findings"] if f["kind"] == "skew.length")
    assert length["values"]["metric"] == "prompt_tokens"
    assert length["values"]["reference_n"] == 300  # every good line, none of the bad one


# --- statistics -----------------------------------------------------------------------------


def test_ks_and_psi_on_known_distributions() -> None:
    same = Counter({k: 10 for k in range(50)})
    assert ks_two_sample(same, same) == (0.0, 1.0)
    assert psi(same, same) == pytest.approx(0.0, abs=1e-12)
    shifted = Counter({k + 25: 10 for k in range(50)})
    d, p = ks_two_sample(shifted, same)
    assert d == pytest.approx(0.5) and p < 1e-20
    assert psi(shifted, same) > 0.25


def test_permutation_p_and_its_gamma_tail() -> None:
    rng = np.random.default_rng(0)
    null = rng.gamma(3.0, 0.01, size=400)
    assert permutation_p(float(np.median(null)), null) == pytest.approx(0.5, abs=0.05)
    beyond = permutation_p(float(null.max()) * 3, null)
    assert 0 < beyond < 1 / 401  # past every draw: the fitted tail, not the floor
    assert gamma_sf(2.0, 1.0, 1.0) == pytest.approx(math.exp(-2))
    assert gamma_sf(9.0, 2.0, 2.0) == pytest.approx(math.exp(-4.5) * 5.5)  # chi-square, 4 df


# --- found where the truth says so -----------------------------------------------------------


@needs_data
def test_skew_found_where_the_served_traffic_departs(
    llama: Model, store: Store, tmp_path: Any
) -> None:
    """Deployment ``wide`` serves only multi-turn and tool conversations (longer prompts,
    other tokens), its replica w1 with a doubled BOS; ``tpl`` renders with the Llama-3
    template instead of 3.1; ``same`` serves what the reference holds. The reference was
    evaluated at temperature 0..0.2, the fleet serves 0.7."""
    long_convs = [k for k in range(POOL) if len(conversation(k)) >= 3]
    spec = FleetSpec(
        [
            Replica("s0", "same"),
            Replica("s1", "same"),
            Replica("w0", "wide"),
            Replica("w1", "wide"),
            Replica("t0", "tpl"),
            Replica("t1", "tpl"),
        ],
        900,
        seed=11,
        deployment_convs={"wide": long_convs},
        faults={"w1": "double_bos", "t0": "other_template", "t1": "other_template"},
    )
    load(store, tmp_path, generate(spec, SHARED_DATA))
    rows = reference_rows(5, 600, sampling={"temperature": 0.0, "top_p": 0.9})
    rows += reference_rows(6, 1, sampling={"temperature": 0.2, "top_p": 0.95})
    ref = write_reference(str(tmp_path / "ref.jsonl"), rows)
    found = run(store, llama, ref)
    got = {
        (f.kind, (f.scope or {}).get("deployment"), (f.scope or {}).get("replica"), f.severity)
        for f in above_info(found)
    }
    assert ("skew.length", "wide", None, "warning") in got
    assert ("skew.template", "tpl", None, "error") in got
    assert ("skew.special_tokens", "wide", "w1", "warning") in got
    sampling = {(f.scope or {}).get("deployment") for f in by_kind(found, "skew.sampling")}
    assert sampling == {"same", "wide", "tpl"}
    # nothing else above info, and nothing at all on ``same`` but its sampling
    same = [f for f in found if (f.scope or {}).get("deployment") == "same"]
    assert [f.kind for f in same] == ["skew.sampling"]
    assert {k for k, *_ in got} <= set(SKEW)
    # the evidence: the template's first difference is the 3.1 system preamble
    tpl = next(f for f in found if f.kind == "skew.template")
    assert tpl.values is not None and tpl.values["share"] == 1.0
    assert "Cutting Knowledge Date" in (tpl.evidence or {})["reference_skeleton"]
    assert "Cutting Knowledge Date" not in (tpl.evidence or {})["served_skeleton"]
    bos = next(f for f in found if f.kind == "skew.special_tokens")
    assert bos.values is not None and bos.values["check"] == "double_bos"
    assert bos.values["replica_shares"]["w0 (wide)"] == 0.0
    assert all(r.startswith("chatcmpl-") for r in (bos.evidence or {})["request_ids"])
    temp = next(
        f for f in by_kind(found, "skew.sampling") if (f.scope or {})["deployment"] == "same"
    )
    assert temp.severity == "warning" and temp.values is not None
    assert temp.values["params"]["temperature"]["share"] == 1.0
    assert temp.values["params"]["temperature"]["reference_range"] == [0, 0.2]
    assert "top_p" not in temp.values["params"]


@needs_data
def test_tokens_and_output_lengths_found(llama: Model, store: Store, tmp_path: Any) -> None:
    """The served fleet asks only about a fifth of the pool's conversations (other tokens)
    and the reference's answers are three times as long."""
    few = list(range(0, POOL, 5))[:12]
    spec = FleetSpec(
        [Replica("a", "x"), Replica("b", "x")], 600, seed=4, deployment_convs={"x": few}
    )
    load(store, tmp_path, generate(spec, SHARED_DATA))
    ref = write_reference(str(tmp_path / "ref.jsonl"), reference_rows(8, 800, answers=3))
    found = run(store, llama, ref, ["skew.tokens", "skew.length"])
    tokens = by_kind(found, "skew.tokens")
    assert len(tokens) == 1 and tokens[0].values is not None
    assert tokens[0].values["js_bits"] > tokens[0].values["null_p99"]
    assert tokens[0].values["p_holm"] < 0.01
    metrics = {f.values["metric"]: f for f in by_kind(found, "skew.length") if f.values}
    out = metrics["output_tokens"]
    assert out.severity == "warning" and out.values is not None
    assert out.values["served_mean"] < out.values["reference_mean"]
    assert "shorter" in out.summary


# --- not found where there is nothing ------------------------------------------------------


@needs_data
def test_no_skew_when_served_and_reference_share_a_distribution(
    llama: Model, store: Store, tmp_path: Any
) -> None:
    """32 clean fleets of 150 requests (their own deployments, in one store), each against one
    reference of 600 conversations from the same distribution: at α = 0.01 a finding of one
    kind may appear on 0.3 of them by chance; allow 2 (P(≥ 3) ≈ 0.4 % at the nominal level)."""
    seeds = range(100, 132)
    recs: list[Request] = []
    for s in seeds:
        spec = FleetSpec([Replica(f"s{s}a", f"d{s}"), Replica(f"s{s}b", f"d{s}")], 150, seed=s)
        recs += generate(spec, SHARED_DATA)
    load(store, tmp_path, recs)
    ref = load_reference_file(
        write_reference(
            str(tmp_path / "ref.jsonl"),
            reference_rows(7, 600, sampling={"temperature": 0.7, "top_p": 0.9}),
        )
    )
    flagged: Counter[str] = Counter()
    for s in seeds:
        found = run(store, llama, ref, replicas=[f"s{s}a", f"s{s}b"])
        for kind in {f.kind for f in found}:
            flagged[kind] += 1
    assert max(flagged.values(), default=0) <= 2, flagged
    assert flagged["skew.template"] == 0 and flagged["skew.special_tokens"] == 0
    assert flagged["skew.sampling"] == 0


@needs_data
def test_nothing_without_a_reference_or_without_tokenizer_for_conversations(
    llama: Model, store: Store, tmp_path: Any
) -> None:
    spec = FleetSpec([Replica("a", "x"), Replica("b", "x")], 200, seed=2)
    load(store, tmp_path, generate(spec, SHARED_DATA))
    assert run(store, llama, None) == []
    ref = load_reference_file(write_reference(str(tmp_path / "r.jsonl"), reference_rows(1, 100)))
    assert run(store, None, ref) == []  # conversations, and nothing to render them with
    prep = ref.prepared(None, None)
    assert sum(prep.unusable.values()) == 100


def test_large_deployments_are_sampled_and_the_sample_is_bounded(
    store: Store, tmp_path: Any
) -> None:
    """3,000 requests over ten hours in two deployments: a sample of about N per deployment
    (time slices, then a hash) is what the queries read; the same one every time; and a
    unit whose requests that can be re-scored are rare still gives the ones asked for."""
    from infdebug.store import q_skew

    rng = random.Random(9)
    recs = [
        make_request(
            i,
            replica=f"r{i % 3}",
            deployment="big" if i % 10 else "small",
            t_arrival=1_765_000_000.0 + i * 12.0,
            prompt_ids=[1] + [rng.randrange(5, 900) for _ in range(rng.randrange(5, 40))],
            sampling={"temperature": 0.0 if i % 25 == 0 else 0.7, "max_tokens": 64},
        )
        for i in range(3000)
    ]
    path = str(tmp_path / "big.jsonl")
    with open(path, "wb") as f:
        f.write(encode_records(recs))
    ingest_paths(store, [path], rejects_path=str(tmp_path / "rejects.jsonl"))
    w = AnalysisContext(store=store).window()
    a = q_skew.length_histograms(store, w, "", 0, 20)
    sizes = {d: sum(h.prompt.values()) for d, h in a.items()}
    assert 8 <= sizes["big"] <= 40 and 8 <= sizes["small"] <= 40, sizes
    assert q_skew.length_histograms(store, w, "", 0, 20) == a
    everything = q_skew.length_histograms(store, w, "", 0, 10_000)
    assert {d: sum(h.prompt.values()) for d, h in everything.items()} == {"big": 2700, "small": 300}
    ranges, shares = q_skew.sampling_ranges(store, w, "", {"temperature": (0.0, 0.0)}, {}, 20)
    # slices of a fifth of the window (3 × 20 of the small deployment's 300), then a hash
    assert shares["big"] == pytest.approx(20 / 2700, rel=0.05)
    assert shares["small"] == pytest.approx(20 / 300, rel=0.05)
    by = {r.deployment: r for r in ranges}
    assert by["big"].requests == sizes["big"] and by["big"].above > 0
    rows = q_skew.rescore_sample(store, w, "", 5)  # 1 in 25 requests is greedy
    per_unit = Counter(r.unit for r in rows)
    assert len(per_unit) == 6 and set(per_unit.values()) == {5}
    assert all(r.greedy for r in rows)
