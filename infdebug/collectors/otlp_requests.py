"""Contract ``request`` records from spans that carry GenAI / vLLM / infdebug attributes.

vLLM's ``--otlp-traces-endpoint`` spans (``llm_request``; ``vllm/tracing.py``
``SpanAttributes``: ``gen_ai.request.id``, ``gen_ai.response.model``,
``gen_ai.request.{max_tokens,temperature,top_p,top_k,n}``, ``gen_ai.usage.{prompt,completion,
cached}_tokens``, ``gen_ai.latency.{time_in_queue,time_to_first_token,e2e,time_in_scheduler,
time_in_model_forward,time_in_model_execute,time_in_model_prefill,time_in_model_decode}``,
``gen_ai.response.finish_reasons``) and infdebug's own tracer spans (tracer/otel.py:
``infdebug.*``, ``gen_ai.usage.input_tokens`` / ``output_tokens``). The replica is the
resource's ``service.instance.id``, else ``k8s.pod.name``, else ``host.name``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from infdebug.schema import Request

FINISH = {"stop", "length", "abort", "error"}


def _float(v: str | None) -> float | None:
    """``v`` as a finite number; None if absent, not a number or not finite."""
    if v is None:
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _num(a: dict[str, str], *keys: str) -> float | None:
    for k in keys:
        x = _float(a.get(k))
        if x is not None:
            return x
    return None


def _count(a: dict[str, str], *keys: str) -> int | None:
    x = _num(a, *keys)
    return int(x) if x is not None and 0 <= x < 2**32 else None


def _count1(a: dict[str, str], key: str) -> int | None:
    """``_count`` of one key (no argument tuple: it runs for every field of every span)."""
    x = _float(a.get(key))
    return int(x) if x is not None and 0 <= x < 2**32 else None


def _ids(a: dict[str, str], key: str) -> list[int] | None:
    raw = a.get(key)
    if raw is None:
        return None
    try:
        v = json.loads(raw)
    except ValueError:
        return None
    if isinstance(v, list) and all(isinstance(i, int) and 0 <= i < 2**32 for i in v):
        return v
    return None


_FIRST: dict[str, str | None] = {}  # _first_reason's answers: a few distinct lists recur
_FIRST_KEEP = 1024


def _first_reason(raw: str) -> str | None:
    """The first of a JSON list of finish reasons (``raw`` itself if it is not JSON)."""
    if raw in _FIRST:
        return _FIRST[raw]
    try:
        first = json.loads(raw)
        got = str(first[0]) if isinstance(first, list) and first else None
    except ValueError:
        got = raw
    if len(_FIRST) >= _FIRST_KEEP:
        _FIRST.clear()
    _FIRST[raw] = got
    return got


def request_of(row: dict[str, Any]) -> Request | None:
    """The request record a span row describes; None if it is not a request span."""
    a: dict[str, str] = row["SpanAttributes"]
    rid = a.get("infdebug.request_id") or a.get("gen_ai.request.id")
    if not rid:
        return None
    res: dict[str, str] = row["ResourceAttributes"]
    replica = (
        a.get("infdebug.replica")
        or res.get("service.instance.id")
        or res.get("k8s.pod.name")
        or res.get("host.name")
        or row["ServiceName"]
        or "unknown"
    )
    raw = a.get("gen_ai.response.finish_reasons") or a.get("gen_ai.response.finish_reason")
    if raw and raw.startswith("["):
        raw = _first_reason(raw)
    sampling: dict[str, float | int] = {}
    for k, x in (
        ("temperature", _float(a.get("gen_ai.request.temperature"))),
        ("top_p", _float(a.get("gen_ai.request.top_p"))),
        ("top_k", _count1(a, "gen_ai.request.top_k")),
        ("max_tokens", _count1(a, "gen_ai.request.max_tokens")),
        ("n", _count1(a, "gen_ai.request.n")),
    ):
        if x is not None:
            sampling[k] = x
    engine = "infdebug" if a.get("gen_ai.system") == "infdebug" else None
    if engine is None and (row["SpanName"] == "llm_request" or "vllm" in row["ServiceName"]):
        engine = "vllm"
    return Request(
        request_id=rid,
        replica=replica,
        t_arrival=int(row["Timestamp"]) / 1e9,
        deployment=a.get("infdebug.deployment") or None,
        model=a.get("gen_ai.response.model") or a.get("gen_ai.request.model") or None,
        engine=engine,
        tokenizer_fp=a.get("infdebug.tokenizer_fp") or None,
        template_fp=a.get("infdebug.template_fp") or None,
        queue_s=_float(a.get("gen_ai.latency.time_in_queue")),
        ttft_s=_float(a.get("gen_ai.latency.time_to_first_token")),
        e2e_s=_float(a.get("gen_ai.latency.e2e")),
        prompt_ids=_ids(a, "infdebug.prompt_token_ids"),
        output_ids=_ids(a, "infdebug.output_token_ids"),
        cached_prompt_tokens=_count(
            a, "infdebug.cached_prompt_tokens", "gen_ai.usage.cached_tokens"
        ),
        finish_reason=raw if raw in FINISH else None,  # type: ignore[arg-type]
        finish_reason_raw=raw if raw and raw not in FINISH else None,
        sampling=sampling or None,
        prompt_tokens=_count(a, "gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens"),
        output_tokens=_count(a, "gen_ai.usage.completion_tokens", "gen_ai.usage.output_tokens"),
    )
