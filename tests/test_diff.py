"""``infdebug diff`` on real chDB: the sample logs' canary faults named and nothing else, a
log against itself reports nothing, swapping the sides mirrors every signed number
(hypothesis, on generated fleets), golden terminal / JSON / Markdown outputs, the store's
selectors, and bad input (exit 2 naming the side; bad lines counted, the rest diffed)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import tempfile
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import copy_home, make_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from infdebug.cli import cli
from infdebug.cli.logstore import temporary_store
from infdebug.diff import DiffResult, diff_store
from infdebug.diff.render import lines, markdown, print_terminal, to_json
from infdebug.diff.sides import load_sides
from infdebug.schema import Request, encode_records
from infdebug.store.base import migrate
from infdebug.store.client import open_embedded

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(REPO, "sample_logs", "baseline")
CANARY = os.path.join(REPO, "sample_logs", "canary")
GOLDEN = os.path.join(REPO, "tests", "golden")
CANARY_FAULTS = {
    ("replica.latency_regression", "r2"),
    ("template.double_bos", "r3"),
    ("tokenizer.cross_replica_ids", "r3"),
}


def run(*args: str, home: str) -> Any:
    return CliRunner().invoke(cli, ["--home", home, "diff", *args])


def diff_paths(
    a: str,
    b: str,
    tmp: str,
    labels: tuple[str, str] = ("baseline", "candidate"),
    migrated: str | None = None,
) -> DiffResult:
    """What ``infdebug diff A B`` computes: both sides loaded into a throwaway store (the
    command's ``temporary_store``, or, given ``migrated``, a copy of that migrated home: the
    same empty tables without running the migrations again), then diffed."""
    with contextlib.ExitStack() as stack:
        if migrated is None:
            store, _ = stack.enter_context(temporary_store("t-diff-"))
        else:
            home = copy_home(migrated, os.path.join(tempfile.mkdtemp(dir=tmp), "home"))
            store = open_embedded(home)  # as temporary_store: never a server
            stack.callback(store.close)
            migrate(store)  # nothing left to apply
        loads = load_sides(
            store, [(labels[0], [a]), (labels[1], [b])], rejects_path=lambda s: f"{tmp}/{s}.rej"
        )
        return diff_store(store, labels, deployments={x.label: x.deployments for x in loads})


@pytest.fixture(scope="module")
def sample_diff(tmp_path_factory: pytest.TempPathFactory, migrated_home: str) -> DiffResult:
    return diff_paths(BASE, CANARY, str(tmp_path_factory.mktemp("d")), migrated=migrated_home)


def test_the_canary_faults_are_named_and_nothing_else(sample_diff: DiffResult) -> None:
    got = {
        (f.kind, (f.scope or {}).get("replica"))
        for f in sample_diff.findings
        if f.severity != "info"
    }
    assert got == CANARY_FAULTS
    assert all((f.scope or {}).get("deployment") == "candidate" for f in sample_diff.findings)
    assert sample_diff.pairing["pairs"] == 160 and sample_diff.pairing["comparable"]
    tok = sample_diff.sections["tokenization"]
    assert tok["count"] == 53 and tok["examples"][0]["first_diverging_index"] == 1
    assert tok["examples"][0]["candidate"][1]["id"] == 5072  # the second BOS
    lat = {m["metric"]: m for m in sample_diff.sections["latency"]["metrics"]}
    assert lat["itl_s"]["shift"] > 0.1 and lat["itl_s"]["shift_ci95"][0] > 0
    assert sample_diff.sides["candidate"]["deployments"] == ["canary"]
    assert sample_diff.fails("error")


def test_a_log_against_itself_reports_nothing(tmp_path: Any) -> None:
    res = diff_paths(CANARY, CANARY, str(tmp_path))  # through the command's temporary_store
    assert res.findings == [] and res.sections == {} and res.worst() is None
    assert res.pairing["by_request_id"] == 160 and res.pairing["baseline_only"] == 0
    # the canary's own faults are on both sides: listed, unchanged
    assert {(u["kind"], u.get("replica")) for u in res.unchanged} >= {("template.double_bos", "r3")}


def test_cli_exit_codes_and_fail_on(tmp_path: Any) -> None:
    home = str(tmp_path / "h")
    r = run(BASE, CANARY, "--json", home=home)
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert set(doc) >= {"findings", "pairing", "sections", "unchanged", "verdict", "ingest"}
    assert doc["verdict"] == "error"
    assert run(CANARY, CANARY, home=home).exit_code == 0
    r = run(BASE, str(tmp_path / "missing"), home=home)
    assert r.exit_code == 2 and "candidate side" in r.stderr and "missing" in r.stderr
    os.makedirs(tmp_path / "empty")
    r = run(str(tmp_path / "empty"), CANARY, "--json", home=home)
    assert r.exit_code == 2 and "baseline side" in json.loads(r.stdout)["error"]
    assert run(BASE, home=home).exit_code == 2
    assert run(BASE, CANARY, "--labels", "x,x", home=home).exit_code == 2


def test_bad_lines_are_counted_per_side_and_the_rest_diffed(tmp_path: Any) -> None:
    src = os.path.join(CANARY, sorted(f for f in os.listdir(CANARY) if "requests" in f)[0])
    bad = tmp_path / "cand"
    bad.mkdir()
    with open(src, encoding="utf-8") as f:
        lines_ = f.read().splitlines()
    lines_.insert(3, '{"kind":"request","request_id":"x","replica":"r1","t_arrival":"soon"}')
    lines_.insert(5, "not json at all")
    (bad / "r1.requests.jsonl").write_text("\n".join(lines_) + "\n")
    r = run(BASE, str(bad), "--json", home=str(tmp_path / "h"))
    assert r.exit_code in (0, 1), r.output
    doc = json.loads(r.stdout)
    assert (
        doc["ingest"]["candidate"]["rejected"] == 2 and doc["ingest"]["baseline"]["rejected"] == 0
    )
    assert "r1.requests.jsonl:4" in r.stderr
    assert doc["sides"]["candidate"]["requests"] == len(lines_) - 2


def test_store_selectors_give_the_diff_of_the_logs(tmp_path: Any, sample_diff: DiffResult) -> None:
    home = str(tmp_path / "h")
    assert CliRunner().invoke(cli, ["--home", home, "ingest", BASE, CANARY]).exit_code == 0
    r = run(
        "--store",
        "--baseline",
        "deployment=baseline",
        "--candidate",
        "deployment=canary",
        "--json",
        home=home,
    )
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    got = {
        (f["kind"], f["scope"].get("replica")) for f in doc["findings"] if f["severity"] != "info"
    }
    assert got == CANARY_FAULTS
    assert doc["pairing"]["pairs"] == sample_diff.pairing["pairs"]
    r = run(
        "--store", "--baseline", "deployment=nope", "--candidate", "deployment=canary", home=home
    )
    assert r.exit_code == 2 and "baseline side" in r.stderr
    r = run("--store", "--baseline", "colour=red", "--candidate", "deployment=canary", home=home)
    assert r.exit_code == 2 and "unknown field" in r.stderr


# --- golden outputs -----------------------------------------------------------------------


def _normal_json(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc.pop("seconds", None)
    doc.pop("ingest", None)
    for f in doc["findings"]:
        f.pop("t", None)
    return doc


def _check(name: str, text: str) -> None:
    path = os.path.join(GOLDEN, name)
    if os.environ.get("UPDATE_GOLDEN"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    with open(path, encoding="utf-8") as f:
        assert text == f.read(), f"{name} differs (UPDATE_GOLDEN=1 to accept)"


def test_golden_outputs(sample_diff: DiffResult) -> None:
    _check(
        "diff.json", json.dumps(_normal_json(to_json(sample_diff)), indent=1, sort_keys=True) + "\n"
    )
    _check("diff.md", markdown(sample_diff))
    con = Console(width=100, record=True, color_system=None, force_terminal=False)
    print_terminal(sample_diff, con)
    text = con.export_text()
    assert max(len(x) for x in text.splitlines()) <= 100
    _check("diff.txt", text)


# --- symmetry on generated fleets ---------------------------------------------------------


def _fleet(seed: int, side: str, slow: float, bos: bool) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for i in range(120):
        rep = f"r{i % 3}"
        itl = 0.004 * (slow if rep == "r1" else 1.0) * math.exp(rng.gauss(0, 0.1))
        n = 8 + i % 5
        times = [0.02 + itl * k for k in range(n)]
        ids = [1, 1, 50 + i, 60] if bos and rep == "r2" else [1, 50 + i, 60]
        out.append(
            make_request(
                i,
                request_id=f"{side}-{i}",
                replica=rep,
                deployment=side,
                t_arrival=1_765_000_000.0 + i * 0.5 + rng.random() * 0.1,
                ttft_s=0.02,
                e2e_s=times[-1],
                token_times_s=times,
                messages=[{"role": "user", "content": f"q {i}"}],
                prompt_text=f"<s>q {i}",
                prompt_ids=ids,
                output_ids=list(range(100, 100 + n)),
            )
        )
    return out


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), slow=st.sampled_from([1.0, 1.6]), bos=st.booleans())
def test_swapping_the_sides_mirrors_every_signed_number(
    tmp_path_factory: pytest.TempPathFactory, migrated_home: str, seed: int, slow: float, bos: bool
) -> None:
    tmp = tmp_path_factory.mktemp("sym")
    a, b = tmp / "a.jsonl", tmp / "b.jsonl"
    a.write_bytes(encode_records(_fleet(seed, "x", 1.0, False)))
    b.write_bytes(encode_records(_fleet(seed + 1, "y", slow, bos)))
    ab = diff_paths(str(a), str(b), str(tmp), migrated=migrated_home)
    ba = diff_paths(str(b), str(a), str(tmp), migrated=migrated_home)
    flip = {"baseline": "candidate", "candidate": "baseline"}

    def keys(res: DiffResult, swap: bool) -> list[tuple[str, str, str]]:
        out = []
        for f in res.findings:
            dep = str((f.scope or {}).get("deployment", ""))
            out.append(
                (
                    f.kind,
                    str((f.scope or {}).get("replica", "")),
                    flip.get(dep, dep) if swap else dep,
                )
            )
        return sorted(out)

    assert keys(ab, True) == keys(ba, False)
    assert set(ab.sections) == set(ba.sections)
    assert ab.pairing["baseline_only"] == ba.pairing["candidate_only"]
    for m1 in (ab.sections.get("latency") or {}).get("all_metrics", []):
        m2 = next(m for m in ba.sections["latency"]["all_metrics"] if m["metric"] == m1["metric"])
        assert m1["z"] == pytest.approx(-m2["z"], abs=1e-6)
        assert (1 + m1["shift"]) * (1 + m2["shift"]) == pytest.approx(1.0, rel=1e-6)
    if "tokenization" in ab.sections:
        assert ab.sections["tokenization"]["count"] == ba.sections["tokenization"]["count"]
    if slow > 1.0:
        assert any(f.kind == "replica.latency_regression" for f in ab.findings)
    if bos:
        assert ab.sections["tokenization"]["count"] == 40


def test_rendered_lines_escape_nothing_they_should_not(sample_diff: DiffResult) -> None:
    text = "\n".join(t for _, t in lines(sample_diff))
    assert "r2 (candidate)" in text and not re.search(r"\[/?(bold|red)", text)
