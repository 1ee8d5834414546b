"""GPU root cause per replica: throttling, XID errors and energy per output token.

Two analyzers over ``gpu_samples`` and the ``gpu_xid`` events, each GPU sample given the
unit (replica within deployment) it belongs to by time (``store.q_gpu``):

``gpu_health`` (one analyzer, so that one pass over the requests measures the units for
both of its kinds):

- ``replica.gpu_throttling``: per GPU, over its *busy* samples (utilisation ≥
  ``gpu_busy_util``, default 30 %): the share with a slowdown reason active (power_cap,
  sw_thermal, hw_thermal, hw_slowdown, hw_power_brake) and what the SM clock did then; and,
  at like utilisation (a busier GPU is compared with the fleet as busy), its throttled
  share, SM clock, temperature and power against the rest of the fleet's GPUs
  (``analyzers.gpu_judge``: leave-one-out robust z with absolute floors). A throttling GPU
  (≥ 10 % of busy samples, clock ≥ 5 % down then) that throttles ≥ 10 points more than the
  fleet at like utilisation and loses clock for it is a warning; a hardware reason
  (hw_thermal, hw_slowdown, hw_power_brake) makes it an error; a clock ≥ 5 % under the
  fleet's, or a GPU ≥ 10 °C hotter, at like utilisation is a warning too. Throttling the
  whole fleet shares is one info finding (a power-capped fleet at full load is normal
  operation). Where a finding names throttling or a slow clock, the replica's requests are
  joined to the GPU state while they decoded and the finding says what their inter-token
  latency did (p50 throttled vs not, Mann-Whitney U; the rest of the fleet's p50 where the
  replica has too few unthrottled requests).
- ``replica.energy_per_token`` (info): joules per output token per replica: its GPUs'
  energy over their samples' span (the energy counter's rise where it was read and only
  rose, else mean power × span), against the output tokens of its requests that finished
  while they were sampled. Idle power counts: it is what the tokens cost.

``gpu_errors`` (kind ``replica.gpu_errors``): XID events per replica and XID number; a
serious class (ECC, row remapping, NVLink, fallen off the bus, GSP) is an error, any other
XID a warning.

Simulated samples (``--simulate-gpu``) are labelled in every finding: the summary starts
``[SIMULATED GPU]`` (upper case: rich would read ``[lower case]`` as markup) and
``values["simulated"]`` is true.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.gpu_judge import BIN_PCT, SEVERITY_RANK, GpuVerdict, judge_gpus
from infdebug.analyzers.robust import median
from infdebug.schema import Finding
from infdebug.store import q_gpu as q
from infdebug.store import q_gpu_requests as qr
from infdebug.store.q_common import unit_label

BUSY_UTIL = 30.0  # utilisation (%) from which a sample counts as under load
MIN_REQUESTS = 20  # requests on each side of a latency comparison
ITL_MIN_CHANGE = 0.10  # inter-token p50 change that counts as a coinciding regression
ITL_ALPHA = 0.01
NEAR_S = 2.0  # a request's GPU state: the sample at most this long before its midpoint

# XID classes (NVIDIA's XID catalogue): these mean the GPU or its memory/interconnect is
# failing and the node wants draining; any other XID is usually an application fault.
SERIOUS_XIDS: dict[int, str] = {
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint",
    62: "internal micro-controller halt",
    63: "ECC page retirement / row remapping event",
    64: "ECC page retirement / row remapper failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
}
OTHER_XIDS: dict[int, str] = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    32: "invalid or corrupted push buffer stream",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
    69: "graphics engine class error",
}


def _opt(ctx: AnalysisContext, name: str, default: float) -> float:
    v = ctx.options.get(name)
    return default if v is None else float(v)


def _hhmm(t: float) -> str:
    return time.strftime("%H:%M", time.gmtime(t)) + " UTC"


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _pct(x: float) -> str:
    return f"{x * 100:+.0f}%".replace("-", "−")


def _sim_prefix(simulated: bool) -> str:
    return "[SIMULATED GPU] " if simulated else ""


def _ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1000:.1f} ms"


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


# --- throttling -------------------------------------------------------------------------------


def _reasons_text(s: q.GpuStats) -> str:
    slow = sorted(
        ((n, r) for r, n in s.reasons.items() if r in q.SLOWDOWN_REASONS and n), reverse=True
    )
    return ", ".join(r for _, r in slow) or "no reason reported"


def _gpu_values(v: GpuVerdict) -> dict[str, Any]:
    s = v.stats
    d: dict[str, Any] = {
        "gpu_index": s.gpu_index,
        "uuid": s.uuid,
        "signals": list(v.signals),
        "busy_samples": s.busy,
        "throttled_samples": s.thr,
        "throttled_share": round(v.share, 4),
        "reason_shares": {r: round(n / s.busy, 4) for r, n in sorted(s.reasons.items())},
        "sm_clock_unthrottled_mhz": _r(v.clock_ref, 1),
        "sm_clock_unthrottled_from": v.clock_ref_from,
        "sm_clock_throttled_mhz": _r(s.clock_thr_mhz, 1),
        "clock_drop": _r(v.drop),
        "first_throttled": _iso(s.first_thr),
        "last_throttled": _iso(s.last_thr),
        "util_pct_throttled": _r(s.util_thr, 1),
        "util_pct_unthrottled": _r(s.util_ok, 1),
        "temp_c_throttled": _r(s.temp_thr_c, 1),
        "temp_c_unthrottled": _r(s.temp_ok_c, 1),
        "power_w_throttled": _r(s.power_thr_w, 1),
        "power_w_unthrottled": _r(s.power_ok_w, 1),
        "power_limit_w": _r(s.power_limit_w, 1),
    }
    if v.share_dep is not None:
        d["fleet_throttled_share"] = round(v.share_dep.reference, 4)
    for name, m in sorted(v.metrics.items()):
        d[f"fleet_{name}"] = {
            "value": round(m.value, 4),
            "fleet": round(m.reference, 4),
            "delta": round(m.delta, 4),
            "rel": round(m.rel, 4),
            "z": round(m.z, 3),
            "samples": m.samples,
        }
    return d


def _gpu_text(v: GpuVerdict) -> str:
    s, parts = v.stats, []
    if "throttle_reasons" in v.signals or v.fleet_wide:
        clock = ""
        if v.clock_ref is not None and s.clock_thr_mhz is not None and v.drop is not None:
            clock = f"SM clock {v.clock_ref:.0f} → {s.clock_thr_mhz:.0f} MHz ({_pct(-v.drop)}) at "
        fleet = (
            f" (rest of fleet {v.share_dep.reference * 100:.0f}% at like utilisation)"
            if v.share_dep is not None
            else ""
        )
        since = f" since {_hhmm(s.first_thr)}" if s.first_thr is not None else ""
        parts.append(
            f"{clock}{_reasons_text(s)} on {v.share * 100:.0f}% of busy samples{since}{fleet}"
        )
    m = v.metrics
    if "sm_clock" in v.signals:
        parts.append(
            f"SM clock {m['clock'].value:.0f} MHz vs fleet {m['clock'].reference:.0f} MHz "
            f"at like utilisation ({_pct(m['clock'].rel)})"
        )
    if "temperature" in v.signals:
        parts.append(
            f"{m['temp'].value:.0f} °C vs fleet {m['temp'].reference:.0f} °C at like utilisation"
        )
    if "power" in v.signals:
        parts.append(
            f"power {m['power'].value:.0f} W vs fleet {m['power'].reference:.0f} W at like "
            f"utilisation ({_pct(m['power'].rel)})"
        )
    return f"GPU {s.gpu_index}: " + "; ".join(parts)


def _latency(
    lat: qr.ThrottleLatency | None, fleet: tuple[int, float | None]
) -> tuple[str, dict[str, Any]]:
    """What the replica's requests did while its GPU throttled: text and values."""
    if lat is None:
        return "", {}
    vals: dict[str, Any] = {
        "requests_throttled": lat.n_thr,
        "requests_unthrottled": lat.n_ok,
        "requests_no_gpu_sample": lat.n_unknown,
        "itl_p50_throttled_s": _r(lat.tpot_thr_s, 6),
        "itl_p50_unthrottled_s": _r(lat.tpot_ok_s, 6),
        "itl_p_value": lat.p_value,
        "fleet_requests": fleet[0] or None,
        "fleet_itl_p50_s": _r(fleet[1], 6),
        "test": "mann_whitney_u_two_sided",
    }
    if lat.n_thr < MIN_REQUESTS or lat.tpot_thr_s is None:
        return "", vals
    base, against = lat.tpot_ok_s, "unthrottled"
    if lat.n_ok < MIN_REQUESTS or base is None:
        base, against = fleet[1], "rest of fleet"
        if fleet[0] < MIN_REQUESTS or base is None:
            return "", vals
    change = lat.tpot_thr_s / base - 1.0 if base > 0 else 0.0
    vals["itl_change"] = round(change, 4)
    vals["itl_against"] = against
    coincides = change >= ITL_MIN_CHANGE and (
        against == "rest of fleet" or (lat.p_value is not None and lat.p_value < ITL_ALPHA)
    )
    vals["latency_regression_coincides"] = coincides
    p = ""
    if lat.p_value is not None and against == "unthrottled":
        p = f", p={lat.p_value:.2g}" if lat.p_value > 1e-16 else ", p<1e-16"
    text = (
        f"inter-token p50 {_pct(change)} while throttled ({_ms(lat.tpot_thr_s)} vs "
        f"{_ms(base)} {against}, {lat.n_thr} vs "
        f"{lat.n_ok if against == 'unthrottled' else fleet[0]} requests{p})"
    )
    if coincides:
        text = "coincides with a latency regression: " + text
    return text, vals


