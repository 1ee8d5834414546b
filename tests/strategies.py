"""Hypothesis strategies for contract records whose every value ClickHouse can store exactly."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from infdebug.schema import (
    UINT32_MAX,
    Event,
    Finding,
    GpuSample,
    MetricSample,
    ProfileSample,
    Request,
)

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
opt_text = st.none() | text
finite = st.floats(allow_nan=False, allow_infinity=False)
opt_float = st.none() | finite
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
token_ids = st.lists(st.integers(0, UINT32_MAX), max_size=30)
json_scalar = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | text
json_value = st.recursive(
    json_scalar,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
json_object = st.dictionaries(text, json_value, max_size=5)
opt_u32 = st.none() | st.integers(0, UINT32_MAX)

requests = st.builds(
    Request,
    request_id=text,
    replica=text,
    t_arrival=times,
    deployment=opt_text,
    model=opt_text,
    engine=opt_text,
    engine_version=opt_text,
    tokenizer_fp=opt_text,
    template_fp=opt_text,
    queue_s=opt_float,
    prefill_s=opt_float,
    ttft_s=opt_float,
    e2e_s=opt_float,
    token_times_s=st.lists(finite, max_size=20),
    messages=st.none() | st.lists(json_object, max_size=4),
    prompt_text=opt_text,
    prompt_ids=token_ids,
    output_text=opt_text,
    output_ids=token_ids,
    output_logprobs=st.lists(finite, max_size=10),
    cached_prompt_tokens=opt_u32,
    spec_draft_tokens=opt_u32,
    spec_accepted_tokens=opt_u32,
    finish_reason=st.none() | st.sampled_from(["stop", "length", "abort", "error"]),
    sampling=st.none() | json_object,
    error=opt_text,
    derived=st.lists(
        st.sampled_from(["prompt_text", "prompt_ids", "output_ids", "token_times_s"]),
        max_size=3,
        unique=True,
    ),
)

gpus = st.builds(
    GpuSample,
    t=times,
    replica=text,
    gpu_index=st.integers(0, 2**16 - 1),
    uuid=opt_text,
    power_w=opt_float,
    power_limit_w=opt_float,
    temp_c=opt_float,
    sm_clock_mhz=opt_float,
    mem_clock_mhz=opt_float,
    util_pct=opt_float,
    mem_used_bytes=st.none() | st.integers(0, 2**63 - 1),
    throttle_reasons=st.lists(
        st.sampled_from(["power_cap", "hw_thermal", "sw_thermal", "hw_slowdown", "sync_boost"]),
        max_size=3,
    ),
    energy_j=opt_float,
    simulated=st.booleans(),
)

metrics = st.builds(
    MetricSample,
    t=times,
    replica=text,
    name=text,
    type=st.sampled_from(["counter", "gauge", "histogram", "summary", "untyped"]),
    labels=st.none() | st.dictionaries(text, text, max_size=4),
    value=opt_float,
    buckets=st.none() | st.dictionaries(text, finite, max_size=5),
    sum=opt_float,
    count=opt_float,
)

findings = st.builds(
    Finding,
    kind=st.from_regex(r"[a-z]{1,8}\.[a-z_]{1,12}", fullmatch=True),
    analyzer=text,
    severity=st.sampled_from(["info", "warning", "error"]),
    summary=text,
    scope=st.none() | json_object,
    values=st.none() | json_object,
    evidence=st.none() | json_object,
    t=st.none() | times,
)

events = st.builds(
    Event,
    t=times,
    replica=text,
    name=st.sampled_from(
        ["process_start", "weights_loaded", "warmup_done", "ready", "drain", "shutdown"]
    ),
    duration_s=opt_float,
    since_start_s=opt_float,
    deployment=opt_text,
    pid=st.none() | st.integers(0, UINT32_MAX),
    detail=st.none() | json_object,
)

profiles = st.builds(
    ProfileSample,
    t=times,
    replica=text,
    profile_id=text,
    thread=text,
    category=text,
    stack=text,
    count=st.integers(0, UINT32_MAX),
    pid=st.none() | st.integers(0, UINT32_MAX),
    rate_hz=opt_float,
    duration_s=opt_float,
)

records: Any = st.one_of(requests, gpus, metrics, events, profiles, findings)
