"""The data of the engine-metrics vocabulary: canonical terms, each engine's source names, and
the names deliberately left unmapped (``prom_vocab`` indexes them; see its docstring for the
sources each engine's names were confirmed from).

A source name is the name a ``metrics`` record is stored under (``prom_snapshot``): a
counter's exposed sample name (``…_total``), a histogram's or summary's family name, a
gauge's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TermKind = Literal["histogram", "counter", "gauge"]


@dataclass(frozen=True)
class Term:
    """One canonical quantity, in infdebug's own words."""

    name: str
    kind: TermKind
    unit: str
    help: str


@dataclass(frozen=True)
class Mapping:
    """One engine's stored metric name for a term. ``scale`` multiplies values (and a
    histogram's ``le`` edges) into the term's unit; ``kind`` is the source's own kind where
    it differs from the term's; ``note`` says where the meaning differs."""

    engine: str
    source: str
    term: str
    scale: float = 1.0
    kind: str = ""
    note: str = ""


@dataclass(frozen=True)
class Unmapped:
    """A stored name that is known and deliberately left out of the vocabulary."""

    engine: str
    source: str
    kind: str
    why: str


ENGINES: tuple[str, ...] = (
    "vllm-v0",
    "vllm-v1",
    "sglang",
    "tgi",
    "trtllm",
    "dynamo",
    "dcgm",
    "infdebug",
)
# The engine of an Unmapped name that any Python server exposes beside its engine's own.
RUNTIME = "runtime"

_S, _TOK, _REQ = "s", "tokens", "requests"

TERM_LIST: tuple[Term, ...] = (
    Term("ttft_seconds", "histogram", _S, "Time to first token, per request."),
    Term("itl_seconds", "histogram", _S, "Inter-token latency, one sample per token gap."),
    Term("tpot_seconds", "histogram", _S, "Time per output token, one sample per request."),
    Term("e2e_seconds", "histogram", _S, "End-to-end request latency."),
    Term("queue_seconds", "histogram", _S, "Time from arrival to first scheduling."),
    Term("prefill_seconds", "histogram", _S, "Time from scheduling to the first token."),
    Term("decode_seconds", "histogram", _S, "Time from the first token to the last."),
    Term("inference_seconds", "histogram", _S, "Time from scheduling to the last token."),
    Term("tokenize_seconds", "histogram", _S, "Time spent (de)tokenizing a request."),
    Term("model_forward_seconds", "histogram", _S, "Model forward time of a request."),
    Term("model_execute_seconds", "histogram", _S, "Model execute time of a request."),
    Term("prompt_tokens_total", "counter", _TOK, "Prompt tokens processed."),
    Term("generation_tokens_total", "counter", _TOK, "Output tokens generated."),
    Term("prefix_cache_hits_total", "counter", _TOK, "Prompt tokens found in the prefix cache."),
    Term(
        "prefix_cache_queries_total",
        "counter",
        _TOK,
        "Prompt tokens looked up in the prefix cache.",
    ),
    Term("spec_draft_tokens_total", "counter", _TOK, "Speculative draft tokens proposed."),
    Term("spec_accepted_tokens_total", "counter", _TOK, "Speculative draft tokens accepted."),
    Term(
        "requests_finished_total",
        "counter",
        _REQ,
        "Requests finished; the finished_reason label is kept where the engine gives one.",
    ),
    Term("requests_failed_total", "counter", _REQ, "Requests that ended in an error."),
    Term("requests_received_total", "counter", _REQ, "Requests received."),
    Term("preemptions_total", "counter", _REQ, "Requests preempted back to the waiting queue."),
    Term("requests_running", "gauge", _REQ, "Requests in the running batch."),
    Term("requests_waiting", "gauge", _REQ, "Requests waiting to be scheduled."),
    Term("requests_inflight", "gauge", _REQ, "Requests accepted and not finished."),
    Term("kv_cache_usage_ratio", "gauge", "ratio", "Fraction of the KV cache in use (0..1)."),
    Term("prefix_cache_hit_ratio", "gauge", "ratio", "Prefix-cache hit fraction (0..1)."),
    Term("generation_throughput", "gauge", "tokens/s", "Output tokens per second."),
    Term("prompt_throughput", "gauge", "tokens/s", "Prompt tokens per second."),
    Term("request_prompt_tokens", "histogram", _TOK, "Prompt length, per request."),
    Term("request_generation_tokens", "histogram", _TOK, "Output length, per request."),
    Term(
        "request_cached_prompt_tokens",
        "histogram",
        _TOK,
        "Prompt tokens served from cache, per request.",
    ),
    Term("batch_tokens", "histogram", _TOK, "Tokens (prompt + output) in one engine step."),
    Term("gpu_power_watts", "gauge", "W", "GPU power draw."),
    Term("gpu_power_limit_watts", "gauge", "W", "GPU power limit in force."),
    Term("gpu_temperature_celsius", "gauge", "C", "GPU die temperature."),
    Term("gpu_memory_temperature_celsius", "gauge", "C", "GPU memory temperature."),
    Term("gpu_sm_clock_mhz", "gauge", "MHz", "GPU SM clock."),
    Term("gpu_memory_clock_mhz", "gauge", "MHz", "GPU memory clock."),
    Term("gpu_utilization_ratio", "gauge", "ratio", "Fraction of time a kernel ran (0..1)."),
    Term("gpu_memory_used_bytes", "gauge", "bytes", "GPU memory in use."),
    Term("gpu_memory_free_bytes", "gauge", "bytes", "GPU memory free."),
    Term("gpu_energy_joules_total", "counter", "J", "GPU energy used since boot."),
    Term("gpu_throttle_active", "gauge", "ratio", "1 while a clock-event reason is active."),
)

