"""Per-replica latency quantiles and rates from scraped Prometheus metrics (``stats
--from-metrics``), in the one vocabulary of collectors/prom_vocab.py.

Samples are read as stored (``metric_samples``: the engine's own names, cumulative counters
and histogram buckets, one row per scrape and label set) and mapped when read, so every
engine's histograms land on the same terms (``ttft_seconds``, ``itl_seconds``,
``tpot_seconds``, ``e2e_seconds``, ``queue_seconds``), in seconds (``Mapping.scale``).

What a window holds is the *increase* of each cumulative series over it, as Prometheus's
``increase()`` has it: the last scrape in the window minus the last one before it (the
series' first scrape is only a baseline). A counter reset (a restarted engine: a count or
any bucket going down) adds the new value whole, and is counted (``resets``). A series
scraped once only (a ``.prom`` snapshot loaded with ``ingest``) has no increase: its
cumulative values are used, ``basis`` says ``since_start``.

Series of one replica and term (label sets: models, engines) are added bucket by bucket; where
their bucket edges differ, each is read at the union of edges by linear interpolation (the
assumption ``histogram_quantile`` makes inside a bucket). A quantile is interpolated inside
its bucket; one in the +Inf bucket is the highest finite edge (a lower bound: ``capped``).
"""

from __future__ import annotations

import bisect
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from infdebug.collectors.prom_vocab import Mapping
from infdebug.store.base import Store

HIST_TERMS = ("ttft_seconds", "itl_seconds", "tpot_seconds", "e2e_seconds", "queue_seconds")
RATE_TERMS = ("requests_finished_total", "prompt_tokens_total", "generation_tokens_total")
GAUGE_TERMS = ("requests_running", "requests_waiting", "kv_cache_usage_ratio")
QUANTILES = (0.5, 0.9, 0.99)
RATIO_TERMS = ("kv_cache_usage_ratio", "prefix_cache_hit_ratio")


def _value(m: Mapping, labels: str | None, v: float) -> float | None:
    from infdebug.collectors.prom_vocab import value_in_unit

    return value_in_unit(m, json.loads(labels) if labels else None, v)


@dataclass
class Hist:
    """A histogram increase: finite upper edges (ascending), cumulative counts at them, the
    total (the +Inf bucket) and the sum."""

    edges: list[float]
    cum: list[float]
    total: float
    sum: float | None = None

    def at(self, e: float) -> float:
        """Cumulative count at edge ``e`` (linear between this histogram's edges)."""
        i = bisect.bisect_left(self.edges, e)
        if i < len(self.edges) and self.edges[i] == e:
            return self.cum[i]
        if i >= len(self.edges):
            return self.cum[-1] if self.cum else 0.0
        lo_e = self.edges[i - 1] if i else 0.0
        lo_c = self.cum[i - 1] if i else 0.0
        hi_e, hi_c = self.edges[i], self.cum[i]
        if hi_e <= lo_e:
            return hi_c
        return lo_c + (hi_c - lo_c) * (e - lo_e) / (hi_e - lo_e)


def merge(hists: Sequence[Hist]) -> Hist | None:
    """The bucket-wise sum of ``hists`` on the union of their edges."""
    hists = [h for h in hists if h.total > 0 or h.edges]
    if not hists:
        return None
    if len(hists) == 1:
        return hists[0]
    edges = sorted({e for h in hists for e in h.edges})
    cum = [sum(h.at(e) for h in hists) for e in edges]
    sums = [h.sum for h in hists if h.sum is not None]
    return Hist(edges, cum, sum(h.total for h in hists), sum(sums) if sums else None)


def quantile(h: Hist, q: float) -> tuple[float | None, bool]:
    """(the ``q`` quantile, whether it is capped at the highest finite edge)."""
    if h.total <= 0:
        return None, False
    rank = q * h.total
    prev_e, prev_c = 0.0, 0.0
    for e, c in zip(h.edges, h.cum, strict=True):
        if c >= rank:
            if c <= prev_c:
                return e, False
            lo = prev_e if prev_e < e else 0.0
            return lo + (e - lo) * (rank - prev_c) / (c - prev_c), False
        prev_e, prev_c = e, c
    return (h.edges[-1] if h.edges else None), True


def _hist_of(
    buckets: dict[str, float], count: float | None, total_sum: float | None, scale: float
) -> Hist:
    pairs = []
    inf = None
    for le, c in buckets.items():
        try:
            e = float(le)
        except ValueError:
            continue
        if math.isinf(e):
            inf = c
        else:
            pairs.append((e * scale, float(c)))
    pairs.sort()
    total = (
        inf
        if inf is not None
        else (count if count is not None else (pairs[-1][1] if pairs else 0.0))
    )
    return Hist(
        [e for e, _ in pairs],
        [c for _, c in pairs],
        float(total),
        None if total_sum is None else total_sum * scale,
    )


