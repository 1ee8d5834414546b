"""The statistics of ``gpu_throttling`` (``analyzers.gpu_health``): each GPU judged against
the rest of the fleet's GPUs at like utilisation.

**At like utilisation.** A busier GPU is hotter, draws more power and may power-cap more:
that is its load, not a fault. So every reading is compared bin by bin of utilisation
(5 % wide): in each bin the reference is the median of the other GPUs' means there (two
at least), and a GPU's *value* and *reference* are its own bin means and those references,
averaged over its bins with its sample counts as weights (bins too few other GPUs visited
are left out; at least ``MIN_COVERED`` samples must remain). Four
readings: the throttled share (busy samples with a slowdown reason), the mean SM clock (the
mean, not the median: the work lost is the average clock lost), temperature and power.

**Departs from the fleet.** Each GPU's difference (relative for clock and power, absolute
for share and temperature) against the other GPUs' differences: a leave-one-out robust z
(``analyzers.robust``: median and scaled MAD, the spread floored) **and** an absolute effect
(the constants below). A GPU *throttles* when a slowdown reason covers ≥ 10 % of its busy
samples and its SM clock then is ≥ 5 % under its unthrottled clock (its own, else the
fleet's).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from infdebug.analyzers.robust import leave_one_out, median
from infdebug.store import q_gpu as q

BIN_PCT = 5.0
MIN_BUSY = 40  # busy samples a GPU needs to be judged (10 s at 4 Hz)
MIN_COVERED = 20  # of which in bins the rest of the fleet also visited
MIN_BIN_SAMPLES = 3  # a GPU's samples in a bin for its mean there to count
MIN_BIN_GPUS = 2  # other GPUs in a bin for it to be a reference
MIN_THR_SHARE = 0.10  # share of busy samples throttled before it matters
MIN_CLOCK_DROP = 0.05  # SM clock at least this much under the unthrottled clock / the fleet's
FLEET_CLOCK_DEFICIT = 0.03  # a throttling outlier's clock under the fleet's at like load
Z = 3.5
FLOORS = {"share": 0.03, "clock": 0.02, "temp": 2.0, "power": 0.05}  # spread floors
RELATIVE = {"clock", "power"}  # compared as value / reference − 1
TEMP_MIN_DIFF_C = 10.0
POWER_MIN_REL = 0.15
THERMAL = ("sw_thermal", "hw_thermal")
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}


@dataclass(frozen=True)
class Metric:
    """A GPU's reading against the fleet's at like utilisation, and its departure."""

    value: float  # its mean
    reference: float  # the rest of the fleet's mean in the same bins
    samples: int  # its samples in bins with a reference
    z: float  # robust z of its difference among the GPUs' differences
    diff: float  # its difference less the median of the others' (relative for clock, power)

    @property
    def delta(self) -> float:
        return self.value - self.reference

    @property
    def rel(self) -> float:
        return self.value / self.reference - 1.0 if self.reference else 0.0


@dataclass
class GpuVerdict:
    stats: q.GpuStats
    share: float
    clock_ref: float | None
    clock_ref_from: str
    drop: float | None
    throttling: bool
    metrics: dict[str, Metric] = field(default_factory=dict)
    signals: list[str] = field(default_factory=list)
    severity: str = "info"
    fleet_wide: bool = False

    @property
    def share_dep(self) -> Metric | None:
        return self.metrics.get("share")


def _key(unit: str, gpu_index: int) -> str:
    return f"{unit}\x00{gpu_index}"


def _sums(b: q.UtilBin, metric: str) -> tuple[float, int]:
    if metric == "share":
        return float(b.thr), b.samples
    if metric == "clock":
        return b.clock_sum, b.clock_n
    if metric == "temp":
        return b.temp_sum, b.temp_n
    return b.power_sum, b.power_n


def like_utilisation(bins: list[q.UtilBin], judged: set[str]) -> dict[str, dict[str, Metric]]:
    """Per judged GPU key and reading: its mean and the rest of the fleet's at like
    utilisation, and the robust z of its difference among the judged GPUs'.

    In each bin the reference is the median of the other GPUs' means there (each with at
    least ``MIN_BIN_SAMPLES`` samples, at least ``MIN_BIN_GPUS`` of them), so one faulty
    GPU, or a replica's few faulty GPUs, does not move the reference of the GPUs beside it."""
    out: dict[str, dict[str, Metric]] = defaultdict(dict)
    for metric in ("share", "clock", "temp", "power"):
        by_bin: dict[int, list[tuple[str, float, int]]] = defaultdict(list)
        for b in bins:
            s, n = _sums(b, metric)
            if n >= MIN_BIN_SAMPLES:
                by_bin[b.bin].append((_key(b.unit, b.gpu_index), s / n, n))
        acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # w, Σw·x, Σw·ref
        for rows in by_bin.values():
            if len(rows) <= MIN_BIN_GPUS:
                continue
            for k, x, n in rows:
                if k not in judged:
                    continue
                ref = median([y for j, y, _ in rows if j != k])
                a = acc[k]
                a[0] += n
                a[1] += n * x
                a[2] += n * ref
        means = {
            k: (a[1] / a[0], a[2] / a[0], int(a[0])) for k, a in acc.items() if a[0] >= MIN_COVERED
        }
        diffs = {
            k: (x / ref - 1.0 if ref else 0.0) if metric in RELATIVE else x - ref
            for k, (x, ref, _) in means.items()
        }
        for k, d in leave_one_out(diffs, floor=FLOORS[metric]).items():
            x, ref, n = means[k]
            out[k][metric] = Metric(x, ref, n, d.z, d.diff)
    return out


