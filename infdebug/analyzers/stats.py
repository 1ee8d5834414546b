"""Statistics the latency analyzers share (numpy only): the normal distribution, the
Benjamini-Hochberg correction, the stratified Mann-Whitney test (van Elteren) on rank sums
aggregated in SQL, the Hodges-Lehmann shift of that test with its confidence interval,
bootstrap confidence intervals of quantiles from a histogram, and a CUSUM level-shift test.

Conventions: "x" is the side under test (a replica, a deployment, the time after a split),
"y" the side it is compared with; a positive shift means x is slower. Rank sums are of x's
mid-ranks within each stratum's pooled values, ties included (``tie_sum`` is Σ t³ − t over the
stratum's groups of tied values).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]


# --- the normal distribution ------------------------------------------------------------------


def norm_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def norm_ppf(p: float) -> float:
    """The standard normal quantile of ``p`` in (0, 1): Acklam's rational approximation,
    refined by two Newton steps on ``erfc`` (error < 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"norm_ppf: p must be in (0, 1), got {p}")
    a = (
        -39.69683028665376,
        220.9460984245205,
        -275.9285104469687,
        138.3577518672690,
        -30.66479806614716,
        2.506628277459239,
    )
    b = (
        -54.47609879822406,
        161.5858368580409,
        -155.6989798598866,
        66.80131188771972,
        -13.28068155288572,
    )
    c = (
        -0.007784894002430293,
        -0.3223964580411365,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    )
    d = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
    lo = 0.02425
    if p < lo or p > 1 - lo:
        qq = math.sqrt(-2 * math.log(p if p < lo else 1 - p))
        x = (((((c[0] * qq + c[1]) * qq + c[2]) * qq + c[3]) * qq + c[4]) * qq + c[5]) / (
            (((d[0] * qq + d[1]) * qq + d[2]) * qq + d[3]) * qq + 1
        )
        x = x if p < lo else -x
    else:
        qq = p - 0.5
        r = qq * qq
        x = (
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
            * qq
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
        )
    for _ in range(2):  # Newton on Φ(x) − p
        err = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
        x -= err * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return float(x)


# --- multiple comparisons ---------------------------------------------------------------------


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input's order: rejecting
    every test with q < α controls the false discovery rate at α (independent or positively
    dependent tests)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: (pvalues[i], i))
    adj = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, pvalues[i] * m / rank)
        adj[i] = min(1.0, running)
    return adj


# --- the stratified rank test -----------------------------------------------------------------


@dataclass(frozen=True)
class StratumRanks:
    """One stratum of a two-sample comparison: sizes, x's mid-rank sum, the tie term."""

    n1: int
    n2: int
    rank_sum: float
    tie_sum: float = 0.0

    @property
    def n(self) -> int:
        return self.n1 + self.n2

    @property
    def expected(self) -> float:
        return self.n1 * (self.n + 1) / 2.0

    @property
    def variance(self) -> float:
        """Var of x's rank sum under H0, tie-corrected."""
        n = self.n
        if n < 2:
            return 0.0
        return self.n1 * self.n2 / 12.0 * ((n + 1) - self.tie_sum / (n * (n - 1)))

    @property
    def weight(self) -> float:
        """Van Elteren's weight, 1 / (N + 1): each stratum's rank sum on a common scale."""
        return 1.0 / (self.n + 1)


@dataclass(frozen=True)
class RankTest:
    z: float
    p_greater: float  # one-sided: x stochastically larger (slower)
    contributions: tuple[float, ...]  # per stratum: its share of the statistic's numerator


def van_elteren(strata: Sequence[StratumRanks]) -> RankTest:
    """Van Elteren's stratified Wilcoxon-Mann-Whitney test of x > y: Σ w_s (W_s − E W_s)
    over strata with both sides present, w_s = 1/(N_s + 1), standardised by its null
    standard deviation (normal approximation, ties corrected). With one stratum it is the
    Mann-Whitney U test."""
    num = 0.0
    var = 0.0
    contrib = []
    for s in strata:
        if s.n1 == 0 or s.n2 == 0:
            contrib.append(0.0)
            continue
        c = s.weight * (s.rank_sum - s.expected)
        contrib.append(c)
        num += c
        var += s.weight**2 * s.variance
    if var <= 0:
        return RankTest(0.0, 1.0, tuple(contrib))
    z = num / math.sqrt(var)
    return RankTest(z, norm_sf(z), tuple(contrib))


