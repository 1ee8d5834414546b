"""The dashboard through Streamlit's AppTest (every page, on a store loaded from sample_logs/
plus hostile records), its pieces (token chips and alignment, the report, the queries with
hostile values), and the store states a page must explain instead of failing."""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402

from infdebug.collectors.ingest import ingest_paths  # noqa: E402
from infdebug.dashboard import evidence, report, runtime, tokens  # noqa: E402
from infdebug.schema import Finding  # noqa: E402
from infdebug.store import open_store  # noqa: E402
from infdebug.store import q_dashboard as q  # noqa: E402
from infdebug.store.q_common import make_unit  # noqa: E402
from tests.conftest import REPO, make_request  # noqa: E402

APP = os.path.join(REPO, "infdebug", "dashboard", "app.py")
PAGES = ("overview", "replica", "finding", "requests", "workload", "report")
HOSTILE_REPLICA = "r9'\"; DROP TABLE requests; --"
HOSTILE_ID = "id' OR '1'='1"
BIG_PROMPT = "lorem ipsum " * 900_000  # ~10 MB
LONG_IDS = list(range(100_000))


def hostile_records(path: Path) -> None:
    recs = [
        make_request(
            1,
            request_id=HOSTILE_ID,
            replica=HOSTILE_REPLICA,
            deployment="x'y",
            t_arrival=1_796_163_900.0,
        ),
        make_request(
            2,
            request_id="big-prompt",
            replica="r1",
            deployment="canary",
            prompt_text=BIG_PROMPT,
            t_arrival=1_796_163_901.0,
            prompt_ids=[1, 2, 3],
        ),
        make_request(
            3,
            request_id="long-ids",
            replica="r1",
            deployment="canary",
            prompt_ids=LONG_IDS,
            output_ids=LONG_IDS[:50_000],
            t_arrival=1_796_163_902.0,
        ),
    ]
    enc = msgspec.json.Encoder()
    path.write_bytes(b"".join(enc.encode(r) + b"\n" for r in recs))


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[runtime.Runtime]:
    """The dashboard's runtime on a store holding sample_logs/ and three hostile records."""
    home = tmp_path_factory.mktemp("dash") / "home"
    extra = tmp_path_factory.mktemp("hostile") / "hostile.requests.jsonl"
    hostile_records(extra)
    st = open_store(home=str(home))
    try:
        rep = ingest_paths(
            st,
            [
                os.path.join(REPO, "sample_logs", "baseline"),
                os.path.join(REPO, "sample_logs", "canary"),
                str(extra),
            ],
            rejects_path=str(home) + ".rejects.jsonl",
        )
        assert sum(r.rejected for r in rep.files) == 0
    finally:
        st.close()
    rt = runtime.configure(runtime.Config(home=str(home)))
    assert rt.store is not None, rt.error
    yield rt
    runtime.reset()


