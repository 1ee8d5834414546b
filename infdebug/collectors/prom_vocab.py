"""One vocabulary for inference engines' Prometheus metrics: each engine's stored metric names
mapped onto infdebug's canonical terms, with the scale into the term's unit and a note where
the meaning differs.

Names are the names ``metrics`` records are stored under (``prom_snapshot``): a counter's
exposed sample name (``vllm:prompt_tokens_total``), a histogram's or summary's family name
without ``_bucket``/``_sum``/``_count`` (``vllm:time_to_first_token_seconds``), a gauge's
name. The table itself is data, in ``prom_vocab_table``; ``python -m
infdebug.collectors.prom_vocab`` prints it as Markdown (``docs/metrics-vocabulary.md``).

Where each engine's names were confirmed (stored copies of the public repositories; a name
not confirmed there says so in its note):

* vLLM V0: vllm-project/vllm ``vllm/engine/metrics.py`` (commits 00c33e81, f0afa0c2) and,
  for the later V0 names (queue/prefill/decode/inference times, ``iteration_tokens_total``,
  ``gpu_prefix_cache_hit_rate``, ``*_milliseconds``), the V0 list in
  ``docs/source/design/v1/metrics.md`` (commit 0bfe4dca); checked against the real V0
  exposition ``vllm_metrics_v0_qwen2.5-coder-1.5b_aibrix-docs.prom``.
* vLLM V1: vllm-project/vllm ``vllm/v1/metrics/loggers.py`` at 005a810b (v0.10.x) and a
  later stored version of the same file (v0.11+: ``inter_token_latency_seconds``,
  ``request_time_per_output_token_seconds``, ``engine_sleep_state``; commit not shown by the
  index); ``*_created`` gauges seen in published V1 expositions.
* SGLang: sgl-project/sglang ``python/sglang/srt/metrics/metrics_collector.py`` (0.3.x,
  commits 029316b8, 5416fff9: label ``name=``, ``num_requests_running``,
  ``time_per_output_token_seconds``, ``waiting_request_latency_seconds``, console log of
  ``cache_hit_rate`` with a ``%``) and ``python/sglang/srt/metrics/collector.py`` (commit
  00ae9c15: ``num_running_reqs``, ``num_queue_reqs``, ``inter_token_latency_seconds``,
  ``queue_time_seconds``, …); the 0.4 tokenizer-manager TPOT observation and the 0.4
  ``cache_hit_rate = hit / (input + hit)`` from stored scheduler/tokenizer-manager copies;
  checked against ``production_metrics@5bc2508b.md`` and the 2024-11 exposition.
* TGI: huggingface/text-generation-inference ``docs/source/reference/metrics.md`` (commit
  53fdbe61) and stored copies of the router's ``server.rs`` (path not shown by the index;
  metrics-exporter-prometheus: ``*duration`` histograms in seconds, counters without
  ``_total``, how each duration and the mean time per token are measured).
* TensorRT-LLM: NVIDIA/TensorRT-LLM ``tensorrt_llm/metrics/collector.py`` (commit 050f80de,
  prefix ``trtllm_``, labels ``model_name``/``engine_type``) and the TPOT computation in the
  per-request metrics helper; ai-dynamo's ``trtllm/prometheus.md`` for the 1.1 subset.
* Dynamo: ai-dynamo/dynamo ``lib/runtime/src/metrics/prometheus_names.rs`` (commit
  04070c75) and a stored copy of the frontend's ``Metrics::new`` (the HTTP service's
  ``metrics.rs``; path not shown by the index): types, labels, the ``tokenizer_latency_ms``
  histogram in milliseconds.
* DCGM: NVIDIA/dcgm-exporter ``etc/default-counters.csv`` (commits b54068a9, 00d6d344:
  units W, C, MHz, %, MiB, mJ). ``DCGM_FI_DEV_POWER_MGMT_LIMIT`` is not in the default file
  (DCGM field, added by custom counter files). Labels (``gpu``, ``UUID``, ``modelName`` = the
  GPU product) from published expositions.
* infdebug: ``infdebug/tracer/prom.py`` and ``infdebug/tracer/gpu.py`` (this repository).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable

from infdebug.collectors.prom_vocab_table import (
    ENGINES,
    MAPPING_LIST,
    PYTHON_CLIENT_ENGINES,
    TERM_LIST,
    UNMAPPED_LIST,
    VLLM_V0_ONLY,
    Mapping,
    Term,
    Unmapped,
)

__all__ = [
    "ENGINES",
    "GPU_FIELDS",
    "MAPPINGS",
    "TERMS",
    "UNMAPPED",
    "UNMAPPED_WHY",
    "Mapping",
    "Term",
    "Unmapped",
    "created_stamp",
    "engine_of",
    "lookup",
    "model_of",
    "sources_of",
    "vocabulary_markdown",
]

TERMS: dict[str, Term] = {t.name: t for t in TERM_LIST}
MAPPINGS: tuple[Mapping, ...] = MAPPING_LIST

# DCGM exporter name -> (GpuSample field, scale into that field's unit).
GPU_FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": ("power_limit_w", 1.0),
    "DCGM_FI_DEV_GPU_TEMP": ("temp_c", 1.0),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_MEM_CLOCK": ("mem_clock_mhz", 1.0),
    "DCGM_FI_DEV_GPU_UTIL": ("util_pct", 1.0),  # both percent
    "DCGM_FI_DEV_FB_USED": ("mem_used_bytes", 1048576.0),  # MiB
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_j", 0.001),  # mJ since boot
}


def _index() -> dict[str, Mapping]:
    by_source: dict[str, Mapping] = {}
    for m in MAPPINGS:
        if m.source in by_source:
            raise ValueError(f"two mappings for the source {m.source!r}")
        if m.term not in TERMS:
            raise ValueError(f"{m.source!r} maps to {m.term!r}, which is not a term")
        by_source[m.source] = m
    return by_source


_BY_SOURCE = _index()
_BY_TERM: dict[str, list[Mapping]] = {}
for _m in MAPPINGS:
    _BY_TERM.setdefault(_m.term, []).append(_m)


def created_stamp(source: str, kind: str) -> str | None:
    """The ``*_created`` gauge prometheus_client adds beside a counter or histogram series:
    a counter's without its ``_total`` (``vllm:prompt_tokens_created``), a histogram's after
    its full family name (``vllm:iteration_tokens_total_created``)."""
    if kind == "counter":
        return source.removesuffix("_total") + "_created"
    if kind in ("histogram", "summary"):
        return source + "_created"
    return None


def _unmapped() -> dict[str, str]:
    why = {u.source: u.why for u in UNMAPPED_LIST}
    stamped: list[tuple[str, str, str]] = [
        (m.engine, m.source, m.kind or TERMS[m.term].kind) for m in MAPPINGS
    ]
    stamped += [(u.engine, u.source, u.kind) for u in UNMAPPED_LIST]
    for engine, source, kind in stamped:
        stamp = created_stamp(source, kind)
        if engine in PYTHON_CLIENT_ENGINES and stamp and stamp not in _BY_SOURCE:
            why.setdefault(stamp, f"prometheus_client's creation time of {source}")
    for name in why:
        if name in _BY_SOURCE:
            raise ValueError(f"{name!r} is both mapped and unmapped")
    return why


UNMAPPED_WHY: dict[str, str] = _unmapped()
UNMAPPED: frozenset[str] = frozenset(UNMAPPED_WHY)


def lookup(name: str) -> Mapping | None:
    """The mapping of a stored metric name, or None for a name not in the vocabulary."""
    return _BY_SOURCE.get(name)


# Sources whose unit depends on the engine's version, told by a label: (source, label present,
# label absent) -> the factor on top of ``Mapping.scale``. SGLang 0.3 (label name=) wrote its
# hit rate as a percent, 0.4+ (model_name=) a 0..1 ratio.
_LABEL_SCALES: dict[tuple[str, str, str], float] = {
    ("sglang:cache_hit_rate", "name", "model_name"): 0.01,
}


def value_in_unit(m: Mapping, labels: dict[str, str] | None, v: float) -> float | None:
    """A gauge or counter sample of ``m`` in its term's unit; None for "no data" (a ratio
    below 0: vLLM V0's prefix-cache hit rate is -1 with caching off). A ratio over 1 is a
    percent whatever the engine said."""
    v *= m.scale
    if TERMS[m.term].unit != "ratio":
        return v
    if v < 0:
        return None
    labels = labels or {}
    for (src, present, absent), factor in _LABEL_SCALES.items():
        if m.source == src and present in labels and absent not in labels:
            return v * factor
    return v / 100.0 if v > 1.0 else v


def sources_of(term: str) -> list[Mapping]:
    """Every engine's source for a term, in table order (empty for an unknown term)."""
    return list(_BY_TERM.get(term, ()))


