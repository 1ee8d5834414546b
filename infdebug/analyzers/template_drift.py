"""Chat-template drift: the model is fed a differently rendered prompt than it was trained on.

Kinds (analyzer ``template``):

- ``template.double_bos`` / ``template.missing_bos`` — from prompt token IDs alone, once the
  BOS ID is known (reference tokenizer, ``options["bos_id"]``, or inferred from the fleet).
- ``template.render_mismatch`` — the reference template renders the logged messages into
  other text than the engine used; classified, with a diff at the level of template markers.
- ``template.fingerprint_mismatch`` — one model served with different template fingerprints.
- ``template.new_skeleton`` — without any reference: a replica (or a whole deployment) whose
  prompt skeleton (message contents masked, special tokens and fixed template text kept) is
  new to the rest of the fleet (other deployments), compared within families of the same
  message-role sequence so conversation shape is not drift; a skeleton counts as new from
  10 % of a family's prompts, so a template changed mid-window is caught too.

The unit everywhere is a replica within a deployment: replica names are reused across
deployments (``r3`` of ``baseline`` and ``r3`` of ``canary`` are different pods).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.template_bos import (
    ERROR_SHARE,
    EXAMPLES,
    NAME,
    Unit,
    bos_findings,
    served_model,
    unit_name,
)
from infdebug.analyzers.template_text import (
    content_text,
    family_of,
    marker_diff,
    short,
    skeleton,
    skeleton_of_markers,
    uses_tools,
)
from infdebug.schema import Finding
from infdebug.store import q_template
from infdebug.store.q_template import PromptRow
from infdebug.text.template import ChatTemplateError, fixed_now, render_chat

RARE_SHARE = 0.01  # a skeleton below this share elsewhere is "new"
FAMILY_SEP = "\x1f"  # family key: model, separator, role sequence
NEW_SHARE = 0.10  # … when it is at least this share of one family's prompts here
NEW_MIN = 3  # … and at least this many of them
LEADING_BOS = ("<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>", "<｜begin▁of▁sentence｜>")


# --- render mismatch ------------------------------------------------------------------------


def classify_mismatch(
    logged: str, reference: str, reference_no_gen: str | None, messages: list[dict[str, Any]]
) -> str:
    """Why the logged prompt differs from the reference rendering (one of the class names)."""
    if re.sub(r"\s+", "", logged) == re.sub(r"\s+", "", reference):
        return "whitespace"
    if reference_no_gen is not None and logged.rstrip() == reference_no_gen.rstrip():
        return "missing_generation_prompt"
    for m in messages:
        if m.get("role") == "system":
            content = content_text(m.get("content")).strip()
            if content and content in reference and content not in logged:
                return "system_dropped"
    diff = marker_diff(logged, reference)
    if uses_tools(messages) or re.search(
        r"tool|function|ipython", f"{diff['logged']}{diff['reference']}", re.I
    ):
        return "tools"
    if skeleton_of_markers(logged) != skeleton_of_markers(reference):
        return "role_marker"
    return "other"


def _reference_render(ctx: AnalysisContext, row: PromptRow, logged: str, gen: bool) -> str:
    assert ctx.template is not None
    tok = ctx.tokenizer
    bos = getattr(tok, "bos_token", None) if tok is not None else ctx.options.get("bos_token")
    eos = getattr(tok, "eos_token", None) if tok is not None else ctx.options.get("eos_token")
    if bos is None:  # no tokenizer: take the BOS text the logged prompt starts with, if any
        bos = next((b for b in LEADING_BOS if logged.startswith(b)), "")
    with fixed_now(datetime.fromtimestamp(row.t_arrival)):
        return render_chat(
            ctx.template,
            row.messages or [],
            add_generation_prompt=gen,
            bos_token=bos,
            eos_token=eos or "",
        )


def _render_findings(ctx: AnalysisContext) -> list[Finding]:
    if not ctx.template:
        return []
    cap = int(ctx.options.get("template_sample", 200))
    rows = q_template.prompt_sample(
        ctx.store,
        ctx.window(),
        cap,
        need_messages=True,
        model=served_model(ctx),
        ids_without_text=True,
    )
    population = q_template.replica_request_counts(ctx.store, ctx.window())
    checked: Counter[Unit] = Counter()
    failed: Counter[Unit] = Counter()
    bad: dict[Unit, list[tuple[PromptRow, str, dict[str, Any]]]] = defaultdict(list)
    for row in rows:
        unit = (row.replica, row.deployment)
        logged = row.prompt_text
        if logged is None and row.prompt_ids and ctx.tokenizer is not None:
            logged = ctx.tokenizer.decode(row.prompt_ids)
        if logged is None or not row.messages:
            continue
        try:
            ref = _reference_render(ctx, row, logged, True)
        except ChatTemplateError:
            failed[unit] += 1
            continue
        checked[unit] += 1
        if ref == logged:
            continue
        try:
            ref_no_gen: str | None = _reference_render(ctx, row, logged, False)
        except ChatTemplateError:
            ref_no_gen = None
        cls = classify_mismatch(logged, ref, ref_no_gen, row.messages)
        bad[unit].append((row, cls, marker_diff(logged, ref)))
    out: list[Finding] = []
    # one finding per replica (one template change shows several classes across conversation
    # shapes): the most common class names it, each class keeps its first example's diff
    for unit, items in sorted(bad.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        items.sort(key=lambda it: (it[0].t_arrival, it[0].request_id))
        classes = Counter(cls for _, cls, _ in items)
        main = min(classes, key=lambda c: (-classes[c], c))
        first_of: dict[str, dict[str, Any]] = {}
        for row, cls, diff in items:
            first_of.setdefault(cls, {"request_id": row.request_id, "diff": diff})
        share = len(items) / checked[unit]
        out.append(
            finding(
                NAME,
                "template.render_mismatch",
                "error" if share >= ERROR_SHARE else "warning",
                f"{len(items)} of {checked[unit]} sampled prompts on {unit_name(unit)} "
                f"({share:.1%}) differ from "
                f"the reference template's rendering: {main}"
                + (
                    f" (also {', '.join(c for c in sorted(classes) if c != main)})"
                    if len(classes) > 1
                    else ""
                ),
                replica=unit[0],
                deployment=unit[1],
                t_start=items[0][0].t_arrival,
                values={
                    "class": main,
                    "classes": dict(sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))),
                    "checked": checked[unit],
                    "mismatched": len(items),
                    "share": round(share, 4),
                    "render_failed": failed[unit],
                    "sample_cap_per_replica": cap,
                    "requests_in_window": population.get(unit),
                },
                evidence={
                    "request_ids": [it[0].request_id for it in items[:EXAMPLES]],
                    "first_seen": items[0][0].t_arrival,
                    "diff": first_of[main]["diff"],
                    "diff_by_class": first_of,
                    "sampled": f"up to {cap} requests per replica, chosen by request-ID hash",
                },
            )
        )
    return out


# --- fingerprint mismatch -------------------------------------------------------------------


def _fingerprint_findings(ctx: AnalysisContext) -> list[Finding]:
    uses = q_template.template_fp_uses(ctx.store, ctx.window())
    by_model: dict[str, list[q_template.TemplateFpUse]] = defaultdict(list)
    for u in uses:
        by_model[u.model].append(u)
    out: list[Finding] = []
    for model, us in sorted(by_model.items()):
        per_fp: Counter[str] = Counter()
        for u in us:
            per_fp[u.template_fp] += u.n
        if len(per_fp) < 2:
            continue
        majority = sorted(per_fp.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        fleet = {
            fp: {
                "requests": n,
                "replicas": sorted(
                    {
                        unit_name((u.replica, u.deployment or None))
                        for u in us
                        if u.template_fp == fp
                    }
                ),
            }
            for fp, n in per_fp.items()
        }
        for u in us:
            if u.template_fp == majority:
                continue
            unit = (u.replica, u.deployment or None)
            out.append(
                finding(
                    NAME,
                    "template.fingerprint_mismatch",
                    "warning",
                    f"{unit_name(unit)} serves model {model or '(unnamed)'} with chat template "
                    f"{u.template_fp} "
                    f"on {u.n} requests; the fleet's most used is {majority}",
                    replica=u.replica,
                    deployment=u.deployment or None,
                    t_start=u.first_seen,
                    t_end=u.last_seen,
                    values={
                        "model": model,
                        "template_fp": u.template_fp,
                        "fleet_template_fp": majority,
                        "requests": u.n,
                        "distinct_fingerprints": len(per_fp),
                    },
                    evidence={
                        "request_ids": u.request_ids,
                        "first_seen": u.first_seen,
                        "fingerprints": fleet,
                    },
                )
            )
    return out


@dataclass
class _Seen:
    n: int = 0
    first_seen: float = float("inf")
    earliest: list[tuple[float, str]] = field(default_factory=list)  # (arrival, request ID)

    def add(self, t: float, request_id: str) -> None:
        self.n += 1
        self.first_seen = min(self.first_seen, t)
        self.earliest.append((t, request_id))
        if len(self.earliest) > 8 * EXAMPLES:
            self.earliest = sorted(self.earliest)[:EXAMPLES]

    @property
    def request_ids(self) -> list[str]:
        """The earliest few (not the first read: the choice must not depend on row order)."""
        return [r for _, r in sorted(self.earliest)[:EXAMPLES]]


def _rare_skeletons(
    dist: dict[Any, dict[str, dict[str, _Seen]]], min_n: int
) -> dict[Any, list[dict[str, Any]]]:
    """For each key of ``dist`` (key -> family -> skeleton -> seen): the skeletons that make
    up a real part of one of its families (≥ NEW_SHARE and ≥ NEW_MIN requests) while the
    other keys' prompts of that family almost never use them (< RARE_SHARE)."""
    # the family's established skeleton: most requests, then seen first, then by its text
    # (never by a replica's name, so renaming replicas changes nothing); it is never "new"
    established: dict[str, str] = {}
    totals: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for fams in dist.values():
        for fam, sks in fams.items():
            for sk, seen in sks.items():
                n_first = totals[fam].setdefault(sk, [0.0, float("inf")])
                n_first[0] += seen.n
                n_first[1] = min(n_first[1], seen.first_seen)
    for fam, sks_total in totals.items():
        established[fam] = min(sks_total, key=lambda sk: (-sks_total[sk][0], sks_total[sk][1], sk))
    out: dict[Any, list[dict[str, Any]]] = {}
    for key, fams in dist.items():
        flagged: list[dict[str, Any]] = []
        for fam, sks in fams.items():
            n_fam = sum(s.n for s in sks.values())
            if n_fam < min_n:
                continue
            rest: Counter[str] = Counter()
            for other, ofams in dist.items():
                if other != key:
                    for sk, s in ofams.get(fam, {}).items():
                        rest[sk] += s.n
            n_rest = sum(rest.values())
            if n_rest < min_n:
                continue  # nothing to compare with
            for sk, seen in sorted(sks.items(), key=lambda kv: (-kv[1].n, kv[0])):
                if sk == established[fam] or seen.n < NEW_MIN or seen.n / n_fam < NEW_SHARE:
                    continue
                if rest[sk] / n_rest >= RARE_SHARE:
                    continue
                fleet_sk = min(rest, key=lambda x: (-rest[x], x))
                flagged.append(
                    {
                        "family": fam,
                        "skeleton": sk,
                        "seen": seen,
                        "n_family": n_fam,
                        "n_rest": n_rest,
                        "share_rest": rest[sk] / n_rest,
                        "fleet_skeleton": fleet_sk,
                        "fleet_count": rest[fleet_sk],
                    }
                )
                break  # the most used new skeleton of the family speaks for it
        if flagged:
            out[key] = sorted(flagged, key=lambda f: (-f["seen"].n, f["family"]))
    return out