def judge_gpus(stats: list[q.GpuStats], bins: list[q.UtilBin]) -> list[GpuVerdict]:
    """Every GPU with enough busy samples, judged, with its signals and severity."""
    judged = [s for s in stats if s.busy >= MIN_BUSY]
    keys = {_key(s.unit, s.gpu_index) for s in judged}
    ok_clocks = {
        _key(s.unit, s.gpu_index): s.clock_ok_mhz
        for s in judged
        if s.clock_ok_mhz is not None and s.busy - s.thr >= MIN_COVERED
    }
    metrics = like_utilisation(bins, keys)
    out = []
    for s in judged:
        k = _key(s.unit, s.gpu_index)
        ref: float | None
        if k in ok_clocks:
            ref, ref_from = ok_clocks[k], "own unthrottled busy samples"
        elif others := [c for j, c in ok_clocks.items() if j != k and c is not None]:
            ref, ref_from = median(others), "the fleet's unthrottled busy samples"
        else:
            ref, ref_from = s.clock_max_mhz, "its highest clock"
        drop = (
            1.0 - s.clock_thr_mhz / ref
            if s.clock_thr_mhz is not None and ref is not None and ref > 0
            else None
        )
        share = s.thr / s.busy
        v = GpuVerdict(
            s,
            share,
            ref,
            ref_from,
            drop,
            share >= MIN_THR_SHARE and drop is not None and drop >= MIN_CLOCK_DROP,
            metrics.get(k, {}),
        )
        signals(v)
        out.append(v)
    return out


def signals(v: GpuVerdict) -> None:
    """Set ``v``'s signals and severity: hardware slowdown → error; a throttling outlier, a
    slow clock or a hot GPU against the fleet → warning; throttling the fleet shares →
    ``fleet_wide`` (reported once for the fleet, info); power alone → info."""
    s, sev = v.stats, "info"
    clock, temp, power = (v.metrics.get(m) for m in ("clock", "temp", "power"))
    if v.throttling:
        dep = v.share_dep
        hw = s.hw / s.busy >= MIN_THR_SHARE
        thermal = sum(s.reasons.get(r, 0) for r in THERMAL) / s.busy >= MIN_THR_SHARE
        if hw:
            v.signals.append("throttle_reasons")
            sev = "error"
        elif (
            dep is not None
            and dep.z >= Z
            and dep.delta >= MIN_THR_SHARE
            and (clock is None or clock.rel <= -FLEET_CLOCK_DEFICIT)
        ):
            v.signals.append("throttle_reasons")
            sev = "warning"
        elif dep is None:  # nothing to compare with: thermal throttling is a fault on its own
            v.signals.append("throttle_reasons")
            sev = "warning" if thermal else "info"
        else:
            v.fleet_wide = True
    if clock is not None and clock.z <= -Z and clock.rel <= -MIN_CLOCK_DROP:
        v.signals.append("sm_clock")
        sev = max(sev, "warning", key=SEVERITY_RANK.__getitem__)
    if temp is not None and temp.z >= Z and temp.delta >= TEMP_MIN_DIFF_C:
        v.signals.append("temperature")
        sev = max(sev, "warning", key=SEVERITY_RANK.__getitem__)
    if power is not None and abs(power.z) >= Z and abs(power.rel) >= POWER_MIN_REL:
        v.signals.append("power")
    v.severity = sev
