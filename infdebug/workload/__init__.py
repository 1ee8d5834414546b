"""What a fleet's workload is, from its logs or from a workload trace: arrival rate and its
burstiness, prompt and output lengths, prefix reuse, cache hits, SLO attainment and goodput,
start-up times, the replicas the peak and the median minute need, and decode bandwidth.

Pure functions over arrays and aggregates (``infdebug.store.q_workload`` computes the
aggregates in ClickHouse; a trace's arrays are read by ``infdebug.fleet.traces``), and
:class:`WorkloadReport`, which ``infdebug workload`` prints and the dashboard can show.
``infdebug.workload.store.store_report`` builds it from the store, :func:`trace_report`
from a trace.

Definitions (the SQL follows the same ones):

- **QPS**: the mean is requests ÷ the arrival span (first to last arrival). Per-minute
  figures count arrivals in whole minutes from the first arrival; a trailing part-minute
  is left out of them (its requests still count in the mean). A span under a minute is
  one window: its rate is requests ÷ span.
- **Burstiness**: the coefficient of variation (population standard deviation ÷ mean) of
  the gaps between consecutive arrivals: 1 for Poisson arrivals, 0 for a metronome.
- **Token lengths**: mean and exact quantiles, linearly interpolated (numpy's default,
  ClickHouse's ``quantileExactInclusive``).
- **Prefix reuse** with an unbounded cache: the share of prompt tokens that sit in a
  block whose prefix an earlier request already had. From prompt IDs: whole 512-token
  blocks, each named by a hash chained over its prefix (a partial last block is never
  reused, as in vLLM's and SGLang's block caches). From a Mooncake trace: its ``hash_ids``
  (one per 512-token block, the last one partial), reused when an earlier request had the
  same ID. Denominator: the prompt tokens of requests that could be hashed.
- **SLO**: a request meets it when it did not fail, its TTFT ≤ the TTFT budget and its
  mean time per output token, (e2e − TTFT) ÷ (output tokens − 1), ≤ the TPOT budget (not
  checked with under two output tokens, where it is undefined). Attainment is over the
  requests that could be judged; goodput is SLO-meeting requests per second of the span.
- **Replicas needed**: ⌈rate ÷ per-replica capacity⌉ for the peak and the median minute;
  what a fleet sized for the peak pays is ``overprovision`` = peak ÷ median replicas.
  Capacity is given, or derived as the highest whole-minute arrival rate one replica
  served with SLO attainment ≥ the goal (any minute when no budget is given): a replica
  never driven to saturation shows less than it can do, so the derived capacity is a lower
  bound and the replica counts upper bounds.
- **Decode bandwidth**: each decode step reads the weights once and makes one token for
  every running request, so steps/s = 1 ÷ the mean time per output token and the
  achieved bandwidth is weights × steps/s; KV-cache and activation traffic are not
  counted (a lower bound on memory traffic). Give weights and peak bandwidth both per
  replica or both per GPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infdebug.errors import InputError
from infdebug.workload.fleet import Capacity, DecodeBandwidth, ReplicasNeeded, replicas_needed

BLOCK_TOKENS = 512
MINUTE_S = 60.0
DEFAULT_SLO_GOAL = 0.9
MAX_DENSE_MINUTES = 100_000  # per-minute counts are listed up to this span (69 days)


class WorkloadInputError(InputError):
    """A flag value ``infdebug workload`` cannot use; the message names the flag."""


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|µs|ms|s|min|m|h)?\s*$")
_UNIT_S = {
    None: 1.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "min": 60.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str, flag: str = "duration") -> float:
    """Seconds from ``"1s"``, ``"50ms"``, ``"250us"``, ``"2min"`` (or ``"2m"``), ``"1h"`` or
    a bare number of seconds (``"0.2"``); > 0 and finite."""
    m = _DURATION.match(text)
    if not m:
        raise WorkloadInputError(
            f"{flag}: expected a duration like 1s, 50ms, 250us or 0.2 (seconds), found {text!r}"
        )
    value = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise WorkloadInputError(f"{flag}: expected a duration > 0, found {text!r}")
    return value


def positive(value: float | None, flag: str) -> float | None:
    """``value`` unchanged if it is None or a finite number > 0, else a flag error."""
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise WorkloadInputError(f"{flag}: expected a number > 0, found {value}")
    return value


@dataclass(frozen=True)
class Budgets:
    """Latency budgets of the SLO; None is not checked."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    @property
    def given(self) -> bool:
        return self.ttft_s is not None or self.tpot_s is not None


