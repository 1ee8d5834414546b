"""Prometheus metrics of one replica, served at ``GET /metrics``.

Names and bucket edges follow vLLM's V1 Prometheus logger (``vllm/v1/metrics/loggers.py``,
vLLM v0.10.x, commit 005a810bc40f) with the ``vllm:`` prefix replaced by ``infdebug_``
(no colons), so a dashboard built for vLLM needs only its prefix changed:

- ``time_to_first_token_seconds``: vLLM's TTFT edges, 1 ms … 2560 s.
- ``inter_token_latency_seconds`` and ``request_time_per_output_token_seconds``: vLLM's
  ``time_per_output_token_seconds`` edges (10 ms … 80 s); vLLM v0.11 split that histogram
  into these two names with the same edges.
- ``e2e_request_latency_seconds``, ``request_prefill_time_seconds``: vLLM's request-latency
  edges (0.3 s … 7680 s).
- ``request_queue_time_seconds``: here the request-latency edges start at 1 ms (vLLM's start
  at 0.3 s, which puts every healthy queue time in the first bucket).

Every series is labelled ``replica`` and ``model_name``. The histograms and token counters
are fed from the finished-request records alone (token counts from ``prompt_tokens`` /
``output_tokens``, which survive ``--redact all``), on the tracer's background thread,
never on the engine thread; the running/waiting gauges read the engine's load at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infdebug.schema import Request
from infdebug.tracer.exporters import token_counts

PREFIX = "infdebug_"
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
REQUEST_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
QUEUE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2) + REQUEST_LATENCY_BUCKETS

LABELS = ("replica", "model_name")


class ReplicaMetrics:
    """A registry per replica with the engine's histograms, counters and gauges, and the
    tracer's own health counters. Other parts (the GPU sampler) may register into
    ``registry`` with the same labels."""

    def __init__(
        self, replica: str, model_name: str, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.replica, self.model_name = replica, model_name
        lv = (replica, model_name)
        r = self.registry

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, LABELS, registry=r, buckets=buckets)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, doc, LABELS + extra, registry=r)

        self.ttft = hist(
            "time_to_first_token_seconds", "Time to first token in seconds.", TTFT_BUCKETS
        ).labels(*lv)
        self.itl = hist(
            "inter_token_latency_seconds",
            "Time between consecutive output tokens in seconds.",
            TPOT_BUCKETS,
        ).labels(*lv)
        self.tpot = hist(
            "request_time_per_output_token_seconds",
            "Per request: (e2e - ttft) / (output tokens - 1), in seconds.",
            TPOT_BUCKETS,
        ).labels(*lv)
        self.e2e = hist(
            "e2e_request_latency_seconds",
            "End-to-end request latency in seconds (arrival to last token).",
            REQUEST_LATENCY_BUCKETS,
        ).labels(*lv)
        self.queue = hist(
            "request_queue_time_seconds",
            "Time from arrival to scheduling in seconds.",
            QUEUE_BUCKETS,
        ).labels(*lv)
        self.prefill = hist(
            "request_prefill_time_seconds",
            "Time in prefill (scheduled to prefill done) in seconds.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(*lv)
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of finished requests.").labels(
            *lv
        )
        self.generation_tokens = counter(
            "generation_tokens", "Output tokens of finished requests."
        ).labels(*lv)
        self.prefix_queries = counter(
            "prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        ).labels(*lv)
        self.prefix_hits = counter(
            "prefix_cache_hits", "Prompt tokens found in the prefix cache."
        ).labels(*lv)
        self._success = counter(
            "request_success", "Finished requests by finish reason.", ("finished_reason",)
        )
        self.running = Gauge(
            PREFIX + "num_requests_running", "Requests in the running batch.", LABELS, registry=r
        ).labels(*lv)
        self.waiting = Gauge(
            PREFIX + "num_requests_waiting", "Requests waiting to be scheduled.", LABELS, registry=r
        ).labels(*lv)
        self._dropped = counter(
            "tracer_dropped_records",
            "Trace records dropped because an exporter queue was full (oldest first).",
            ("stage",),
        )
        self.tracer_errors = counter(
            "tracer_errors", "Exceptions caught in the tracer and its exporters."
        ).labels(*lv)

    def dropped(self, stage: str) -> Callable[[int], None]:
        """The ``on_drop`` callback of one queue (``stage``: tracer, jsonl, gpu)."""
        child = self._dropped.labels(self.replica, self.model_name, stage)
        return child.inc

    def watch_load(self, load: Callable[[], tuple[int, int]]) -> None:
        """Read the running/waiting gauges from ``load()`` at scrape time."""
        self.running.set_function(lambda: float(load()[0]))
        self.waiting.set_function(lambda: float(load()[1]))

    def success(self, reason: str) -> None:
        self._success.labels(self.replica, self.model_name, reason).inc()


class PromExporter:
    """Feeds the histograms and counters from finished-request records."""

    def __init__(self, metrics: ReplicaMetrics) -> None:
        self.m = metrics

    def export(self, record: Request) -> None:
        m = self.m
        n_prompt, n_out = token_counts(
            record
        )  # under ``--redact all`` the record has counts, no IDs
        m.prompt_tokens.inc(n_prompt)
        m.generation_tokens.inc(n_out)
        if record.queue_s is not None:  # it was scheduled, so the prefix cache was queried
            m.prefix_queries.inc(n_prompt)
            m.prefix_hits.inc(record.cached_prompt_tokens or 0)
            m.queue.observe(record.queue_s)
        if record.prefill_s is not None:
            m.prefill.observe(record.prefill_s)
        if record.ttft_s is not None:
            m.ttft.observe(record.ttft_s)
        if record.e2e_s is not None:
            m.e2e.observe(record.e2e_s)
        times = record.token_times_s or []
        for a, b in zip(times, times[1:], strict=False):
            m.itl.observe(b - a)
        if len(times) > 1 and record.e2e_s is not None and record.ttft_s is not None:
            m.tpot.observe((record.e2e_s - record.ttft_s) / (len(times) - 1))
        m.success(record.finish_reason or "unknown")

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing pending: every export updates the registry at once
