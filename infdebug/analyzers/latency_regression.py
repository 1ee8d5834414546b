"""Cross-replica latency regressions (analyzer ``latency``, kind ``replica.latency_regression``):
a replica slower than the rest of its fleet, or a deployment slower than the others (canary
against baseline), like for like.

What is compared: queue time, TTFT, inter-token latency and end-to-end latency of each unit
(replica within deployment) against every other unit serving the same model in the window,
and of each deployment of two or more units against the model's other deployments.

Like for like: each metric is compared within strata of what drives it (``store.q_latency``):
TTFT within uncached-prompt-length (quarter octaves), cached-share and load-at-arrival
buckets; inter-token latency within batch-size buckets (the time-averaged number of requests
in flight on the unit over the request's lifetime, from overlapping ``[t_arrival, t_arrival +
e2e_s]``) and context-length octaves; queue time within load-at-arrival buckets; e2e within
output-length, prompt-length and batch buckets; every metric also within time buckets
(``TIME_BUCKETS`` across the window, at least ``MIN_TIME_BUCKET_S`` wide), so only requests
served at about the same time are compared. A replica that merely served longer prompts
lands in the long-prompt strata and meets the fleet's long prompts there; one that absorbed
a burst alone lands in high-load strata, and where nobody else ran that load there is
nothing to compare: no claim is made from it.

The test: van Elteren's stratified Wilcoxon-Mann-Whitney test (per-stratum rank sums
aggregated in ClickHouse on log-binned values, ties corrected; weights 1/(N_s + 1)),
one-sided (slower), with at least ``MIN_REQUESTS`` requests on each side in comparable
strata; Benjamini-Hochberg over every replica × metric and deployment × metric test of the
run (false discovery rate ``ALPHA``). The effect: the Hodges-Lehmann shift of that test on
the log scale (the common ratio that aligns the strata), with its 95 % confidence interval
(the test inverted), reported as a relative shift and, times the rest's median, in seconds.

Kayenta-style tolerance (``ctx.options["tolerance"]``, ``--tolerance``, default 10 %): a
significant shift is flagged only when it exceeds the tolerance × the rest's median and
``FLOOR_S`` of its metric in absolute terms (a +20 % on a 0.5 ms queue time is no
regression anyone feels).

Severity: ``warning`` for a significant shift beyond the tolerance; ``error`` when the whole
confidence interval lies beyond twice the tolerance (strong evidence of a large regression:
a +30 % inter-token latency on a few hundred requests at the default tolerance). One finding
per unit or deployment, naming every metric flagged on it; the headline is the one with the
largest lower bound.

Past ``SAMPLE_CAP`` requests in the window the tests run on a sample: the requests arriving
in whole time slices chosen by hash (``q_latency.Sampling``: the same whatever the order or
names), their load computed from every request that ran beside them. Half a million
requests leave no regression of the tolerance's size undetected, and the cost stops growing
with the window but for one scan.

Evidence: p50/p90/p99 of each side (exact) with bootstrap 95 % intervals (from a histogram
of 0.5 % bins), the strata that carried the statistic, and the slowest requests of the side
flagged.
"""

from __future__ import annotations

import datetime as dt
import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.stats import (
    Sample,
    Shift,
    StratumRanks,
    aligned_shift,
    benjamini_hochberg,
    bootstrap_quantiles,
    norm_sf,
    van_elteren,
)
from infdebug.errors import InputError
from infdebug.schema import Finding
from infdebug.store import q_latency as q
from infdebug.store import q_ranks as qr
from infdebug.store.q_common import split_unit, unit_label
from infdebug.store.q_ranks import Cell