def _minus(cur: Hist, prev: Hist) -> Hist | None:
    """``cur - prev`` on ``cur``'s edges; None when anything went down (a reset)."""
    if cur.total < prev.total:
        return None
    cum = []
    for e, c in zip(cur.edges, cur.cum, strict=True):
        p = prev.at(e)
        if c < p - 1e-9:
            return None
        cum.append(c - p)
    s = None if cur.sum is None or prev.sum is None else cur.sum - prev.sum
    return Hist(list(cur.edges), cum, cur.total - prev.total, s)


@dataclass
class Increase:
    """What a series added over one window."""

    value: Any  # Hist for histograms, float for counters
    resets: int = 0
    since_start: bool = False
    t0: float = 0.0  # the baseline's time (the window's covered span starts here)
    t1: float = 0.0


def increase(points: Sequence[tuple[float, Any]], minus: Any, zero: Any) -> Increase | None:
    """The increase over ``points`` ((t, cumulative value), in time order; the first is the
    baseline). ``minus(cur, prev)``: the difference or None on a reset."""
    if not points:
        return None
    if len(points) == 1:
        return Increase(points[0][1], since_start=True, t0=points[0][0], t1=points[0][0])
    total, resets = zero, 0
    for (_, prev), (_, cur) in zip(points, points[1:], strict=False):
        d = minus(cur, prev)
        if d is None:
            resets += 1
            d = cur
        total = _add(total, d)
    return Increase(total, resets, False, points[0][0], points[-1][0])


def _add(a: Any, b: Any) -> Any:
    if isinstance(b, Hist):
        return b if a is None else merge([a, b])
    return (a or 0.0) + b


@dataclass
class TermStats:
    term: str
    n: float
    quantiles: dict[float, float | None]
    capped: dict[float, bool]
    mean: float | None


@dataclass
class MetricStats:
    """One replica over one window."""

    replica: str
    engine: str | None
    start: float
    end: float
    basis: str  # "increase" or "since_start"
    hists: dict[str, TermStats] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)  # per second over the window
    gauges: dict[str, dict[str, float]] = field(default_factory=dict)  # term -> mean, max
    prefix_cache_hit_ratio: float | None = None
    resets: int = 0
    series: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "engine": self.engine,
            "start": self.start,
            "end": self.end,
            "basis": self.basis,
            "latency": {
                t: {
                    "n": s.n,
                    "mean": s.mean,
                    **{f"p{round(q * 100)}": v for q, v in s.quantiles.items()},
                    "capped": [f"p{round(q * 100)}" for q, c in s.capped.items() if c],
                }
                for t, s in self.hists.items()
            },
            "rates_per_s": self.rates,
            "gauges": self.gauges,
            "prefix_cache_hit_ratio": self.prefix_cache_hit_ratio,
            "resets": self.resets,
            "series": self.series,
        }


def _rows(
    store: Store, names: list[str], replica: str, since: float | None, until: float | None
) -> list[tuple[Any, ...]]:
    where = ["has({names:Array(String)}, name)"]
    params: dict[str, Any] = {"names": names}
    if replica:
        where.append("replica = {replica:String}")
        params["replica"] = replica
    if since is not None:
        where.append("t >= {since:Float64}")
        params["since"] = since
    if until is not None:
        where.append("t < {until:Float64}")
        params["until"] = until
    _, rows = store.query(
        "SELECT replica, name, labels, t, buckets, sum, count, value FROM metric_samples "
        f"WHERE {' AND '.join(where)} ORDER BY replica, name, labels, t",
        params,
    )
    return rows