def _prepare(ctx: AnalysisContext) -> tuple[q.GpuQuery, list[q.UnitSpan]] | None:
    """The bound parameters of the GPU queries (the units' starts for attributing samples),
    and the units' spans; None without GPU samples in the window."""
    w = ctx.window()
    gpu_spans = q.gpu_replica_spans(ctx.store, w)
    if not gpu_spans:
        return None
    spans = q.unit_spans(ctx.store, w, gpu_spans)
    busy = _opt(ctx, "gpu_busy_util", BUSY_UTIL)
    return q.gpu_params(w, q.unit_starts(spans, sorted(gpu_spans)), busy_util=busy), spans


@analyzer("gpu_health")
def gpu_health(ctx: AnalysisContext) -> list[Finding]:
    """Throttling and energy per output token: one analyzer, so that the units' spans (a
    pass over the requests) are measured once for both."""
    prep = _prepare(ctx)
    if prep is None:
        return []
    params, spans = prep
    stats = q.gpu_stats(ctx.store, params)
    return throttling(ctx, params, stats) + energy_finding(unit_energy(ctx, stats, spans))


def throttling(ctx: AnalysisContext, params: q.GpuQuery, stats: list[q.GpuStats]) -> list[Finding]:
    """``replica.gpu_throttling`` findings."""
    verdicts = judge_gpus(stats, q.gpu_util_bins(ctx.store, params, BIN_PCT))
    flagged: dict[str, list[GpuVerdict]] = defaultdict(list)
    for v in verdicts:
        if v.signals:
            flagged[v.stats.unit].append(v)
    throttled_units = sorted(
        u
        for u, vs in flagged.items()
        if any({"throttle_reasons", "sm_clock"} & set(v.signals) for v in vs)
    )
    w = ctx.window()
    lat = qr.throttle_latency(ctx.store, w, throttled_units, min_n=MIN_REQUESTS, near_s=NEAR_S)
    # The rest of the fleet's p50, only where a replica has too few unthrottled requests to
    # be its own baseline (a pass over every request: not paid when not needed).
    need_fleet = any(t.n_ok < MIN_REQUESTS <= t.n_thr for t in lat.values())
    fleet = qr.tpot_p50(ctx.store, w, throttled_units) if need_fleet else (0, None)
    out = [_unit_finding(u, vs, lat.get(u), fleet) for u, vs in sorted(flagged.items())]
    wide = [v for v in verdicts if v.fleet_wide]
    if wide:
        out.append(_fleet_wide(wide, len(verdicts)))
    return out


