"""Tracer wiring: from the tracing settings of one replica to its running tracer, exporters,
Prometheus metrics and GPU sampler. The reference engine's ``Replica`` calls
:func:`make_tracer`; a proxy in front of another engine can call it the same way, since
nothing here knows an engine: the engine's load arrives as a callable, the engine passes
the hooks (``Telemetry.tracer``) its requests.

- Metrics always (``Telemetry.metrics``, served at ``/metrics``).
- JSONL with ``trace_dir`` (``NAME.requests.jsonl``, and ``NAME.gpu.jsonl`` for GPU samples).
- OTLP spans with ``otlp_endpoint``, or with ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` in the environment (the SDK then reads the variable itself).
- GPU samples: NVML when there is a GPU; with ``simulate_gpu`` a labelled synthetic signal
  that follows ``load`` (and ``throttle``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from infdebug import settings
from infdebug.tracer.exporters import Exporter
from infdebug.tracer.gpu import GpuSampler, make_probe
from infdebug.tracer.jsonl import JsonlExporter
from infdebug.tracer.prom import PromExporter, ReplicaMetrics
from infdebug.tracer.tracer import Redact, ReplicaInfo, Tracer


def otlp_endpoint_from_env() -> str | None:
    return settings.otlp_endpoint()


@dataclass(frozen=True)
class TracerConfig:
    """What to trace where (the ``serve`` flags ``--trace-dir``, ``--otlp-endpoint``,
    ``--redact``, ``--simulate-gpu``, …)."""

    trace_dir: str | None = None
    otlp_endpoint: str | None = (
        None  # None: the OTEL_EXPORTER_OTLP_*ENDPOINT variables, else no spans
    )
    redact: Redact = "none"
    trace_max_bytes: int | None = 256 * 1024 * 1024
    trace_max_age_s: float | None = None
    simulate_gpu: bool = False
    gpu_hz: float = 4.0
    throttle: bool = False  # the simulated GPU overheats and throttles (--inject throttle)
    max_queue: int = 10_000


@dataclass
class Telemetry:
    """Everything that traces one replica. ``start`` after the engine starts; ``stop`` after
    it stops: it exports what is queued (JSONL flushed + fsynced, spans flushed)."""

    metrics: ReplicaMetrics
    tracer: Tracer
    trace: JsonlExporter | None  # the requests' JSONL exporter, with a trace dir
    otlp_endpoint: str | None  # where spans go (flag or environment), None: no spans
    gpu_trace: JsonlExporter | None = None
    gpu_sampler: GpuSampler | None = None

    def start(self) -> None:
        if self.gpu_sampler is not None:
            self.gpu_sampler.start()

    def stop(self) -> None:
        if self.gpu_sampler is not None:
            self.gpu_sampler.stop()
        self.tracer.close()
        if self.gpu_trace is not None:
            self.gpu_trace.shutdown()


def make_tracer(
    config: TracerConfig,
    info: ReplicaInfo,
    *,
    load: Callable[[], tuple[int, int]] | None = None,
    max_batch: int = 1,
) -> Telemetry:
    """The tracer of one replica with its exporters, metrics and GPU sampler (not started).

    ``load`` returns the engine's (running, waiting) requests, read at scrape time for the
    gauges and by the simulated GPU as ``running / max_batch``; it may refer to an engine
    made after this call (it is not called here).
    """
    name = info.replica
    metrics = ReplicaMetrics(name, info.model)
    exporters: list[Exporter] = [PromExporter(metrics)]
    trace: JsonlExporter | None = None
    if config.trace_dir:
        trace = JsonlExporter(
            config.trace_dir,
            replica=name,
            max_bytes=config.trace_max_bytes,
            max_age_s=config.trace_max_age_s,
            on_drop=metrics.dropped("jsonl"),
        )
        exporters.append(trace)
    endpoint = config.otlp_endpoint or otlp_endpoint_from_env()
    if endpoint:
        from infdebug.tracer.otel import OtelExporter  # the OTel SDK only when spans are wanted

        exporters.append(
            OtelExporter(
                replica=name,
                model=info.model,
                deployment=info.deployment,
                endpoint=config.otlp_endpoint,
                token_ids=config.redact != "all",
            )
        )
    tracer = Tracer(
        info,
        exporters,
        redact=config.redact,
        max_queue=config.max_queue,
        on_drop=metrics.dropped("tracer"),
        on_error=metrics.tracer_errors.inc,
    )
    out = Telemetry(metrics, tracer, trace, endpoint)
    if load is not None:
        metrics.watch_load(load)
    load_fn = (lambda: load()[0] / max(1, max_batch)) if load is not None else None
    probe = make_probe(config.simulate_gpu, load_fn=load_fn, throttle=config.throttle)
    if probe is not None:
        if config.trace_dir:
            out.gpu_trace = JsonlExporter(
                config.trace_dir,
                replica=name,
                suffix="gpu",
                max_bytes=config.trace_max_bytes,
                max_age_s=config.trace_max_age_s,
                on_drop=metrics.dropped("gpu"),
            )
        emit = out.gpu_trace.put if out.gpu_trace is not None else (lambda rec: None)
        out.gpu_sampler = GpuSampler(
            probe,
            name,
            emit=emit,
            hz=config.gpu_hz,
            gauges=metrics.registry,
            deployment=info.deployment,
        )
    return out