def _skeleton_finding(
    flagged: list[dict[str, Any]],
    cap: int,
    *,
    who: str,
    elsewhere: str,
    unit: Unit | None,
    deployment: str | None,
) -> Finding:
    top = flagged[0]
    seen: _Seen = top["seen"]
    model, _, roles = top["family"].partition(FAMILY_SEP)
    of_model = f" of model {model}" if model else ""
    return finding(
        NAME,
        "template.new_skeleton",
        "warning",
        f"{who} renders prompts with a template skeleton {elsewhere} does not use "
        f"({seen.n} of {top['n_family']} sampled '{roles}' prompts{of_model}; "
        f"{top['share_rest']:.1%} of {top['n_rest']} elsewhere)",
        replica=unit[0] if unit else None,
        deployment=unit[1] if unit else deployment,
        t_start=seen.first_seen,
        values={
            "families_affected": [f["family"].partition(FAMILY_SEP)[2] for f in flagged],
            "model": model or None,
            "requests": seen.n,
            "family_requests": top["n_family"],
            "share_elsewhere": round(top["share_rest"], 4),
            "fleet_family_requests": top["n_rest"],
            "sample_cap_per_replica": cap,
        },
        evidence={
            "request_ids": seen.request_ids,
            "first_seen": seen.first_seen,
            "family": roles,
            "skeleton": short(top["skeleton"], 400),
            "fleet_skeleton": short(top["fleet_skeleton"], 400),
            "fleet_skeleton_requests": top["fleet_count"],
            "diff": marker_diff(top["skeleton"], top["fleet_skeleton"]),
            "diff_sides": f"logged = {who}'s skeleton, reference = the one {elsewhere} uses most",
        },
    )


