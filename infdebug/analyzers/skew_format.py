"""Train-serve skew in the prompt's format: ``skew.template`` and ``skew.special_tokens``
(see ``skew.py`` for the reference, the deployment as unit, and ``ALPHA``).

- ``skew.template``: the served prompts' skeletons (message contents masked, special tokens
  and fixed template text kept, the clock's date normalised: ``template_text.skeleton``)
  against the skeletons of the reference's prompts, within families of the same
  message-role sequence (so a workload with more multi-turn chats is not a template
  change). Served prompts of a family the reference has none of are not compared (their
  share is in the finding). A served prompt whose skeleton the reference never produces
  for its family is new; a finding when new ones are ≥ ``NEW_SHARE`` of the compared prompts
  and at least ``NEW_MIN``: a warning, an error from ``ERROR_SHARE``. Reference lines of
  token IDs alone (decoded with the reference tokenizer) and served prompts logged without
  messages are compared by the skeleton that markers alone give. When the reference's lines
  carry ``template_fp`` and the skeletons match, served fingerprints the reference never had
  are an info finding.
- ``skew.special_tokens`` (needs the reference tokenizer): for each special token, the share
  of served prompts that hold it against the reference's share (two-sided Fisher exact,
  Holm across every deployment × token tested, an effect of at least ``MIN_SHARE_DIFF``);
  and prompts that start with the BOS twice, or (where the reference's do) without it. A
  warning for a doubled BOS, a structural token missing (in ≥ 95 % of reference prompts),
  or one the reference never holds (≤ 0.5 %) in ≥ 1 % of served prompts; otherwise info (a
  tool-call token in more prompts than the reference had is a workload difference as much
  as a format one). The replicas that carry a difference are named; a finding carried by
  one replica alone is scoped to it.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

from infdebug.analyzers.base import AnalysisContext, analyzer, finding
from infdebug.analyzers.output_drift import holm, piece
from infdebug.analyzers.skew import (
    ALPHA,
    MIN_SAMPLE,
    dep_label,
    ref_values,
    reference,
    served_model,
)
from infdebug.analyzers.skew_stats import fisher_two_sided
from infdebug.analyzers.template_text import family_of, marker_diff, short, skeleton
from infdebug.schema import Finding
from infdebug.store import q_skew as q
from infdebug.store.q_common import split_unit, unit_label

TEMPLATE_SAMPLE = 300  # served prompts per deployment whose skeletons are compared
NEW_SHARE = 0.10
NEW_MIN = 5
ERROR_SHARE = 0.5
SPECIAL_SAMPLE = 5_000  # served prompts per deployment whose special tokens are counted
MIN_SHARE_DIFF = 0.05
STRUCTURAL = 0.95  # a token in this share of reference prompts is part of the format
UNSEEN = 0.005  # … in at most this share, the reference does not use it
UNSEEN_SERVED = 0.01
EXAMPLES = 5
NO_FAMILY = "?"


# --- skew.template --------------------------------------------------------------------------


def _messages(raw: str | None) -> list[dict[str, Any]] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else None


@analyzer("skew.template")
def skew_template(ctx: AnalysisContext) -> list[Finding]:
    got = reference(ctx)
    if got is None:
        return []
    ref, prep = got
    by_family: dict[str, Counter[str]] = defaultdict(Counter)
    masked: Counter[str] = Counter()
    for fam, sk, mk in zip(prep.families, prep.skeletons, prep.masked, strict=True):
        if sk is not None and fam != NO_FAMILY:
            by_family[fam][sk] += 1
        if mk is not None:
            masked[mk] += 1
    if not by_family and not masked:
        return []
    rows = q.prompt_sample(ctx.store, ctx.window(), served_model(ctx), TEMPLATE_SAMPLE)
    deps: dict[str, list[tuple[q.PromptRow, str, str, bool]]] = defaultdict(list)
    uncompared: Counter[str] = Counter()
    for r in rows:
        text = r.prompt_text
        if text is None and r.prompt_ids and ctx.tokenizer is not None:
            text = ctx.tokenizer.decode(r.prompt_ids, skip_special_tokens=False)
        if text is None:
            continue
        msgs = _messages(r.messages)
        fam = family_of(msgs) if msgs else NO_FAMILY
        if msgs and fam in by_family:
            sk = skeleton(text, msgs)
            deps[r.deployment].append((r, fam, sk, sk not in by_family[fam]))
        elif masked:
            sk = skeleton(text, None)
            deps[r.deployment].append((r, NO_FAMILY, sk, sk not in masked))
        else:
            uncompared[r.deployment] += 1
    ref_fps = set(prep.template_fps)
    out: list[Finding] = []
    for dep in sorted(set(deps) | set(uncompared)):
        got_rows = deps.get(dep, [])
        n = len(got_rows)
        new = [x for x in got_rows if x[3]]
        base: dict[str, Any] = {
            "compared": n,
            "uncompared_no_family_in_reference": uncompared.get(dep, 0),
            "reference": ref_values(ref, prep),
            "thresholds": {"new_share": NEW_SHARE, "new_min": NEW_MIN, "error_share": ERROR_SHARE},
        }
        fps = Counter(r.template_fp for r, *_ in got_rows if r.template_fp)
        new_fps = sorted(fp for fp in fps if ref_fps and fp not in ref_fps)
        if n and len(new) >= NEW_MIN and len(new) / n >= NEW_SHARE:
            out.append(_new_skeleton(ctx, dep, got_rows, new, by_family, masked, base, new_fps))
        elif new_fps and sum(fps[f] for f in new_fps) / max(1, sum(fps.values())) >= NEW_SHARE:
            out.append(
                finding(
                    "skew.template",
                    "skew.template",
                    "info",
                    f"{dep_label(dep)}: served with chat-template fingerprint(s) "
                    f"{', '.join(new_fps[:3])} the reference never had; the rendered skeletons "
                    "match the reference's",
                    deployment=dep or None,
                    values={**base, "new_template_fps": new_fps, "reference_fps": sorted(ref_fps)},
                    evidence={
                        "request_ids": [
                            r.request_id for r, *_ in got_rows if r.template_fp in new_fps
                        ][:EXAMPLES]
                    },
                )
            )
    return out


def _new_skeleton(
    ctx: AnalysisContext,
    dep: str,
    rows: list[tuple[q.PromptRow, str, str, bool]],
    new: list[tuple[q.PromptRow, str, str, bool]],
    by_family: dict[str, Counter[str]],
    masked: Counter[str],
    base: dict[str, Any],
    new_fps: list[str],
) -> Finding:
    share = len(new) / len(rows)
    top_sk, top_n = Counter((fam, sk) for _, fam, sk, _ in new).most_common(1)[0]
    fam, sk = top_sk
    ref_pool = by_family[fam] if fam != NO_FAMILY else masked
    nearest = ref_pool.most_common(1)[0][0]
    diff = marker_diff(sk, nearest)
    examples = sorted((r for r, f, s, _ in new if (f, s) == top_sk), key=lambda r: r.t_arrival)
    units = Counter(r.unit for r, *_ in new)
    all_units = Counter(r.unit for r, *_ in rows)
    carried = sorted(u for u in units if units[u] / all_units[u] >= NEW_SHARE)
    scope = carried[0] if len(carried) == 1 and len(all_units) > 1 else None
    fam_txt = f"family [{fam}]" if fam != NO_FAMILY else "prompts without messages"
    return finding(
        "skew.template",
        "skew.template",
        "error" if share >= ERROR_SHARE else "warning",
        f"{dep_label(dep)}: {len(new)} of {len(rows)} served prompts ({share:.0%}) have a "
        "template skeleton the reference never produces for their message shape; first "
        f"difference after {diff['after_marker'] or 'the start'}: served "
        f"{diff['logged']!r} vs reference {diff['reference']!r}",
        unit=scope,
        deployment=None if scope else (dep or None),
        values={
            **base,
            "new": len(new),
            "share": round(share, 4),
            "skeletons_new": len({(f, s) for _, f, s, _ in new}),
            "top_family": fam,
            "top_count": top_n,
            "replicas": sorted(unit_label(u) for u in carried),
            "new_template_fps": new_fps,
        },
        evidence={
            "request_ids": [r.request_id for r in examples[:EXAMPLES]],
            "first_seen": examples[0].t_arrival if examples else None,
            "family": fam_txt,
            "served_skeleton": short(sk, 600),
            "reference_skeleton": short(nearest, 600),
            "diff": diff,
        },
    )


# --- skew.special_tokens --------------------------------------------------------------------


def special_ids(tok: Any) -> set[int]:
    """The reference tokenizer's special tokens: added tokens marked special, BOS, EOS."""
    ids = {int(i) for i in (getattr(tok, "eos_ids", None) or [])}
    if getattr(tok, "bos_id", None) is not None:
        ids.add(int(tok.bos_id))
    inner = getattr(tok, "tok", None)
    try:
        decoder = inner.get_added_tokens_decoder() if inner is not None else {}
    except Exception:  # an old tokenizers without it: BOS and EOS only
        decoder = {}
    ids.update(int(i) for i, t in decoder.items() if getattr(t, "special", False))
    return ids


