"""From a finding to what shows it: the requests it names, the other side to compare them
with, and which view fits its kind (tokens, rendered prompts, latency distributions, GPU)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from infdebug.schema import Finding
from infdebug.store.q_common import make_unit

TOKEN_PREFIXES = (
    "tokenizer.",
    "template.",
    "skew.",
    "output.",
    "stop.",
    "replica.output_divergence",
)
LATENCY_METRICS = {"itl_s", "ttft_s", "e2e_s", "tpot_s", "queue_s"}
_LABEL = re.compile(r"^(?P<replica>.+?) \((?P<deployment>[^()]*)\)$")


def unit_of_label(label: str) -> str:
    """The unit a finding's label names: ``r3 (canary)`` or ``r3``."""
    m = _LABEL.match(label)
    return make_unit(m["replica"], m["deployment"]) if m else make_unit(label, None)


def views(f: Finding) -> list[str]:
    """Which views show this finding, most telling first: ``tokens``, ``template``,
    ``latency``, ``gpu``; the evidence itself is always shown."""
    out = []
    values = f.values or {}
    if f.kind.startswith("template."):
        out += ["template", "tokens"]
    elif f.kind.startswith(TOKEN_PREFIXES):
        out.append("tokens")
    if values.get("metric") in LATENCY_METRICS or f.kind in (
        "replica.latency_regression",
        "replica.change_point",
        "replica.slow_start",
    ):
        out.append("latency")
    if f.kind.startswith(("gpu.", "replica.gpu", "replica.energy", "replica.throttl")) or (
        "throttl" in f.kind
    ):
        out.append("gpu")
    return out


@dataclass(frozen=True)
class Pair:
    """The request a finding names (``this``) and one to compare it with (``other``:
    named by the evidence, or looked up; None when there is none)."""

    this: str | None
    other: str | None
    prefer_units: tuple[str, ...] = ()


def _walk(obj: Any, key: str, depth: int = 0) -> list[Any]:
    if depth > 4:
        return []
    found: list[Any] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                found.append(v)
            found += _walk(v, key, depth + 1)
    elif isinstance(obj, list):
        for v in obj[:20]:
            found += _walk(v, key, depth + 1)
    return found


def pair(f: Finding) -> Pair:
    """The two requests the token views compare: the evidence's own example pair where it
    has one (``example.this`` / ``example.reference``), else its first request ID and a
    request of the reference replicas it names."""
    ev = f.evidence or {}
    ex = ev.get("example") if isinstance(ev.get("example"), dict) else None
    if ex and isinstance(ex.get("this"), dict) and isinstance(ex.get("reference"), dict):
        return Pair(ex["this"].get("request_id"), ex["reference"].get("request_id"))
    ids = [i for i in _walk(ev, "request_ids") if isinstance(i, list)]
    first = next((str(x) for lst in ids for x in lst if isinstance(x, str)), None)
    if first is None:
        rid = next((str(x) for x in _walk(ev, "request_id") if isinstance(x, str)), None)
        first = rid
    refs = ev.get("reference_replicas") or []
    prefer = tuple(unit_of_label(str(r)) for r in refs if isinstance(r, str))
    return Pair(first, None, prefer)


def request_ids(f: Finding, limit: int = 20) -> list[str]:
    """Every request ID the evidence names (first ``limit``)."""
    out: list[str] = []
    for v in _walk(f.evidence or {}, "request_ids"):
        if isinstance(v, list):
            out += [str(x) for x in v if isinstance(x, str)]
    for v in _walk(f.evidence or {}, "request_id"):
        if isinstance(v, str):
            out.append(v)
    seen: dict[str, None] = {}
    for r in out:
        seen.setdefault(r, None)
    return list(seen)[:limit]
