"""The engine-metrics vocabulary (infdebug/collectors/prom_vocab.py) against real expositions
(../shared/data/logs: SGLang's 2024-11 docs example, a vLLM V0 scrape, SGLang's docs page),
expositions shaped as each other engine emits them (tests/data/prom/), and infdebug's own
tracer registry, each parsed the way the scraper stores them (prom_snapshot)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import msgspec
import pytest

pytest.importorskip("prometheus_client")

from infdebug.collectors import prom_vocab as v  # noqa: E402
from infdebug.collectors.prom_snapshot import read_exposition  # noqa: E402
from infdebug.collectors.prom_vocab_table import PYTHON_CLIENT_ENGINES  # noqa: E402
from infdebug.schema import GpuSample, MetricSample, Request  # noqa: E402

HERE = Path(__file__).resolve().parent
PROM = HERE / "data" / "prom"
DOC = HERE.parent / "docs" / "metrics-vocabulary.md"

REQUIRED_TERMS = {
    "ttft_seconds",
    "itl_seconds",
    "tpot_seconds",
    "e2e_seconds",
    "queue_seconds",
    "prefill_seconds",
    "decode_seconds",
    "prompt_tokens_total",
    "generation_tokens_total",
    "requests_finished_total",
    "preemptions_total",
    "requests_running",
    "requests_waiting",
    "kv_cache_usage_ratio",
    "prefix_cache_hit_ratio",
    "prefix_cache_hits_total",
    "prefix_cache_queries_total",
    "request_prompt_tokens",
    "request_generation_tokens",
    "generation_throughput",
}


def _check_covered(records: Iterable[MetricSample]) -> set[str]:
    """Every stored name maps or is deliberately unmapped, and each mapped record is of the
    kind its mapping says its source is. Returns the names."""
    records = list(records)
    names = {r.name for r in records}
    assert names
    unknown = sorted(n for n in names if v.lookup(n) is None and n not in v.UNMAPPED)
    assert not unknown, f"neither mapped nor in UNMAPPED: {unknown}"
    for r in records:
        m = v.lookup(r.name)
        if m is not None:
            want = m.kind or v.TERMS[m.term].kind
            assert r.type == want, f"{r.name} is stored as a {r.type}, its mapping says {want}"
    return names


def _mapping(source: str) -> v.Mapping:
    m = v.lookup(source)
    assert m is not None, f"{source} is not mapped"
    return m


def _models(records: Iterable[MetricSample]) -> set[str]:
    return {m for r in records if (m := v.model_of(r.labels)) is not None}


def _read(path: str | Path) -> list[MetricSample]:
    records, rejects = read_exposition(str(path))
    assert not rejects, [(r.line, r.reason) for r in rejects]
    return records


# --- real expositions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "engine", "model"),
    [
        ("sglang_metrics_gemma2-9b_docs_2024-11.prom", "sglang", "google/gemma-2-9b-it"),
        (
            "vllm_metrics_v0_qwen2.5-coder-1.5b_aibrix-docs.prom",
            "vllm-v0",
            "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        ),
    ],
)
def test_real_exposition(shared_data: str, name: str, engine: str, model: str) -> None:
    records = _read(os.path.join(shared_data, "logs", name))
    names = _check_covered(records)
    assert v.engine_of(names) == engine
    assert _models(records) == {model}


def test_sglang_docs_example(shared_data: str, tmp_path: Path) -> None:
    text = Path(shared_data, "logs", "sglang_docs", "production_metrics@5bc2508b.md").read_text()
    blocks = [b for b in re.findall(r"```[^\n]*\n(.*?)```", text, re.S) if "# TYPE " in b]
    assert blocks, "no exposition block in the Markdown"
    prom = tmp_path / "sglang_docs.prom"
    prom.write_text("".join(blocks))
    records = _read(prom)
    names = _check_covered(records)
    assert v.engine_of(names) == "sglang"
    assert _models(records) == {"google/gemma-2-9b-it"}
    # Its TPOT histogram is token-weighted: one sample per output token after the first.
    by = {r.name: r for r in records}
    tpot, ttft = (
        by["sglang:time_per_output_token_seconds"],
        by["sglang:time_to_first_token_seconds"],
    )
    assert _mapping(tpot.name).term == "itl_seconds"
    assert tpot.count is not None and ttft.count is not None
    assert tpot.count + ttft.count == by["sglang:generation_tokens_total"].value
    # …and its cache_hit_rate is a percent, which the note says.
    assert (by["sglang:cache_hit_rate"].value or 0) > 1
    assert "percent" in _mapping("sglang:cache_hit_rate").note


# --- expositions shaped as each engine emits them -------------------------------------------

SHAPED = [
    ("vllm_v1.prom", "vllm-v1", {"Qwen/Qwen3-8B"}),
    ("tgi.prom", "tgi", set()),
    ("trtllm.prom", "trtllm", {"meta-llama/Llama-3.1-8B-Instruct"}),
    ("dynamo.prom", "dynamo", {"Qwen/Qwen3-0.6B"}),
    ("dcgm.prom", "dcgm", set()),  # modelName= there is the GPU, not a served model
    ("infdebug.prom", "infdebug", {"Qwen/Qwen2.5-0.5B-Instruct"}),
]


@pytest.mark.parametrize(("name", "engine", "models"), SHAPED)
def test_shaped_exposition(name: str, engine: str, models: set[str]) -> None:
    records = _read(PROM / name)
    names = _check_covered(records)
    assert v.engine_of(names) == engine
    assert _models(records) == models
    mapped = [v.lookup(n) for n in names]
    engines = {engine, "vllm-v0"} if engine == "vllm-v1" else {engine}  # V0 names V1 kept
    assert {m.engine for m in mapped if m is not None} <= engines
    for r in records:  # a histogram in milliseconds is scaled to seconds, edges and all
        if r.type == "histogram" and re.search(r"_(ms|milliseconds)$", r.name):
            m = v.lookup(r.name)
            assert m is not None and m.scale == 0.001, r.name


def test_dynamo_ms_histogram() -> None:
    (rec,) = [
        r for r in _read(PROM / "dynamo.prom") if r.name == "dynamo_frontend_tokenizer_latency_ms"
    ]
    m = v.lookup(rec.name)
    assert m is not None and m.scale == 0.001 and m.term == "tokenize_seconds"
    assert rec.buckets is not None and "512" in rec.buckets  # le edges in ms, as exposed


def test_vllm_v1_names_told_apart() -> None:
    names = {r.name for r in _read(PROM / "vllm_v1.prom")}
    assert _mapping("vllm:request_time_per_output_token_seconds").term == "tpot_seconds"
    assert _mapping("vllm:inter_token_latency_seconds").term == "itl_seconds"
    assert _mapping("vllm:time_per_output_token_seconds").term == "itl_seconds"
    assert {"vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"} <= names
    assert "vllm:prompt_tokens_created" in v.UNMAPPED
    assert "vllm:iteration_tokens_total_created" in v.UNMAPPED  # a histogram's stamp


def infdebug_exposition() -> bytes:
    """An exposition of infdebug's own tracer registry (replica metrics + GPU gauges), fed
    one finished request and one GPU sample (also how tests/data/prom/infdebug.prom was made)."""
    from prometheus_client import generate_latest

    from infdebug.tracer.gpu import GpuGauges
    from infdebug.tracer.prom import PromExporter, ReplicaMetrics

    m = ReplicaMetrics("r1", "Qwen/Qwen2.5-0.5B-Instruct")
    gauges = GpuGauges(m.registry)
    m.watch_load(lambda: (3, 1))
    PromExporter(m).export(
        Request(
            request_id="a",
            replica="r1",
            t_arrival=1_764_000_000.0,
            queue_s=0.01,
            prefill_s=0.05,
            ttft_s=0.07,
            e2e_s=0.5,
            token_times_s=[0.07, 0.1, 0.13],
            prompt_tokens=12,
            output_tokens=3,
            cached_prompt_tokens=4,
            finish_reason="stop",
        )
    )
    gauges.update(
        GpuSample(
            t=1_764_000_000.0,
            replica="r1",
            power_w=300.0,
            temp_c=60.0,
            sm_clock_mhz=1980.0,
            util_pct=85.0,
            mem_used_bytes=10**9,
            throttle_reasons=["power_cap"],
        )
    )
    m.dropped("jsonl")(0)
    m.tracer_errors.inc(0)
    out: bytes = generate_latest(m.registry)
    return out


def test_infdebug_registry_now(tmp_path: Path) -> None:
    """infdebug's tracer as it is now (not the committed snapshot): every name it exposes is
    in the vocabulary, so a metric added to the tracer must be added here too."""
    prom = tmp_path / "infdebug_now.prom"
    prom.write_bytes(infdebug_exposition())
    records = _read(prom)
    names = _check_covered(records)
    assert v.engine_of(names) == "infdebug"
    assert {m.term for n in names if (m := v.lookup(n))} >= {
        "ttft_seconds",
        "itl_seconds",
        "tpot_seconds",
        "gpu_power_watts",
    }


# --- the table itself -----------------------------------------------------------------------


def test_table_is_consistent() -> None:
    assert set(v.TERMS) >= REQUIRED_TERMS
    sources = [m.source for m in v.MAPPINGS]
    assert len(sources) == len(set(sources)), "two mappings share a source"
    for name, t in v.TERMS.items():
        assert t.name == name and t.kind in ("histogram", "counter", "gauge") and t.unit
        assert v.sources_of(name), f"term {name} has no source"
        if t.kind == "counter":
            assert name.endswith("_total"), name
    for m in v.MAPPINGS:
        assert m.term in v.TERMS, m
        assert m.engine in v.ENGINES, m
        assert v.lookup(m.source) is m
        assert m in v.sources_of(m.term)
        assert m.scale > 0
        assert m.kind in ("", "histogram", "counter", "gauge", "summary"), m
        assert m.kind != v.TERMS[m.term].kind, f"{m.source}: kind repeats the term's"
        if m.kind:
            assert m.note, f"{m.source}: a kind that differs needs a note"
        if v.TERMS[m.term].kind == "counter" and m.engine in PYTHON_CLIENT_ENGINES:
            assert m.source.endswith("_total"), m.source  # prometheus_client's sample name
        if re.search(r"_(ms|milliseconds)$", m.source):
            assert m.scale == 0.001, m.source
        if m.scale != 1.0:
            assert m.note, f"{m.source}: a scale needs a note saying the source's unit"
    assert not v.UNMAPPED & set(sources)
    assert all(v.UNMAPPED_WHY[n] for n in v.UNMAPPED)
    assert v.lookup("no_such_metric") is None and v.sources_of("no_such_term") == []


def test_meanings_that_differ_are_noted() -> None:
    def note(source: str) -> str:
        return _mapping(source).note.lower()

    assert "ratio" in note("vllm:gpu_cache_usage_perc")
    assert "counter pair" in note("vllm:gpu_prefix_cache_hit_rate")
    assert "prefix_cache_hit_ratio" in note("vllm:prefix_cache_hits_total")
    assert "request-weighted" in note("tgi_request_mean_time_per_token_duration")
    assert "seconds" in note("tgi_request_duration")
    assert "token-weighted" in note("vllm:time_per_output_token_seconds")
    assert "request-weighted" in note("vllm:request_time_per_output_token_seconds")
    assert "percent" in note("DCGM_FI_DEV_GPU_UTIL")
    assert "millijoules" in note("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
    assert "mib" in note("DCGM_FI_DEV_FB_USED")
    assert _mapping("DCGM_FI_DEV_FB_USED").scale == 1048576


def test_gpu_fields() -> None:
    fields = {f.name for f in msgspec.structs.fields(GpuSample)}
    for dcgm, (field, scale) in v.GPU_FIELDS.items():
        assert field in fields, field
        m = v.lookup(dcgm)
        assert m is not None and m.engine == "dcgm", dcgm
        assert scale > 0
    assert v.GPU_FIELDS["DCGM_FI_DEV_POWER_USAGE"] == ("power_w", 1.0)
    assert v.GPU_FIELDS["DCGM_FI_DEV_FB_USED"] == ("mem_used_bytes", 1048576.0)
    assert v.GPU_FIELDS["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == ("energy_j", 0.001)
    # Applied to the DCGM exposition, every field makes a valid GpuSample.
    per_gpu: dict[str, dict[str, float]] = {}
    for r in _read(PROM / "dcgm.prom"):
        if r.name in v.GPU_FIELDS and r.labels and r.value is not None:
            field, scale = v.GPU_FIELDS[r.name]
            per_gpu.setdefault(r.labels["gpu"], {})[field] = r.value * scale
    assert set(per_gpu) == {"0", "1"}
    for gpu, vals in per_gpu.items():
        fields_in = {"t": 0.0, "replica": "r1", "gpu_index": int(gpu), **vals}
        s = msgspec.convert(fields_in, GpuSample, strict=False)  # MiB * 2**20: a whole int
        assert s.mem_used_bytes == 74670 * 1048576
        assert s.power_limit_w == 700


def test_model_of() -> None:
    assert v.model_of(None) is None and v.model_of({}) is None
    assert v.model_of({"model_name": "a", "engine": "0"}) == "a"
    assert v.model_of({"name": "b"}) == "b"
    assert v.model_of({"model": "c", "endpoint": "chat_completions"}) == "c"
    assert v.model_of({"modelName": "d"}) == "d"
    assert v.model_of({"gpu": "0", "UUID": "GPU-x", "modelName": "NVIDIA H100"}) is None
    assert v.model_of({"model_name": "", "model": "e"}) == "e"


def test_engine_of() -> None:
    assert v.engine_of([]) is None
    assert v.engine_of(["process_cpu_seconds_total"]) is None
    shared = ["vllm:num_requests_running", "vllm:prompt_tokens_total"]
    assert v.engine_of(shared + ["vllm:kv_cache_usage_perc"]) == "vllm-v1"
    assert v.engine_of(shared + ["vllm:num_requests_swapped"]) == "vllm-v0"
    assert v.engine_of(shared) == "vllm-v1"
    # A Dynamo worker passes its engine's metrics through beside its runtime's own.
    worker = ["dynamo_component_requests_total", "dynamo_component_inflight_requests"]
    assert v.engine_of(worker + ["sglang:num_running_reqs"]) == "sglang"
    assert v.engine_of(iter(["DCGM_FI_DEV_GPU_TEMP"])) == "dcgm"


# --- the Markdown ---------------------------------------------------------------------------


def test_markdown_names_every_source() -> None:
    md = v.vocabulary_markdown()
    for m in v.MAPPINGS:
        assert f"`{m.source}`" in md, m.source
    for t in v.TERMS:
        assert f"`{t}`" in md, t
    assert md.endswith("\n") and "| x0.001 |" in md


def test_committed_doc_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == v.vocabulary_markdown(), (
        "docs/metrics-vocabulary.md is stale: "
        "python -m infdebug.collectors.prom_vocab > docs/metrics-vocabulary.md"
    )


def test_module_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "infdebug.collectors.prom_vocab"],
        capture_output=True,
        check=True,
        cwd=HERE.parent,
    ).stdout
    assert out.decode("utf-8") == v.vocabulary_markdown()
