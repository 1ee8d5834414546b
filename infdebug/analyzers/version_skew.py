"""Build skew (analyzer ``version_skew``, kind ``replica.version_skew``): replicas of one model
behind one fleet running different engines, engine versions, tokenizers or chat templates.

Each unit's build is the (engine, engine version, tokenizer fingerprint, template
fingerprint) it served its last request of the window with (what it runs now); a field a
unit does not log (empty) is no evidence either way and is not compared.

- Within one deployment (or among replicas with no deployment label) the replicas should be
  identical. Units whose build differs from the deployment's majority build (the build most
  of its units run; ties: more requests, then the build's text) are named. ``warning``
  when the engine or its version differs: a replica left behind by a rollout, or rolled
  ahead of its peers, whose latency and outputs then differ for reasons no comparison
  controls for. ``info`` when only fingerprints differ: ``tokenizer.fingerprint_mismatch`` and
  ``template.fingerprint_mismatch`` judge those, and judge them more severely.
- Across the deployments of a model: builds that differ are ``info``, since that is what a
  canary is for; it is said so that latency and output comparisons between deployments are
  read as comparisons between builds.
- A unit that changed build inside the window (upgraded in place) is ``info``, with the
  time; ``replica.change_point`` ties a latency shift to it when one coincides.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.latency_regression import fmt_clock
from infdebug.schema import Finding
from infdebug.store import q_change as qc
from infdebug.store.q_common import split_unit, unit_label

ANALYZER = "version_skew"
KIND = "replica.version_skew"
BUILD = ("engine", "engine_version", "tokenizer_fp", "template_fp")
ENGINE = ("engine", "engine_version")

Build = tuple[str, str, str, str]


def _build(c: qc.Config) -> Build:
    return (c.engine, c.engine_version, c.tokenizer_fp, c.template_fp)


def _differs(a: Build, b: Build) -> list[str]:
    """The fields where two builds differ (both known)."""
    return [f for f, x, y in zip(BUILD, a, b, strict=True) if x and y and x != y]


def _text(b: Build) -> str:
    engine = " ".join(x for x in b[:2] if x) or "engine ?"
    return f"{engine} (tokenizer {b[2] or '?'}, template {b[3] or '?'})"


def _majority(builds: dict[str, Build], requests: dict[str, int]) -> Build:
    units = Counter(builds.values())
    reqs: Counter[Build] = Counter()
    for u, b in builds.items():
        reqs[b] += requests[u]
    return min(units, key=lambda b: (-units[b], -reqs[b], b))


def _latest(rows: list[qc.Config]) -> qc.Config:
    """The build a unit ran last in the window (the one it runs now)."""
    return max(rows, key=lambda c: (c.t_last, c.requests, _build(c)))


@analyzer(ANALYZER)
def version_skew_analyzer(ctx: AnalysisContext) -> list[Finding]:
    cfgs = ctx.shared(("configs",), lambda: qc.configs(ctx.store, ctx.window()))
    by_model: dict[str, list[qc.Config]] = defaultdict(list)
    for c in cfgs:
        by_model[c.model].append(c)
    out: list[Finding] = []
    for model, cs in sorted(by_model.items()):
        per_unit: dict[str, list[qc.Config]] = defaultdict(list)
        for c in cs:
            per_unit[c.unit].append(c)
        builds = {u: _build(_latest(rows)) for u, rows in per_unit.items()}
        requests = {u: sum(c.requests for c in rows) for u, rows in per_unit.items()}
        first_id = {u: _latest(rows).first_request_id for u, rows in per_unit.items()}
        out.extend(_in_place(model, per_unit))
        deps: dict[str, dict[str, Build]] = defaultdict(dict)
        for u, b in builds.items():
            deps[split_unit(u)[1] or ""][u] = b
        majorities = {}
        for dep, members in sorted(deps.items()):
            major = _majority(members, requests)
            majorities[dep] = major
            f = _within(model, dep, members, major, requests, first_id)
            if f is not None:
                out.append(f)
        f = _across(model, majorities, deps)
        if f is not None:
            out.append(f)
    return out


def _within(
    model: str,
    dep: str,
    members: dict[str, Build],
    major: Build,
    requests: dict[str, int],
    first_id: dict[str, str],
) -> Finding | None:
    odd = sorted(u for u, b in members.items() if _differs(b, major))
    if not odd:
        return None
    fields = sorted({f for u in odd for f in _differs(members[u], major)}, key=BUILD.index)
    severity = "warning" if set(fields) & set(ENGINE) else "info"
    n_major = sum(1 for b in members.values() if not _differs(b, major))
    where = f"deployment {dep}" if dep else "the fleet (no deployment label)"
    why = (
        "a replica left behind by (or ahead of) a rollout: its latency and outputs differ for "
        "reasons no comparison controls for"
        if severity == "warning"
        else "only fingerprints differ (tokenizer.fingerprint_mismatch and "
        "template.fingerprint_mismatch judge those)"
    )
    diffs = "; ".join(
        f"{unit_label(u)} "
        + ", ".join(f"{f} {members[u][BUILD.index(f)]}" for f in _differs(members[u], major))
        for u in odd
    )
    summary = (
        f"{diffs} — while {n_major} of {len(members)} replicas of {where} "
        f"({model or 'unnamed model'}) run "
        + ", ".join(f"{f} {major[BUILD.index(f)]}" for f in fields)
        + f": {why}"
    )
    values: dict[str, Any] = {
        "model": model,
        "deployment": dep or None,
        "fields": fields,
        "majority": dict(zip(BUILD, major, strict=True)),
        "majority_replicas": n_major,
        "replicas": len(members),
        "skewed": {
            unit_label(u): {**dict(zip(BUILD, members[u], strict=True)), "requests": requests[u]}
            for u in odd
        },
    }
    evidence = {"request_ids": [first_id[u] for u in odd], "replicas": [unit_label(u) for u in odd]}
    if len(odd) == 1 and n_major > 1:
        return finding(
            ANALYZER, KIND, severity, summary, unit=odd[0], values=values, evidence=evidence
        )
    return finding(
        ANALYZER, KIND, severity, summary, deployment=dep or None, values=values, evidence=evidence
    )


def _across(
    model: str, majorities: dict[str, Build], deps: dict[str, dict[str, Build]]
) -> Finding | None:
    if len(majorities) < 2:
        return None
    ref = _majority(
        dict(majorities.items()), {d: len(deps[d]) for d in majorities}
    )  # the build most deployments run
    fields = sorted({f for b in majorities.values() for f in _differs(b, ref)}, key=BUILD.index)
    if not fields:
        return None
    summary = (
        f"the deployments of {model or '(unnamed model)'} run different builds: "
        + "; ".join(f"{d or '(none)'} {_text(b)}" for d, b in sorted(majorities.items()))
        + " — expected of a canary; comparisons between deployments compare builds"
    )
    return finding(
        ANALYZER,
        KIND,
        "info",
        summary,
        values={
            "model": model,
            "fields": fields,
            "deployments": {
                d or "(none)": dict(zip(BUILD, b, strict=True)) for d, b in majorities.items()
            },
        },
    )


def _in_place(model: str, per_unit: dict[str, list[qc.Config]]) -> list[Finding]:
    """Units whose build changed inside the window: one info finding each."""
    out = []
    for unit, rows in sorted(per_unit.items()):
        rows = sorted(rows, key=lambda c: (c.t_first, _build(c)))
        steps = [
            (prev, cur, _differs(_build(prev), _build(cur)))
            for prev, cur in zip(rows, rows[1:], strict=False)
        ]
        steps = [s for s in steps if s[2]]
        if not steps:
            continue
        first = steps[0]
        summary = f"{unit_label(unit)} changed build inside the window: " + "; ".join(
            ", ".join(f"{f} {getattr(p, f) or '?'} → {getattr(c, f) or '?'}" for f in fs)
            + f" at {fmt_clock(c.t_first)}"
            for p, c, fs in steps
        )
        out.append(
            finding(
                ANALYZER,
                KIND,
                "info",
                summary,
                unit=unit,
                t_start=first[1].t_first,
                values={
                    "model": model,
                    "changes": [
                        {
                            "t": c.t_first,
                            **{f: {"from": getattr(p, f), "to": getattr(c, f)} for f in fs},
                        }
                        for p, c, fs in steps
                    ],
                },
                evidence={"request_ids": [c.first_request_id for _, c, _ in steps]},
            )
        )
    return out