def _unit_finding(
    unit: str, vs: list[GpuVerdict], lat: qr.ThrottleLatency | None, fleet: tuple[int, float | None]
) -> Finding:
    vs = sorted(vs, key=lambda v: (-SEVERITY_RANK[v.severity], -v.share, v.stats.gpu_index))
    sim = any(v.stats.simulated for v in vs)
    severity = vs[0].severity
    lat_text, lat_vals = _latency(lat, fleet)
    texts = [_gpu_text(v) for v in vs[:3]] + ([lat_text] if lat_text else [])
    more = f" (+{len(vs) - 3} more GPUs)" if len(vs) > 3 else ""
    first = min((v.stats.first_thr for v in vs if v.stats.first_thr is not None), default=None)
    values: dict[str, Any] = {
        "simulated": sim,
        "gpus": [_gpu_values(v) for v in vs],
        "signals": sorted({s for v in vs for s in v.signals}),
        **lat_vals,
        "test": "leave_one_out_robust_z (median/MAD), stratified by utilisation",
    }
    evidence: dict[str, Any] = {
        "gpu_uuids": sorted({v.stats.uuid for v in vs if v.stats.uuid}),
        "request_ids": list(lat.thr_request_ids) if lat is not None else [],
    }
    if first is not None:
        evidence["first_seen"] = first
    return finding(
        "gpu_health",
        "replica.gpu_throttling",
        severity,
        f"{_sim_prefix(sim)}{unit_label(unit)} " + "; ".join(texts) + more,
        unit=unit,
        t_start=first,
        t_end=max((v.stats.last_thr or v.stats.t_last for v in vs), default=None),
        values=values,
        evidence=evidence,
    )