_MODEL_LABELS = ("model_name", "model", "served_model_name", "name", "modelName")


def model_of(labels: dict[str, str] | None) -> str | None:
    """The served model a series' labels name: ``model_name=`` (vLLM, SGLang 0.4+,
    TensorRT-LLM), ``model=`` (Dynamo), ``name=`` (SGLang 0.3), ``modelName=``. DCGM's
    ``modelName=`` is the GPU product, so it is not read beside DCGM's ``UUID``/``gpu``."""
    if not labels:
        return None
    for key in _MODEL_LABELS:
        value = labels.get(key)
        if not value:
            continue
        if key == "modelName" and ("UUID" in labels or "gpu" in labels):
            continue
        return value
    return None


_FAMILIES: tuple[tuple[str, str], ...] = (
    ("vllm:", "vllm"),
    ("sglang:", "sglang"),
    ("tgi_", "tgi"),
    ("trtllm_", "trtllm"),
    ("trtllm:", "trtllm"),
    ("dynamo_frontend_", "dynamo"),  # a Dynamo worker's dynamo_component_* name its engine
    ("DCGM_", "dcgm"),
    ("infdebug_", "infdebug"),
)
_FAMILY_ORDER = ("vllm", "sglang", "tgi", "trtllm", "dynamo", "dcgm", "infdebug")
_VLLM_V1_ONLY: frozenset[str] = frozenset(
    [m.source for m in MAPPINGS if m.engine == "vllm-v1"]
    + [u.source for u in UNMAPPED_LIST if u.engine == "vllm-v1"]
)


