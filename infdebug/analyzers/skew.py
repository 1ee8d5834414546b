"""Train-serve skew: the served traffic against what the model was trained or evaluated on
(``--reference FILE``, read by ``infdebug.skew_reference``), per deployment.

Kinds here: ``skew.length``, ``skew.tokens``, ``skew.sampling``. ``skew.template`` and
``skew.special_tokens`` live in ``skew_format.py``, ``skew.logprobs`` in ``skew_numerics.py``.
Each is its own analyzer (``--only skew.length``); without a reference they do nothing.
The reference's conversations are rendered with the reference chat template and encoded
with the reference tokenizer (``--model``, or ``--tokenizer`` and ``--template``); its
token-ID lines need neither.

The unit is the deployment (every replica of it pooled; "" where none is logged) and the
requests of the served model the reference belongs to (``--model-name``). Large deployments
are sampled (``store/q_skew.py``: evenly spaced time slices of the window, which the primary
key reads alone, then a hash of the request ID), so the cost stays that of the sample.
Served traffic is never drawn from exactly the training distribution, so a finding needs
both a test and an effect: a Holm-corrected p-value under ``ALPHA`` across every
deployment × metric tested, and an effect at least the stated size.

- ``skew.length``: prompt and output lengths in tokens. Two-sample Kolmogorov-Smirnov
  (asymptotic p, conservative on integer data) and the population stability index over the
  reference's deciles: a finding when KS is significant and PSI ≥ ``PSI_INFO`` (0.1),
  a warning from ``PSI_WARNING`` (0.25), the usual reading of PSI. Output lengths leave out
  the stop token that ended a request (engines that log it) and compare only requests that
  had room to finish as the reference did: ``max_tokens`` above the reference's 99th
  percentile output length, or none. At least ``MIN_SAMPLE`` on both sides; a sample of about
  ``LENGTH_SAMPLE`` requests per deployment (every one of a smaller deployment).
- ``skew.tokens``: the Jensen-Shannon divergence (bits) of the prompt-token unigram
  distribution of a hash sample of the deployment's prompts (at most ``TOKENS_SAMPLE``, at
  most half the reference's size) against the reference's. Its null is calibrated on the
  reference itself, not on a constant: the reference's prompts split at random into one of
  the served sample's size against the rest, ``NULL_REPS`` times (``UnigramNull``), which
  gives a permutation p-value; beyond every draw (where the permutation floor, 1 /
  (NULL_REPS + 1) ≈ 0.0025, would keep a correction across several deployments from ever
  passing) the tail of a gamma distribution fitted to the draws. A finding when Holm's p <
  ``ALPHA`` and JS ≥ ``JS_INFO``; a warning from ``JS_WARNING``.
- ``skew.sampling``: served sampling parameters outside the range the reference was
  evaluated with (the ``sampling`` of its lines; else ``options["reference_sampling"]``:
  key → value or [low, high]). No statistic: a request sent with another temperature is a
  fact. A warning when ≥ ``SAMPLING_WARNING`` of a deployment's requests that set a
  parameter are outside its range (``max_tokens`` is a cap, not a distribution: info); read
  from a sample of about ``SAMPLING_SAMPLE`` requests per deployment (``sampled_share``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.output_drift import holm, piece
from infdebug.analyzers.skew_stats import (
    UnigramNull,
    hist_quantiles,
    js_divergence,
    ks_two_sample,
    permutation_p,
    psi,
)
from infdebug.schema import Finding
from infdebug.skew_reference import SAMPLING_KEYS, Prepared, ReferenceSet, reference_of
from infdebug.store import q_skew as q

ALPHA = 0.01
MIN_SAMPLE = 30  # requests on each side before a distribution is compared
PSI_INFO = 0.10
PSI_WARNING = 0.25
TOKENS_SAMPLE = 1000  # served prompts per deployment whose tokens are counted
LENGTH_SAMPLE = 20_000  # served requests per deployment whose lengths are compared (a sample)
SAMPLING_SAMPLE = 50_000  # … whose sampling parameters are read
NULL_REPS = 400
JS_INFO = 0.01  # bits
JS_WARNING = 0.05
SAMPLING_WARNING = 0.05
TOP_TOKENS = 5
OFF = {"top_k": 1e18}  # top_k ≤ 0 means no top-k: read as unbounded


def served_model(ctx: AnalysisContext) -> str:
    """The served model the reference belongs to ("" = every request)."""
    return str(ctx.options.get("model") or "")


def reference(ctx: AnalysisContext) -> tuple[ReferenceSet, Prepared] | None:
    ref = reference_of(ctx.options)
    if ref is None:
        return None
    return ref, ref.prepared(ctx.tokenizer, ctx.template)


def dep_label(dep: str) -> str:
    return f"deployment {dep}" if dep else "the fleet"


def ref_values(ref: ReferenceSet, prep: Prepared) -> dict[str, Any]:
    out = ref.summary()
    if prep.unusable:
        out["unusable"] = dict(prep.unusable)
    return out


# --- skew.length ----------------------------------------------------------------------------


@analyzer("skew.length")
def skew_length(ctx: AnalysisContext) -> list[Finding]:
    got = reference(ctx)
    if got is None:
        return []
    ref, prep = got
    ref_hist = {
        "prompt": Counter(len(p) for p in prep.id_seqs),
        "output": Counter(n for n in prep.output_lens if n is not None and n > 0),
    }
    room = int(hist_quantiles(ref_hist["output"], (0.99,))[0]) + 1 if ref_hist["output"] else 0
    hists = q.length_histograms(ctx.store, ctx.window(), served_model(ctx), room, LENGTH_SAMPLE)
    tests: list[tuple[str, str, Counter[int], float, float, float]] = []
    for dep in sorted(hists):
        for metric in ("prompt", "output"):
            served = getattr(hists[dep], metric)
            if sum(served.values()) < MIN_SAMPLE or sum(ref_hist[metric].values()) < MIN_SAMPLE:
                continue
            d, p = ks_two_sample(served, ref_hist[metric])
            tests.append((dep, metric, served, d, p, psi(served, ref_hist[metric])))
    adj = holm([t[4] for t in tests])
    out: list[Finding] = []
    for (dep, metric, served, d, p, index), p_holm in zip(tests, adj, strict=True):
        if p_holm >= ALPHA or index < PSI_INFO:
            continue
        r = ref_hist[metric]
        sq, rq = hist_quantiles(served), hist_quantiles(r)
        s_mean = sum(k * v for k, v in served.items()) / sum(served.values())
        r_mean = sum(k * v for k, v in r.items()) / sum(r.values())
        word = "longer" if s_mean > r_mean else "shorter"
        values: dict[str, Any] = {
            "metric": f"{metric}_tokens",
            "psi": round(index, 4),
            "ks_d": round(d, 4),
            "p_value": p,
            "p_holm": p_holm,
            "test": "ks_two_sample+holm, psi over reference deciles",
            "served": sum(served.values()),
            "reference_n": sum(r.values()),
            "served_mean": round(s_mean, 2),
            "reference_mean": round(r_mean, 2),
            "served_p50_p90_p99": sq,
            "reference_p50_p90_p99": rq,
            "thresholds": {"alpha": ALPHA, "psi_info": PSI_INFO, "psi_warning": PSI_WARNING},
            "reference": ref_values(ref, prep),
        }
        if metric == "output":
            values["min_max_tokens"] = room
            values["outputs_left_out"] = hists[dep].outputs_left_out
        out.append(
            finding(
                "skew.length",
                "skew.length",
                "warning" if index >= PSI_WARNING else "info",
                f"{dep_label(dep)}: served {metric}s are {word} than the reference's "
                f"(mean {s_mean:.0f} vs {r_mean:.0f} tokens, p50 {sq[0]:.0f} vs {rq[0]:.0f}; "
                f"PSI {index:.2f}, KS D={d:.2f}, p={p_holm:.2g} Holm)",
                deployment=dep or None,
                values=values,
                evidence={
                    "hint": "the model is served prompts of another size than it was trained or "
                    "evaluated on"
                    if metric == "prompt"
                    else "the model answers at another length than on the reference: a "
                    "template, stop-token or numerics change, or another workload"
                },
            )
        )
    return out


# --- skew.tokens ----------------------------------------------------------------------------


def _null(prep: Prepared, n: int) -> np.ndarray:
    """The null JS draws for a served sample of ``n`` (cached on the prepared reference)."""
    cache: dict[int, np.ndarray] = prep.cache.setdefault("js_null", {})
    if n not in cache:
        seqs = prep.id_seqs
        vocab = {t: i for i, t in enumerate(sorted({t for s in seqs for t in s}))}
        cache[n] = UnigramNull(seqs, vocab).draws(n, NULL_REPS, seed=n)
    return cache[n]


@analyzer("skew.tokens")
def skew_tokens(ctx: AnalysisContext) -> list[Finding]:
    got = reference(ctx)
    if got is None:
        return []
    ref, prep = got
    seqs = prep.id_seqs
    if len(seqs) < 2 * MIN_SAMPLE:
        return []
    if "unigrams" not in prep.cache:
        prep.cache["unigrams"] = Counter(t for s in seqs for t in s)
    ref_counts: Counter[int] = prep.cache["unigrams"]
    cap = min(TOKENS_SAMPLE, len(seqs) // 2)
    samples = q.prompt_token_counts(ctx.store, ctx.window(), served_model(ctx), cap)
    tests: list[tuple[str, q.TokenSample, float, float, np.ndarray, np.ndarray, list[int]]] = []
    for dep in sorted(samples):
        s = samples[dep]
        if s.requests < MIN_SAMPLE:
            continue
        ids = sorted(set(ref_counts) | set(s.counts))
        sv = np.array([s.counts.get(t, 0) for t in ids], dtype=np.float64)
        rv = np.array([ref_counts.get(t, 0) for t in ids], dtype=np.float64)
        obs = js_divergence(sv, rv)
        tests.append((dep, s, obs, permutation_p(obs, _null(prep, s.requests)), sv, rv, ids))
    adj = holm([t[3] for t in tests])
    out: list[Finding] = []
    for (dep, s, obs, p, sv, rv, ids), p_holm in zip(tests, adj, strict=True):
        if p_holm >= ALPHA or obs < JS_INFO:
            continue
        null = _null(prep, s.requests)
        diff = sv / sv.sum() - rv / rv.sum()
        order = np.argsort(diff)

        over = [
            _token_row(ctx, ids, sv, rv, int(i)) for i in order[::-1][:TOP_TOKENS] if diff[i] > 0
        ]
        under = [_token_row(ctx, ids, sv, rv, int(i)) for i in order[:TOP_TOKENS] if diff[i] < 0]
        q99 = float(np.quantile(null, 0.99))
        unseen = int(sum(1 for i in range(len(ids)) if rv[i] == 0 and sv[i] > 0))
        out.append(
            finding(
                "skew.tokens",
                "skew.tokens",
                "warning" if obs >= JS_WARNING else "info",
                f"{dep_label(dep)}: the served prompts' token distribution departs from the "
                f"reference's (Jensen-Shannon {obs:.3f} bits vs ≤ {q99:.3f}"
                f" between halves of the reference itself; p={p_holm:.2g} Holm); most over-"
                f"represented: {', '.join(repr(r['piece'] or r['id']) for r in over[:3])}",
                deployment=dep or None,
                values={
                    "js_bits": round(obs, 5),
                    "null_p50": round(float(np.median(null)), 5),
                    "null_p99": round(q99, 5),
                    "p_value": p,
                    "p_holm": p_holm,
                    "test": "unigram jensen-shannon, permutation null on the reference + holm",
                    "null_reps": NULL_REPS,
                    "served_prompts": s.requests,
                    "served_population": s.population,
                    "reference_prompts": len(seqs),
                    "served_ids_unseen_in_reference": unseen,
                    "thresholds": {"alpha": ALPHA, "js_info": JS_INFO, "js_warning": JS_WARNING},
                    "reference": ref_values(ref, prep),
                },
                evidence={"over_represented": over, "under_represented": under},
            )
        )
    return out


def _token_row(
    ctx: AnalysisContext, ids: list[int], sv: np.ndarray, rv: np.ndarray, i: int
) -> dict[str, Any]:
    return {
        "id": ids[i],
        "piece": piece(ctx, ids[i]),
        "served_share": round(float(sv[i] / sv.sum()), 5),
        "reference_share": round(float(rv[i] / rv.sum()), 5),
    }


# --- skew.sampling --------------------------------------------------------------------------


def _ranges(
    ctx: AnalysisContext, ref: ReferenceSet | None
) -> tuple[dict[str, tuple[float, float]], str]:
    if ref is not None and ref.sampling:
        return dict(ref.sampling), "reference"
    given = ctx.options.get("reference_sampling") or {}
    out: dict[str, tuple[float, float]] = {}
    for k, v in dict(given).items():
        if k not in SAMPLING_KEYS:
            continue
        lo, hi = (v, v) if isinstance(v, int | float) else (v[0], v[1])
        out[k] = (float(lo), float(hi))
    return out, "options"


def _off(key: str, v: float) -> float:
    return OFF[key] if key in OFF and v <= 0 else v


@analyzer("skew.sampling")
def skew_sampling(ctx: AnalysisContext) -> list[Finding]:
    ref = reference_of(ctx.options)
    ranges, source = _ranges(ctx, ref)
    if not ranges:
        return []
    ranges = {k: (_off(k, lo), _off(k, hi)) for k, (lo, hi) in ranges.items()}
    rows, shares = q.sampling_ranges(
        ctx.store, ctx.window(), served_model(ctx), ranges, OFF, SAMPLING_SAMPLE
    )
    by_dep: dict[str, list[q.SamplingRange]] = {}
    for r in rows:
        if r.below + r.above:
            by_dep.setdefault(r.deployment, []).append(r)
    out: list[Finding] = []
    for dep, rs in sorted(by_dep.items()):
        worst = max(
            ((r.below + r.above) / r.requests for r in rs if r.key != "max_tokens"), default=0
        )
        params: dict[str, dict[str, Any]] = {
            r.key: {
                "requests": r.requests,
                "outside": r.below + r.above,
                "below": r.below,
                "above": r.above,
                "share": round((r.below + r.above) / r.requests, 4),
                "served_range": [_show(r.low), _show(r.high)],
                "reference_range": [_show(ranges[r.key][0]), _show(ranges[r.key][1])],
                "request_ids": r.outside_ids,
            }
            for r in rs
        }
        txt = "; ".join(
            f"{k} {v['served_range'][0]}..{v['served_range'][1]} vs {v['reference_range'][0]}.."
            f"{v['reference_range'][1]} ({v['share']:.0%} outside)"
            for k, v in params.items()
        )
        out.append(
            finding(
                "skew.sampling",
                "skew.sampling",
                "warning" if worst >= SAMPLING_WARNING else "info",
                f"{dep_label(dep)}: served with sampling parameters outside the range the "
                f"reference was evaluated with: {txt}",
                deployment=dep or None,
                values={
                    "params": params,
                    "range_source": source,
                    "sampled_share": round(shares.get(dep, 1.0), 6),
                    "threshold": SAMPLING_WARNING,
                    **({"reference": ref.summary()} if ref is not None else {}),
                },
                evidence={
                    "request_ids": sorted({i for r in rs for i in r.outside_ids})[:10],
                    "hint": "the model's evaluated quality holds for the evaluated settings; "
                    "look at the clients or the serving defaults that send these",
                },
            )
        )
    return out


def _show(v: float) -> float | str:
    return "off" if v >= 1e17 else (int(v) if float(v).is_integer() else round(v, 4))