ANALYZER = "latency"
KIND = "replica.latency_regression"
DEFAULT_TOLERANCE = 0.10
MIN_REQUESTS = 30  # on each side, in strata where both sides have requests
ALPHA = 0.01  # Benjamini-Hochberg false discovery rate
CI_LEVEL = 0.95
TIME_BUCKETS = 8
MIN_TIME_BUCKET_S = 60.0
FLOOR_S = {"queue_s": 0.002, "ttft_s": 0.002, "itl_s": 0.0002, "e2e_s": 0.005}
EVIDENCE_IDS = 5
TOP_STRATA = 3
SAMPLE_CAP = 500_000  # requests tested (``latency_sample``): beyond, whole time slices
QUANTILES = (0.5, 0.9, 0.99)
NAMES = {
    "queue_s": "queue time",
    "ttft_s": "TTFT",
    "itl_s": "inter-token latency",
    "e2e_s": "e2e latency",
}
CONTROLS = {
    "queue_s": "load at arrival",
    "ttft_s": "uncached prompt length, cached share and load at arrival",
    "itl_s": "batch size and context length",
    "e2e_s": "output length, prompt length and batch size",
}


def parse_tolerance(value: Any) -> float:
    """A relative tolerance: a fraction (``0.1``) or a percentage (``"10%"``), in (0, 10]."""
    if value is None:
        return DEFAULT_TOLERANCE
    text = str(value).strip()
    try:
        tol = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(
            f"tolerance: expected a fraction (0.1) or a percentage (10%), got {value!r}"
        ) from None
    if not 0 < tol <= 10 or math.isnan(tol):
        raise InputError(f"tolerance: expected a value in (0, 10] (0.1 = 10%), got {value!r}")
    return tol


def sample_cap(ctx: AnalysisContext) -> int:
    """``ctx.options["latency_sample"]``: the requests the tests count (``SAMPLE_CAP``)."""
    value = ctx.options.get("latency_sample")
    if value is None:
        return SAMPLE_CAP
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"latency_sample: expected a positive number of requests, got {value!r}")
    return value


def fmt_s(seconds: float) -> str:
    """Seconds at a readable scale: 0.00412 → "4.12 ms"."""
    if seconds != seconds:
        return "n/a"
    if abs(seconds) < 1.0:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_clock(t: float) -> str:
    """Unix seconds as a UTC wall-clock time."""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_rel(r: float) -> str:
    return f"{r * 100:+.0f}%" if abs(r) >= 0.1 else f"{r * 100:+.1f}%"


def time_width(t_min: float, t_max: float) -> float:
    return max(MIN_TIME_BUCKET_S, (t_max - t_min) / TIME_BUCKETS)


def samples(cells: list[Cell]) -> Sample:
    """Cells' quantile representatives as one weighted sample of log seconds."""
    if not cells:
        return Sample(np.zeros(0), np.zeros(0))
    bins = np.concatenate([np.asarray(c.reps, dtype=np.float64) for c in cells])
    wts = np.concatenate([np.full(len(c.reps), c.n / len(c.reps)) for c in cells])
    return Sample((bins + 0.5) * math.log(q.RANK_RATIO), wts)


Strata = dict[tuple[int, ...], dict[str, Cell]]


@dataclass
class Comparison:
    """One test: ``units`` (one unit, or a deployment's) against the model's others, in
    the strata where both sides have requests."""

    model: str
    metric: str
    level: str  # "replica" | "deployment"
    name: str  # the unit, or the deployment ("" for none)
    units: tuple[str, ...]
    strata: list[tuple[tuple[int, ...], StratumRanks]]
    cells: Strata  # every unit's cells of the metric, by stratum
    requests: int  # the side's requests with this metric, compared or not
    z: float = 0.0
    p: float = 1.0
    q: float = 1.0
    contributions: tuple[float, ...] = ()

    @property
    def n1(self) -> int:
        return sum(s.n1 for _, s in self.strata)

    @property
    def n2(self) -> int:
        return sum(s.n2 for _, s in self.strata)

    def sides(self, key: tuple[int, ...]) -> tuple[list[Cell], list[Cell]]:
        """This side's cells and the rest's in one stratum."""
        mine = set(self.units)
        cs = self.cells[key]
        return [c for u, c in cs.items() if u in mine], [c for u, c in cs.items() if u not in mine]