def _family(name: str) -> str | None:
    for prefix, family in _FAMILIES:
        if name.startswith(prefix):
            return family
    return None


def engine_of(names: Iterable[str]) -> str | None:
    """The engine family an exposition comes from, by its stored names: the family most of
    its names belong to (a Dynamo worker passing its engine's metrics through counts as that
    engine), and for vLLM, V1 when any V1-only name is there, else V0 when a V0-only name
    is, else V1 (the only engine vLLM ships since v0.11)."""
    seen = set(names)
    counts = Counter(f for f in map(_family, seen) if f is not None)
    if not counts:
        return None
    family = max(counts, key=lambda f: (counts[f], -_FAMILY_ORDER.index(f)))
    if family != "vllm":
        return family
    if seen & _VLLM_V1_ONLY:
        return "vllm-v1"
    if seen & VLLM_V0_ONLY:
        return "vllm-v0"
    return "vllm-v1"


def _engine_rank(engine: str) -> int:
    return ENGINES.index(engine) if engine in ENGINES else len(ENGINES)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _scale(x: float) -> str:
    return "" if x == 1.0 else f"x{x:.10g}"


def vocabulary_markdown() -> str:
    """The whole vocabulary as Markdown: the terms, then every source per term and engine
    with its scale and note, then the names left unmapped and why."""
    out = [
        "# Engine metrics vocabulary",
        "",
        "<!-- Generated by `python -m infdebug.collectors.prom_vocab`; do not edit. -->",
        "",
        "Each engine's Prometheus metric names mapped onto infdebug's canonical terms",
        "(`infdebug/collectors/prom_vocab_table.py`). A source is the name a `metrics` record",
        "is stored under: a counter's sample name (`…_total`), a histogram's family name",
        "(without `_bucket`/`_sum`/`_count`), a gauge's name. Multiply values by the scale",
        "(for a histogram, its `le` edges too) to reach the term's unit.",
        "",
        "## Terms",
        "",
        "| term | kind | unit | meaning |",
        "| --- | --- | --- | --- |",
    ]
    out += [f"| `{t.name}` | {t.kind} | {t.unit} | {_cell(t.help)} |" for t in TERM_LIST]
    out += [
        "",
        "## Sources",
        "",
        "| term | unit | engine | source | scale | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in TERM_LIST:
        rows = sorted(_BY_TERM.get(t.name, ()), key=lambda m: _engine_rank(m.engine))
        for m in rows:
            note = (f"(source kind: {m.kind}) " if m.kind else "") + m.note
            out.append(
                f"| `{t.name}` | {t.unit} | {m.engine} | `{m.source}` | {_scale(m.scale)} "
                f"| {_cell(note)} |"
            )
    out += [
        "",
        "## Not mapped",
        "",
        "Known names left out on purpose. Besides these, every `*_created` gauge that",
        "prometheus_client adds beside a counter or histogram (vLLM, SGLang, TensorRT-LLM,",
        "infdebug) is unmapped: it holds the series' creation time.",
        "",
        "| engine | source | kind | why |",
        "| --- | --- | --- | --- |",
    ]
    out += [
        f"| {u.engine} | `{u.source}` | {u.kind} | {_cell(u.why)} |"
        for u in sorted(UNMAPPED_LIST, key=lambda u: _engine_rank(u.engine))
    ]
    out += [
        "",
        "## DCGM fields of `gpu` records",
        "",
        "| DCGM name | GpuSample field | scale |",
        "| --- | --- | --- |",
    ]
    out += [f"| `{k}` | `{f}` | {_scale(s) or '1'} |" for k, (f, s) in GPU_FIELDS.items()]
    return "\n".join(out) + "\n"


def main() -> int:
    sys.stdout.write(vocabulary_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
