"""Numerics skew (``skew.logprobs``): what each replica logged against the reference engine's
float32 re-scoring of the same prompt + output IDs, with ``--model DIR`` (a checkpoint the
reference engine loads: ``config.json`` + safetensors; a directory with only a tokenizer is
not re-scored).

For a hash sample of each unit's requests (``SAMPLE`` = 32 by default,
``options["rescore_sample"]``) that logged prompt and output IDs and either output logprobs
or greedy decoding, the prompt + output (truncated to the model's length) runs through the
model once in float32 (``options["rescore_device"]``, default cpu), teacher-forced, and for
each output token:

- ``|Δ logprob|``: the logged logprob of the token against the float32 one (the raw
  distribution's log-softmax, as the reference engine and vLLM log it);
- greedy agreement (greedy requests): whether the float32 argmax is the logged token.

A unit is flagged when its numerics differ both from float32 and from its fleet: a mean
``|Δ|`` of at least ``FP32_TOL`` (a float32 recomputation in another order stays orders of
magnitude under it; float16 or bfloat16 do not) and at least ``FLEET_RATIO`` times the
median of the other units' means; or, among greedy requests, more requests with a token
that is not the float32 argmax than the rest of the fleet (one-sided Fisher, Holm, p <
``ALPHA``, at least ``MIN_MISMATCH``) with a per-token agreement under ``GREEDY_AGREE``.
A warning; an error from a mean ``|Δ|`` of ``ERROR_DELTA`` nats or an agreement under
``ERROR_AGREE``. A fleet that differs from float32 as a whole (every unit alike, or a single
one: a mean ``|Δ|`` from ``FP32_TOL``, or a greedy agreement under ``GREEDY_AGREE`` over at
least ``MIN_GREEDY_POSITIONS``) is an info finding (reduced-precision serving is the norm), a
warning from ``ERROR_DELTA`` or under ``ERROR_AGREE``: a model changed by quantisation, or
not the checkpoint given.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.output_drift import ALPHA, fisher_greater, holm, piece
from infdebug.errors import InputError
from infdebug.schema import Finding
from infdebug.store import q_skew as q
from infdebug.store.q_common import unit_label

NAME = "skew.logprobs"
SAMPLE = 32
FP32_TOL = 2e-5  # nats, mean |Δ logprob|
FLEET_RATIO = 4.0
GREEDY_AGREE = 0.99
MIN_MISMATCH = 3
ERROR_DELTA = 0.1
ERROR_AGREE = 0.9
MIN_GREEDY_POSITIONS = 50  # greedy positions in all before a fleet-wide agreement counts
EXAMPLES = 5


def is_checkpoint(model_dir: str) -> bool:
    """A directory the reference engine can load (config + safetensors weights)."""
    return os.path.isfile(os.path.join(model_dir, "config.json")) and any(
        os.path.isfile(os.path.join(model_dir, f))
        for f in ("model.safetensors", "model.safetensors.index.json")
    )


class Rescorer:
    """The reference engine's model in float32: teacher-forced logprobs of an output."""

    def __init__(self, model_dir: str, device: str = "cpu") -> None:
        import torch

        from infdebug.tracer.engine.checkpoint import load_checkpoint

        try:
            self.model, self.cfg = load_checkpoint(model_dir, device=device, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise InputError(f"--model {model_dir}: cannot load it to re-score: {e}") from None
        self.device = torch.device(device)
        self.max_len = int(self.model.rope_len)
        self.vocab = int(self.cfg.vocab_size)

    def score(self, prompt: list[int], output: list[int]) -> tuple[list[float], list[int]]:
        """(float32 logprob of each output token, float32 argmax at each output position);
        the output is cut where prompt + output reach the model's length."""
        import torch

        from infdebug.tracer.engine.model import KVCache

        output = output[: max(0, self.max_len - len(prompt))]
        ids = prompt + output
        cache = KVCache(self.cfg, 1, len(ids), self.device, torch.float32)
        logits = self.model.prefill(
            torch.tensor(ids, dtype=torch.long, device=self.device), 0, 0, cache, all_logits=True
        )
        lp = torch.log_softmax(logits[len(prompt) - 1 : len(ids) - 1].float(), dim=-1)
        target = torch.tensor(output, dtype=torch.long, device=self.device)
        chosen = lp.gather(1, target[:, None])[:, 0]
        return chosen.tolist(), lp.argmax(dim=-1).tolist()


_SCORERS: dict[tuple[str, str, int], Rescorer] = {}


def rescorer(model_dir: str, device: str) -> Rescorer:
    """One loaded model per checkpoint version (the last one asked for is kept)."""
    st = os.stat(os.path.join(model_dir, "config.json"))
    key = (os.path.abspath(model_dir), device, st.st_mtime_ns)
    if key not in _SCORERS:
        _SCORERS.clear()
        _SCORERS[key] = Rescorer(model_dir, device)
    return _SCORERS[key]


@dataclass
class UnitNumerics:
    requests: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    deltas: list[float] = field(default_factory=list)  # every token's |Δ logprob|
    request_means: list[tuple[float, str]] = field(default_factory=list)
    worst: dict[str, Any] | None = None  # the token with the largest |Δ|
    greedy_requests: int = 0
    greedy_mismatch_requests: int = 0
    greedy_positions: int = 0
    greedy_agree: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mean_delta(self) -> float | None:
        return sum(self.deltas) / len(self.deltas) if self.deltas else None

    @property
    def agreement(self) -> float | None:
        return self.greedy_agree / self.greedy_positions if self.greedy_positions else None


def _measure(
    ctx: AnalysisContext, sc: Rescorer, rows: list[q.RescoreRow]
) -> dict[str, UnitNumerics]:
    units: dict[str, UnitNumerics] = defaultdict(UnitNumerics)
    for r in rows:
        u = units[r.unit]
        if len(r.prompt_ids) >= sc.max_len:
            u.skipped["prompt_too_long"] = u.skipped.get("prompt_too_long", 0) + 1
            continue
        if max(r.prompt_ids + r.output_ids) >= sc.vocab:
            u.skipped["ids_outside_vocab"] = u.skipped.get("ids_outside_vocab", 0) + 1
            continue
        lps, top = sc.score(r.prompt_ids, r.output_ids)
        u.requests += 1
        if r.output_logprobs:
            ds = [abs(a - b) for a, b in zip(lps, r.output_logprobs, strict=False)]
            u.deltas += ds
            u.request_means.append((sum(ds) / len(ds), r.request_id))
            i = max(range(len(ds)), key=ds.__getitem__)
            if u.worst is None or ds[i] > u.worst["abs_delta"]:
                u.worst = {
                    "request_id": r.request_id,
                    "position": i,
                    "id": r.output_ids[i],
                    "piece": piece(ctx, r.output_ids[i]),
                    "logged_logprob": r.output_logprobs[i],
                    "float32_logprob": round(lps[i], 6),
                    "abs_delta": ds[i],
                }
        if r.greedy:
            miss = [i for i, (t, o) in enumerate(zip(top, r.output_ids, strict=False)) if t != o]
            u.greedy_requests += 1
            u.greedy_positions += len(top)
            u.greedy_agree += len(top) - len(miss)
            if miss:
                u.greedy_mismatch_requests += 1
                i = miss[0]
                if len(u.mismatches) < EXAMPLES:
                    u.mismatches.append(
                        {
                            "request_id": r.request_id,
                            "position": i,
                            "logged_id": r.output_ids[i],
                            "logged_piece": piece(ctx, r.output_ids[i]),
                            "float32_argmax": top[i],
                            "float32_piece": piece(ctx, top[i]),
                        }
                    )
    return dict(units)


@analyzer(NAME)
def skew_logprobs(ctx: AnalysisContext) -> list[Finding]:
    model_dir = ctx.options.get("model_dir")
    if not model_dir or not is_checkpoint(str(model_dir)):
        return []
    n = int(ctx.options.get("rescore_sample", SAMPLE))
    rows = q.rescore_sample(ctx.store, ctx.window(), str(ctx.options.get("model") or ""), n)
    if not rows:
        return []
    sc = rescorer(str(model_dir), str(ctx.options.get("rescore_device") or "cpu"))
    units = _measure(ctx, sc, rows)
    means = {u: m for u, s in units.items() if (m := s.mean_delta) is not None}
    flagged: dict[str, list[str]] = defaultdict(list)
    fleet_ref: dict[str, float | None] = {}
    for u, m in means.items():
        others = [v for w, v in means.items() if w != u]
        fleet_ref[u] = statistics.median(others) if others else None
        ref = fleet_ref[u]
        if ref is not None and m >= FP32_TOL and m >= FLEET_RATIO * ref:
            flagged[u].append("logprobs")
    greedy = sorted(u for u, s in units.items() if s.greedy_requests)
    if len(greedy) >= 2:
        tk = sum(units[u].greedy_mismatch_requests for u in greedy)
        tn = sum(units[u].greedy_requests for u in greedy)
        pv = [
            fisher_greater(
                units[u].greedy_mismatch_requests,
                units[u].greedy_requests,
                tk - units[u].greedy_mismatch_requests,
                tn - units[u].greedy_requests,
            )
            for u in greedy
        ]
        for u, p in zip(greedy, holm(pv), strict=True):
            s = units[u]
            agree = s.agreement
            if (
                p < ALPHA
                and s.greedy_mismatch_requests >= MIN_MISMATCH
                and agree is not None
                and agree < GREEDY_AGREE
            ):
                flagged[u].append("greedy")
    out = [
        _unit_finding(ctx, u, units[u], why, fleet_ref.get(u)) for u, why in sorted(flagged.items())
    ]
    if flagged:
        return out
    med = statistics.median(means.values()) if means else None
    positions = sum(s.greedy_positions for s in units.values())
    agree = sum(s.greedy_agree for s in units.values()) / positions if positions else None
    if agree is not None and positions < MIN_GREEDY_POSITIONS:
        agree = None
    if (med is not None and med >= FP32_TOL) or (agree is not None and agree < GREEDY_AGREE):
        out.append(_fleet_finding(units, med, agree))
    return out


def _values(s: UnitNumerics, fleet: float | None) -> dict[str, Any]:
    d = sorted(s.deltas)
    return {
        "requests": s.requests,
        "skipped": s.skipped,
        "tokens_with_logprobs": len(d),
        "mean_abs_delta": s.mean_delta,
        "max_abs_delta": d[-1] if d else None,
        "p99_abs_delta": d[min(len(d) - 1, int(0.99 * len(d)))] if d else None,
        "fleet_median_mean_abs_delta": fleet,
        "greedy_requests": s.greedy_requests,
        "greedy_positions": s.greedy_positions,
        "greedy_agreement": s.agreement,
        "greedy_mismatch_requests": s.greedy_mismatch_requests,
        "thresholds": {
            "fp32_tol": FP32_TOL,
            "fleet_ratio": FLEET_RATIO,
            "greedy_agree": GREEDY_AGREE,
            "error_delta": ERROR_DELTA,
        },
        "rescored_in": "float32",
    }


def _unit_finding(
    ctx: AnalysisContext, unit: str, s: UnitNumerics, why: list[str], fleet: float | None
) -> Finding:
    m, agree = s.mean_delta, s.agreement
    parts = []
    if m is not None:
        parts.append(
            f"logged logprobs differ from float32 by {m:.2g} nats on average"
            + (f" ({m / fleet:.0f}× the fleet's {fleet:.2g})" if fleet else "")
        )
    if agree is not None:
        parts.append(f"greedy tokens agree with the float32 argmax at {agree:.1%} of positions")
    severe = (m is not None and m >= ERROR_DELTA) or (agree is not None and agree < ERROR_AGREE)
    worst = sorted(s.request_means, reverse=True)[:EXAMPLES]
    return finding(
        NAME,
        NAME,
        "error" if severe else "warning",
        f"{unit_label(unit)}: numerics unlike its fleet's and float32's: " + "; ".join(parts),
        unit=unit,
        values={**_values(s, fleet), "flagged_by": why},
        evidence={
            "request_ids": [rid for _, rid in worst] or [x["request_id"] for x in s.mismatches],
            "largest_delta": s.worst,
            "greedy_mismatches": s.mismatches,
            "hint": "a replica serving in another precision (float16, bfloat16), quantised, "
            "with other kernels or speculative decoding that changed the distribution",
        },
    )


def _fleet_finding(
    units: dict[str, UnitNumerics], med: float | None, agree: float | None
) -> Finding:
    severe = (med is not None and med >= ERROR_DELTA) or (agree is not None and agree < ERROR_AGREE)
    parts = []
    if med is not None:
        parts.append(f"logged logprobs differ from float32 re-scoring by {med:.2g} nats on average")
    if agree is not None:
        parts.append(f"greedy tokens agree with the float32 argmax at {agree:.1%} of positions")
    return finding(
        NAME,
        NAME,
        "warning" if severe else "info",
        f"on every replica alike ({len(units)}): "
        + "; ".join(parts)
        + (
            ": more than reduced precision explains — a quantised model, or not the checkpoint "
            "given with --model"
            if severe
            else ": reduced-precision serving, as expected; no replica stands out"
        ),
        values={
            "median_mean_abs_delta": med,
            "greedy_agreement": agree,
            "replicas": {unit_label(u): _values(units[u], None) for u in sorted(units)},
            "thresholds": {
                "fp32_tol": FP32_TOL,
                "greedy_agree": GREEDY_AGREE,
                "error_delta": ERROR_DELTA,
                "error_agree": ERROR_AGREE,
            },
        },
        evidence={
            "request_ids": sorted(
                {x["request_id"] for s in units.values() for x in s.mismatches}
                | {s.worst["request_id"] for s in units.values() if s.worst}
            )[:10]
        },
    )