def mann_whitney(n1: int, n2: int, rank_sum: float, tie_sum: float = 0.0) -> RankTest:
    """The (unstratified) Mann-Whitney U test of x > y, normal approximation with ties."""
    return van_elteren([StratumRanks(n1, n2, rank_sum, tie_sum)])


# --- the Hodges-Lehmann shift of the stratified test ---------------------------------------


def weighted_quantiles(values: Floats, weights: Floats, levels: Floats) -> Floats:
    """Quantiles of a weighted sample (the inverse of its step CDF at each level)."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    idx = np.searchsorted(cum, levels * cum[-1], side="left")
    out: Floats = v[np.minimum(idx, len(v) - 1)]
    return out


@dataclass(frozen=True)
class Sample:
    """One side of one stratum as weighted points (values on the scale of the shift, e.g.
    log seconds); the weights sum to the side's request count."""

    values: Floats
    weights: Floats

    @property
    def n(self) -> float:
        return float(self.weights.sum())

    def compressed(self, k: int) -> Sample:
        """At most ``k`` points: the sample's weighted quantiles, equal weights."""
        if len(self.values) <= k:
            return self
        levels = (np.arange(k) + 0.5) / k
        return Sample(weighted_quantiles(self.values, self.weights, levels), np.full(k, self.n / k))


@dataclass(frozen=True)
class Shift:
    estimate: float
    lo: float
    hi: float
    level: float


def aligned_shift(
    strata: Sequence[tuple[Sample, Sample]], level: float = 0.95, max_points: int = 48
) -> Shift | None:
    """The Hodges-Lehmann estimate of a common shift δ of x over y across strata, and its
    confidence interval, by inverting van Elteren's test: δ̂ is where the aligned statistic
    Z(δ) (x − δ against y, in every stratum) crosses 0, the interval where it crosses
    ±z_{(1+level)/2}. In one stratum, the median of the pairwise differences and Moses'
    interval. Each side is first reduced to ``max_points`` weighted quantiles."""
    keys: list[Floats] = []
    cums: list[Floats] = []
    halves: list[float] = []
    weights: list[float] = []
    var = 0.0
    offset = 0.0
    span = 0.0
    prepared = []
    for x, y in strata:
        if x.n <= 0 or y.n <= 0:
            continue
        x, y = x.compressed(max_points), y.compressed(max_points)
        d = (x.values[:, None] - y.values[None, :]).ravel()
        span = max(span, float(np.abs(d).max()))
        prepared.append((d, np.outer(x.weights, y.weights).ravel(), x.n, y.n))
    if not prepared:
        return None
    gap = 4 * span + 10.0  # strata laid end to end on one axis, apart by more than any δ
    for d, wt, n1, n2 in prepared:
        order = np.argsort(d, kind="stable")
        keys.append(d[order] + offset)
        cums.append(np.cumsum(wt[order]))
        n = n1 + n2
        c = 1.0 / (n + 1)
        weights.append(c)
        halves.append(n1 * n2 / 2.0)
        var += c * c * n1 * n2 * (n + 1) / 12.0
        offset += gap
    flat = np.concatenate(keys)
    cum = np.concatenate(cums)
    starts = np.cumsum([0] + [len(k) for k in keys])
    offsets = np.arange(len(keys)) * gap
    totals = np.array([c[-1] for c in cums])
    cw = np.array(weights)
    half = np.array(halves)
    sd = math.sqrt(var)

    def z_at(delta: float) -> float:
        q = offsets + delta
        left = np.searchsorted(flat, q, side="left")
        right = np.searchsorted(flat, q, side="right")

        def upto(idx: NDArray[np.int64]) -> Floats:
            out = np.zeros(len(idx))
            has = idx > starts[:-1]
            out[has] = cum[idx[has] - 1]
            return out

        below = upto(left)  # Σ w over d < δ
        at = upto(right) - below
        u = totals - below - at + 0.5 * at  # Σ w [d > δ] + ½ Σ w [d = δ]
        return float((cw * (u - half)).sum() / sd)

    def root(target: float) -> float:
        lo, hi = -span - 1.0, span + 1.0  # z_at(lo) ≥ every target ≥ z_at(hi)
        for _ in range(48):
            mid = 0.5 * (lo + hi)
            if z_at(mid) > target:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    zc = norm_ppf(0.5 + level / 2)
    return Shift(root(0.0), root(zc), root(-zc), level)