def comparisons(
    cells: list[Cell], only: set[tuple[str, str, str, str]] | None = None
) -> list[Comparison]:
    """Every replica and deployment comparison the cells allow (enough requests each side),
    or those of ``only`` ((model, metric, level, name) keys)."""
    by: dict[tuple[str, str], Strata] = defaultdict(lambda: defaultdict(dict))
    for c in cells:
        by[(c.model, c.metric)][c.stratum][c.unit] = c
    out: list[Comparison] = []
    for (model, metric), strata in sorted(by.items()):
        totals = {
            key: (sum(c.n for c in cs.values()), sum(c.tie_part for c in cs.values()))
            for key, cs in strata.items()
        }
        where: dict[str, list[tuple[int, ...]]] = defaultdict(list)  # unit → its strata
        for key in sorted(strata):
            for u in strata[key]:
                where[u].append(key)
        deps: dict[str, list[str]] = defaultdict(list)
        for u in sorted(where):
            deps[split_unit(u)[1] or ""].append(u)
        groups: list[tuple[str, str, tuple[str, ...]]] = [
            ("replica", u, (u,)) for u in sorted(where)
        ]
        if len(deps) >= 2:
            groups += [
                ("deployment", d, tuple(us)) for d, us in sorted(deps.items()) if len(us) >= 2
            ]  # a deployment of one replica: the same comparison as its replica's
        for level, name, members in groups:
            if only is not None and (model, metric, level, name) not in only:
                continue
            keys = sorted({k for u in members for k in where[u]})
            rows = []
            total = 0
            for key in keys:
                x = [strata[key][u] for u in members if u in strata[key]]
                n1 = sum(c.n for c in x)
                total += n1
                n, tie = totals[key]
                if n1 == n:
                    continue
                rows.append((key, StratumRanks(n1, n - n1, sum(c.rank_sum for c in x), tie)))
            cmp = Comparison(model, metric, level, name, members, rows, strata, total)
            if cmp.n1 < MIN_REQUESTS or cmp.n2 < MIN_REQUESTS:
                continue
            t = van_elteren([sr for _, sr in rows])
            cmp.z, cmp.p, cmp.contributions = t.z, t.p_greater, t.contributions
            out.append(cmp)
    return out


def shift_of(cmp: Comparison) -> Shift | None:
    """The Hodges-Lehmann log-ratio of the side over the rest, with its interval."""
    pairs = []
    for key, _ in cmp.strata:
        x, y = cmp.sides(key)
        pairs.append((samples(x), samples(y)))
    return aligned_shift(pairs, CI_LEVEL)


@dataclass
class Test:
    """One comparison's outcome from ``q_latency.rank_sums`` (the first pass: every test,
    with no cell leaving ClickHouse)."""

    model: str
    metric: str
    level: str
    name: str
    units: tuple[str, ...]
    z: float
    p: float
    q: float = 1.0


def tests_of(rows: list[qr.RankSums]) -> list[Test]:
    """The tests the rank sums allow, by the rules of ``comparisons``: enough compared
    requests on each side; a deployment only of two or more units, where the model and
    metric have two or more deployments."""
    units: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for r in rows:
        if r.level == "replica":
            units[(r.model, r.metric, split_unit(r.name)[1] or "")].append(r.name)
    deps: dict[tuple[str, str], int] = defaultdict(int)
    for model, metric, _ in units:
        deps[(model, metric)] += 1
    out = []
    for r in rows:
        if r.level == "replica":
            members: tuple[str, ...] = (r.name,)
        else:
            members = tuple(sorted(units.get((r.model, r.metric, r.name), [])))
            if len(members) < 2 or deps[(r.model, r.metric)] < 2:
                continue
        if r.n1 < MIN_REQUESTS or r.n2 < MIN_REQUESTS:
            continue
        z = r.num / math.sqrt(r.var) if r.var > 0 else 0.0
        p = norm_sf(z) if r.var > 0 else 1.0
        out.append(Test(r.model, r.metric, r.level, r.name, members, z, p))
    return out


