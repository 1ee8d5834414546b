"""One registration path for analyzers: a module dropped into ``infdebug.analyzers`` is found by
``discover()`` and run by the one orchestration (``analyze``) wherever it runs — the library,
``infdebug analyze``, the demo's analyze step and ``bench/analyze.py`` — and every one of them
sees the same set of analyzers.

"Dropped into the package" without touching the source tree: the test's module goes in a
temporary directory added to ``infdebug.analyzers.__path__`` (in this process, and in the CLI's
process through its runner), which is where ``pkgutil`` and ``importlib`` look for the package's
modules.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import REPO, make_request

import infdebug.analyzers as pkg
from infdebug.analyzers import base
from infdebug.analyzers.base import (
    ANALYZERS,
    AnalysisContext,
    analyze,
    analyzer_names,
    discover,
    run_all,
)
from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Request, encode_records
from infdebug.store import Store

PROBE = "probe"
PROBE_MODULE = '''"""A test analyzer, dropped into the package."""

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.store.q_outputs import count_requests


@analyzer("probe")
def probe(ctx: AnalysisContext) -> list:
    n = count_requests(ctx.store, ctx.window())
    return [
        finding("probe", "probe.ran", "info", f"the probe saw {n} requests", values={"requests": n})
    ]
'''
BROKEN_MODULE = "raise RuntimeError('this module does not import')\n"
BUILTIN = {"tokenizer", "template", "stop", "repetition"}


def _forget(names: list[str]) -> None:
    for name in names:
        ANALYZERS.pop(name, None)
    for mod in ("probe_dropped", "probe_broken"):
        sys.modules.pop(f"infdebug.analyzers.{mod}", None)


@pytest.fixture
def dropped(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A directory holding ``probe_dropped.py``, searched as part of ``infdebug.analyzers``."""
    d = tmp_path / "dropped"
    d.mkdir()
    (d / "probe_dropped.py").write_text(PROBE_MODULE)
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(d)])
    _forget([PROBE])
    yield str(d)
    _forget([PROBE])


def load(store: Store, tmp: Any, recs: list[Request]) -> str:
    path = os.path.join(str(tmp), "log.jsonl")
    with open(path, "wb") as f:
        f.write(encode_records(list[Any](recs)))
    rep = ingest_paths(store, [path], rejects_path=os.path.join(str(tmp), "rejects.jsonl"))
    assert rep.rejected == 0 and rep.rows["request"] == len(recs)
    return path


