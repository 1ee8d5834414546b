"""The Finding pipeline: analyzers are pure functions from store query results to Findings.

An analyzer is a function ``(ctx: AnalysisContext) -> list[Finding]`` registered with
``@analyzer("name")``. It asks the store for what it needs only through functions in
``infdebug.store`` (``queries*.py``: SQL lives there), never imports the CLI or the
dashboard, and returns ``infdebug.schema.Finding`` records whose ``evidence`` lets an
engineer act without re-running anything (request IDs, first diverging token with ID and
piece on both sides, first seen, counts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infdebug.schema import Finding
from infdebug.store.base import Store
from infdebug.store.q_common import split_unit

Severity = str  # info | warning | error


@dataclass
class AnalysisContext:
    store: Store
    since: float | None = None  # unix seconds, on t_arrival
    until: float | None = None
    replicas: list[str] | None = None  # None: all
    tokenizer: Any = None  # infdebug.text.tokenizer.TokenizerBundle, the reference, when given
    template: str | None = None  # the reference chat template source, when given
    options: dict[str, Any] = field(default_factory=dict)

    def window(self) -> dict[str, Any]:
        """Bound parameters every analysis query takes (see store.queries_analysis)."""
        return {
            "since": self.since if self.since is not None else 0.0,
            "until": self.until if self.until is not None else 1e11,
            "replicas": list(self.replicas or []),
        }


AnalyzerFn = Callable[[AnalysisContext], list[Finding]]
ANALYZERS: dict[str, AnalyzerFn] = {}


def analyzer(name: str) -> Callable[[AnalyzerFn], AnalyzerFn]:
    """Register an analyzer under ``name`` (the ``analyzer`` field of its findings)."""

    def deco(fn: AnalyzerFn) -> AnalyzerFn:
        if name in ANALYZERS and ANALYZERS[name] is not fn:
            raise ValueError(f"analyzer {name!r} registered twice")
        ANALYZERS[name] = fn
        return fn

    return deco


def finding(
    analyzer_name: str,
    kind: str,
    severity: Severity,
    summary: str,
    *,
    unit: str | None = None,
    replica: str | None = None,
    deployment: str | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    values: dict[str, Any] | None = None,
    evidence: dict[str, Any] | None = None,
) -> Finding:
    """A Finding with its scope filled in the contract's shape. ``unit`` (a
    ``store.q_common.UNIT`` value) sets both ``replica`` and ``deployment``."""
    if unit is not None:
        replica, deployment = split_unit(unit)
    scope: dict[str, Any] = {}
    if replica is not None:
        scope["replica"] = replica
    if deployment is not None:
        scope["deployment"] = deployment
    if t_start is not None:
        scope["t_start"] = t_start
    if t_end is not None:
        scope["t_end"] = t_end
    return Finding(
        kind=kind,
        analyzer=analyzer_name,
        severity=severity,  # type: ignore[arg-type]
        summary=summary,
        scope=scope or None,
        values=values,
        evidence=evidence,
        t=time.time(),
    )


SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def run_all(
    ctx: AnalysisContext,
    names: list[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[Finding], dict[str, str]]:
    """Run every registered analyzer (or ``names``); an analyzer that fails is reported in
    the second value (name → error) and never stops the others. ``progress(name, i, n)`` is
    called before each."""
    from infdebug import analyzers as _pkg  # noqa: F401 - importing registers them

    out: list[Finding] = []
    failed: dict[str, str] = {}
    todo = [(name, fn) for name, fn in sorted(ANALYZERS.items()) if not names or name in names]
    for i, (name, fn) in enumerate(todo):
        if progress is not None:
            progress(name, i, len(todo))
        try:
            out.extend(fn(ctx))
        except Exception as e:  # one analyzer's bug must not hide the others' findings
            failed[name] = f"{type(e).__name__}: {e}"
    out.sort(key=lambda f: (SEVERITY_ORDER.get(f.severity, 3), f.kind, str((f.scope or {}).get("replica"))))
    return out, failed
