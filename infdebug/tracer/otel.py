"""The OpenTelemetry exporter: one span per finished request through the real SDK
(``TracerProvider`` + ``BatchSpanProcessor`` + the OTLP/HTTP protobuf exporter).

The request span runs from arrival (wall clock) to the last token, with child spans
``prefill`` (scheduled → first token) and ``decode`` (first → last token). Attributes:
the GenAI semantic conventions (``gen_ai.*``), vLLM's latency attributes
(``gen_ai.latency.time_in_queue``, ``time_to_first_token``, ``e2e``,
``time_in_model_prefill``, ``time_in_model_decode`` — the names of ``vllm/tracing.py``'s
``SpanAttributes``, computed as vLLM does: prefill = first token − scheduled, decode = last
token − first token), and ``infdebug.*`` for the request ID, replica, fingerprints and,
size-capped and never under ``--redact all``, the token IDs. No per-token span events.
Everything comes from the contract record: token counts from ``prompt_tokens`` /
``output_tokens``, request parameters from ``sampling`` (absent keys give no attribute),
the operation from ``messages`` (chat when present; roles survive redaction).

Endpoint: ``--otlp-endpoint URL`` (a base URL gets ``/v1/traces`` appended, as the
``OTEL_EXPORTER_OTLP_ENDPOINT`` variable does); without it the SDK reads
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` itself.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from infdebug import __version__
from infdebug.schema import Request
from infdebug.tracer.exporters import token_counts

MAX_TOKEN_IDS = 4096  # per attribute; longer lists are cut (infdebug.*_token_ids_truncated says so)


def traces_url(endpoint: str) -> str:
    e = endpoint.rstrip("/")
    return e if e.endswith("/v1/traces") else e + "/v1/traces"


class OtelExporter:
    def __init__(
        self,
        *,
        replica: str,
        model: str,
        endpoint: str | None = None,
        deployment: str | None = None,
        token_ids: bool = True,
        span_exporter: SpanExporter | None = None,
        schedule_delay_ms: int = 1000,
    ) -> None:
        attrs: dict[str, Any] = {
            "service.name": model,
            "service.instance.id": replica,
            "infdebug.replica": replica,
            "service.version": __version__,
        }
        if deployment:
            attrs["infdebug.deployment"] = deployment
        self.provider = TracerProvider(resource=Resource.create(attrs))
        exporter = span_exporter or OTLPSpanExporter(
            endpoint=traces_url(endpoint) if endpoint else None
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_ms)
        )
        self.tracer = self.provider.get_tracer("infdebug.tracer", __version__)
        self.replica = replica
        self.token_ids = token_ids

    def export(self, record: Request) -> None:
        ns = 1_000_000_000
        t0 = int(record.t_arrival * ns)

        def at(off: float | None) -> int | None:
            return None if off is None else t0 + int(off * ns)

        t_sched, t_first, t_last = at(record.queue_s), at(record.ttft_s), at(record.e2e_s)
        end = t_last or t_sched or t0
        op = "chat" if record.messages is not None else "text_completion"
        n_prompt, n_out = token_counts(record)
        attrs: dict[str, Any] = {
            "gen_ai.system": "infdebug",
            "gen_ai.operation.name": op,
            "gen_ai.request.model": record.model or "",
            "gen_ai.response.model": record.model or "",
            "gen_ai.request.id": record.request_id,
            "gen_ai.response.finish_reasons": [record.finish_reason or "unknown"],
            "gen_ai.usage.input_tokens": n_prompt,
            "gen_ai.usage.output_tokens": n_out,
            "infdebug.request_id": record.request_id,
            "infdebug.replica": record.replica,
            "infdebug.cached_prompt_tokens": record.cached_prompt_tokens or 0,
        }
        sampling = record.sampling or {}
        for key in ("temperature", "top_p", "max_tokens"):
            if sampling.get(key) is not None:
                attrs[f"gen_ai.request.{key}"] = sampling[key]
        if record.deployment:
            attrs["infdebug.deployment"] = record.deployment
        if record.tokenizer_fp:
            attrs["infdebug.tokenizer_fp"] = record.tokenizer_fp
        if record.template_fp:
            attrs["infdebug.template_fp"] = record.template_fp
        if record.queue_s is not None:
            attrs["gen_ai.latency.time_in_queue"] = record.queue_s
        if record.ttft_s is not None:
            attrs["gen_ai.latency.time_to_first_token"] = record.ttft_s
        if record.e2e_s is not None:
            attrs["gen_ai.latency.e2e"] = record.e2e_s
        if record.ttft_s is not None and record.queue_s is not None:
            attrs["gen_ai.latency.time_in_model_prefill"] = record.ttft_s - record.queue_s
        if record.e2e_s is not None and record.ttft_s is not None:
            attrs["gen_ai.latency.time_in_model_decode"] = record.e2e_s - record.ttft_s
        if self.token_ids:
            for key, ids in (("prompt", record.prompt_ids), ("output", record.output_ids)):
                if ids:  # empty under --redact all (and then token_ids is off too)
                    attrs[f"infdebug.{key}_token_ids"] = list(ids[:MAX_TOKEN_IDS])
                    if len(ids) > MAX_TOKEN_IDS:
                        attrs[f"infdebug.{key}_token_ids_truncated"] = True
        name = f"{op} {record.model}" if record.model else op
        span = self.tracer.start_span(
            name, kind=trace.SpanKind.SERVER, start_time=t0, attributes=attrs
        )
        ctx = trace.set_span_in_context(span)
        if t_sched is not None and t_first is not None:
            self.tracer.start_span(
                "prefill",
                context=ctx,
                start_time=t_sched,
                attributes={
                    "gen_ai.usage.input_tokens": n_prompt,
                    "infdebug.cached_prompt_tokens": record.cached_prompt_tokens or 0,
                },
            ).end(end_time=t_first)
        if t_first is not None and t_last is not None:
            self.tracer.start_span(
                "decode",
                context=ctx,
                start_time=t_first,
                attributes={"gen_ai.usage.output_tokens": n_out},
            ).end(end_time=t_last)
        if record.finish_reason == "error":
            span.set_status(trace.Status(trace.StatusCode.ERROR, record.error or "error"))
        span.end(end_time=end)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.provider.force_flush(30_000)
        self.provider.shutdown()