# --- quantiles of a histogram, with bootstrap intervals -----------------------------------------


def bootstrap_quantiles(
    bins: Sequence[float],
    counts: Sequence[int],
    qs: Sequence[float],
    *,
    rounds: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """Percentile-bootstrap intervals of the quantiles ``qs`` of a sample given as a
    histogram (bin values in ascending order, counts). A resample of size n is n draws
    F⁻¹(U) from the sample's own quantile function F⁻¹, so its k-th smallest value is
    F⁻¹(U₍ₖ₎) with U₍ₖ₎ ~ Beta(k, n + 1 − k): each round draws that one order statistic
    (k = ⌈q·n⌉) instead of a whole resample — the same bootstrap distribution, exactly, at a
    cost that does not grow with n. Deterministic for a seed; the resolution is the bins'."""
    if not bins:
        return [(math.nan, math.nan) for _ in qs]
    v = np.asarray(bins, dtype=np.float64)
    cum = np.cumsum(np.asarray(counts, dtype=np.float64))
    n = int(cum[-1])
    rng = np.random.default_rng(seed)
    out = []
    tail = (1 - level) / 2
    for q in qs:
        k = min(n, max(1, math.ceil(q * n)))
        u = rng.beta(k, n + 1 - k, size=rounds)
        # F⁻¹(u): the first bin whose cumulative count reaches ⌈u·n⌉
        idx = np.searchsorted(cum, np.ceil(u * n), side="left")
        est = v[np.minimum(idx, len(v) - 1)]
        out.append((float(np.quantile(est, tail)), float(np.quantile(est, 1 - tail))))
    return out


# --- a level shift in time ------------------------------------------------------------------


@dataclass(frozen=True)
class LevelShift:
    split: int  # the shift falls after this many bins
    statistic: float  # max |CUSUM| / (σ √N)
    p_value: float
    direction: int  # +1: higher after the split, −1: lower


def kolmogorov_sf(x: float) -> float:
    """P(sup |Brownian bridge| > x)."""
    if x <= 0.2:
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = math.exp(-2.0 * j * j * x * x)
        total += term if j % 2 else -term
        if term < 1e-16:
            break
    return min(1.0, max(0.0, 2.0 * total))


def cusum_shift(n: Sequence[int], sums: Sequence[float], squares: Sequence[float]) -> LevelShift:
    """The CUSUM test for one change in the mean of a series given in consecutive bins
    (counts, sums, sums of squares): S_k = Σ_{b ≤ k} (sum_b − n_b·mean) is largest in size at
    the split; max |S_k| / (σ̂ √N) is, with no change, the supremum of a Brownian bridge
    (Kolmogorov's distribution). Evaluated only at bin boundaries, which is conservative."""
    nn = np.asarray(n, dtype=np.float64)
    ss = np.asarray(sums, dtype=np.float64)
    total = float(nn.sum())
    if len(nn) < 2 or total < 2:
        return LevelShift(0, 0.0, 1.0, 0)
    mean = float(ss.sum()) / total
    var = float(np.asarray(squares, dtype=np.float64).sum()) / total - mean * mean
    if var <= 1e-15:
        return LevelShift(0, 0.0, 1.0, 0)
    s = np.cumsum(ss - nn * mean)[:-1]
    k = int(np.argmax(np.abs(s)))
    stat = abs(float(s[k])) / math.sqrt(var * total)
    return LevelShift(k + 1, stat, kolmogorov_sf(stat), 1 if s[k] < 0 else -1)