def _fleet_wide(wide: list[GpuVerdict], judged: int) -> Finding:
    sim = any(v.stats.simulated for v in wide)
    reasons: dict[str, int] = defaultdict(int)
    for v in wide:
        for r, n in v.stats.reasons.items():
            if r in q.SLOWDOWN_REASONS:
                reasons[r] += n
    top = ", ".join(r for r, _ in sorted(reasons.items(), key=lambda x: (-x[1], x[0])))
    drops = [v.drop for v in wide if v.drop is not None]
    units = sorted({v.stats.unit for v in wide})
    return finding(
        "gpu_health",
        "replica.gpu_throttling",
        "info",
        f"{_sim_prefix(sim)}{len(wide)} of {judged} GPUs throttle ({top}) on a median "
        f"{median([v.share for v in wide]) * 100:.0f}% of their busy samples, SM clock "
        f"{_pct(-median(drops)) if drops else 'n/a'} then, no more than the rest of the fleet "
        "at like utilisation: the fleet's operating point, not one replica's fault",
        values={
            "simulated": sim,
            "gpus": len(wide),
            "gpus_judged": judged,
            "replicas": [unit_label(u) for u in units],
            "median_throttled_share": round(median([v.share for v in wide]), 4),
            "median_clock_drop": _r(median(drops)) if drops else None,
            "reasons": dict(sorted(reasons.items())),
        },
    )


# --- XID errors ---------------------------------------------------------------------------------


def xid_name(xid: int) -> str:
    return SERIOUS_XIDS.get(xid) or OTHER_XIDS.get(xid) or ("no XID number" if not xid else "")


@analyzer("gpu_errors")
def gpu_errors(ctx: AnalysisContext) -> list[Finding]:
    w = ctx.window()
    if not q.has_xid_events(ctx.store, w):
        return []
    rows = q.xid_counts(ctx.store, w, q.unit_starts(q.unit_spans(ctx.store, w)))
    by_unit: dict[str, list[q.XidCount]] = defaultdict(list)
    for r in rows:
        by_unit[r.unit].append(r)
    out = []
    for unit, xs in sorted(by_unit.items()):
        serious = [x for x in xs if x.xid in SERIOUS_XIDS]
        sim = any(x.simulated for x in xs)
        total = sum(x.count for x in xs)
        first = min(x.first for x in xs)
        desc = ", ".join(
            f"XID {x.xid}" + (f" ({xid_name(x.xid)})" if xid_name(x.xid) else "") + f" ×{x.count}"
            for x in sorted(xs, key=lambda x: (x.xid not in SERIOUS_XIDS, -x.count, x.xid))
        )
        gpus = sorted({g for x in xs for g in x.gpus})
        out.append(
            finding(
                "gpu_errors",
                "replica.gpu_errors",
                "error" if serious else "warning",
                f"{_sim_prefix(sim)}{unit_label(unit)}: {total} XID error"
                f"{'s' if total != 1 else ''} on GPU {', '.join(map(str, gpus)) or '?'}: "
                f"{desc}; "
                f"first at {_iso(first)}",
                unit=unit,
                t_start=first,
                t_end=max(x.last for x in xs),
                values={
                    "simulated": sim,
                    "count": total,
                    "serious": sum(x.count for x in serious),
                    "xids": {
                        str(x.xid): {
                            "count": x.count,
                            "class": "serious" if x.xid in SERIOUS_XIDS else "other",
                            "meaning": xid_name(x.xid) or None,
                            "first": _iso(x.first),
                            "last": _iso(x.last),
                            "gpus": x.gpus,
                        }
                        for x in xs
                    },
                },
                evidence={
                    "first_seen": first,
                    "gpu_uuids": sorted({u for x in xs for u in x.uuids}),
                },
            )
        )
    return out


