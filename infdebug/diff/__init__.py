"""``infdebug diff``: two labelled sides in one store, the analyzers run over both, and what
changed between them.

A diff is the analyzers run on two labelled sides, not a second set of detectors: the sides
are loaded into one temporary store (``sides.py``), every row labelled with its side in
``deployment``; ``analyze()`` runs every registered analyzer; a finding scoped to one side
with no counterpart (same kind, same replica) on the other is a **change**, one found on both
is **unchanged** (listed, never failing a gate). Fleet-level findings of the kinds that
compare units (``CROSS``) are changes; fleet-wide rates are context. The sections
(``sections.py``) add what only pairing shows: the same prompt tokenized, rendered or answered
differently, and side-against-side numbers (each signed candidate − baseline, so swapping
the sides mirrors them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from infdebug.analyzers.base import SEVERITY_ORDER, AnalysisContext, analyze
from infdebug.schema import Finding
from infdebug.store import Store

SEVERITIES = ("info", "warning", "error")
# fleet-level findings that compare units with each other: a change between the sides
CROSS = frozenset(
    {
        "tokenizer.cross_replica_ids",
        "tokenizer.fingerprint_mismatch",
        "tokenizer.vocabulary_mismatch",
        "template.fingerprint_mismatch",
        "replica.version_skew",
        "replica.output_divergence",
    }
)


@dataclass
class DiffResult:
    """What a diff found: the changed findings (most severe first), those found on both
    sides, the pairing, the sections (most severe first), per-side summaries, analyzers
    that failed, and the seconds each phase took."""

    labels: tuple[str, str]
    findings: list[Finding]
    unchanged: list[dict[str, Any]]
    pairing: dict[str, Any]
    sections: dict[str, dict[str, Any]]
    sides: dict[str, dict[str, Any]]
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def worst(self) -> str | None:
        """The most severe severity among the changes (sections' included), or None."""
        sev = [f.severity for f in self.findings]
        sev += [s.get("severity", "info") for s in self.sections.values()]
        return min(sev, key=lambda s: SEVERITY_ORDER.get(s, 3)) if sev else None

    def fails(self, level: str) -> bool:
        """Something changed at or above ``level`` (``--fail-on``)."""
        rank = SEVERITY_ORDER[level]
        if any(SEVERITY_ORDER.get(f.severity, 3) <= rank for f in self.findings):
            return True
        return any(
            SEVERITY_ORDER.get(s.get("severity", "info"), 3) <= rank for s in self.sections.values()
        )


def _side_of(f: Finding, labels: tuple[str, str]) -> str | None:
    dep = (f.scope or {}).get("deployment")
    return dep if dep in labels else None


def classify(
    findings: list[Finding], labels: tuple[str, str]
) -> tuple[list[Finding], list[dict[str, Any]]]:
    """(changes, unchanged): a side's finding without a counterpart on the other side (same
    kind and replica) is a change; with one, both are unchanged."""
    keys = {
        (f.kind, (f.scope or {}).get("replica"), side)
        for f in findings
        if (side := _side_of(f, labels)) is not None
    }
    changed: list[Finding] = []
    unchanged: dict[tuple[str, str | None], dict[str, Any]] = {}
    for f in findings:
        side = _side_of(f, labels)
        replica = (f.scope or {}).get("replica")
        if side is None:
            if f.kind in CROSS:
                changed.append(f)
            else:
                u = unchanged.setdefault((f.kind, None), {"kind": f.kind, "scope": "fleet"})
                u["severity"] = f.severity
            continue
        other = labels[1] if side == labels[0] else labels[0]
        if (f.kind, replica, other) in keys:
            u = unchanged.setdefault(
                (f.kind, replica),
                {"kind": f.kind, "scope": "both sides", "replica": replica},
            )
            u["severity"] = min(
                (u.get("severity", "info"), f.severity), key=lambda s: SEVERITY_ORDER.get(s, 3)
            )
        else:
            changed.append(f)
    return changed, sorted(unchanged.values(), key=lambda u: (u["kind"], str(u.get("replica"))))


def diff_store(
    store: Store,
    labels: tuple[str, str],
    *,
    tokenizer: Any = None,
    template: str | None = None,
    options: dict[str, Any] | None = None,
    deployments: dict[str, list[str]] | None = None,
    progress: Any = None,
) -> DiffResult:
    """The diff of a store whose rows are labelled ``labels`` (baseline, candidate)."""
    from infdebug.diff.sections import build_sections, pairing_of
    from infdebug.store import q_diff

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    sides = q_diff.side_summary(store)
    for label in labels:
        sides.setdefault(label, {"requests": 0})
        if deployments and label in deployments:
            sides[label]["deployments"] = deployments[label]
    ctx = AnalysisContext(
        store=store, tokenizer=tokenizer, template=template, options=dict(options or {})
    )
    with ctx.run_scope():  # the pairs and the latency sample built once, read by all
        src = q_diff.paired_source(store, *labels, ctx.scratch)
        pairing = pairing_of(store, labels, sides, src)
        seconds["pair"] = time.perf_counter() - t
        t = time.perf_counter()
        res = analyze(ctx, None, progress, count=False)
        changed, unchanged = classify(res.findings, labels)
        seconds["analyze"] = time.perf_counter() - t
        t = time.perf_counter()
        sections = build_sections(store, labels, sides, pairing, tokenizer, ctx)
        seconds["sections"] = time.perf_counter() - t
    return DiffResult(labels, changed, unchanged, pairing, sections, sides, res.failed, seconds)