@dataclass(frozen=True)
class WorkloadOptions:
    budgets: Budgets = Budgets()
    slo_goal: float = DEFAULT_SLO_GOAL  # share of a minute's requests meeting the SLO
    replica_capacity_rps: float | None = None
    weights_gb: float | None = None
    peak_bandwidth_gbs: float | None = None
    block_tokens: int = BLOCK_TOKENS


# --- distributions and arrivals -------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    n: int
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, values: Any) -> Distribution:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return cls(0)
        q = np.quantile(v, [0.5, 0.9, 0.99])
        return cls(int(v.size), float(v.mean()), float(q[0]), float(q[1]), float(q[2]))

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "p50": self.p50, "p90": self.p90, "p99": self.p99}


@dataclass(frozen=True)
class MinuteBin:
    """Arrivals of one minute since the first: count, first and last arrival, and the sum
    of squared gaps between consecutive arrivals inside it."""

    minute: int
    requests: int
    t_min: float
    t_max: float
    sq_gaps: float


def minute_bins(t: Any) -> list[MinuteBin]:
    """The bins of arrival times ``t`` (unix or relative seconds, any order)."""
    ts = np.sort(np.asarray(t, dtype=np.float64))
    if ts.size == 0:
        return []
    m = np.floor((ts - ts[0]) / MINUTE_S).astype(np.int64)
    cuts = np.flatnonzero(np.diff(m)) + 1
    out = []
    for part, mm in zip(np.split(ts, cuts), m[np.r_[0, cuts]], strict=True):
        d = np.diff(part)
        out.append(
            MinuteBin(int(mm), int(part.size), float(part[0]), float(part[-1]), float(d @ d))
        )
    return out


@dataclass(frozen=True)
class Arrivals:
    requests: int
    t_first: float | None
    duration_s: float | None
    mean_qps: float | None
    peak_1m: float | None  # requests/s in the busiest whole minute
    median_1m: float | None
    peak_minute: int | None  # which minute since the first arrival
    cv_interarrival: float | None
    whole_minutes: int
    per_minute: list[int] | None  # arrivals per whole minute; None past MAX_DENSE_MINUTES