def _run(page: str, params: dict[str, str] | None = None, wait: float = 90.0) -> AppTest:
    """Run a page as the navigation app does, until its background analysis is done."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(f"views/{page}.py")
    for k, v in (params or {}).items():
        at.query_params[k] = v
    at.run()
    deadline = time.monotonic() + wait
    while any("analysers running" in c.value for c in at.caption):
        assert time.monotonic() < deadline, "the analysis never finished"
        time.sleep(0.3)
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _texts(at: AppTest) -> str:
    parts: list[str] = []
    for kind in (
        "title",
        "subheader",
        "markdown",
        "caption",
        "text",
        "info",
        "warning",
        "error",
        "success",
        "code",
    ):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(dash: runtime.Runtime, page: str) -> None:
    at = _run(page)
    assert at.title, page
    assert not at.error, [e.value for e in at.error]


def test_overview_shows_the_canary_findings(dash: runtime.Runtime) -> None:
    text = _texts(_run("overview"))
    assert "replica\\.latency\\_regression" in text and "r2 \\(canary\\)" in text
    assert "template\\.double\\_bos" in text and "r3 \\(canary\\)" in text
    assert "SIMULATED" in text  # the sample fleet's GPU samples are simulated, and say so
    # the feed is most severe first: the first finding is an error
    first = next(m.value for m in _run("overview").markdown if "·" in m.value)
    assert first.startswith(":red-badge[error]")


def test_overview_heatmap_switches_to_tpot(dash: runtime.Runtime) -> None:
    at = _run("overview")
    (choice,) = [w for w in at.get("segmented_control") if w.key == "heatmap_metric"]
    assert choice.value == "TTFT p99"
    choice.set_value("TPOT p99").run()
    assert not at.exception, [e.message for e in at.exception]
    specs = [c.proto.spec for c in at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")]
    assert any("TPOT p99 (mean inter-token gap)" in s for s in specs)
    assert not any('"TTFT p99"' in s for s in specs)  # one heatmap at a time


def _finding_id(rt: runtime.Runtime, kind: str, replica: str) -> str:
    a = rt.analysis({"since": 0.0, "until": 1e11, "replicas": []})
    assert a is not None
    res = a.future.result(timeout=120)
    f = next(
        f for f in res.findings if f.kind == kind and (f.scope or {}).get("replica") == replica
    )
    return runtime.finding_id(f)


def test_double_bos_finding_shows_the_aligned_tokens(dash: runtime.Runtime) -> None:
    fid = _finding_id(dash, "template.double_bos", "r3")
    at = _run("finding", {"id": fid})
    text = _texts(at)
    assert "first divergence at token 1" in text
    html = "\n".join(m.value for m in at.markdown if "tkrow" in m.value)
    # row A (r3 canary) starts BOS BOS, the second one outlined as the first divergence
    row_a = html.split("</div>")[0]
    assert row_a.count("<small>5072</small>") >= 2
    assert 'class="tk ins first" title="ID 5072"' in row_a
    assert "same text" in text  # the rendered prompts agree: only the IDs differ


def test_latency_finding_shows_distributions_and_numbers(dash: runtime.Runtime) -> None:
    fid = _finding_id(dash, "replica.latency_regression", "r2")
    at = _run("finding", {"id": fid})
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")
    text = _texts(at)
    assert "The numbers" in text and "slowest requests" in text


def test_unknown_finding_id_offers_the_list(dash: runtime.Runtime) -> None:
    at = _run("finding", {"id": "nope"})
    assert "not among this window" in _texts(at)
    assert at.selectbox and at.selectbox[0].options


def test_request_explorer_finds_hostile_id_exactly(dash: runtime.Runtime) -> None:
    at = _run("requests", {"id": HOSTILE_ID})
    text = _texts(at)
    assert HOSTILE_ID in text.replace("\\", "")
    assert at.metric[0].value == f"{HOSTILE_REPLICA} (x'y)"
    # an ID that would match everything if formatted into SQL matches nothing
    at = _run("requests", {"id": "x' OR '1'='1"})
    assert "No request matches" in _texts(at)


def test_huge_prompt_is_cut_with_show_all(dash: runtime.Runtime) -> None:
    at = _run("requests", {"id": "big-prompt"})
    codes = [c.value for c in at.code]
    shown = max(len(c) for c in codes)
    assert shown < 50_000  # ~10 MB logged, 20k characters shown
    assert any("show all" in t.label for t in at.toggle)
    at.toggle(key="all-p-big-prompt").set_value(True).run()
    assert max(len(c.value) for c in at.code) >= len(BIG_PROMPT)


def test_100k_token_request_shows_a_window(dash: runtime.Runtime) -> None:
    at = _run("requests", {"id": "long-ids"})
    chips = next(m.value for m in at.markdown if '<div class="tkrow">' in m.value)
    assert chips.count('class="tk"') <= 2_001 and "more" in chips
    assert any("100,000" in t.label for t in at.toggle)


def test_hostile_replica_renders_in_overview_and_drilldown(dash: runtime.Runtime) -> None:
    at = _run("overview")
    table = at.dataframe[0].value
    assert any(HOSTILE_REPLICA in str(v) for v in table["replica"])
    unit = make_unit(HOSTILE_REPLICA, "x'y")
    at = _run("replica", {"unit": unit})
    assert HOSTILE_REPLICA in _texts(at).replace("\\", "")


def test_report_zip_has_markdown_and_pngs(dash: runtime.Runtime) -> None:
    at = _run("report")
    assert "Incident report" in _texts(at)
    # the page's own builder, rendered as the download button does
    a = dash.analysis({"since": 0.0, "until": 1e11, "replicas": []})
    assert a is not None
    findings = a.future.result(timeout=60).findings
    md = report.markdown(
        report.Scope("store", None, 1e11, [], 10, 1.0, 2.0), findings, [("QPS", "qps.png")]
    )
    import altair as alt
    import pandas as pd

    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(x="x", y="y")
    blob = report.bundle(md, [("qps.png", report.png(chart))])
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        assert set(z.namelist()) == {"report.md", "charts/qps.png"}
        assert z.read("charts/qps.png")[:8] == b"\x89PNG\r\n\x1a\n"
        text = z.read("report.md").decode()
    assert (
        "template.double_bos" in text and "## Timeline" in text and "![QPS](charts/qps.png)" in text
    )


# --- queries with hostile values -------------------------------------------------------------


def test_queries_bind_hostile_values(dash: runtime.Runtime) -> None:
    st = dash.store
    assert st is not None
    w = {"since": 0.0, "until": 1e11, "replicas": []}
    n = q.data_span(st).requests  # type: ignore[arg-type]
    assert q.search(st, w, request_id="x' OR 1=1 --") == []  # type: ignore[arg-type]
    assert q.search(st, w, text="'; DROP TABLE requests; --") == []  # type: ignore[arg-type]
    assert q.search(st, w, unit="' OR ''='") == []  # type: ignore[arg-type]
    assert len(q.search(st, {**w, "replicas": [HOSTILE_REPLICA]})) == 1  # type: ignore[arg-type]
    assert q.finish_reasons(st, w, make_unit(HOSTILE_REPLICA, "x'y")) == [  # type: ignore[arg-type]
        {"finish_reason": "stop", "requests": 1}
    ]
    assert q.data_span(st).requests == n  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown order"):
        q.search(st, w, order="1; DROP TABLE requests")  # type: ignore[arg-type]


# --- the store states a page explains --------------------------------------------------------


def test_empty_store_says_how_to_get_data_in(tmp_path: Path) -> None:
    runtime.configure(runtime.Config(home=str(tmp_path / "empty")))
    try:
        at = AppTest.from_file(APP, default_timeout=60).run()
        assert not at.exception
        text = _texts(at)
        assert "no requests yet" in text and "infdebug ingest" in text
    finally:
        runtime.reset()


def test_store_held_by_another_process_names_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    home = tmp_path / "held"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from infdebug.store import open_store; "
            f"s = open_store(home={str(home)!r}); print('open', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        rt = runtime.configure(runtime.Config(home=str(home)))
        assert rt.store is None and rt.busy
        at = AppTest.from_file(APP, default_timeout=60).run()
        text = _texts(at)
        assert "held by another process" in text and str(holder.pid) in text
        assert "--clickhouse" in text
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
        runtime.reset()


# --- token chips, alignment, evidence --------------------------------------------------------


def test_chips_make_whitespace_and_specials_visible(shared_data: str) -> None:
    from infdebug.text.tokenizer import load_tokenizer

    tok = load_tokenizer(os.path.join(shared_data, "tokenizers", "llama3"))
    ids = tok.encode("<|begin_of_text|>Hi there\n\tok", add_special_tokens=False)
    html = tokens.chips(ids, tok)
    assert 'class="tk sp"' in html  # <|begin_of_text|> is special
    assert "␣there" in html and "↵" in html and "⇥" in html
    assert "<|begin_of_text|>" not in html  # escaped: &lt;|begin_of_text|&gt;
    assert "&lt;|begin_of_text|&gt;" in html


def test_chips_escape_hostile_pieces() -> None:
    class Tok:
        special_tokens: dict[str, str] = {}

        def decode(self, ids: list[int]) -> str:
            return "<script>alert(1)</script>"

        def piece(self, i: int) -> str:
            return "x"

    html = tokens.chips([1], Tok())
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_alignment_finds_insertions_and_changes() -> None:
    a, b = [1, 1, 5, 6, 7, 8], [1, 5, 6, 9, 8]
    assert tokens.first_divergence(a, b) == 1
    cells = tokens.align(a, b)
    assert [c.op for c in cells] == ["equal", "delete", "equal", "equal", "replace", "equal"]
    assert tokens.first_divergence([1, 2], [1, 2]) is None
    assert tokens.first_divergence([1, 2], [1, 2, 3]) == 2
    # past the aligned window the rest stays side by side (difflib only sees the window)
    long_a = list(range(50_000))
    long_b = [0, *range(2, 50_000)]
    cells = tokens.align(long_a, long_b, window=100)
    assert (
        len(cells) == 50_000 and cells[1].op == "delete" and cells[2] == tokens.Cell(2, 1, "equal")
    )


def test_evidence_pairs_and_views() -> None:
    f = Finding(
        kind="tokenizer.cross_replica_ids",
        analyzer="tokenizer",
        severity="error",
        summary="s",
        scope={"replica": "r3", "deployment": "canary"},
        evidence={"example": {"this": {"request_id": "a"}, "reference": {"request_id": "b"}}},
    )
    assert evidence.pair(f) == evidence.Pair("a", "b")
    g = Finding(
        kind="template.double_bos",
        analyzer="template",
        severity="error",
        summary="s",
        evidence={"request_ids": ["x", "y"], "reference_replicas": ["r3 (baseline)", "r1"]},
    )
    p = evidence.pair(g)
    assert p.this == "x" and p.other is None
    assert p.prefer_units == (make_unit("r3", "baseline"), make_unit("r1", None))
    assert evidence.views(g) == ["template", "tokens"]
    h = Finding(
        kind="replica.latency_regression",
        analyzer="latency",
        severity="error",
        summary="s",
        values={"metric": "itl_s"},
    )
    assert evidence.views(h) == ["latency"]
    assert evidence.request_ids(g) == ["x", "y"]


def test_report_markdown_escapes_table_cells() -> None:
    f = Finding(
        kind="k.x", analyzer="a", severity="warning", summary="s", values={"a|b": "c|d\nnext"}
    )
    md = report.markdown(report.Scope("st", None, None, [], 0, None, None), [f])
    assert "| a\\|b | c\\|d next |" in md


def test_the_dashboard_never_imports_into_analyzers_or_store() -> None:
    import subprocess
    import sys

    code = (
        "import sys, infdebug.analyzers.base as b, infdebug.store as s; b.discover(); "
        "import infdebug.cli; "
        "print(any(m.startswith('infdebug.dashboard') or m == 'streamlit' for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