# Notes shared by several entries.
_V1_KEEPS = "V1 keeps the name and meaning."
_CUMUL = "one sample per finished request"
_MIB = 1024.0 * 1024.0

MAPPING_LIST: tuple[Mapping, ...] = (
    # --- vLLM V0 (vllm/engine/metrics.py); names V1 kept are listed here once ---------------
    Mapping("vllm-v0", "vllm:num_requests_running", "requests_running", note=_V1_KEEPS),
    Mapping("vllm-v0", "vllm:num_requests_waiting", "requests_waiting", note=_V1_KEEPS),
    Mapping(
        "vllm-v0",
        "vllm:gpu_cache_usage_perc",
        "kv_cache_usage_ratio",
        note="A 0..1 ratio of KV blocks in use despite 'perc'. V1 kept it as a deprecated "
        "alias of vllm:kv_cache_usage_perc up to v0.10.",
    ),
    Mapping(
        "vllm-v0",
        "vllm:gpu_prefix_cache_hit_rate",
        "prefix_cache_hit_ratio",
        note="Gauge, block-granular hit rate cumulative since start; -1 when prefix caching is "
        "off (no data). V1 dropped it for the counter pair vllm:prefix_cache_hits_total / "
        "vllm:prefix_cache_queries_total, whose delta ratio is the same quantity per window.",
    ),
    Mapping("vllm-v0", "vllm:num_preemptions_total", "preemptions_total", note=_V1_KEEPS),
    Mapping("vllm-v0", "vllm:prompt_tokens_total", "prompt_tokens_total", note=_V1_KEEPS),
    Mapping("vllm-v0", "vllm:generation_tokens_total", "generation_tokens_total", note=_V1_KEEPS),
    Mapping(
        "vllm-v0",
        "vllm:request_success_total",
        "requests_finished_total",
        note="finished_reason label (stop, length, abort, …). " + _V1_KEEPS,
    ),
    Mapping("vllm-v0", "vllm:time_to_first_token_seconds", "ttft_seconds", note=_V1_KEEPS),
    Mapping(
        "vllm-v0",
        "vllm:time_per_output_token_seconds",
        "itl_seconds",
        note="Despite the name: one sample per request per decode step (the gap since its "
        "previous token), so token-weighted inter-token latency, not per-request TPOT. V1 "
        "emits it with the same meaning; v0.11 deprecated it for "
        "vllm:inter_token_latency_seconds and later releases hide it unless "
        "--show-hidden-metrics-for-version asks for it.",
    ),
    Mapping("vllm-v0", "vllm:e2e_request_latency_seconds", "e2e_seconds", note=_V1_KEEPS),
    Mapping(
        "vllm-v0",
        "vllm:request_queue_time_seconds",
        "queue_seconds",
        note="Engine queue: queued to first scheduled. " + _V1_KEEPS,
    ),
    Mapping(
        "vllm-v0",
        "vllm:request_prefill_time_seconds",
        "prefill_seconds",
        note="Scheduled to first token. " + _V1_KEEPS,
    ),
    Mapping(
        "vllm-v0",
        "vllm:request_decode_time_seconds",
        "decode_seconds",
        note="First to last token. " + _V1_KEEPS,
    ),
    Mapping(
        "vllm-v0",
        "vllm:request_inference_time_seconds",
        "inference_seconds",
        note="Scheduled to last token. " + _V1_KEEPS,
    ),
    Mapping("vllm-v0", "vllm:request_prompt_tokens", "request_prompt_tokens", note=_V1_KEEPS),
    Mapping(
        "vllm-v0", "vllm:request_generation_tokens", "request_generation_tokens", note=_V1_KEEPS
    ),
    Mapping(
        "vllm-v0",
        "vllm:iteration_tokens_total",
        "batch_tokens",
        note="A histogram despite the _total suffix. " + _V1_KEEPS,
    ),
    Mapping(
        "vllm-v0",
        "vllm:spec_decode_num_draft_tokens_total",
        "spec_draft_tokens_total",
        note=_V1_KEEPS,
    ),
    Mapping(
        "vllm-v0",
        "vllm:spec_decode_num_accepted_tokens_total",
        "spec_accepted_tokens_total",
        note=_V1_KEEPS,
    ),
    Mapping(
        "vllm-v0",
        "vllm:avg_generation_throughput_toks_per_s",
        "generation_throughput",
        note="Average over the last logging interval; deprecated in V0 for the counter.",
    ),
    Mapping(
        "vllm-v0",
        "vllm:avg_prompt_throughput_toks_per_s",
        "prompt_throughput",
        note="Average over the last logging interval; deprecated in V0 for the counter.",
    ),
    Mapping(
        "vllm-v0",
        "vllm:model_forward_time_milliseconds",
        "model_forward_seconds",
        scale=0.001,
        note="Milliseconds; " + _CUMUL + " (its summed forward time), only with detailed "
        "traces on. Name and type from vLLM's V1 design doc's V0 list; meaning not re-checked.",
    ),
    Mapping(
        "vllm-v0",
        "vllm:model_execute_time_milliseconds",
        "model_execute_seconds",
        scale=0.001,
        note="Milliseconds; " + _CUMUL + ", only with detailed traces on. Name and type from "
        "vLLM's V1 design doc's V0 list; meaning not re-checked.",
    ),
    # --- vLLM V1 (vllm/v1/metrics/loggers.py): names V0 did not have ------------------------
    Mapping(
        "vllm-v1",
        "vllm:kv_cache_usage_perc",
        "kv_cache_usage_ratio",
        note="A 0..1 ratio despite 'perc' (v0.9+; replaces vllm:gpu_cache_usage_perc).",
    ),
    Mapping(
        "vllm-v1",
        "vllm:prefix_cache_hits_total",
        "prefix_cache_hits_total",
        note="Tokens. Pair with vllm:prefix_cache_queries_total: delta(hits)/delta(queries) "
        "over a window is prefix_cache_hit_ratio (what V0's gauge reported cumulatively).",
    ),
    Mapping(
        "vllm-v1",
        "vllm:prefix_cache_queries_total",
        "prefix_cache_queries_total",
        note="Tokens looked up; the denominator of the hits/queries pair.",
    ),
    Mapping(
        "vllm-v1",
        "vllm:gpu_prefix_cache_hits_total",
        "prefix_cache_hits_total",
        note="v0.8-v0.10 deprecated alias of vllm:prefix_cache_hits_total (same counts).",
    ),
    Mapping(
        "vllm-v1",
        "vllm:gpu_prefix_cache_queries_total",
        "prefix_cache_queries_total",
        note="v0.8-v0.10 deprecated alias of vllm:prefix_cache_queries_total (same counts).",
    ),
    Mapping(
        "vllm-v1",
        "vllm:inter_token_latency_seconds",
        "itl_seconds",
        note="v0.11+: one sample per request per decode step, token(step)-weighted.",
    ),
    Mapping(
        "vllm-v1",
        "vllm:request_time_per_output_token_seconds",
        "tpot_seconds",
        note="v0.11+: " + _CUMUL + " (its mean time per output token), request-weighted.",
    ),
    # --- SGLang (python/sglang/srt/metrics/) -----------------------------------------------
    Mapping(
        "sglang",
        "sglang:num_running_reqs",
        "requests_running",
        note="SGLang 0.4+ name (label model_name=).",
    ),
    Mapping(
        "sglang",
        "sglang:num_requests_running",
        "requests_running",
        note="SGLang 0.3 name (label name=).",
    ),
    Mapping(
        "sglang",
        "sglang:num_queue_reqs",
        "requests_waiting",
        note="SGLang 0.4+ name: the scheduler's waiting queue.",
    ),
    Mapping(
        "sglang",
        "sglang:num_requests_waiting",
        "requests_waiting",
        note="SGLang 0.3 name; sglang:queue_req beside it is the same queue sampled at "
        "prefill-log time (left unmapped).",
    ),
    Mapping(
        "sglang",
        "sglang:token_usage",
        "kv_cache_usage_ratio",
        note="Used KV token slots / max_total_num_tokens, rounded to 2 decimals.",
    ),
    Mapping(
        "sglang",
        "sglang:cache_hit_rate",
        "prefix_cache_hit_ratio",
        note="Gauge of the last prefill batch only (not cumulative), token-granular. SGLang "
        "0.4+ sets a 0..1 ratio (hit / (hit + new input tokens)); SGLang 0.3 (label name=) "
        "logged it as a percent 0..100 (the 2024-11 example reads 10.61): divide those by 100.",
    ),
    Mapping(
        "sglang",
        "sglang:gen_throughput",
        "generation_throughput",
        note="Average over the last decode-log interval.",
    ),
    Mapping("sglang", "sglang:prompt_tokens_total", "prompt_tokens_total"),
    Mapping("sglang", "sglang:generation_tokens_total", "generation_tokens_total"),
    Mapping(
        "sglang",
        "sglang:cached_tokens_total",
        "prefix_cache_hits_total",
        note="SGLang 0.4+, counted at request finish. Its queries counterpart is "
        "sglang:prompt_tokens_total (cached tokens are part of the prompt).",
    ),
    Mapping(
        "sglang",
        "sglang:num_requests_total",
        "requests_finished_total",
        note="SGLang 0.4+; counted at finish, no finished_reason label.",
    ),
    Mapping(
        "sglang",
        "sglang:request_success_total",
        "requests_finished_total",
        note="SGLang 0.3 (finished_reason label); defined but not fed in that release.",
    ),
    Mapping(
        "sglang",
        "sglang:num_aborted_requests_total",
        "requests_failed_total",
        note="Aborted requests (client abort or server-side abort), not only errors.",
    ),
    Mapping(
        "sglang",
        "sglang:num_retracted_requests_total",
        "preemptions_total",
        note="Retraction is SGLang's preemption: a running request sent back to the queue "
        "when the KV cache runs out.",
    ),
    Mapping("sglang", "sglang:time_to_first_token_seconds", "ttft_seconds"),
    Mapping(
        "sglang",
        "sglang:inter_token_latency_seconds",
        "itl_seconds",
        note="SGLang 0.4+: buckets count tokens (each chunk's gap spread over its tokens) and "
        "the sum adds the whole gap, so token-weighted.",
    ),
    Mapping(
        "sglang",
        "sglang:time_per_output_token_seconds",
        "itl_seconds",
        note="SGLang 0.3: one sample per output token after the first (2024-11 example: its "
        "count + the TTFT count = generation tokens), so token-weighted ITL. SGLang 0.4.x "
        "observed (now - first token) / (tokens - 1) at every streamed chunk instead, a "
        "running per-request mean weighted by chunks: neither ITL nor request TPOT.",
    ),
    Mapping("sglang", "sglang:e2e_request_latency_seconds", "e2e_seconds"),
    Mapping(
        "sglang",
        "sglang:queue_time_seconds",
        "queue_seconds",
        note="SGLang 0.4+: waiting queue to forward.",
    ),
    Mapping(
        "sglang",
        "sglang:waiting_request_latency_seconds",
        "queue_seconds",
        note="SGLang 0.3: time waiting in the scheduler queue.",
    ),
    Mapping(
        "sglang",
        "sglang:decode_request_latency_seconds",
        "decode_seconds",
        note="SGLang 0.3 (metrics_collector.py); not in the 2024-11 docs example.",
    ),
    Mapping("sglang", "sglang:request_prompt_tokens", "request_prompt_tokens", note="SGLang 0.3."),
    Mapping(
        "sglang",
        "sglang:request_generation_tokens",
        "request_generation_tokens",
        note="SGLang 0.3.",
    ),
    Mapping(
        "sglang",
        "sglang:prompt_tokens_histogram",
        "request_prompt_tokens",
        note="SGLang 0.4+, only with --collect-tokens-histogram.",
    ),
    Mapping(
        "sglang",
        "sglang:generation_tokens_histogram",
        "request_generation_tokens",
        note="SGLang 0.4+, only with --collect-tokens-histogram.",
    ),
    # --- TGI (router, metrics-exporter-prometheus: counters without _total) -----------------
    Mapping("tgi", "tgi_request_count", "requests_received_total"),
    Mapping(
        "tgi", "tgi_request_success", "requests_finished_total", note="No finished_reason label."
    ),
    Mapping(
        "tgi",
        "tgi_request_failure",
        "requests_failed_total",
        note="Label err= (validation, generation, overloaded, incomplete, …).",
    ),
    Mapping("tgi", "tgi_queue_size", "requests_waiting"),
    Mapping("tgi", "tgi_batch_current_size", "requests_running"),
    Mapping(
        "tgi",
        "tgi_request_duration",
        "e2e_seconds",
        note="Seconds; from arrival at the router (validation + queue + inference).",
    ),
    Mapping("tgi", "tgi_request_queue_duration", "queue_seconds", note="Seconds."),
    Mapping(
        "tgi",
        "tgi_request_inference_duration",
        "inference_seconds",
        note="Seconds; from entering a batch to the last token (prefill + decode).",
    ),
    Mapping(
        "tgi",
        "tgi_request_mean_time_per_token_duration",
        "tpot_seconds",
        note="Seconds; " + _CUMUL + ": inference time / generated tokens, so request-"
        "weighted and, unlike TPOT, including the prefill and dividing by all tokens.",
    ),
    Mapping(
        "tgi",
        "tgi_request_validation_duration",
        "tokenize_seconds",
        note="Seconds; validation, which includes tokenizing and checking the parameters.",
    ),
    Mapping("tgi", "tgi_request_input_length", "request_prompt_tokens"),
    Mapping("tgi", "tgi_request_generated_tokens", "request_generation_tokens"),
    # --- TensorRT-LLM (tensorrt_llm/metrics/collector.py, trtllm-serve /prometheus) ----------
    Mapping(
        "trtllm",
        "trtllm_request_success_total",
        "requests_finished_total",
        note="finished_reason label.",
    ),
    Mapping(
        "trtllm",
        "trtllm_request_error_total",
        "requests_failed_total",
        note="Label http_code= (HTTP-level errors).",
    ),
    Mapping("trtllm", "trtllm_e2e_request_latency_seconds", "e2e_seconds"),
    Mapping("trtllm", "trtllm_time_to_first_token_seconds", "ttft_seconds"),
    Mapping(
        "trtllm",
        "trtllm_time_per_output_token_seconds",
        "tpot_seconds",
        note=_CUMUL + ": (last token - first token) / (tokens - 1), request-weighted.",
    ),
    Mapping("trtllm", "trtllm_request_queue_time_seconds", "queue_seconds"),
    Mapping("trtllm", "trtllm_request_prefill_time_seconds", "prefill_seconds"),
    Mapping("trtllm", "trtllm_request_decode_time_seconds", "decode_seconds"),
    Mapping("trtllm", "trtllm_request_inference_time_seconds", "inference_seconds"),
    Mapping("trtllm", "trtllm_prompt_tokens_total", "prompt_tokens_total"),
    Mapping("trtllm", "trtllm_generation_tokens_total", "generation_tokens_total"),
    Mapping(
        "trtllm",
        "trtllm_prompt_cached_tokens_total",
        "prefix_cache_hits_total",
        note="Counted per finished request; its queries counterpart is trtllm_prompt_tokens_total.",
    ),
    Mapping("trtllm", "trtllm_prompt_cached_tokens_per_request", "request_cached_prompt_tokens"),
    Mapping(
        "trtllm",
        "trtllm_kv_cache_hit_rate",
        "prefix_cache_hit_ratio",
        note="Block-granular, from the executor's KV-cache iteration stats; a 0..1 range is "
        "assumed (the Python collector passes the C++ value through; not confirmed).",
    ),
    Mapping(
        "trtllm",
        "trtllm_kv_cache_utilization",
        "kv_cache_usage_ratio",
        note="Used / max KV blocks.",
    ),
    Mapping(
        "trtllm",
        "trtllm_num_requests_running",
        "requests_running",
        note="The executor's active requests (context + generation).",
    ),
    Mapping("trtllm", "trtllm_num_requests_waiting", "requests_waiting"),
    Mapping("trtllm", "trtllm_spec_decode_num_draft_tokens_total", "spec_draft_tokens_total"),
    Mapping("trtllm", "trtllm_spec_decode_num_accepted_tokens_total", "spec_accepted_tokens_total"),
    # --- Dynamo frontend (lib/llm/src/http/service/metrics.rs) -----------------------------
    Mapping(
        "dynamo",
        "dynamo_frontend_requests_total",
        "requests_finished_total",
        note="Labels status= (success, error) and error_type=, not finished_reason: errors "
        'are included, filter status="success".',
    ),
    Mapping(
        "dynamo",
        "dynamo_frontend_queued_requests",
        "requests_waiting",
        note="Requests without their first response yet: engine queue and prefill both.",
    ),
    Mapping("dynamo", "dynamo_frontend_inflight_requests", "requests_inflight"),
    Mapping("dynamo", "dynamo_frontend_request_duration_seconds", "e2e_seconds"),
    Mapping("dynamo", "dynamo_frontend_time_to_first_token_seconds", "ttft_seconds"),
    Mapping(
        "dynamo",
        "dynamo_frontend_inter_token_latency_seconds",
        "itl_seconds",
        note="Measured at the frontend between streamed responses; whether a multi-token "
        "response adds one sample or one per token was not confirmed from the source.",
    ),
    Mapping("dynamo", "dynamo_frontend_input_sequence_tokens", "request_prompt_tokens"),
    Mapping("dynamo", "dynamo_frontend_output_sequence_tokens", "request_generation_tokens"),
    Mapping("dynamo", "dynamo_frontend_cached_tokens", "request_cached_prompt_tokens"),
    Mapping(
        "dynamo",
        "dynamo_frontend_output_tokens_total",
        "generation_tokens_total",
        note="Counted as tokens stream out, not at request finish.",
    ),
    Mapping(
        "dynamo",
        "dynamo_frontend_tokenizer_latency_ms",
        "tokenize_seconds",
        scale=0.001,
        note="Milliseconds, label operation= (tokenize, detokenize): one sample per call.",
    ),
    Mapping(
        "dynamo",
        "dynamo_frontend_worker_last_time_to_first_token_seconds",
        "ttft_seconds",
        kind="gauge",
        note="The last TTFT seen per worker, not a distribution. Its labels were "
        "not confirmed from the source.",
    ),
    Mapping(
        "dynamo",
        "dynamo_frontend_worker_last_inter_token_latency_seconds",
        "itl_seconds",
        kind="gauge",
        note="The last ITL seen per worker, not a distribution. Its labels were "
        "not confirmed from the source.",
    ),
    # --- DCGM exporter (etc/default-counters.csv) ------------------------------------------
    Mapping("dcgm", "DCGM_FI_DEV_POWER_USAGE", "gpu_power_watts"),
    Mapping(
        "dcgm",
        "DCGM_FI_DEV_POWER_MGMT_LIMIT",
        "gpu_power_limit_watts",
        note="Watts; not in default-counters.csv, added by a custom counters file.",
    ),
    Mapping("dcgm", "DCGM_FI_DEV_GPU_TEMP", "gpu_temperature_celsius"),
    Mapping("dcgm", "DCGM_FI_DEV_MEMORY_TEMP", "gpu_memory_temperature_celsius"),
    Mapping("dcgm", "DCGM_FI_DEV_SM_CLOCK", "gpu_sm_clock_mhz"),
    Mapping("dcgm", "DCGM_FI_DEV_MEM_CLOCK", "gpu_memory_clock_mhz"),
    Mapping(
        "dcgm",
        "DCGM_FI_DEV_GPU_UTIL",
        "gpu_utilization_ratio",
        scale=0.01,
        note="Percent 0..100 (GpuSample.util_pct keeps the percent).",
    ),
    Mapping("dcgm", "DCGM_FI_DEV_FB_USED", "gpu_memory_used_bytes", scale=_MIB, note="MiB."),
    Mapping("dcgm", "DCGM_FI_DEV_FB_FREE", "gpu_memory_free_bytes", scale=_MIB, note="MiB."),
    Mapping(
        "dcgm",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "gpu_energy_joules_total",
        scale=0.001,
        note="Millijoules since boot (a counter).",
    ),
    # --- infdebug's own (infdebug/tracer/prom.py, infdebug/tracer/gpu.py) --------------------
    Mapping("infdebug", "infdebug_time_to_first_token_seconds", "ttft_seconds"),
    Mapping(
        "infdebug",
        "infdebug_inter_token_latency_seconds",
        "itl_seconds",
        note="One sample per token gap of each finished request.",
    ),
    Mapping(
        "infdebug",
        "infdebug_request_time_per_output_token_seconds",
        "tpot_seconds",
        note=_CUMUL + ": (e2e - ttft) / (tokens - 1).",
    ),
    Mapping("infdebug", "infdebug_e2e_request_latency_seconds", "e2e_seconds"),
    Mapping("infdebug", "infdebug_request_queue_time_seconds", "queue_seconds"),
    Mapping("infdebug", "infdebug_request_prefill_time_seconds", "prefill_seconds"),
    Mapping("infdebug", "infdebug_prompt_tokens_total", "prompt_tokens_total"),
    Mapping("infdebug", "infdebug_generation_tokens_total", "generation_tokens_total"),
    Mapping("infdebug", "infdebug_prefix_cache_hits_total", "prefix_cache_hits_total"),
    Mapping("infdebug", "infdebug_prefix_cache_queries_total", "prefix_cache_queries_total"),
    Mapping(
        "infdebug",
        "infdebug_request_success_total",
        "requests_finished_total",
        note="finished_reason label (stop, length, abort, error, unknown).",
    ),
    Mapping("infdebug", "infdebug_num_requests_running", "requests_running"),
    Mapping("infdebug", "infdebug_num_requests_waiting", "requests_waiting"),
    Mapping("infdebug", "infdebug_gpu_power_watts", "gpu_power_watts"),
    Mapping("infdebug", "infdebug_gpu_temperature_celsius", "gpu_temperature_celsius"),
    Mapping("infdebug", "infdebug_gpu_sm_clock_mhz", "gpu_sm_clock_mhz"),
    Mapping("infdebug", "infdebug_gpu_utilization_ratio", "gpu_utilization_ratio"),
    Mapping("infdebug", "infdebug_gpu_memory_used_bytes", "gpu_memory_used_bytes"),
    Mapping(
        "infdebug",
        "infdebug_gpu_throttle",
        "gpu_throttle_active",
        note="Label reason= (DCGM names); 0 or 1 per reason.",
    ),
)