def _whole_deployment(
    dist: dict[Unit, dict[str, dict[str, _Seen]]], dep: str | None, flag: dict[str, Any]
) -> bool:
    """Every replica of ``dep`` that served the flagged family uses its new skeleton
    (≥ NEW_SHARE)."""
    fam, sk = flag["family"], flag["skeleton"]
    shares = []
    for unit, fams in dist.items():
        if unit[1] == dep and fam in fams:
            n_fam = sum(x.n for x in fams[fam].values())
            shares.append(fams[fam][sk].n / n_fam if sk in fams[fam] else 0.0)
    return bool(shares) and min(shares) >= NEW_SHARE


def _skeleton_findings(ctx: AnalysisContext) -> list[Finding]:
    cap = int(ctx.options.get("template_sample", 2000))
    min_n = int(ctx.options.get("template_min_requests", 10))
    rows = q_template.prompt_sample(ctx.store, ctx.window(), cap, ids_without_text=True)
    # unit -> family -> skeleton -> seen, and the same per deployment
    dist: dict[Unit, dict[str, dict[str, _Seen]]] = defaultdict(lambda: defaultdict(dict))
    by_dep: dict[str | None, dict[str, dict[str, _Seen]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        text = row.prompt_text
        if text is None and row.prompt_ids and ctx.tokenizer is not None:
            text = ctx.tokenizer.decode(row.prompt_ids)
        if text is None:
            continue
        # a family is one model's conversations of one role sequence: two models are two templates
        fam = f"{row.model or ''}{FAMILY_SEP}{family_of(row.messages)}"
        sk = skeleton(text, row.messages)
        dist[(row.replica, row.deployment)][fam].setdefault(sk, _Seen()).add(
            row.t_arrival, row.request_id
        )
        by_dep[row.deployment][fam].setdefault(sk, _Seen()).add(row.t_arrival, row.request_id)
    out: list[Finding] = []
    # A whole deployment on a new template (a canary rolled out with the hub's new revision):
    # its replicas agree with each other, so only the deployment-level comparison sees it.
    # It is the deployment's only when every replica of it that served the family uses the
    # new skeleton; one replica of several is named on its own (below).
    dep_flags: dict[str | None, list[dict[str, Any]]] = {}
    for dep, flagged in (_rare_skeletons(by_dep, min_n) if len(by_dep) > 1 else {}).items():
        whole = [f for f in flagged if _whole_deployment(dist, dep, f)]
        if whole:
            dep_flags[dep] = whole
    for dep, flagged in sorted(dep_flags.items(), key=lambda kv: str(kv[0])):
        units = sorted(u for u in dist if u[1] == dep)
        only = units[0] if len(units) == 1 else None
        who = f"deployment {dep}" if dep is not None else "the replicas without a deployment label"
        out.append(
            _skeleton_finding(
                flagged,
                cap,
                who=who + (f" ({only[0]})" if only else ""),
                elsewhere="any other deployment",
                unit=only,
                deployment=dep,
            )
        )
    for unit, flagged in sorted(
        _rare_skeletons(dist, min_n).items(), key=lambda kv: (kv[0][0], str(kv[0][1]))
    ):
        if unit[1] in dep_flags:
            continue  # its deployment's finding names it
        out.append(
            _skeleton_finding(
                flagged,
                cap,
                who=unit_name(unit),
                elsewhere="the rest of the fleet",
                unit=unit,
                deployment=None,
            )
        )
    return out


def _all(parts: Iterable[list[Finding]]) -> list[Finding]:
    return [f for p in parts for f in p]


@analyzer(NAME)
def template_drift(ctx: AnalysisContext) -> list[Finding]:
    """Every ``template.*`` check over the context's window."""
    return _all(
        (
            bos_findings(ctx),
            _render_findings(ctx),
            _fingerprint_findings(ctx),
            _skeleton_findings(ctx),
        )
    )
