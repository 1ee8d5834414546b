"""Benchmark ``infdebug collect otlp`` (the OTLP/HTTP receiver and its spool loader) under 16
simulated replicas pushing vLLM-shaped spans at increasing rates, against ``infdebug ingest``
of the same records, in the same run. Run as ``python bench/collect.py otlp …``.

What it measures
----------------
``infdebug collect otlp --json --status-listen off`` is started in a fresh
``INFDEBUG_HOME`` (its own process: the embedded store is its own). ``--replicas`` (16)
simulated replicas, threads of this process, each with one keep-alive HTTP connection as
the SDK's exporter has, POST ``ExportTraceServiceRequest`` protobufs built with the real
opentelemetry-proto types: one ``llm_request`` span (SpanKind.SERVER) per request with the
attributes vLLM's output processor sets (``gen_ai.request.id``, ``gen_ai.response.model``,
``gen_ai.request.*``, ``gen_ai.usage.*``, ``gen_ai.latency.*``,
``gen_ai.response.finish_reasons``), the resource's ``service.instance.id`` the replica's
name, ``--batch`` (512, the BatchSpanProcessor's ``max_export_batch_size``) spans a body.
Every body of a step is built before the step starts, so the client only sends bytes.

Steps (``--rates``, requests/s offered in all, ``--step-seconds`` each): the step's batches
are spread evenly over the step and dealt round-robin to the replicas, each of which sends
its next one when it is due (or at once when it is behind: one export at a time, like the
SDK). ``max``: every replica sends its pre-built batches back to back (``--max-spans`` in
all) for the step's length. A batch answered 503 (the spool is full: backpressure) is
counted and dropped, not retried (the SDK would retry it after ``Retry-After``). Between
steps the bench waits (``--drain-timeout``) until every accepted span is loaded, so each
step starts on an empty backlog.

Ingest lag, per accepted batch: from the moment its POST began to the moment its spans
are visible as ``requests`` rows. The collector owns the embedded store, so nothing can
query it while it runs; instead the bench watches the ``requests`` table's directory
(``INFDEBUG_HOME/clickhouse/data/default/requests``): every INSERT commits one new level-0
part (``<partition>_<n>_<n>_0``), renamed into place at commit, i.e. the moment its rows
become visible, and its ``count.txt`` says how many rows it holds. Polled every ``--poll``
seconds (10 ms), that gives a curve of requests visible over time. The spool is a FIFO (the
loader loads frames in the order they were appended, which is the order they were answered
200, up to the few ms by which 16 concurrent answers can arrive reordered), so the batch
whose spans bring the count of accepted spans to C is visible when the curve reaches C.
Nothing is added to the collector. Cross-check, after the run: every row's
``_ingested_at`` (the insert's ``now()``, whole seconds; one value a batch, since a batch
is one spool frame and a frame is loaded by one insert) must be at most the visible time the
curve gives the batch, and no more than a second plus the insert's own duration before it:
the share of batches that agree is reported (``lag_check``).

Per step: accepted requests/s (spans answered 200, over the step's planned length, or for
``max`` from its start to the last answer), 503s, the most requests accepted and not yet
visible (``backlog_max``), lag p50 / p99 / max (over spans), and how long the drain took
after the step. The loader's own rate (``loader/s``): the requests each insert made visible
over the time from when it could start (its last batch answered, or the insert before it
visible, whichever is later) to when they became visible, summed over the step's inserts;
``util`` = accepted / that. The collector loads in rounds (every ``--load-interval``, 1 s,
everything spooled since the last), so the lag is a saw-tooth whose period grows with the
load; a round keeps up while util < 1 and the backlog then stays bounded. The sustained
rate is the highest offered rate whose step was accepted at >= 95 % of it, without a 503,
at util <= 0.9 (a backlog that does not grow, with a little headroom).

Baseline: the request records ``otlp_requests.request_of`` makes of the very same spans,
written as contract JSONL (``schema.encode_records``) while the bodies are built, loaded by
``infdebug ingest FILE --json`` in a fresh home: records/s over its wall time (process start,
chDB start and migrations included), and over the seconds ingest reports.

Reproduce
---------
    python bench/collect.py otlp                                    # 2k … 40k/s and max
    python bench/collect.py otlp --rates 2000,5000,10000,20000 --step-seconds 5 --json
    python bench/collect.py otlp --rates max --max-spans 200000     # the receiver's ceiling
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO)

from collect import _check_store, _cli, _env, _read, _wait_for, log, run_ingest  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import (  # noqa: E402
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span  # noqa: E402

from infdebug.collectors.otlp_decode import decode_request, span_rows  # noqa: E402
from infdebug.collectors.otlp_requests import request_of  # noqa: E402
from infdebug.collectors.spool import Spool  # noqa: E402
from infdebug.schema import encode_records  # noqa: E402

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
RID_ATTR = 1  # index of gen_ai.request.id among a span's attributes
MAX_UTILIZATION = 0.9  # accepted / loader rate: past it the backlog grows (or nearly)


# -- bodies --------------------------------------------------------------------------------


def _kv(key: str, v: Any) -> KeyValue:
    if isinstance(v, bool):
        a = AnyValue(bool_value=v)
    elif isinstance(v, int):
        a = AnyValue(int_value=v)
    elif isinstance(v, float):
        a = AnyValue(double_value=v)
    elif isinstance(v, list):
        a = AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=x) for x in v]))
    else:
        a = AnyValue(string_value=v)
    return KeyValue(key=key, value=a)


def _span(rng: random.Random) -> Span:
    """A vLLM ``llm_request`` span (vllm/tracing.py SpanAttributes), ending now."""
    e2e = round(0.2 + rng.random() * 4, 6)
    queue, ttft = round(rng.random() * 0.05, 6), round(0.02 + rng.random() * 0.3, 6)
    end = time.time_ns()
    return Span(
        name="llm_request",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=end - int(e2e * 1e9),
        end_time_unix_nano=end,
        attributes=[
            _kv("gen_ai.response.model", MODEL),
            _kv("gen_ai.request.id", ""),  # RID_ATTR: set per batch
            _kv("gen_ai.request.temperature", rng.choice([0.0, 0.7, 1.0])),
            _kv("gen_ai.request.top_p", rng.choice([0.9, 0.95, 1.0])),
            _kv("gen_ai.request.max_tokens", rng.choice([128, 256, 1024])),
            _kv("gen_ai.request.n", 1),
            _kv("gen_ai.usage.prompt_tokens", rng.randint(16, 4000)),
            _kv("gen_ai.usage.completion_tokens", rng.randint(1, 1024)),
            _kv("gen_ai.latency.time_in_queue", queue),
            _kv("gen_ai.latency.time_to_first_token", ttft),
            _kv("gen_ai.latency.e2e", e2e),
            _kv("gen_ai.latency.time_in_scheduler", round(queue * 0.1, 6)),
            _kv("gen_ai.latency.time_in_model_forward", round(e2e * 0.8, 6)),
            _kv("gen_ai.latency.time_in_model_execute", round(e2e * 0.85, 6)),
            _kv("gen_ai.response.finish_reasons", [rng.choice(["stop", "length"])]),
        ],
    )


class BodyMaker:
    """Bodies of ``batch`` spans for each replica: a template per replica, copied, with
    new trace / span / request IDs per batch (cheap enough to build a step's worth)."""

    def __init__(self, replicas: list[str], batch: int, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.templates: dict[str, ExportTraceServiceRequest] = {}
        for name in replicas:
            res = Resource(
                attributes=[
                    _kv("service.name", "vllm"),
                    _kv("service.instance.id", name),
                    _kv("host.name", f"node-{name}"),
                ]
            )
            scope = InstrumentationScope(name="vllm.llm_engine")
            spans = [_span(rng) for _ in range(batch)]
            rs = ResourceSpans(resource=res, scope_spans=[ScopeSpans(scope=scope, spans=spans)])
            self.templates[name] = ExportTraceServiceRequest(resource_spans=[rs])
        self.batch = batch
        self.counter = 0

    def body(self, replica: str, n: int | None = None) -> tuple[bytes, int, int]:
        """A body of ``n`` (``batch``) new spans: (bytes, spans, first request number)."""
        req = ExportTraceServiceRequest()
        req.CopyFrom(self.templates[replica])
        spans = req.resource_spans[0].scope_spans[0].spans
        if n is not None and n < len(spans):
            del spans[n:]
        shift = time.time_ns() - spans[0].end_time_unix_nano
        first = self.counter + 1
        for s in spans:
            self.counter += 1
            i = self.counter
            s.trace_id = i.to_bytes(16, "big")
            s.span_id = (i | 1 << 63).to_bytes(8, "big")
            s.start_time_unix_nano += shift
            s.end_time_unix_nano += shift
            s.attributes[RID_ATTR].value.string_value = f"cmpl-{i:012d}"
        return req.SerializeToString(), len(spans), first


def write_records(bodies: list[bytes], fh: Any) -> int:
    """The request records ``request_of`` makes of these bodies' spans, as contract JSONL."""
    n = 0
    for b in bodies:
        recs = [r for r in map(request_of, span_rows(decode_request(b, PB))) if r is not None]
        fh.write(encode_records(recs))
        n += len(recs)
    return n


PB = "application/x-protobuf"
Planned = tuple[float, bytes, int, int]  # (due, body, spans, first request number)


# -- replicas ------------------------------------------------------------------------------


@dataclass
class Sent:
    send: float  # perf_counter() when the POST began
    ack: float  # … and when its answer was read
    spans: int
    first: int  # the batch's first request number (cmpl-<first>)
    status: int


@dataclass
class Replica:
    name: str
    port: int
    conn: http.client.HTTPConnection | None = None
    sent: list[Sent] = field(default_factory=list)
    errors: int = 0

    def post(self, body: bytes) -> int:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.conn.request("POST", "/v1/traces", body, {"Content-Type": PB})
                r = self.conn.getresponse()
                r.read()
                return r.status
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def run(self, plan: list[Planned], t_stop: float) -> None:
        """Send each (due, body, spans, first) when due (at once if late) until ``t_stop``."""
        for due, body, n, first in plan:
            now = time.perf_counter()
            if now >= t_stop:
                return
            if due > now:
                time.sleep(due - now)
            t = time.perf_counter()
            try:
                status = self.post(body)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                continue
            self.sent.append(Sent(t, time.perf_counter(), n, first, status))


# -- the requests table's parts ------------------------------------------------------------


class PartWatcher(threading.Thread):
    """Polls the ``requests`` table's directory: (time, rows) of every new level-0 part."""

    def __init__(self, table_dir: str, poll: float) -> None:
        super().__init__(daemon=True)
        self.table_dir, self.poll = table_dir, poll
        self.seen: set[str] = set()
        self.events: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def scan(self) -> None:
        try:
            names = os.listdir(self.table_dir)
        except FileNotFoundError:
            return
        t = time.perf_counter()
        for name in names:
            if name in self.seen:
                continue
            bits = name.split("_")
            if len(bits) < 4 or not bits[-1].isdigit():
                self.seen.add(name)  # format_version.txt, detached, a tmp_ part … never rows
                continue
            level_zero = len(bits) == 4 and bits[3] == "0" and bits[1] == bits[2]
            if name.startswith(("tmp", "delete_tmp")):
                continue  # not committed yet (or going away): look again
            self.seen.add(name)
            if not level_zero:
                continue  # a merge or a mutation of parts already counted
            try:
                rows = int(_read(os.path.join(self.table_dir, name, "count.txt")))
            except (FileNotFoundError, ValueError):
                self.seen.discard(name)
                continue
            with self.lock:
                self.events.append((t, rows))

    def run(self) -> None:
        while not self.halt.is_set():
            self.scan()
            time.sleep(self.poll)

    def total(self) -> int:
        with self.lock:
            return sum(r for _, r in self.events)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            ev = sorted(self.events)
        return np.array([t for t, _ in ev]), np.cumsum([r for _, r in ev])


# -- one run -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Step:
    label: str
    rate: float  # offered requests/s (0: max)
    seconds: float
    t0: float = 0.0
    t1: float = 0.0
    sent: list[Sent] = field(default_factory=list)
    built: int = 0
    drain_s: float = 0.0
    drained: bool = True


def _plan(
    step: Step, maker: BodyMaker, reps: list[Replica], seconds: float, max_spans: int
) -> tuple[dict[str, list[Planned]], list[bytes]]:
    """Each replica's batches for the step (due: seconds from its start), and every body."""
    batch = maker.batch
    plans: dict[str, list[Planned]] = {r.name: [] for r in reps}
    bodies: list[bytes] = []
    if step.rate > 0:
        total = max(1, round(step.rate * seconds))
        k_batches = -(-total // batch)
        gap = seconds / k_batches
        for k in range(k_batches):
            r = reps[k % len(reps)]
            body, n, first = maker.body(r.name, min(batch, total - k * batch))
            plans[r.name].append((k * gap, body, n, first))
            bodies.append(body)
    else:
        per = max(1, max_spans // (batch * len(reps)))
        for _ in range(per):
            for r in reps:
                body, n, first = maker.body(r.name)
                plans[r.name].append((0.0, body, n, first))
                bodies.append(body)
    step.built = sum(p[2] for ps in plans.values() for p in ps)
    return plans, bodies


def run_steps(args: argparse.Namespace, records_path: str) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="infdebug-bench-otlp-", dir=args.tmpdir)
    port = _free_port()
    err_path, out_path = os.path.join(home, "collect.err"), os.path.join(home, "collect.out")
    cmd = [*_cli(), "collect", "otlp", "--listen", f"127.0.0.1:{port}", "--json"]
    cmd += ["--spool-max-bytes", str(args.spool_max_bytes), "--status-listen", "off"]
    if args.load_interval is not None:
        cmd += ["--load-interval", str(args.load_interval)]
    names = [f"replica-{i:02d}" for i in range(args.replicas)]
    maker = BodyMaker(names, args.batch)
    reps = [Replica(n, port) for n in names]
    table_dir = os.path.join(home, "clickhouse", "data", "default", "requests")
    watcher = PartWatcher(table_dir, args.poll)
    steps = [
        Step(x, 0.0 if x == "max" else float(x), args.step_seconds)
        for x in args.rates.split(",")
        if x
    ]
    records = 0
    prefilled = 0
    if args.prefill:  # frames already spooled when the collector starts: the loader alone
        spool = Spool(os.path.join(home, "otlp-spool"))
        while prefilled < args.prefill:
            body, n, _ = maker.body(names[(prefilled // args.batch) % len(names)])
            spool.append(body)
            prefilled += n
        del spool
    drain: dict[str, Any] | None = None
    try:
        with open(err_path, "wb") as err, open(out_path, "wb") as out:
            proc = subprocess.Popen(
                cmd, env=_env(home), stdout=out, stderr=err, cwd=args.collector_tree or REPO
            )
        try:

            def alive() -> None:
                if proc.poll() is not None:
                    raise RuntimeError(f"the collector exited: {_read(err_path)[-2000:]!r}")

            def up() -> bool:
                alive()
                return b"collecting: OTLP" in _read(err_path)

            watcher.start()
            _wait_for(up, "the collector", 120)
            if prefilled:
                _wait_for(
                    lambda: (alive(), watcher.total() >= prefilled)[1],
                    "the prefilled spool to load",
                    args.drain_timeout,
                )
                drain = _drain_rate(watcher, prefilled)
                log(f"  prefilled spool: {drain}")
            # one span: the store created and migrated by the loader's first round
            warm, _, _ = maker.body(names[0], 1)
            if reps[0].post(warm) != 200:
                raise RuntimeError("the warm-up batch was refused")
            _wait_for(lambda: watcher.total() >= prefilled + 1, "the warm-up span", 120)
            base = watcher.total()
            accepted = 0
            with open(records_path, "wb") as rec_fh:
                for step in steps:
                    plans, bodies = _plan(step, maker, reps, args.step_seconds, args.max_spans)
                    records += write_records(bodies, rec_fh)
                    del bodies
                    log(f"  step {step.label}: {step.built:,} spans built; sending …")
                    for r in reps:
                        r.sent = []
                    step.t0 = time.perf_counter() + 0.05
                    stop = step.t0 + args.step_seconds * (1.5 if step.rate else 1.0)
                    threads = [
                        threading.Thread(
                            target=r.run,
                            args=([(step.t0 + p[0], *p[1:]) for p in plans[r.name]], stop),
                        )
                        for r in reps
                    ]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    del plans
                    step.sent = sorted((s for r in reps for s in r.sent), key=lambda s: s.ack)
                    step.t1 = max((s.ack for s in step.sent), default=step.t0)
                    accepted += sum(s.spans for s in step.sent if s.status == 200)
                    alive()
                    t_drain = time.perf_counter()
                    try:
                        _wait_for(
                            lambda a=accepted: (alive(), watcher.total() - base >= a)[1],
                            "the backlog to drain",
                            args.drain_timeout,
                        )
                    except RuntimeError:
                        step.drained = False
                    step.drain_s = time.perf_counter() - t_drain
                    got = summarize(step, watcher, base, steps)
                    got.pop("lag_series", None)
                    log(f"  step {step.label}: {got}")
                    if not step.drained:
                        log("  the backlog did not drain: stopping here")
                        break
            proc.send_signal(signal.SIGINT)
            if proc.wait(600) != 0:
                raise RuntimeError(f"the collector failed: {_read(err_path)[-2000:]!r}")
            _wait_for(lambda: watcher.total() - base >= accepted, "the last rows", 30)
            watcher.scan()
            watcher.halt.set()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stats = json.loads(_read(out_path))
        _check_store(home, prefilled + accepted + 1)
        check = lag_check(home, steps, watcher, base)
        return {
            "steps": [summarize(s, watcher, base, steps) for s in steps if s.sent],
            "collector": stats,
            "lag_check": check,
            "records": records,
            "prefill": drain,
        }
    finally:
        watcher.halt.set()
        for r in reps:
            if r.conn is not None:
                r.conn.close()
        shutil.rmtree(home, ignore_errors=True)


def _drain_rate(watcher: PartWatcher, n: int) -> dict[str, Any]:
    """A prefilled spool's load: requests/s from its first insert visible to its last (the
    first one's own time, with the store's start and migrations, left out)."""
    ts, cum = watcher.curve()
    last = int(np.searchsorted(cum, n))
    out: dict[str, Any] = {"requests": n, "inserts": last + 1}
    if last > 0:
        out["seconds"] = float(ts[last] - ts[0])
        out["requests_per_s"] = float(cum[last] - cum[0]) / max(out["seconds"], 1e-9)
    return out


def _visible_times(
    steps: list[Step], watcher: PartWatcher, base: int
) -> dict[int, list[tuple[Sent, float, int]]]:
    """Each step's accepted batches with the time their last span became visible (FIFO),
    and the index of the insert (the part) that made it visible."""
    ts, cum = watcher.curve()
    cum = cum - base
    out: dict[int, list[tuple[Sent, float, int]]] = {}
    c = 0
    every = sorted(
        ((i, s) for i, st in enumerate(steps) for s in st.sent if s.status == 200),
        key=lambda x: x[1].ack,
    )
    for i, s in every:
        c += s.spans
        j = int(np.searchsorted(cum, c))
        out.setdefault(i, []).append((s, float(ts[j]) if j < len(ts) else float("nan"), j))
    return out


def _loader_rate(vis: list[tuple[Sent, float, int]], watcher: PartWatcher) -> float | None:
    """Requests/s the loader loads while it is busy: over each insert, its requests by the
    time from when it could start (its last batch answered, or the insert before it done,
    whichever is later) to when its rows became visible."""
    ts, _ = watcher.curve()
    by: dict[int, list[Sent]] = {}
    for s, _, j in vis:
        if j < len(ts):
            by.setdefault(j, []).append(s)
    busy = loaded = 0.0
    for j, batches in by.items():
        start = max(max(s.ack for s in batches), float(ts[j - 1]) if j else -np.inf)
        busy += max(0.0, float(ts[j]) - start)
        loaded += sum(s.spans for s in batches)
    return loaded / busy if busy > 0 else None


def summarize(step: Step, watcher: PartWatcher, base: int, steps: list[Step]) -> dict[str, Any]:
    ok = [s for s in step.sent if s.status == 200]
    acc = sum(s.spans for s in ok)
    # paced: over the step as planned (its last batch is due a gap before its end); max:
    # from the start to the last answer
    span_s = max(step.t1 - step.t0, step.seconds if step.rate else 0.0, 1e-9)
    vis = _visible_times(steps, watcher, base).get(steps.index(step), [])
    sends = np.array([s.send for s, _, _ in vis])
    lags = np.array([v - s.send for s, v, _ in vis])
    weights = np.array([s.spans for s, _, _ in vis], dtype=float)
    out: dict[str, Any] = {
        "offered_per_s": step.rate or None,
        "label": step.label,
        "built": step.built,
        "sent_batches": len(step.sent),
        "accepted": acc,
        "accepted_per_s": acc / span_s,
        "refused_503": sum(1 for s in step.sent if s.status == 503),
        "other_status": sum(1 for s in step.sent if s.status not in (200, 503)),
        "seconds": span_s,
        "drain_s": step.drain_s,
        "drained": step.drained,
    }
    if len(lags) and np.isfinite(lags).all():
        out.update(
            lag_p50_s=_wq(lags, weights, 0.5),
            lag_p99_s=_wq(lags, weights, 0.99),
            lag_max_s=float(lags.max()),
        )
        out["lag_series"] = [  # (s from the step's start to the send, lag s) per batch
            [round(float(a - step.t0), 3), round(float(b), 3)]
            for a, b in zip(sends, lags, strict=True)
        ]
    rate = _loader_rate(vis, watcher)
    if rate:
        out["loader_per_s"] = rate
        out["loader_utilization"] = out["accepted_per_s"] / rate
    out.update(_backlog(step, watcher, base, steps))
    out["sustained"] = bool(
        step.rate
        and acc >= 0.95 * step.built
        and out["accepted_per_s"] >= 0.95 * step.rate
        and out["refused_503"] == 0
        and out.get("loader_utilization", 9.0) <= MAX_UTILIZATION
    )
    return out


def _wq(x: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    return float(x[order][min(len(x) - 1, int(np.searchsorted(cw, q * cw[-1])))])


def _backlog(step: Step, watcher: PartWatcher, base: int, steps: list[Step]) -> dict[str, Any]:
    """The most requests accepted and not yet visible, sampled every 0.05 s over the step."""
    before = sum(s.spans for st in steps[: steps.index(step)] for s in st.sent if s.status == 200)
    acks = np.array([s.ack for s in step.sent if s.status == 200])
    if len(acks) < 1:
        return {}
    sizes = np.cumsum([s.spans for s in step.sent if s.status == 200])
    ts, cum = watcher.curve()
    grid = np.arange(step.t0, max(step.t1, step.t0 + 0.1), 0.05)
    a = np.concatenate([[0], sizes])[np.searchsorted(acks, grid, side="right")]
    v = np.concatenate([[0], cum - base])[np.searchsorted(ts, grid, side="right")] - before
    return {"backlog_max": int((a - np.clip(v, 0, None)).max())}


def lag_check(home: str, steps: list[Step], watcher: PartWatcher, base: int) -> dict[str, Any]:
    """Every accepted batch's ``_ingested_at`` (the ``now()`` of the insert that made its rows
    visible, whole seconds: one value a batch, as a batch is one spool frame and a frame is
    loaded by one insert) against the visible time the part curve gives it: the insert began
    at most 50 ms (poll, clock) after it and at most 1 s + the insert's duration (3 s
    allowed) before it."""
    code = (
        "import sys, numpy as np; from infdebug.store import open_store\n"
        "st = open_store(home=sys.argv[1])\n"
        't = st.query_arrow("SELECT toUInt64(substring(request_id, 6)) AS id, '
        'toUnixTimestamp(_ingested_at) AS at FROM requests ORDER BY id")\n'
        "np.save(sys.argv[2], np.stack([t.column('id').to_numpy(), "
        "t.column('at').to_numpy().astype('uint64')]))"
    )
    path = os.path.join(home, "ingested_at.npy")
    subprocess.run([sys.executable, "-c", code, home, path], check=True, cwd=REPO)
    ids, at = np.load(path)
    offset = time.time() - time.perf_counter()  # this process's perf_counter → wall clock
    pairs = [p for ps in _visible_times(steps, watcher, base).values() for p in ps]
    firsts = np.array([s.first for s, _, _ in pairs], dtype=np.uint64)
    vis = np.array([v + offset for _, v, _ in pairs])
    j = np.clip(np.searchsorted(ids, firsts), 0, len(ids) - 1)
    found = ids[j] == firsts
    ing = at[j].astype(float)
    ok = found & (ing <= vis + 0.05) & (vis <= ing + 1.0 + 3.0)
    return {
        "batches": len(pairs),
        "agree": float(ok.mean()) if len(ok) else 0.0,
        "visible_minus_ingested_at_p50_s": float(np.median(vis[found] - ing[found]))
        if found.any()
        else None,
    }


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="bench/collect.py otlp",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("--rates", default="2000,5000,10000,20000,40000,max")
    ap.add_argument("--step-seconds", type=float, default=5.0)
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--batch", type=int, default=512, help="spans a body")
    ap.add_argument("--max-spans", type=int, default=200_000, help="built for the max step")
    ap.add_argument(
        "--spool-max-bytes",
        type=int,
        default=256 << 20,
        help="the collector's --spool-max-bytes (503 past it)",
    )
    ap.add_argument(
        "--load-interval",
        type=float,
        default=None,
        help="the collector's --load-interval (default: its own, 1 s)",
    )
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    ap.add_argument(
        "--collector-tree",
        metavar="DIR",
        help="run the collector from another copy of the source (before / after: e.g. "
        "`git archive HEAD infdebug | tar -x -C DIR`); its infdebug is imported first",
    )
    ap.add_argument("--poll", type=float, default=0.01, help="part watcher poll, seconds")
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="SPANS",
        help="spool this many spans before the collector starts; its drain rate is the "
        "loader's alone (nothing received meanwhile)",
    )
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--save", metavar="PATH", help="also write the JSON results here")
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="infdebug-bench-otlp-rec-", dir=args.tmpdir)
    try:
        rec_path = os.path.join(work, "requests.jsonl")
        run = run_steps(args, rec_path)
        base: dict[str, Any] | None = None
        if not args.no_baseline:
            log(f"  baseline: infdebug ingest of the same {run['records']:,} records …")
            got = run_ingest(rec_path, run["records"], args.tmpdir)
            base = {
                "records": run["records"],
                "bytes": os.path.getsize(rec_path),
                "wall_s": got["wall_s"],
                "records_per_s": run["records"] / got["wall_s"],
                "records_per_s_ingest_only": run["records"] / got["ingest_s"],
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = run["steps"]
    ok = [s for s in steps if s["sustained"]]
    best = max(ok, key=lambda s: s["offered_per_s"]) if ok else None
    summary: dict[str, Any] = {
        "replicas": args.replicas,
        "batch": args.batch,
        "step_seconds": args.step_seconds,
        "spool_max_bytes": args.spool_max_bytes,
        "sustained_per_s": best["offered_per_s"] if best else 0,
        "sustained_accepted_per_s": best["accepted_per_s"] if best else 0,
        "sustained_lag_p99_s": best.get("lag_p99_s") if best else None,
        "steps": steps,
        "baseline_ingest": base,
        "collector": run["collector"],
        "lag_check": run["lag_check"],
        "prefill": run["prefill"],
    }
    if base and best:
        summary["ratio_to_ingest"] = best["accepted_per_s"] / base["records_per_s"]
    if args.save:
        with open(args.save, "w") as fh:
            json.dump(summary, fh, indent=2)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"{args.replicas} replicas, {args.batch} spans a batch, {args.step_seconds:g} s steps, "
        f"spool max {args.spool_max_bytes / 2**20:.0f} MiB"
    )
    print(
        f"  {'offered/s':>9} {'accepted/s':>10} {'503s':>5} {'backlog max':>11} "
        f"{'loader/s':>8} {'util':>5} {'lag p50':>8} {'lag p99':>8} {'lag max':>8} "
        f"{'drain':>6}  sustained"
    )
    for s in steps:
        print(
            f"  {s['label']:>9} {s['accepted_per_s']:>10,.0f} {s['refused_503']:>5} "
            f"{s.get('backlog_max', 0):>11,} {s.get('loader_per_s', 0):>8,.0f} "
            f"{s.get('loader_utilization', float('nan')):>5.2f} "
            f"{s.get('lag_p50_s', float('nan')):>7.2f}s {s.get('lag_p99_s', float('nan')):>7.2f}s "
            f"{s.get('lag_max_s', float('nan')):>7.2f}s {s['drain_s']:>5.1f}s  "
            f"{'yes' if s['sustained'] else 'no'}"
        )
    pf = run["prefill"]
    if pf and pf.get("requests_per_s"):
        print(
            f"  loader alone (a prefilled spool of {pf['requests']:,}): "
            f"{pf['requests_per_s']:,.0f} requests/s ({pf['inserts']} inserts)"
        )
    lc = run["lag_check"]
    print(f"  lag check: {lc['agree']:.1%} of {lc['batches']:,} batches agree with _ingested_at")
    if best:
        print(
            f"  sustained: {best['offered_per_s']:,.0f} requests/s offered "
            f"({best['accepted_per_s']:,.0f}/s accepted), lag p99 {best.get('lag_p99_s', 0):.2f} s"
        )
    else:
        print("  sustained: no step was sustained")
    if base:
        ratio = f" = {summary['ratio_to_ingest']:.2f}x ingest" if best else ""
        print(
            f"  infdebug ingest of the same {base['records']:,} records: "
            f"{base['records_per_s']:,.0f} records/s ({base['wall_s']:.2f} s wall; "
            f"{base['records_per_s_ingest_only']:,.0f}/s ingest only){ratio}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