@analyzer("skew.special_tokens")
def skew_special_tokens(ctx: AnalysisContext) -> list[Finding]:
    got = reference(ctx)
    tok = ctx.tokenizer
    if got is None or tok is None:
        return []
    ref, prep = got
    seqs = prep.id_seqs
    if len(seqs) < MIN_SAMPLE:
        return []
    specials = special_ids(tok)
    bos = getattr(tok, "bos_id", None)
    n_r = len(seqs)
    key = f"specials:{bos}:{hash(frozenset(specials))}"
    if key not in prep.cache:
        prep.cache[key] = (
            Counter(t for s in seqs for t in set(s) if t in specials),
            sum(1 for s in seqs if bos is not None and s[:2] == [bos, bos]),
            sum(1 for s in seqs if bos is not None and s[:1] != [bos]),
        )
    ref_present, ref_double, ref_missing = prep.cache[key]
    units = q.special_counts(
        ctx.store, ctx.window(), served_model(ctx), sorted(specials), bos, SPECIAL_SAMPLE
    )
    by_dep: dict[str, list[q.SpecialCounts]] = defaultdict(list)
    for u in units:
        by_dep[split_unit(u.unit)[1] or ""].append(u)
    # (dep, what, token id, served k, served n, reference k)
    tests: list[tuple[str, str, int, int, int, int]] = []
    for dep, us in sorted(by_dep.items()):
        n_s = sum(u.requests for u in us)
        if n_s < MIN_SAMPLE:
            continue
        present: Counter[int] = Counter()
        for u in us:
            present.update(u.present)
        for tid in sorted(set(present) | set(ref_present)):
            tests.append((dep, "present", tid, present.get(tid, 0), n_s, ref_present.get(tid, 0)))
        if bos is not None:
            tests.append((dep, "double_bos", bos, sum(u.double_bos for u in us), n_s, ref_double))
            if ref_missing / n_r <= 1 - STRUCTURAL:
                tests.append(
                    (dep, "missing_bos", bos, sum(u.missing_bos for u in us), n_s, ref_missing)
                )
    adj = holm([fisher_two_sided(k, n, kr, n_r) for _, _, _, k, n, kr in tests])
    out: list[Finding] = []
    for (dep, what, tid, k, n, kr), p_holm in zip(tests, adj, strict=True):
        s, r = k / n, kr / n_r
        if p_holm >= ALPHA or (what == "present" and abs(s - r) < MIN_SHARE_DIFF):
            continue
        if what != "present" and s - r < UNSEEN_SERVED:
            continue
        out.append(_special(ctx, dep, by_dep[dep], what, tid, k, n, kr, n_r, p_holm, ref, prep))
    return out