def metric_stats(
    store: Store,
    *,
    replica: str = "",
    since: float | None = None,
    until: float | None = None,
    window_s: float | None = None,
) -> list[MetricStats]:
    """Per replica (and per ``window_s`` window from ``since`` or the first scrape) stats."""
    from infdebug.collectors import prom_vocab as vocab

    terms = (
        *HIST_TERMS,
        *RATE_TERMS,
        *GAUGE_TERMS,
        "prefix_cache_hits_total",
        "prefix_cache_queries_total",
        "prefix_cache_hit_ratio",
    )
    maps = {
        m.source: m
        for t in terms
        for m in vocab.sources_of(t)
        if not m.kind or m.kind == vocab.TERMS[t].kind  # a last-value gauge is no histogram
    }
    lookback = max(window_s or 0.0, 900.0)
    rows = _rows(store, sorted(maps), replica, None if since is None else since - lookback, until)
    series: dict[tuple[str, str, str], list[tuple[float, Any]]] = defaultdict(list)
    names_by_replica: dict[str, set[str]] = defaultdict(set)
    for rep, name, labels, t, buckets, s, count, value in rows:
        m = maps[name]
        names_by_replica[rep].add(name)
        if m.term in HIST_TERMS:
            b = json.loads(buckets) if isinstance(buckets, str) else (buckets or {})
            if not b and count is None:
                continue
            v: Any = _hist_of(b, count, s, m.scale)
        elif value is None:
            continue
        else:
            v = _value(m, labels, float(value))
            if v is None:
                continue
        series[(rep, name, labels or "{}")].append((float(t), v))
    if not series:
        return []
    t_first = min(p[0][0] for p in series.values())
    t_last = max(p[-1][0] for p in series.values())
    origin = since if since is not None else t_first
    end = until if until is not None else t_last + 1e-6
    edges = _windows(origin, end, window_s)
    out: dict[tuple[str, int], MetricStats] = {}
    accs: dict[tuple[str, int], dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for (rep, name, _labels), points in series.items():
        m = maps[name]
        times = [p[0] for p in points]
        for wi, (w0, w1) in enumerate(edges):
            i0, i1 = bisect.bisect_left(times, w0), bisect.bisect_left(times, w1)
            inside = points[i0:i1]
            if not inside:
                continue
            if m.term in GAUGE_TERMS or m.term == "prefix_cache_hit_ratio":
                pts = inside
            elif i0 > 0:
                pts = [points[i0 - 1], *inside]  # the last scrape before: the baseline
            elif len(inside) == 1 and len(points) > 1:
                continue  # the series' first scrape alone: a baseline, nothing added yet
            else:
                pts = inside
            st = out.get((rep, wi))
            if st is None:
                st = out[(rep, wi)] = MetricStats(
                    rep, vocab.engine_of(names_by_replica[rep]), w0, w1, "increase"
                )
            st.series += 1
            _fold(accs[(rep, wi)], st, m.term, pts)
    for k, st in out.items():
        _finish(st, accs[k])
    return [out[k] for k in sorted(out)]


def _windows(origin: float, end: float, window_s: float | None) -> list[tuple[float, float]]:
    if not window_s:
        return [(origin, end)]
    n = max(1, math.ceil((end - origin) / window_s))
    return [(origin + i * window_s, origin + (i + 1) * window_s) for i in range(n)]


def _fold(
    acc: dict[str, list[Any]], st: MetricStats, term: str, pts: list[tuple[float, Any]]
) -> None:
    if term in GAUGE_TERMS or term == "prefix_cache_hit_ratio":
        acc["g:" + term].extend(pts)
        return
    is_hist = term in HIST_TERMS
    inc = increase(
        pts,
        _minus if is_hist else (lambda c, p: c - p if c >= p else None),
        None if is_hist else 0.0,
    )
    if inc is None:
        return
    if inc.since_start:
        st.basis = "since_start"
    st.resets += inc.resets
    acc[term].append(inc)


def _finish(st: MetricStats, acc: dict[str, list[Any]]) -> None:
    for term in HIST_TERMS:
        incs = acc.get(term, [])
        h = merge([i.value for i in incs if isinstance(i.value, Hist)])
        if h is None or h.total <= 0:
            continue
        qs = {q: quantile(h, q) for q in QUANTILES}
        st.hists[term] = TermStats(
            term,
            h.total,
            {q: v for q, (v, _) in qs.items()},
            {q: c for q, (_, c) in qs.items()},
            h.sum / h.total if h.sum is not None else None,
        )
    for term in (*RATE_TERMS, "prefix_cache_hits_total", "prefix_cache_queries_total"):
        incs = [i for i in acc.get(term, []) if not i.since_start]
        span = max((i.t1 - i.t0 for i in incs), default=0.0)
        if incs and span > 0:
            st.rates[term] = sum(float(i.value) for i in incs) / span
    hits, queries = (
        st.rates.get("prefix_cache_hits_total"),
        st.rates.get("prefix_cache_queries_total"),
    )
    if hits is not None and queries:
        st.prefix_cache_hit_ratio = hits / queries
    for term in (*GAUGE_TERMS, "prefix_cache_hit_ratio"):
        pts = acc.get("g:" + term, [])
        if not pts:
            continue
        per_t: dict[float, list[float]] = defaultdict(list)
        for t, v in pts:
            per_t[t].append(v)
        # label sets of one scrape (models of one replica): counts add up, ratios do not
        ratio = term in RATIO_TERMS
        vals = [max(v) if ratio else sum(v) for v in per_t.values()]
        if term == "prefix_cache_hit_ratio":
            if st.prefix_cache_hit_ratio is None:
                st.prefix_cache_hit_ratio = sum(vals) / len(vals)
            continue
        st.gauges[term] = {"mean": sum(vals) / len(vals), "max": max(vals)}


def known_names(store: Store) -> Iterable[str]:
    """Every metric name stored (for the hint when none maps)."""
    _, rows = store.query("SELECT DISTINCT name FROM metric_samples ORDER BY name LIMIT 1000")
    return [r[0] for r in rows]
