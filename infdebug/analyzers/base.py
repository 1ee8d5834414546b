"""The analyzer pipeline: the context, the registry, Finding helpers and the one run.

An analyzer is a function ``(ctx: AnalysisContext) -> list[Finding]`` registered with
``@analyzer("name")``. It asks the store for what it needs only through functions in
``infdebug.store`` (``queries*.py``: SQL lives there), never imports the CLI or the
dashboard, and returns ``infdebug.schema.Finding`` records whose ``evidence`` lets an
engineer act without re-running anything (request IDs, first diverging token with ID and
piece on both sides, first seen, counts).

One registration path: a module of this package that defines an ``@analyzer`` function is
an analyzer; ``discover()`` imports every module of the package (those whose name starts
with ``_`` excepted), and a module that registers nothing (a helper such as
``template_text``) is imported and does nothing. ``analyze(ctx)`` is the one run, used by
``infdebug analyze``, the demo and ``bench/analyze.py`` alike: every registered analyzer (or
the named ones), each timed, one that fails reported beside the others' findings.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from infdebug.schema import Finding
from infdebug.store.base import Store
from infdebug.store.q_common import split_unit
from infdebug.store.q_outputs import count_requests
from infdebug.store.scratch import Scratch

Severity = str  # info | warning | error
T = TypeVar("T")


@dataclass
class AnalysisContext:
    store: Store
    since: float | None = None  # unix seconds, on t_arrival
    until: float | None = None
    replicas: list[str] | None = None  # None: all
    tokenizer: Any = None  # infdebug.text.tokenizer.TokenizerBundle, the reference, when given
    template: str | None = None  # the reference chat template source, when given
    options: dict[str, Any] = field(default_factory=dict)
    # what analyzers of one run share (``run_scope``): results by key, temporary tables
    _shared: dict[Any, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _scratch: Scratch | None = field(default=None, init=False, repr=False, compare=False)

    def window(self) -> dict[str, Any]:
        """Bound parameters every analysis query takes (see store.queries_analysis)."""
        return {
            "since": self.since if self.since is not None else 0.0,
            "until": self.until if self.until is not None else 1e11,
            "replicas": list(self.replicas or []),
        }

    @contextmanager
    def run_scope(self) -> Iterator[None]:
        """One run of several analyzers over a store that does not change meanwhile: inside
        it ``shared`` computes a result once for all of them and ``scratch`` holds their
        temporary tables (dropped on leaving). Outside it each call computes afresh."""
        if self._shared is not None:  # nested: the outer run owns them
            yield
            return
        self._shared, self._scratch = {}, Scratch(self.store)
        try:
            yield
        finally:
            scratch, self._shared, self._scratch = self._scratch, None, None
            scratch.close()

    def shared(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        """``compute()``, once per run for ``key`` and the window (the key must name what
        else the result depends on besides the store: options, parameters)."""
        if self._shared is None:
            return compute()
        w = self.window()
        full = (*key, w["since"], w["until"], tuple(w["replicas"]))
        if full not in self._shared:
            self._shared[full] = compute()
        return cast(T, self._shared[full])

    @property
    def scratch(self) -> Scratch | None:
        """The run's temporary tables (None outside ``run_scope``)."""
        return self._scratch


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
PACKAGE = __name__.rpartition(".")[0]  # infdebug.analyzers


# --- discovery -------------------------------------------------------------------------------


def discover() -> dict[str, str]:
    """Import every module of ``infdebug.analyzers`` (importing registers its analyzers);
    returns the modules that failed to import (``"module NAME"`` → error). Modules already
    imported cost a ``sys.modules`` lookup, so calling it again is cheap and finds a module
    added since."""
    pkg = importlib.import_module(PACKAGE)
    broken: dict[str, str] = {}
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{PACKAGE}.{mod.name}")
        except Exception as e:  # one broken module must not hide the others' findings
            broken[f"module {mod.name}"] = f"{type(e).__name__}: {e}"
    return broken


def analyzer_names() -> list[str]:
    """Every analyzer there is (after ``discover()``), sorted."""
    discover()
    return sorted(ANALYZERS)


# --- the run ---------------------------------------------------------------------------------


@dataclass
class AnalysisResult:
    """What one ``analyze`` did: the findings (most severe first), the analyzers that ran,
    each one's wall seconds, what failed (analyzer name, or ``"module NAME"`` for a module
    that did not import → error) and, when counted, the requests in the window."""

    findings: list[Finding]
    ran: list[str]
    seconds: dict[str, float]
    failed: dict[str, str]
    requests: int | None = None

    @property
    def all_failed(self) -> bool:
        """Nothing ran, or every analyzer that ran failed."""
        return not self.ran or all(n in self.failed for n in self.ran)


def analyze(
    ctx: AnalysisContext,
    names: list[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    count: bool = True,
) -> AnalysisResult:
    """Run every registered analyzer (or those in ``names``; unknown names run nothing) over
    ``ctx``. An analyzer that raises is reported in ``failed`` and never stops the others.
    ``progress(name, i, n)`` is called before each. With ``count`` the requests in ``ctx``'s
    window are counted (``result.requests``; a StoreError there propagates)."""
    broken = discover()
    todo = [(name, fn) for name, fn in sorted(ANALYZERS.items()) if not names or name in names]
    out: list[Finding] = []
    failed: dict[str, str] = {}
    seconds: dict[str, float] = {}
    with ctx.run_scope():
        for i, (name, fn) in enumerate(todo):
            if progress is not None:
                progress(name, i, len(todo))
            t = time.perf_counter()
            try:
                out.extend(fn(ctx))
            except Exception as e:  # one analyzer's bug must not hide the others' findings
                failed[name] = f"{type(e).__name__}: {e}"
            seconds[name] = time.perf_counter() - t
    failed.update(broken)
    out.sort(
        key=lambda f: (
            SEVERITY_ORDER.get(f.severity, 3),
            f.kind,
            str((f.scope or {}).get("replica")),
        )
    )
    n_requests = count_requests(ctx.store, ctx.window()) if count else None
    return AnalysisResult(out, [name for name, _ in todo], seconds, failed, n_requests)


def run_all(
    ctx: AnalysisContext,
    names: list[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[Finding], dict[str, str]]:
    """``analyze`` without the request count, as ``(findings, failed)``."""
    res = analyze(ctx, names, progress, count=False)
    return res.findings, res.failed