_INFO = "info gauge: configuration in its labels, value 1 (or a timestamp)"
_CONFIG = "configuration value, constant while the server runs"
_LAST_BATCH = "value of the last scheduled batch only"
_PARAM = "a request parameter, not what was produced"

UNMAPPED_LIST: tuple[Unmapped, ...] = (
    Unmapped("vllm-v0", "vllm:cache_config_info", "gauge", _INFO),
    Unmapped("vllm-v0", "vllm:lora_requests_info", "gauge", _INFO + " (running/waiting adapters)"),
    Unmapped("vllm-v0", "vllm:num_requests_swapped", "gauge", "V0 CPU swap queue; no term"),
    Unmapped("vllm-v0", "vllm:cpu_cache_usage_perc", "gauge", "V0 CPU swap-space usage; no term"),
    Unmapped("vllm-v0", "vllm:cpu_prefix_cache_hit_rate", "gauge", "V0 CPU swap-space prefix hits"),
    Unmapped("vllm-v0", "vllm:tokens_total", "counter", "prompt + generation tokens: derived"),
    Unmapped(
        "vllm-v0",
        "vllm:time_in_queue_requests",
        "histogram",
        "deprecated duplicate of vllm:request_queue_time_seconds",
    ),
    Unmapped("vllm-v0", "vllm:request_max_num_generation_tokens", "histogram", _PARAM),
    Unmapped("vllm-v0", "vllm:request_params_n", "histogram", _PARAM),
    Unmapped("vllm-v0", "vllm:request_params_max_tokens", "histogram", _PARAM),
    Unmapped("vllm-v0", "vllm:request_params_best_of", "histogram", _PARAM),
    Unmapped("vllm-v0", "vllm:spec_decode_draft_acceptance_rate", "gauge", "derived ratio"),
    Unmapped("vllm-v0", "vllm:spec_decode_efficiency", "gauge", "derived ratio"),
    Unmapped(
        "vllm-v0", "vllm:spec_decode_num_emitted_tokens_total", "counter", "V0-only spec count"
    ),
    Unmapped("vllm-v1", "vllm:engine_sleep_state", "gauge", "sleep mode state flags"),
    Unmapped("vllm-v1", "vllm:spec_decode_num_drafts_total", "counter", "draft rounds, no term"),
    Unmapped(
        "vllm-v1",
        "vllm:spec_decode_num_accepted_tokens_per_pos_total",
        "counter",
        "per-position breakdown of spec_accepted_tokens_total",
    ),
    Unmapped(
        "vllm-v1",
        "vllm:time_per_prefill_token_request_seconds",
        "histogram",
        "prefill time / prompt tokens per request: derived",
    ),
    Unmapped(
        "vllm-v1",
        "vllm:external_prefix_cache_hits_total",
        "counter",
        "KV-connector (cross-instance) prefix cache, kept apart from the local cache",
    ),
    Unmapped(
        "vllm-v1",
        "vllm:external_prefix_cache_queries_total",
        "counter",
        "KV-connector (cross-instance) prefix cache, kept apart from the local cache",
    ),
    Unmapped("vllm-v1", "vllm:mm_cache_hits_total", "counter", "multi-modal input cache"),
    Unmapped("vllm-v1", "vllm:mm_cache_queries_total", "counter", "multi-modal input cache"),
    Unmapped("sglang", "sglang:max_total_num_tokens", "gauge", _CONFIG + " (KV pool size)"),
    Unmapped("sglang", "sglang:max_prefill_tokens", "gauge", _CONFIG),
    Unmapped("sglang", "sglang:max_running_requests", "gauge", _CONFIG),
    Unmapped("sglang", "sglang:context_len", "gauge", _CONFIG),
    Unmapped("sglang", "sglang:new_seq", "gauge", "new sequences in the " + _LAST_BATCH),
    Unmapped("sglang", "sglang:new_token", "gauge", "new tokens in the " + _LAST_BATCH),
    Unmapped("sglang", "sglang:cached_token", "gauge", "cached tokens in the " + _LAST_BATCH),
    Unmapped(
        "sglang",
        "sglang:queue_req",
        "gauge",
        "same queue as sglang:num_requests_waiting, sampled at prefill-log time",
    ),
    Unmapped(
        "sglang", "sglang:num_used_tokens", "gauge", "KV slots used; the ratio is token_usage"
    ),
    Unmapped("sglang", "sglang:num_retracted_reqs", "gauge", "retractions in the " + _LAST_BATCH),
    Unmapped("sglang", "sglang:spec_accept_length", "gauge", "speculative decoding average"),
    Unmapped("sglang", "sglang:spec_accept_rate", "gauge", "speculative decoding average"),
    Unmapped("sglang", "sglang:utilization", "gauge", "scheduler-defined utilization, no term"),
    Unmapped("tgi", "tgi_request_max_new_tokens", "histogram", _PARAM),
    Unmapped("tgi", "tgi_request_skipped_tokens", "histogram", "speculated tokens per request"),
    Unmapped("tgi", "tgi_batch_current_max_tokens", "gauge", "token budget of the batch"),
    Unmapped("tgi", "tgi_batch_next_size", "histogram", "batch-level scheduler internals"),
    Unmapped("tgi", "tgi_batch_inference_count", "counter", "batch-level, label method="),
    Unmapped("tgi", "tgi_batch_inference_success", "counter", "batch-level, label method="),
    Unmapped("tgi", "tgi_batch_inference_duration", "histogram", "batch-level, label method="),
    Unmapped("tgi", "tgi_batch_forward_duration", "histogram", "batch-level, label method="),
    Unmapped("tgi", "tgi_batch_decode_duration", "histogram", "batch-level, label method="),
    Unmapped("tgi", "tgi_batch_filter_duration", "histogram", "batch-level, label method="),
    Unmapped(
        "trtllm",
        "trtllm_num_requests_completed_total",
        "counter",
        "same count as trtllm_request_success_total, from iteration stats",
    ),
    Unmapped(
        "trtllm",
        "trtllm_prompt_cache_hit_tokens_total",
        "counter",
        "per cache level/tier breakdown of trtllm_prompt_cached_tokens_total",
    ),
    Unmapped("trtllm", "trtllm_iteration_latency_seconds", "gauge", "last iteration only"),
    Unmapped("trtllm", "trtllm_max_num_active_requests", "gauge", _CONFIG),
    Unmapped("trtllm", "trtllm_gpu_memory_usage_bytes", "gauge", "executor's memory, not GPU"),
    Unmapped("trtllm", "trtllm_kv_cache_max_blocks", "gauge", _CONFIG),
    Unmapped("trtllm", "trtllm_kv_cache_used_blocks", "gauge", "blocks; the ratio is mapped"),
    Unmapped("trtllm", "trtllm_kv_cache_free_blocks", "gauge", "blocks; the ratio is mapped"),
    Unmapped(
        "trtllm",
        "trtllm_kv_cache_reused_blocks_total",
        "counter",
        "block-granular hits; trtllm_kv_cache_hit_rate is mapped",
    ),
    Unmapped(
        "trtllm",
        "trtllm_kv_cache_missed_blocks_total",
        "counter",
        "block-granular misses; trtllm_kv_cache_hit_rate is mapped",
    ),
    Unmapped("trtllm", "trtllm_model_config_info", "gauge", _INFO),
    Unmapped("trtllm", "trtllm_kv_cache_config_info", "gauge", _INFO),
    Unmapped("dynamo", "dynamo_frontend_disconnected_clients", "gauge", "client disconnects"),
    Unmapped("dynamo", "dynamo_frontend_model_total_kv_blocks", "gauge", _CONFIG),
    Unmapped("dynamo", "dynamo_frontend_model_max_num_seqs", "gauge", _CONFIG),
    Unmapped("dynamo", "dynamo_frontend_model_max_num_batched_tokens", "gauge", _CONFIG),
    Unmapped("dynamo", "dynamo_frontend_model_context_length", "gauge", _CONFIG),
    Unmapped("dynamo", "dynamo_frontend_model_kv_cache_block_size", "gauge", _CONFIG),
    Unmapped("dynamo", "dynamo_frontend_model_migration_limit", "gauge", _CONFIG),
    Unmapped(
        "dynamo", "dynamo_frontend_model_migration_total", "counter", "worker-loss migrations"
    ),
    Unmapped(
        "dynamo",
        "dynamo_component_requests_total",
        "counter",
        "runtime RPC layer of a worker; the engine's own metrics say the same",
    ),
    Unmapped("dynamo", "dynamo_component_request_duration_seconds", "histogram", "RPC layer"),
    Unmapped("dynamo", "dynamo_component_inflight_requests", "gauge", "RPC layer"),
    Unmapped("dynamo", "dynamo_component_errors_total", "counter", "RPC layer"),
    Unmapped("dcgm", "DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "memory-controller busy %, no term"),
    Unmapped("dcgm", "DCGM_FI_DEV_ENC_UTIL", "gauge", "video encoder %"),
    Unmapped("dcgm", "DCGM_FI_DEV_DEC_UTIL", "gauge", "video decoder %"),
    Unmapped("dcgm", "DCGM_FI_DEV_XID_ERRORS", "gauge", "last XID code: an event, not a level"),
    Unmapped("dcgm", "DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "counter", "PCIe traffic (KB)"),
    Unmapped("dcgm", "DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "counter", "PCIe traffic (KB)"),
    Unmapped("dcgm", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "PCIe link health"),
    Unmapped("dcgm", "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter", "NVLink traffic"),
    Unmapped("dcgm", "DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge", "vGPU licensing"),
    Unmapped("dcgm", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "memory health"),
    Unmapped("dcgm", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "memory health"),
    Unmapped("dcgm", "DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "memory health"),
    Unmapped(
        "dcgm",
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
        "gauge",
        "a bitmask: decode it into reason names (GpuSample.throttle_reasons), not a scale",
    ),
    Unmapped(
        "infdebug",
        "infdebug_tracer_dropped_records_total",
        "counter",
        "the tracer's own health (label stage=)",
    ),
    Unmapped("infdebug", "infdebug_tracer_errors_total", "counter", "the tracer's own health"),
    # prometheus_client's default collectors and vLLM's API-server HTTP instrumentation
    # (prometheus-fastapi-instrumentator), beside the engine's own names in Python servers.
    *(
        Unmapped(RUNTIME, name, kind, "process/runtime metric of the serving process")
        for name, kind in (
            ("process_virtual_memory_bytes", "gauge"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_start_time_seconds", "gauge"),
            ("process_cpu_seconds_total", "counter"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("python_info", "gauge"),
            ("python_gc_objects_collected_total", "counter"),
            ("python_gc_objects_uncollectable_total", "counter"),
            ("python_gc_collections_total", "counter"),
            ("http_requests_total", "counter"),
            ("http_request_size_bytes", "summary"),
            ("http_response_size_bytes", "summary"),
            ("http_request_duration_highr_seconds", "histogram"),
            ("http_request_duration_seconds", "histogram"),
        )
    ),
)

# vLLM names only V0 ever exposed: with none of vLLM V1's own names present, one of these says
# the exposition is V0's. (V1's own names are the vllm-v1 mappings and unmapped entries.)
VLLM_V0_ONLY: frozenset[str] = frozenset(
    {
        "vllm:num_requests_swapped",
        "vllm:cpu_cache_usage_perc",
        "vllm:gpu_prefix_cache_hit_rate",
        "vllm:cpu_prefix_cache_hit_rate",
        "vllm:avg_prompt_throughput_toks_per_s",
        "vllm:avg_generation_throughput_toks_per_s",
        "vllm:tokens_total",
        "vllm:time_in_queue_requests",
        "vllm:model_forward_time_milliseconds",
        "vllm:model_execute_time_milliseconds",
        "vllm:request_params_best_of",
        "vllm:spec_decode_draft_acceptance_rate",
        "vllm:spec_decode_efficiency",
        "vllm:spec_decode_num_emitted_tokens_total",
    }
)

# Engines whose /metrics comes from Python's prometheus_client, which adds a ``*_created``
# gauge (creation time) beside every counter and histogram series.
PYTHON_CLIENT_ENGINES: frozenset[str] = frozenset(
    {"vllm-v0", "vllm-v1", "sglang", "trtllm", "infdebug", RUNTIME}
)