# --- energy per output token --------------------------------------------------------------------


@dataclass(frozen=True)
class UnitEnergy:
    unit: str
    energy_j: float
    tokens: int
    requests: int
    method: str  # energy_counter | integrated_power | mixed (per GPU)
    interval_s: float
    gpus: int
    simulated: bool

    @property
    def j_per_token(self) -> float:
        return self.energy_j / self.tokens


def unit_energy(
    ctx: AnalysisContext, stats: list[q.GpuStats], unit_spans: list[q.UnitSpan]
) -> list[UnitEnergy]:
    """Energy, output tokens and J/token per unit (units with tokens and energy only): the
    energy of its GPUs over their samples' span (``GpuStats.energy_j``), against the output
    tokens of its requests that finished in that span."""
    per_gpu: dict[str, list[tuple[q.GpuStats, float, str]]] = defaultdict(list)
    for st in stats:
        e = st.energy_j()
        if e is not None:
            per_gpu[st.unit].append((st, *e))
    # A replica that served one unit: its pass over the requests counted the tokens in its
    # GPU span, which is the unit's. A replica that served several: counted again per unit.
    tokens = {sp.unit: (sp.gpu_tokens, sp.gpu_requests) for sp in unit_spans}
    per_rep: dict[str, int] = defaultdict(int)
    for sp in unit_spans:
        per_rep[sp.replica] += 1
    shared = {
        u: (min(st.t_first for st, _, _ in es), max(st.t_last for st, _, _ in es))
        for u, es in per_gpu.items()
        if per_rep[es[0][0].replica] > 1
    }
    tokens.update(qr.output_tokens_between(ctx.store, ctx.window(), shared))
    out = []
    for u, es in sorted(per_gpu.items()):
        energy = sum(j for _, j, _ in es)
        methods = {m for _, _, m in es}
        tok, n = tokens.get(u, (0, 0))
        if tok <= 0 or energy <= 0:
            continue
        out.append(
            UnitEnergy(
                u,
                energy,
                tok,
                n,
                methods.pop() if len(methods) == 1 else "mixed",
                max(st.t_last for st, _, _ in es) - min(st.t_first for st, _, _ in es),
                len(es),
                any(st.simulated for st, _, _ in es),
            )
        )
    return out


def energy_finding(units: list[UnitEnergy]) -> list[Finding]:
    """The ``replica.energy_per_token`` finding (info) of the fleet."""
    if not units:
        return []
    sim = any(u.simulated for u in units)
    jpt = sorted(units, key=lambda u: (u.j_per_token, u.unit))
    if len(jpt) <= 6:
        listing = ", ".join(f"{unit_label(u.unit)} {u.j_per_token:.3g}" for u in jpt)
    else:
        listing = (
            f"median {median([u.j_per_token for u in jpt]):.3g} over {len(jpt)} replicas, "
            f"lowest {unit_label(jpt[0].unit)} {jpt[0].j_per_token:.3g}, "
            f"highest {unit_label(jpt[-1].unit)} {jpt[-1].j_per_token:.3g}"
        )
    total_j, total_tok = sum(u.energy_j for u in units), sum(u.tokens for u in units)
    return [
        finding(
            "gpu_health",
            "replica.energy_per_token",
            "info",
            f"{_sim_prefix(sim)}energy per output token (J/token, idle power included): {listing}",
            values={
                "simulated": sim,
                "fleet_j_per_token": round(total_j / total_tok, 6),
                "replicas": {
                    unit_label(u.unit): {
                        "j_per_token": round(u.j_per_token, 6),
                        "energy_j": round(u.energy_j, 3),
                        "output_tokens": u.tokens,
                        "requests": u.requests,
                        "interval_s": round(u.interval_s, 3),
                        "gpus": u.gpus,
                        "method": u.method,
                        "simulated": u.simulated,
                    }
                    for u in units
                },
            },
        )
    ]