def arrivals(
    requests: int, t_first: float | None, t_last: float | None, bins: Sequence[MinuteBin]
) -> Arrivals:
    """The arrival figures from per-minute bins (see the module's definitions)."""
    if requests == 0 or t_first is None or t_last is None:
        return Arrivals(0, None, None, None, None, None, None, None, 0, None)
    span = max(0.0, t_last - t_first)
    whole = int(span // MINUTE_S)
    mean = requests / span if span > 0 else None
    peak = median = None
    peak_minute: int | None = None
    dense: list[int] | None = None
    if whole >= 1:
        counts = {b.minute: b.requests for b in bins if 0 <= b.minute < whole}
        nonzero = sorted(counts.values())
        zeros = whole - len(nonzero)
        top = max(nonzero, default=0)
        peak = top / MINUTE_S
        peak_minute = min((m for m, n in counts.items() if n == top), default=0)
        median = _median_with_zeros(nonzero, zeros) / MINUTE_S
        if whole <= MAX_DENSE_MINUTES:
            dense = [counts.get(i, 0) for i in range(whole)]
    elif span > 0:
        peak = median = requests / span
        peak_minute = 0
    cv = None
    if requests >= 2 and span > 0:
        ordered = sorted(bins, key=lambda b: b.minute)
        sq = sum(b.sq_gaps for b in ordered)
        sq += sum((b.t_min - a.t_max) ** 2 for a, b in zip(ordered, ordered[1:], strict=False))
        gap = span / (requests - 1)
        var = max(0.0, sq / (requests - 1) - gap * gap)
        cv = math.sqrt(var) / gap
    return Arrivals(requests, t_first, span, mean, peak, median, peak_minute, cv, whole, dense)


def _median_with_zeros(sorted_values: list[int], zeros: int) -> float:
    """The median of ``zeros`` zeros and ``sorted_values`` (ascending, all ≥ 1)."""
    n = zeros + len(sorted_values)
    if n == 0:
        return 0.0

    def at(i: int) -> int:
        return 0 if i < zeros else sorted_values[i - zeros]

    return float(at(n // 2)) if n % 2 else (at(n // 2 - 1) + at(n // 2)) / 2.0


# --- prefix reuse and cache hits -------------------------------------------------------------


@dataclass(frozen=True)
class PrefixReuse:
    source: str  # prompt_ids | hash_ids
    block_tokens: int
    requests: int  # requests that could be hashed
    tokens: int  # their prompt tokens
    reused_tokens: int

    @property
    def share(self) -> float | None:
        return self.reused_tokens / self.tokens if self.tokens else None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "block_tokens": self.block_tokens,
            "requests": self.requests,
            "tokens": self.tokens,
            "reused_tokens": self.reused_tokens,
            "share": self.share,
        }


def prefix_reuse_from_hash_ids(
    lengths: Sequence[int], hash_ids: Sequence[Sequence[int]], block_tokens: int = BLOCK_TOKENS
) -> PrefixReuse | None:
    """Reuse over requests in arrival order: block i of a request (tokens 512·i … of its
    prompt, the last block partial) is reused when an earlier request had its hash ID.
    Requests without hash IDs are left out; None when none has any."""
    seen: set[int] = set()
    n = tokens = reused = 0
    for length, ids in zip(lengths, hash_ids, strict=True):
        if not ids:
            continue
        n += 1
        tokens += length
        for i, h in enumerate(ids):
            if h in seen:
                reused += max(0, min(block_tokens, length - block_tokens * i))
        seen.update(ids)
    return PrefixReuse("hash_ids", block_tokens, n, tokens, reused) if n else None


def prefix_reuse_from_blocks(
    requests: int, tokens: int, blocks: int, distinct: int, block_tokens: int = BLOCK_TOKENS
) -> PrefixReuse | None:
    """Reuse from whole-block counts (``q_workload.prefix_counts``): every block but the
    first of each distinct chained hash was seen before."""
    if requests == 0:
        return None
    return PrefixReuse(
        "prompt_ids", block_tokens, requests, tokens, (blocks - distinct) * block_tokens
    )


@dataclass(frozen=True)
class CacheHits:
    requests: int  # requests that logged cached_prompt_tokens
    cached_tokens: int
    prompt_tokens: int

    @property
    def rate(self) -> float | None:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None


# --- SLO ------------------------------------------------------------------------------------


def mean_tpot(e2e_s: Any, ttft_s: Any, output_tokens: Any) -> np.ndarray:
    """(e2e − TTFT) ÷ (output tokens − 1) per request; NaN where undefined or unknown."""
    e2e, ttft, n = (np.asarray(a, dtype=np.float64) for a in (e2e_s, ttft_s, output_tokens))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (e2e - ttft) / (n - 1)
    out[~(n >= 2)] = np.nan
    return out


def judge_slo(
    budgets: Budgets, *, ttft_s: Any, tpot_s: Any, output_tokens: Any, failed: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(judged, met) per request; NaN marks an unknown TTFT, TPOT or output count."""
    ttft = np.asarray(ttft_s, dtype=np.float64)
    tpot = np.asarray(tpot_s, dtype=np.float64)
    n_out = np.asarray(output_tokens, dtype=np.float64)
    bad = np.asarray(failed, dtype=bool)
    tpot_na = n_out <= 1  # NaN compares False: unknown is not "undefined"
    ttft_ok = np.ones(ttft.shape, bool) if budgets.ttft_s is None else ttft <= budgets.ttft_s
    ttft_known = np.ones(ttft.shape, bool) if budgets.ttft_s is None else ~np.isnan(ttft)
    if budgets.tpot_s is None:
        tpot_ok = tpot_known = np.ones(ttft.shape, bool)
    else:
        tpot_ok = tpot_na | (tpot <= budgets.tpot_s)
        tpot_known = tpot_na | ~np.isnan(tpot)
    judged = bad | (ttft_known & tpot_known)
    return judged, judged & ~bad & ttft_ok & tpot_ok


@dataclass(frozen=True)
class SloResult:
    budgets: Budgets
    requests: int
    failed: int
    judged: int
    met: int
    duration_s: float | None

    @property
    def attainment(self) -> float | None:
        return self.met / self.judged if self.judged else None

    @property
    def goodput_rps(self) -> float | None:
        return self.met / self.duration_s if self.duration_s else None

    def to_json(self) -> dict[str, Any]:
        return {
            "ttft_s": self.budgets.ttft_s,
            "tpot_s": self.budgets.tpot_s,
            "requests": self.requests,
            "judged": self.judged,
            "unjudged": self.requests - self.judged,
            "failed": self.failed,
            "met": self.met,
            "attainment": self.attainment,
            "goodput_rps": self.goodput_rps,
        }


# --- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadReport:
    source: dict[str, Any]
    arrivals: Arrivals
    prompt: Distribution
    output: Distribution
    prefix: PrefixReuse | None = None
    cache: CacheHits | None = None
    slo: SloResult | None = None
    startup: dict[str, Any] | None = None
    capacity: Capacity | None = None
    replicas: ReplicasNeeded = ReplicasNeeded(None, None)
    bandwidth: list[DecodeBandwidth] | None = None
    notes: list[str] = field(default_factory=list)
    slo_asked: bool = False  # budgets were given (``slo`` is null in the JSON where unknown)

    def to_json(self) -> dict[str, Any]:
        a = self.arrivals
        doc: dict[str, Any] = {
            "source": self.source,
            "requests": a.requests,
            "duration_s": a.duration_s,
            "qps": {
                "mean": a.mean_qps,
                "peak_1m": a.peak_1m,
                "median_1m": a.median_1m,
                "peak_minute": a.peak_minute,
                "cv_interarrival": a.cv_interarrival,
                "whole_minutes": a.whole_minutes,
                "per_minute": a.per_minute,
            },
            "prompt_tokens": self.prompt.to_json(),
            "output_tokens": self.output.to_json(),
            "prefix_reuse": self.prefix.share if self.prefix else None,
            "prefix": self.prefix.to_json() if self.prefix else None,
            "cache_hit_rate": self.cache.rate if self.cache else None,
            "cache": None
            if self.cache is None
            else {
                "requests": self.cache.requests,
                "cached_tokens": self.cache.cached_tokens,
                "prompt_tokens": self.cache.prompt_tokens,
            },
            "startup": self.startup,
            "capacity": self.capacity.to_json() if self.capacity else None,
            "replicas_needed": self.replicas.to_json(),
            "bandwidth": None
            if self.bandwidth is None
            else {
                "weights_gb": self.bandwidth[0].weights_gb if self.bandwidth else None,
                "peak_bandwidth_gbs": self.bandwidth[0].peak_gbs if self.bandwidth else None,
                "assumption": "weights read once per decode step; steps/s = 1 / mean time per "
                "output token; KV cache and activations not counted (a lower bound)",
                "replicas": [b.to_json() for b in self.bandwidth],
            },
            "notes": self.notes,
        }
        if self.slo is not None or self.slo_asked:
            doc["slo"] = self.slo.to_json() if self.slo is not None else None
        return doc


def trace_report(
    reqs: Sequence[Any], options: WorkloadOptions, source: dict[str, Any]
) -> WorkloadReport:
    """The workload of a trace's requests (``infdebug.fleet.traces.TraceRequest``): arrivals,
    lengths, prefix reuse from hash IDs; no latencies, so no SLO and no derived capacity."""
    ordered = sorted(reqs, key=lambda r: (r.t_s, r.line))
    t = np.array([r.t_s for r in ordered], dtype=np.float64)
    a = arrivals(
        len(ordered),
        float(t[0]) if t.size else None,
        float(t[-1]) if t.size else None,
        minute_bins(t),
    )
    prefix = prefix_reuse_from_hash_ids(
        [r.input_tokens for r in ordered], [r.hash_ids for r in ordered], options.block_tokens
    )
    notes = []
    capacity = None
    if options.replica_capacity_rps is not None:
        capacity = Capacity(options.replica_capacity_rps, "given")
    else:
        notes.append("a trace has no latencies: give --replica-capacity for the replicas needed")
    if options.budgets.given:
        notes.append("a trace has no latencies: SLO attainment needs logs")
    if options.weights_gb is not None:
        notes.append("a trace has no token times: decode bandwidth needs logs")
    return WorkloadReport(
        source=source,
        arrivals=a,
        prompt=Distribution.of([r.input_tokens for r in ordered]),
        output=Distribution.of([r.output_tokens for r in ordered]),
        prefix=prefix,
        capacity=capacity,
        replicas=replicas_needed(a.peak_1m, a.median_1m, capacity),
        notes=notes,
        slo_asked=options.budgets.given,
    )