def _registered_in_source() -> set[str]:
    """The names every ``@analyzer(...)`` decorator in the package's files gives (a literal, or a
    name the module holds, such as ``NAME``)."""
    names: set[str] = set()
    here = os.path.dirname(base.__file__)
    for fn in sorted(os.listdir(here)):
        if not fn.endswith(".py"):
            continue
        with open(os.path.join(here, fn), encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            for dec in node.decorator_list:
                if (
                    isinstance(dec, ast.Call)
                    and isinstance(dec.func, ast.Name)
                    and dec.func.id == "analyzer"
                ):
                    arg = dec.args[0]
                    if isinstance(arg, ast.Constant):
                        names.add(str(arg.value))
                    else:
                        assert isinstance(arg, ast.Name), ast.dump(arg)
                        names.add(
                            getattr(importlib.import_module(f"{pkg.__name__}.{fn[:-3]}"), arg.id)
                        )
    return names


def test_discover_finds_every_analyzer_the_package_defines() -> None:
    assert discover() == {}
    in_package = {
        n for n, fn in ANALYZERS.items() if fn.__module__.startswith("infdebug.analyzers.")
    }
    assert in_package == _registered_in_source() and in_package >= BUILTIN
    assert analyzer_names() == sorted(ANALYZERS)


def test_a_dropped_module_runs_in_the_one_orchestration(
    store: Store, tmp_path: Any, dropped: str
) -> None:
    load(store, tmp_path, [make_request(i) for i in range(30)])
    assert PROBE not in ANALYZERS
    res = analyze(AnalysisContext(store=store))
    assert PROBE in ANALYZERS and PROBE in res.ran and res.ran == analyzer_names()
    assert set(res.seconds) == set(res.ran) and all(s >= 0 for s in res.seconds.values())
    assert res.failed == {} and res.requests == 30 and not res.all_failed
    probe = [f for f in res.findings if f.analyzer == PROBE]
    assert len(probe) == 1 and probe[0].values == {"requests": 30}
    only = analyze(AnalysisContext(store=store), [PROBE], count=False)
    assert only.ran == [PROBE] and only.requests is None
    findings, failed = run_all(
        AnalysisContext(store=store), [PROBE]
    )  # the older name, the same run
    assert [f.kind for f in findings] == ["probe.ran"] and failed == {}


def test_a_module_that_does_not_import_is_reported_and_the_others_still_run(
    store: Store, tmp_path: Any, dropped: str
) -> None:
    load(store, tmp_path, [make_request(i) for i in range(5)])
    with open(os.path.join(dropped, "probe_broken.py"), "w") as f:
        f.write(BROKEN_MODULE)
    try:
        res = analyze(AnalysisContext(store=store), [PROBE, "stop"])
    finally:
        sys.modules.pop("infdebug.analyzers.probe_broken", None)
    assert "RuntimeError: this module does not import" in res.failed["module probe_broken"]
    assert res.ran == [PROBE, "stop"] and not res.all_failed
    assert [f.kind for f in res.findings if f.analyzer == PROBE] == ["probe.ran"]


def test_modules_named_private_are_not_imported(tmp_path: Any, dropped: str) -> None:
    with open(os.path.join(dropped, "_probe_private.py"), "w") as f:
        f.write(BROKEN_MODULE)
    assert discover() == {}


RUNNER = (
    "import sys\n"
    "import infdebug.analyzers as pkg\n"
    "pkg.__path__.append(sys.argv.pop(1))\n"
    "from infdebug.cli import cli\n"
    "from infdebug.cli.analyze import register\n"
    "if 'analyze' not in cli.commands: register(cli)\n"
    "cli(prog_name='infdebug')\n"
)


def _cli(home: str, dropped: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFDEBUG_HOME": home, "COLUMNS": "120"}
    env.pop("INFDEBUG_CLICKHOUSE_URL", None)
    return subprocess.run(
        [sys.executable, "-c", RUNNER, dropped, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_infdebug_analyze_runs_a_dropped_module(tmp_path: Any, dropped: str) -> None:
    log = str(tmp_path / "log.jsonl")
    with open(log, "wb") as f:
        f.write(encode_records([make_request(i) for i in range(12)]))
    home = str(tmp_path / "home")
    p = _cli(home, dropped, "analyze", log, "--json")
    doc = json.loads(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [f["values"] for f in doc["findings"] if f["analyzer"] == PROBE] == [{"requests": 12}]
    assert "failed" not in doc
    p = _cli(home, dropped, "analyze", log, "--json", "--only", "nonexistent")
    assert p.returncode == 2
    listed = json.loads(p.stdout)["error"].split("expected one of ", 1)[1].split(", ")
    _forget([PROBE])
    assert listed == analyzer_names() and PROBE in listed  # the CLI's set is this process's


def test_the_demos_analyze_step_runs_a_dropped_module(
    store: Store, tmp_path: Any, dropped: str, shared_data: str
) -> None:
    from infdebug.demo import _analyze

    load(store, tmp_path, [make_request(i) for i in range(20)])
    _analyze(
        store, os.path.join(shared_data, "tokenizers", "gpt2")
    )  # the reference: a real tokenizer
    _, rows = store.query(
        "SELECT analyzer, `values` FROM findings WHERE analyzer = {a:String}", {"a": PROBE}
    )
    assert len(rows) == 1 and json.loads(rows[0][1]) == {"requests": 20}


def test_the_benchmark_runs_every_analyzer_through_the_same_run(
    store: Store, tmp_path: Any, dropped: str, shared_data: str
) -> None:
    from infdebug.text.tokenizer import load_tokenizer

    spec = importlib.util.spec_from_file_location(
        "bench_analyze", os.path.join(REPO, "bench", "analyze.py")
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    load(store, tmp_path, [make_request(i) for i in range(20)])
    tok = load_tokenizer(os.path.join(shared_data, "tokenizers", "gpt2"))
    out = bench.one_repeat(store, AnalysisContext(store=store, tokenizer=tok), None)
    assert sorted(out["analyzers"]) == analyzer_names() and PROBE in out["analyzers"]
    assert out["findings"][PROBE] == {"probe.ran:info": 1} and out["failed"] == {}
    rows = {r["part"] for r in bench.table([out], 20)}
    assert f"{PROBE} analyzer" in rows and "all analyzers" in rows
