"""The sections of a diff: what pairing and side-against-side numbers show beside the
analyzers' findings. Each section is a dict with a ``severity`` and only exists when it has
something to say; every signed number is candidate − baseline (or candidate over baseline),
so swapping the sides mirrors it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from infdebug.analyzers.base import SEVERITY_ORDER, AnalysisContext
from infdebug.analyzers.latency_regression import (
    DEFAULT_TOLERANCE,
    FLOOR_S,
    MIN_REQUESTS,
    NAMES,
    sample_cap,
    samples,
)
from infdebug.analyzers.stats import (
    StratumRanks,
    aligned_shift,
    kolmogorov_sf,
    norm_sf,
    van_elteren,
)
from infdebug.store import Store, q_diff, q_ranks
from infdebug.store import q_latency as q
from infdebug.store.q_common import split_unit

EXAMPLES = 5  # differing pairs shown per section
WINDOW = 4  # tokens shown either side of a first divergence
ALPHA = 0.01
FINGERPRINT_FIELDS = ("models", "engine", "engine_version", "tokenizer_fp", "template_fp")


def _worse(a: str, b: str) -> str:
    return a if SEVERITY_ORDER.get(a, 3) <= SEVERITY_ORDER.get(b, 3) else b


def ks(x: list[int], y: list[int]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: (D, asymptotic p)."""
    if not x or not y:
        return 0.0, 1.0
    a, b = np.sort(np.asarray(x, float)), np.sort(np.asarray(y, float))
    grid = np.concatenate([a, b])
    d = float(
        np.max(
            np.abs(
                np.searchsorted(a, grid, side="right") / len(a)
                - np.searchsorted(b, grid, side="right") / len(b)
            )
        )
    )
    n = len(a) * len(b) / (len(a) + len(b))
    return d, kolmogorov_sf((math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d)


def pairing_of(
    store: Store, labels: tuple[str, str], sides: dict[str, dict[str, Any]], src: str = ""
) -> dict[str, Any]:
    """How the sides pair, and whether their workloads are comparable at all (prompt and
    output length distributions, mean QPS)."""
    a, b = labels
    ps = q_diff.pair_stats(store, a, b, src)
    pa, oa = q_diff.length_samples(store, a)
    pb, ob = q_diff.length_samples(store, b)
    d_p, p_p = ks(pa, pb)
    d_o, p_o = ks(oa, ob)
    qa, qb = sides[a].get("qps"), sides[b].get("qps")
    qps_ratio = (qb / qa) if qa and qb else None
    why = []
    if d_p > 0.25 and p_p < ALPHA:
        why.append(f"prompt lengths differ (KS D = {d_p:.2f})")
    if d_o > 0.25 and p_o < ALPHA:
        why.append(f"output lengths differ (KS D = {d_o:.2f})")
    if qps_ratio is not None and not 1 / 3 <= qps_ratio <= 3:
        why.append(f"mean QPS differs {qps_ratio:.2f}×")
    return {
        "pairs": ps.by_request_id + ps.by_prompt,
        "by_request_id": ps.by_request_id,
        "by_prompt": ps.by_prompt,
        "baseline_only": ps.a_only,
        "candidate_only": ps.b_only,
        "comparable": not why,
        "incomparable_because": why,
        "prompt_length_ks": {"d": d_p, "p": p_p},
        "output_length_ks": {"d": d_o, "p": p_o},
        "qps_ratio": qps_ratio,
        "_stats": ps,
        "_source": src,
    }


def _piece(tok: Any, i: int) -> str | None:
    if tok is None:
        return None
    try:
        p = tok.piece(int(i))
    except Exception:  # an ID the reference does not know
        return None
    return None if p is None else str(p)


def _first_diff(x: list[int], y: list[int]) -> int:
    for i, (u, v) in enumerate(zip(x, y, strict=False)):
        if u != v:
            return i
    return min(len(x), len(y))


def _around(ids: list[int], at: int, tok: Any) -> list[dict[str, Any]]:
    lo = max(0, at - WINDOW)
    return [
        {"index": lo + k, "id": int(i), "piece": _piece(tok, i)}
        for k, i in enumerate(ids[lo : at + WINDOW + 1])
    ]


def _token_section(
    store: Store, labels: tuple[str, str], tok: Any, n: int, pairs: int, what: str, src: str
) -> dict[str, Any]:
    a_col, b_col = ("a_pids", "b_pids") if what == "ids" else ("a_out", "b_out")
    examples = []
    for row in q_diff.differing_pairs(store, *labels, what, EXAMPLES, src):
        x, y = list(row[a_col]), list(row[b_col])
        at = _first_diff(x, y)
        ex: dict[str, Any] = {
            "baseline_request_id": row["a_id"],
            "candidate_request_id": row["b_id"],
            "paired_by": row["how"],
            "first_diverging_index": at,
            "baseline_length": len(x),
            "candidate_length": len(y),
            "baseline": _around(x, at, tok),
            "candidate": _around(y, at, tok),
        }
        if what == "out":
            la, lb = list(row["a_lp"] or []), list(row["b_lp"] or [])
            if at < len(la) and at < len(lb):
                ex["logprob_gap"] = float(lb[at]) - float(la[at])
        examples.append(ex)
    share = n / pairs if pairs else 0.0
    return {"count": n, "of_pairs": pairs, "share": share, "examples": examples}


def _text_section(
    store: Store, labels: tuple[str, str], n: int, pairs: int, src: str
) -> dict[str, Any]:
    examples = []
    for row in q_diff.differing_pairs(store, *labels, "text", EXAMPLES, src):
        x, y = str(row["a_text"]), str(row["b_text"])
        at = next((i for i, (u, v) in enumerate(zip(x, y, strict=False)) if u != v), None)
        at = min(len(x), len(y)) if at is None else at
        examples.append(
            {
                "baseline_request_id": row["a_id"],
                "candidate_request_id": row["b_id"],
                "first_diverging_char": at,
                "baseline": x[max(0, at - 24) : at + 40],
                "candidate": y[max(0, at - 24) : at + 40],
            }
        )
    return {
        "count": n,
        "of_pairs": pairs,
        "share": n / pairs if pairs else 0.0,
        "examples": examples,
    }


def _two_proportions(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p of a difference of two proportions (pooled normal approximation)."""
    if not n1 or not n2:
        return 1.0
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    return 2 * norm_sf(abs(k2 / n2 - k1 / n1) / se)


def stop_section(
    store: Store, labels: tuple[str, str], sides: dict[str, dict[str, Any]], src: str
) -> dict[str, Any] | None:
    a, b = labels
    fa, fb = sides[a].get("finish_reasons", {}), sides[b].get("finish_reasons", {})
    na, nb = sum(fa.values()), sum(fb.values())
    rows, sev = [], "info"
    for reason in sorted(set(fa) | set(fb)):
        ka, kb = fa.get(reason, 0), fb.get(reason, 0)
        p = _two_proportions(ka, na, kb, nb)
        delta = (kb / nb if nb else 0.0) - (ka / na if na else 0.0)
        rows.append(
            {
                "finish_reason": reason,
                "baseline_share": ka / na if na else None,
                "candidate_share": kb / nb if nb else None,
                "delta": delta,
                "p_value": p,
            }
        )
        if p < ALPHA / 10 and abs(delta) >= 0.05:
            sev = _worse(sev, "warning")
    changes = [
        {"baseline": x, "candidate": y, "pairs": n}
        for x, y, n in q_diff.finish_changes(store, a, b, src)
    ]
    if sev == "info":
        return None
    return {"severity": sev, "finish_reasons": rows, "paired_changes": changes}


def latency_section(
    store: Store, labels: tuple[str, str], ctx: AnalysisContext
) -> dict[str, Any] | None:
    """Each metric of each model, candidate against baseline, within prompt-length, cache
    and load strata (not time: two sides are often hours apart): van Elteren's test
    (two-sided), the Hodges-Lehmann ratio with its 95 % interval, p50/p90/p99 per side."""
    a, b = labels
    w = ctx.window()
    sp = q.span(store, w)
    if sp is None:
        return None
    tol = float(ctx.options.get("tolerance") or DEFAULT_TOLERANCE)
    sampling = q.Sampling.for_span(sp, sample_cap(ctx))
    cells = q_ranks.strata_cells(
        store, w, origin=sp.t_min, tw=1e12, sampling=sampling, reps=True, scratch=ctx.scratch
    )
    by: dict[tuple[str, str], dict[tuple[int, ...], dict[str, list[Any]]]] = defaultdict(
        lambda: defaultdict(lambda: {a: [], b: []})
    )
    for c in cells:
        side = split_unit(c.unit)[1] or ""
        if side in (a, b):
            by[(c.model, c.metric)][c.stratum][side].append(c)
    metrics, sev = [], "info"
    for (model, metric), strata in sorted(
        by.items(), key=lambda kv: (kv[0][0], q.METRICS.index(kv[0][1]))
    ):
        ranks, pairs = [], []
        for st in strata.values():
            xa, xb = st[a], st[b]
            if not xa or not xb:
                continue
            na, nb = sum(c.n for c in xa), sum(c.n for c in xb)
            tie = sum(c.tie_part for c in xa) + sum(c.tie_part for c in xb)
            ranks.append(StratumRanks(nb, na, sum(c.rank_sum for c in xb), tie))
            pairs.append((samples(xb), samples(xa)))
        n_b, n_a = sum(r.n1 for r in ranks), sum(r.n2 for r in ranks)
        if n_a < MIN_REQUESTS or n_b < MIN_REQUESTS:
            continue
        test = van_elteren(ranks)
        p = min(1.0, 2 * norm_sf(abs(test.z)))
        sh = aligned_shift(pairs, 0.95)
        if sh is None:
            continue
        rel, lo, hi = math.expm1(sh.estimate), math.expm1(sh.lo), math.expm1(sh.hi)
        units_b = sorted({c.unit for st in strata.values() for c in st[b]})
        side_b, side_a = q.sides(store, w, model, metric, units_b)
        beyond = abs(sh.estimate) > math.log1p(tol)
        floor = FLOOR_S[metric] <= abs(rel) * (side_a.quantiles[0] or 0)
        flagged = p < ALPHA and beyond and floor
        m_sev = "info"
        if flagged:
            strong = min(abs(sh.lo), abs(sh.hi)) > math.log1p(2 * tol) and sh.lo * sh.hi > 0
            m_sev = "error" if strong else "warning"
            sev = _worse(sev, m_sev)
        metrics.append(
            {
                "model": model,
                "metric": metric,
                "name": NAMES[metric],
                "severity": m_sev,
                "compared": {"baseline": n_a, "candidate": n_b},
                "baseline_p50_p90_p99_s": list(side_a.quantiles),
                "candidate_p50_p90_p99_s": list(side_b.quantiles),
                "shift": rel,
                "shift_ci95": [lo, hi],
                "z": test.z,
                "p_value": p,
                "strata": len(ranks),
            }
        )
    shown = [m for m in metrics if m["severity"] != "info"]
    if not shown:
        return None
    return {"severity": sev, "tolerance": tol, "metrics": shown, "all_metrics": metrics}


def gpu_section(
    labels: tuple[str, str], store: Store, sides: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    a, b = labels
    g = q_diff.gpu_by_side(store)
    if a not in g or b not in g:
        return None
    ga, gb = g[a], g[b]
    rows, differs = {}, False
    for k in ("sm_clock_mhz", "power_w", "temp_c", "util_pct"):
        va, vb = ga[k], gb[k]
        rel = (vb - va) / va if va else None
        rows[k] = {"baseline": va, "candidate": vb, "relative": rel}
        differs |= rel is not None and abs(rel) >= 0.05
    reasons = sorted(set(ga["throttle_share"]) | set(gb["throttle_share"]))
    throttle = {
        r: {
            "baseline": ga["throttle_share"].get(r, 0.0),
            "candidate": gb["throttle_share"].get(r, 0.0),
            "delta": gb["throttle_share"].get(r, 0.0) - ga["throttle_share"].get(r, 0.0),
        }
        for r in reasons
    }
    differs |= any(abs(v["delta"]) >= 0.05 for r, v in throttle.items() if r != "gpu_idle")
    jpt: dict[str, float | None] = {}
    for side, gg in ((a, ga), (b, gb)):
        toks = sides[side].get("output_tokens_total") or 0
        jpt[side] = gg["energy_j"] / toks if toks and gg["energy_j"] > 0 else None
    ja, jb = jpt[a], jpt[b]
    if ja and jb:
        differs |= abs((jb - ja) / ja) >= 0.1
    if not differs:
        return None
    return {
        "severity": "info",
        "simulated": ga["simulated"] or gb["simulated"],
        "means": rows,
        "throttle_share": throttle,
        "joules_per_output_token": {"baseline": jpt[a], "candidate": jpt[b]},
    }


def build_sections(
    store: Store,
    labels: tuple[str, str],
    sides: dict[str, dict[str, Any]],
    pairing: dict[str, Any],
    tok: Any,
    ctx: AnalysisContext,
) -> dict[str, dict[str, Any]]:
    a, b = labels
    ps: q_diff.PairStats = pairing.pop("_stats")
    src: str = pairing.pop("_source")
    out: dict[str, dict[str, Any]] = {}
    fp = {}
    for k in FINGERPRINT_FIELDS:
        va, vb = sides[a].get(k, []), sides[b].get(k, [])
        if va != vb:
            fp[k] = {"baseline": va, "candidate": vb}
    if fp:
        sev = "warning" if {"tokenizer_fp", "template_fp"} & set(fp) else "info"
        out["fingerprints"] = {"severity": sev, "changed": fp}
    pairs = ps.by_request_id + ps.by_prompt
    if ps.prompt_ids_differ:
        sec = _token_section(store, labels, tok, ps.prompt_ids_differ, pairs, "ids", src)
        sec["severity"] = "error" if sec["share"] >= 0.01 else "warning"
        out["tokenization"] = sec
    if ps.prompt_text_differ:
        sec = _text_section(store, labels, ps.prompt_text_differ, pairs, src)
        sec["severity"] = "error" if sec["share"] >= 0.01 else "warning"
        out["templates"] = sec
    stop = stop_section(store, labels, sides, src)
    if stop:
        out["stop"] = stop
    if ps.outputs_differ:
        sec = _token_section(store, labels, tok, ps.outputs_differ, ps.greedy_pairs, "out", src)
        sec["severity"] = "warning" if sec["share"] >= 0.1 and ps.outputs_differ >= 3 else "info"
        out["outputs"] = sec
    lat = latency_section(store, labels, ctx)
    if lat:
        out["latency"] = lat
    gpu = gpu_section(labels, store, sides)
    if gpu:
        out["gpu"] = gpu
    if not pairing["comparable"] or (
        pairing["qps_ratio"] is not None and not 0.8 <= pairing["qps_ratio"] <= 1.25
    ):
        out["workload"] = {
            "severity": "warning" if not pairing["comparable"] else "info",
            "comparable": pairing["comparable"],
            "incomparable_because": pairing["incomparable_because"],
            "qps": {"baseline": sides[a].get("qps"), "candidate": sides[b].get("qps")},
            "prompt_tokens_p50_p90_p99": {
                "baseline": sides[a].get("prompt_tokens"),
                "candidate": sides[b].get("prompt_tokens"),
            },
            "output_tokens_p50_p90_p99": {
                "baseline": sides[a].get("output_tokens"),
                "candidate": sides[b].get("output_tokens"),
            },
        }
    order = sorted(out, key=lambda k: SEVERITY_ORDER.get(out[k]["severity"], 3))
    return {k: out[k] for k in order}