@analyzer(ANALYZER)
def latency_analyzer(ctx: AnalysisContext) -> list[Finding]:
    tol = parse_tolerance(ctx.options.get("tolerance"))
    w = ctx.window()
    sp = ctx.shared(("latency span",), lambda: q.span(ctx.store, w))
    if sp is None:
        return []
    tw = time_width(sp.t_min, sp.t_max)
    sampling = q.Sampling.for_span(sp, sample_cap(ctx))
    tests = tests_of(
        qr.rank_sums(ctx.store, w, origin=sp.t_min, tw=tw, sampling=sampling, scratch=ctx.scratch)
    )
    for t, qv in zip(tests, benjamini_hochberg([t.p for t in tests]), strict=True):
        t.q = qv
    significant = [t for t in tests if t.q < ALPHA and t.z > 0]
    flagged: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    if not significant:
        return []
    # the cells of the strata the significant sides served, with their quantiles: the shift
    metrics = sorted({t.metric for t in significant}, key=q.METRICS.index)
    again = qr.strata_cells(
        ctx.store,
        w,
        origin=sp.t_min,
        tw=tw,
        sampling=sampling,
        metrics=metrics,
        reps=True,
        scratch=ctx.scratch,
        units=sorted({u for t in significant for u in t.units}),
    )
    wanted = {(t.model, t.metric, t.level, t.name) for t in significant}
    with_reps = {(t.model, t.metric, t.level, t.name): t for t in comparisons(again, wanted)}
    for t in significant:
        full = with_reps.get((t.model, t.metric, t.level, t.name))
        if full is None:
            continue
        full.z, full.p, full.q = t.z, t.p, t.q
        sh = shift_of(full)
        if sh is None:
            continue
        rel, lo, hi = math.expm1(sh.estimate), math.expm1(sh.lo), math.expm1(sh.hi)
        if rel <= tol:
            continue
        m = _measure(ctx, full, rel, lo, hi, tol, sp.t_min, tw)
        if m is not None:
            flagged[(t.model, t.level, t.name)].append(m)
    out = []
    for (model, level, name), ms in sorted(flagged.items()):
        out.append(_finding(model, level, name, ms, tol, len(tests)))
    return out