def _special(
    ctx: AnalysisContext,
    dep: str,
    units: list[q.SpecialCounts],
    what: str,
    tid: int | None,
    k: int,
    n: int,
    kr: int,
    n_r: int,
    p_holm: float,
    ref: Any,
    prep: Any,
) -> Finding:
    s, r = k / n, kr / n_r
    pc = piece(ctx, tid) if tid is not None else None
    name = f"{tid}" + (f" {pc!r}" if pc else "")

    def count(u: q.SpecialCounts) -> int:
        if what == "double_bos":
            return u.double_bos
        if what == "missing_bos":
            return u.missing_bos
        return u.present.get(tid or 0, 0)

    def ids(u: q.SpecialCounts) -> list[str]:
        if what == "double_bos":
            return u.double_bos_ids
        if what == "missing_bos":
            return u.missing_bos_ids
        return u.present_ids.get(tid or 0, [])

    shares = {unit_label(u.unit): round(count(u) / u.requests, 4) for u in units if u.requests}
    carried = sorted(
        (u for u in units if u.requests and abs(count(u) / u.requests - r) >= MIN_SHARE_DIFF),
        key=lambda u: u.unit,
    )
    scope = carried[0].unit if len(carried) == 1 and len(units) > 1 else None
    if what == "double_bos":
        severity, txt = "warning", f"start with the BOS {name} twice in {s:.1%} of served prompts"
    elif what == "missing_bos":
        severity, txt = "warning", f"lack the leading BOS {name} in {s:.1%} of served prompts"
    elif r >= STRUCTURAL and s < r:
        severity, txt = "warning", f"miss {name}, which {r:.0%} of reference prompts hold"
    elif r <= UNSEEN and s >= UNSEEN_SERVED:
        severity, txt = "warning", f"hold {name}, which the reference's prompts do not use"
    else:
        severity, txt = "info", f"hold {name} at another rate than the reference's"
    rate = f"{s:.1%} of served vs {r:.1%} of reference prompts"
    who = f" (carried by {', '.join(unit_label(u.unit) for u in carried)})" if carried else ""
    example_ids = sorted({i for u in (carried or units) for i in ids(u)})[:EXAMPLES]
    return finding(
        "skew.special_tokens",
        "skew.special_tokens",
        severity,
        f"{dep_label(dep)}: served prompts {txt}: {rate}{who} (p={p_holm:.2g}, Fisher+Holm)",
        unit=scope,
        deployment=None if scope else (dep or None),
        values={
            "check": what,
            "token_id": tid,
            "piece": pc,
            "served_share": round(s, 5),
            "reference_share": round(r, 5),
            "served": n,
            "served_count": k,
            "reference_n": n_r,
            "reference_count": kr,
            "p_holm": p_holm,
            "test": "fisher_exact_two_sided+holm",
            "replica_shares": shares,
            "thresholds": {"alpha": ALPHA, "min_share_diff": MIN_SHARE_DIFF},
            "reference": ref_values(ref, prep),
        },
        evidence={
            "request_ids": example_ids,
            "replicas": [unit_label(u.unit) for u in carried],
        },
    )
