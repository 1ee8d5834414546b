"""The statistics the train-serve skew analyzers share: two-sample Kolmogorov-Smirnov and the
population stability index on integer distributions given as counts, the Jensen-Shannon
divergence of unigram distributions with a null calibrated on the reference itself, and a
two-sided Fisher exact test. Pure functions of numbers (numpy; no scipy)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from infdebug.analyzers.output_drift import fisher_greater
from infdebug.analyzers.stats import kolmogorov_sf

PSI_BINS = 10
PSI_EPS = 1e-4  # share given to a bin one side never fills, so its log stays finite


def ecdf_counts(values: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values, counts) of a histogram."""
    keys = np.array(sorted(values), dtype=np.float64)
    return keys, np.array([values[int(k)] for k in keys], dtype=np.float64)


def ks_two_sample(a: Mapping[int, int], b: Mapping[int, int]) -> tuple[float, float]:
    """(D, p) of the two-sample Kolmogorov-Smirnov test between two histograms (value →
    count). The p-value is the asymptotic Kolmogorov distribution with Stephens' small-sample
    correction; on integer data with ties it is conservative (the true p is smaller)."""
    na, nb = sum(a.values()), sum(b.values())
    if na == 0 or nb == 0:
        return 0.0, 1.0
    grid = np.array(sorted(set(a) | set(b)), dtype=np.int64)
    ca = np.cumsum([a.get(int(v), 0) for v in grid]) / na
    cb = np.cumsum([b.get(int(v), 0) for v in grid]) / nb
    d = float(np.max(np.abs(ca - cb)))
    ne = na * nb / (na + nb)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    return d, kolmogorov_sf(lam)


def psi(served: Mapping[int, int], reference: Mapping[int, int], bins: int = PSI_BINS) -> float:
    """Population stability index of ``served`` against ``reference`` over the reference's
    quantile bins (at most ``bins``; fewer where ties merge edges). Usual reading: < 0.1 no
    shift, 0.1-0.25 moderate, > 0.25 a major shift."""
    ns, nr = sum(served.values()), sum(reference.values())
    if ns == 0 or nr == 0:
        return 0.0
    rv, rc = ecdf_counts(reference)
    cum = np.cumsum(rc) / nr
    edges: list[float] = []  # right-closed upper edges taken from the reference's quantiles
    for q in np.arange(1, bins) / bins:
        e = float(rv[min(int(np.searchsorted(cum, q)), len(rv) - 1)])
        if not edges or e > edges[-1]:
            edges.append(e)
    edge_arr = np.array(edges)

    def shares(h: Mapping[int, int], n: int) -> np.ndarray:
        out = np.zeros(len(edges) + 1)
        for v, c in h.items():
            out[int(np.searchsorted(edge_arr, v, side="left"))] += c
        return np.maximum(out / n, PSI_EPS)

    s, r = shares(served, ns), shares(reference, nr)
    return float(np.sum((s - r) * np.log(s / r)))


def hist_quantiles(h: Mapping[int, int], qs: Sequence[float] = (0.5, 0.9, 0.99)) -> list[float]:
    """Quantiles (lower, of the empirical distribution) of a histogram."""
    n = sum(h.values())
    if n == 0:
        return [math.nan for _ in qs]
    v, c = ecdf_counts(h)
    cum = np.cumsum(c) / n
    return [float(v[min(int(np.searchsorted(cum, q)), len(v) - 1)]) for q in qs]


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (bits, in [0, 1]) of two count vectors on one support."""
    sp, sq = p.sum(), q.sum()
    if sp <= 0 or sq <= 0:
        return 0.0
    p, q = p / sp, q / sq
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


class UnigramNull:
    """The Jensen-Shannon divergence a served sample of ``n`` requests would show against the
    reference if it came from the reference's own distribution: the reference's requests
    split at random, ``n`` against the rest, ``reps`` times (requests are resampled whole, so
    the tokens' clustering within a prompt is kept). The rest is smaller than the whole
    reference the real comparison uses, so the null is, if anything, wider: conservative."""

    def __init__(self, seqs: Sequence[Sequence[int]], vocab: Mapping[int, int]) -> None:
        """``vocab``: token ID → column (every ID of the reference and the served sample)."""
        self.lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        self.cols = np.array([vocab[t] for s in seqs for t in s], dtype=np.int64)
        self.size = len(vocab)
        self.total = np.bincount(self.cols, minlength=self.size).astype(np.float64)

    def draws(self, n: int, reps: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        m = len(self.lengths)
        out = np.empty(reps)
        for i in range(reps):
            pick = np.zeros(m, dtype=bool)
            pick[rng.choice(m, size=n, replace=False)] = True
            tok = np.repeat(pick, self.lengths)
            a = np.bincount(self.cols[tok], minlength=self.size).astype(np.float64)
            out[i] = js_divergence(a, self.total - a)
        return out


def permutation_p(observed: float, null: np.ndarray) -> float:
    """(1 + #null ≥ observed) / (1 + #null); beyond every draw, where that floor is all a
    permutation can say, the tail of a gamma distribution fitted to the draws by moments (a
    divergence's null is a scaled chi-square, clustering included) when it is smaller, so
    that a correction across many tests can still be passed."""
    above = int(np.sum(null >= observed))
    p = (1 + above) / (1 + len(null))
    mean, var = float(np.mean(null)), float(np.var(null))
    if above == 0 and mean > 0 and var > 0:
        p = min(p, gamma_sf(observed, mean * mean / var, var / mean))
    return float(p)


def gamma_sf(x: float, shape: float, scale: float) -> float:
    """P(X > x) for X ~ Gamma(shape, scale): the regularized upper incomplete gamma function
    (series below shape + 1, Lentz's continued fraction above)."""
    if x <= 0:
        return 1.0
    a, z = shape, x / scale
    log_front = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1:
        term = total = 1.0 / a
        k = a
        for _ in range(10_000):
            k += 1
            term *= z / k
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = z + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def fisher_two_sided(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact p-value (twice the smaller one-sided tail, at most 1)."""
    hi = fisher_greater(k1, n1, k2, n2)
    lo = fisher_greater(n1 - k1, n1, n2 - k2, n2)
    return min(1.0, 2.0 * min(hi, lo))