def _measure(
    ctx: AnalysisContext,
    t: Comparison,
    rel: float,
    lo: float,
    hi: float,
    tol: float,
    origin: float,
    tw: float,
) -> dict[str, Any] | None:
    """The flagged metric's numbers and evidence, or None when under the absolute floor."""
    w = ctx.window()
    me, rest = q.sides(ctx.store, w, t.model, t.metric, t.units)
    shift_s = rel * rest.quantiles[0]
    if not shift_s >= FLOOR_S[t.metric]:
        return None
    seed = zlib.crc32(t.metric.encode())
    per_side = {}
    for label, side in (("this", me), ("rest", rest)):
        keys = sorted(side.hist)
        bins = [q.bin_seconds(k, q.EVIDENCE_RATIO) for k in keys]
        cis = bootstrap_quantiles(bins, [side.hist[k] for k in keys], QUANTILES, seed=seed)
        per_side[label] = {
            "requests": side.n,
            **{
                f"p{round(qq * 100)}": {"s": v, "ci": [a, b]}
                for qq, v, (a, b) in zip(QUANTILES, side.quantiles, cis, strict=True)
            },
        }
    total = sum(c for c in t.contributions if c > 0) or 1.0
    carried = sorted(
        ((c, key, sr) for c, (key, sr) in zip(t.contributions, t.strata, strict=True) if c > 0),
        key=lambda r: (-r[0], r[1]),
    )[:TOP_STRATA]
    strata = []
    for c, key, sr in carried:
        x, y = t.sides(key)
        one = aligned_shift([(samples(x), samples(y))], CI_LEVEL)
        strata.append(
            {
                **q.stratum_label(t.metric, key, origin, tw),
                "requests": sr.n1,
                "rest_requests": sr.n2,
                "shift": round(math.expm1(one.estimate), 4) if one else None,
                "share_of_statistic": round(c / total, 4),
            }
        )
    slow = q.slowest(ctx.store, w, t.model, t.metric, EVIDENCE_IDS, units=t.units)
    severe = lo > 2 * tol
    return {
        "metric": t.metric,
        "severity": "error" if severe else "warning",
        "shift": round(rel, 4),
        "shift_ci": [round(lo, 4), round(hi, 4)],
        "shift_s": shift_s,
        "p50_s": me.quantiles[0],
        "rest_p50_s": rest.quantiles[0],
        "quantiles": per_side,
        "compared": t.n1,
        "rest_compared": t.n2,
        "requests": t.requests,
        "strata_compared": len(t.strata),
        "z": round(t.z, 4),
        "p_value": t.p,
        "q_value": t.q,
        "strata": strata,
        "slowest": [{"request_id": rid, "s": v} for rid, v in slow],
    }


def _finding(
    model: str, level: str, name: str, ms: list[dict[str, Any]], tol: float, n_tests: int
) -> Finding:
    ms = sorted(ms, key=lambda m: (m["severity"] != "error", -m["shift_ci"][0], m["metric"]))
    head = ms[0]
    metric = head["metric"]
    who = unit_label(name) if level == "replica" else f"deployment {name or '(none)'}"
    against = "the rest of its fleet" if level == "replica" else "the other deployments"
    lo, hi = head["shift_ci"]
    others = ", ".join(f"{NAMES[m['metric']]} {fmt_rel(m['shift'])}" for m in ms[1:])
    summary = (
        f"{who}: {NAMES[metric]} {fmt_rel(head['shift'])} (95% CI {fmt_rel(lo)} to "
        f"{fmt_rel(hi)}) against {against}, like for like on {CONTROLS[metric]}; "
        f"p50 {fmt_s(head['p50_s'])} vs {fmt_s(head['rest_p50_s'])}; tolerance {tol:.0%}"
        + (f"; also {others}" if others else "")
    )
    values = {
        "model": model,
        "level": level,
        "metric": metric,
        "shift": head["shift"],
        "shift_ci": head["shift_ci"],
        "shift_s": head["shift_s"],
        "tolerance": tol,
        "test": "van_elteren_stratified_mann_whitney+benjamini_hochberg",
        "z": head["z"],
        "p_value": head["p_value"],
        "q_value": head["q_value"],
        "tests": n_tests,
        "metrics": {
            m["metric"]: {
                k: m[k]
                for k in (
                    "shift",
                    "shift_ci",
                    "shift_s",
                    "quantiles",
                    "compared",
                    "rest_compared",
                    "requests",
                    "strata_compared",
                    "z",
                    "p_value",
                    "q_value",
                    "severity",
                )
            }
            for m in ms
        },
    }
    evidence = {
        "request_ids": [s["request_id"] for s in head["slowest"]],
        "slowest": head["slowest"],
        "strata": {m["metric"]: m["strata"] for m in ms},
        "controls": {m["metric"]: CONTROLS[m["metric"]] + ", time" for m in ms},
    }
    severity = "error" if any(m["severity"] == "error" for m in ms) else "warning"
    if level == "replica":
        return finding(
            ANALYZER, KIND, severity, summary, unit=name, values=values, evidence=evidence
        )
    return finding(
        ANALYZER, KIND, severity, summary, deployment=name, values=values, evidence=evidence
    )
