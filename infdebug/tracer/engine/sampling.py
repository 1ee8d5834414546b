"""Sampling one token from one sequence's logits: greedy at temperature 0, else temperature,
top-k and top-p over the softmax, drawn with the sequence's own generator.

Numerically safe for every temperature the server accepts: a positive temperature below
``MIN_TEMPERATURE`` is raised to it, as vLLM does (dividing logits by 1e-300 gives inf and
then NaN probabilities); the division is done in float32 whatever the model's dtype. What
still cannot be sampled (a NaN temperature from a caller of the engine's own API) raises,
and the engine ends that sequence alone (:class:`SampleError`).
"""

from __future__ import annotations

from typing import Protocol

import torch

MIN_TEMPERATURE = 1e-2  # vLLM's _MAX_TEMP: smaller positive temperatures are raised to it


class SampleError(RuntimeError):
    """Sampling one sequence raised (NaN probabilities, a bad generator, …)."""


class Knobs(Protocol):
    @property
    def temperature(self) -> float: ...
    @property
    def top_k(self) -> int: ...
    @property
    def top_p(self) -> float: ...


def sample_row(
    row: torch.Tensor, p: Knobs, generator: torch.Generator | None, *, greedy: bool
) -> int:
    """One token ID from one row of logits."""
    if greedy:
        return int(row.argmax())
    row = row.float() / max(p.temperature, MIN_TEMPERATURE)  # NaN stays NaN (and raises)
    if p.top_k > 0:
        k = min(p.top_k, row.shape[-1])
        kth = torch.topk(row, k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if p.top_p < 1.0:
        sp, si = torch.sort(probs, descending=True)
        keep = (sp.cumsum(-1) - sp) < p.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
