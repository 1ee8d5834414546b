"""Robust fleet statistics the GPU, start-up and speculative-decoding analyzers share.

A replica is compared with the rest of its fleet by a leave-one-out robust z: its value
against the median of the others, in units of the others' scaled MAD (1.4826 × MAD, which
estimates the standard deviation of normal data), with a floor on that spread so identical
replicas (MAD 0) do not turn a hair's difference into infinity. Every caller also asks for
an absolute effect, so a tight fleet cannot make a trivial difference a finding. Nothing
here depends on the order of its inputs.

Multiple testing: Benjamini-Hochberg adjusted p-values (Holm lives in ``output_drift``);
the normal tail for the z tests of proportions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from infdebug.analyzers.stats import norm_sf

MAD_SCALE = 1.4826


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if not n:
        raise ValueError("median of nothing")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def mad(xs: Sequence[float]) -> float:
    """Median absolute deviation from the median (unscaled)."""
    m = median(xs)
    return median([abs(x - m) for x in xs])


@dataclass(frozen=True)
class Departure:
    """One value against the others: their median, spread (scaled MAD, floored) and z."""

    value: float
    reference: float
    spread: float
    z: float
    others: int

    @property
    def diff(self) -> float:
        return self.value - self.reference

    @property
    def rel(self) -> float:
        """The difference relative to the reference (0 where the reference is 0)."""
        return self.diff / abs(self.reference) if self.reference else 0.0


def leave_one_out(
    values: dict[str, float], *, floor: float, rel_floor: float = 0.0, min_others: int = 2
) -> dict[str, Departure]:
    """Each key's value against the median and scaled MAD of the others; the spread is at
    least ``floor`` and ``rel_floor`` × |median|. Keys with fewer than ``min_others`` others
    are left out."""
    out: dict[str, Departure] = {}
    if len(values) - 1 < min_others:
        return out
    for k, v in values.items():
        others = [x for j, x in values.items() if j != k]
        ref = median(others)
        spread = max(MAD_SCALE * mad(others), floor, rel_floor * abs(ref))
        out[k] = Departure(v, ref, spread, (v - ref) / spread if spread > 0 else 0.0, len(others))
    return out


def two_sided_p(z: float) -> float:
    """P(|Z| > |z|) for a standard normal Z."""
    return min(1.0, 2.0 * norm_sf(abs(z)))
