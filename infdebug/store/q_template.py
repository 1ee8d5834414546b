"""Queries behind the chat-template drift analyzers (``infdebug.analyzers.template_drift``).

Every query takes the analysis window (``AnalysisContext.window()``): ``since``/``until`` on
``t_arrival`` and a replica list (empty: all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import MODEL as _MODEL
from infdebug.store.q_common import WINDOW as _WINDOW


def models(store: Store, window: dict[str, Any]) -> list[str]:
    """The served models in the window ("" for requests that name none), most requests first."""
    _, rows = store.query(
        f"""
        SELECT ifNull(model, '') AS m, count() AS n FROM requests WHERE {_WINDOW}
        GROUP BY m ORDER BY n DESC, m
        """,
        window,
    )
    return [str(r[0]) for r in rows]


@dataclass(frozen=True)
class FirstIdCount:
    """How many requests' prompts start with ``first_id``; ``text_head`` is the start of one
    such prompt's text (None where no prompt text was logged)."""

    first_id: int
    n: int
    text_head: str | None


def first_id_counts(
    store: Store, window: dict[str, Any], limit: int = 5, model: str = ""
) -> tuple[int, list[FirstIdCount]]:
    """Requests with prompt IDs in the window (of ``model`` where given), and the most common
    first prompt IDs."""
    _, rows = store.query(
        f"""
        SELECT prompt_ids[1] AS first_id, count() AS n,
               anyIf(substring(prompt_text, 1, 64), prompt_text IS NOT NULL) AS head
        FROM requests
        WHERE {_WINDOW} AND {_MODEL} AND length(prompt_ids) > 0
        GROUP BY first_id
        ORDER BY n DESC, first_id
        """,
        dict(window, model=model),
    )
    total = sum(int(r[1]) for r in rows)
    return total, [FirstIdCount(int(r[0]), int(r[1]), r[2] if r[2] else None) for r in rows[:limit]]


@dataclass(frozen=True)
class BosCounts:
    """Per replica and deployment (a replica name may serve several deployments over time):
    requests with prompt IDs, and those that start with the BOS twice (``double``) or do not
    start with it (``missing``), with examples of each."""

    replica: str
    deployment: str | None
    n: int
    double: int
    double_first_seen: float | None
    double_ids: list[str]
    double_head: list[int]
    missing: int
    missing_first_seen: float | None
    missing_ids: list[str]
    missing_head: list[int]


def bos_counts(
    store: Store,
    window: dict[str, Any],
    bos_id: int,
    *,
    double_run: int,
    examples: int,
    head: int,
    model: str = "",
) -> list[BosCounts]:
    """Per replica and deployment: prompts that start with ``bos_id`` ``double_run`` times
    (the analyzer's criterion of a doubled BOS) and prompts that do not start with it, with
    up to ``examples`` request IDs and the first ``head`` IDs of the earliest of each."""
    params = dict(window, bos=bos_id, run=double_run, examples=examples, head=head, model=model)
    double = (
        "(arraySlice(prompt_ids, 1, {run:UInt32}) = arrayWithConstant({run:UInt32}, {bos:UInt32}))"
    )
    missing = "(prompt_ids[1] != {bos:UInt32})"
    _, rows = store.query(
        f"""
        SELECT replica, deployment,
               count() AS n,
               countIf({double}) AS n_double,
               minIf(t_arrival, {double}) AS double_first,
               arraySlice(arrayMap(x -> x.2,
                                   arraySort(groupArrayIf((t_arrival, request_id), {double}))),
                          1, {{examples:UInt32}}) AS double_ids,
               argMinIf(arraySlice(prompt_ids, 1, {{head:UInt32}}), t_arrival, {double})
                   AS double_head,
               countIf({missing}) AS n_missing,
               minIf(t_arrival, {missing}) AS missing_first,
               arraySlice(arrayMap(x -> x.2,
                                   arraySort(groupArrayIf((t_arrival, request_id), {missing}))),
                          1, {{examples:UInt32}}) AS missing_ids,
               argMinIf(arraySlice(prompt_ids, 1, {{head:UInt32}}), t_arrival, {missing})
                   AS missing_head
        FROM requests
        WHERE {_WINDOW} AND {_MODEL} AND length(prompt_ids) > 0
        GROUP BY replica, deployment
        ORDER BY replica, deployment
        """,
        params,
    )
    out = []
    for rep, dep, n, nd, fd, dids, dhead, nm, fm, mids, mhead in rows:
        out.append(
            BosCounts(
                replica=str(rep),
                deployment=dep,
                n=int(n),
                double=int(nd),
                double_first_seen=float(fd) if int(nd) else None,
                double_ids=list(dids),
                double_head=[int(x) for x in dhead] if int(nd) else [],
                missing=int(nm),
                missing_first_seen=float(fm) if int(nm) else None,
                missing_ids=list(mids),
                missing_head=[int(x) for x in mhead] if int(nm) else [],
            )
        )
    return out


@dataclass(frozen=True)
class TemplateFpUse:
    """One (model, replica, deployment, template fingerprint) combination and its requests."""

    model: str
    replica: str
    deployment: str
    template_fp: str
    n: int
    first_seen: float
    last_seen: float
    request_ids: list[str]


def template_fp_uses(
    store: Store, window: dict[str, Any], examples: int = 3
) -> list[TemplateFpUse]:
    _, rows = store.query(
        f"""
        SELECT ifNull(model, '') AS m, replica, ifNull(deployment, '') AS d,
               assumeNotNull(template_fp) AS fp,
               count() AS n, min(t_arrival), max(t_arrival),
               arraySlice(arrayMap(x -> x.2, arraySort(groupArray((t_arrival, request_id)))),
                          1, {{examples:UInt32}})
        FROM requests
        WHERE {_WINDOW} AND template_fp IS NOT NULL AND template_fp != ''
        GROUP BY m, replica, d, fp
        ORDER BY m, replica, d, fp
        """,
        dict(window, examples=examples),
    )
    return [
        TemplateFpUse(str(m), str(r), str(d), str(fp), int(n), float(t0), float(t1), list(ids))
        for m, r, d, fp, n, t0, t1, ids in rows
    ]


@dataclass(frozen=True)
class PromptRow:
    """What the template analyzers read of one request."""

    request_id: str
    replica: str
    deployment: str | None
    model: str | None
    t_arrival: float
    messages: list[dict[str, Any]] | None
    prompt_text: str | None
    prompt_ids: list[int]
    template_fp: str | None


def _messages(raw: Any) -> list[dict[str, Any]] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, list):
        return [m for m in raw if isinstance(m, dict)]
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else None


def prompt_sample(
    store: Store,
    window: dict[str, Any],
    per_replica: int,
    *,
    need_messages: bool = False,
    model: str = "",
    ids_without_text: bool = False,
) -> list[PromptRow]:
    """Up to ``per_replica`` requests of each replica (and deployment), chosen by a hash of the
    request ID (the same requests whatever order they were ingested in), with their messages and
    prompt. ``ids_without_text``: prompt IDs only of the rows with no prompt text (a caller
    that decodes them only then: converting every sampled row's IDs was most of its time)."""
    _, rows = store.query(
        f"""
        SELECT request_id, replica, deployment, model, t_arrival, messages, prompt_text,
               if({{ids_without_text:Bool}} AND prompt_text IS NOT NULL, [], prompt_ids),
               template_fp
        FROM requests
        WHERE (replica, ifNull(deployment, ''), request_id) IN (
            -- the keys first, then the large columns of just those rows
            SELECT replica, ifNull(deployment, ''), request_id FROM requests
            WHERE {_WINDOW} AND {_MODEL}
              AND (prompt_text IS NOT NULL OR length(prompt_ids) > 0)
              AND (NOT {{need_messages:Bool}} OR (messages IS NOT NULL AND messages != ''))
            ORDER BY replica, ifNull(deployment, ''), cityHash64(request_id), request_id
            LIMIT {{per_replica:UInt64}} BY replica, ifNull(deployment, ''))
          AND {_WINDOW} AND {_MODEL}
        ORDER BY replica, deployment, cityHash64(request_id), request_id
        """,
        dict(
            window,
            per_replica=per_replica,
            need_messages=need_messages,
            model=model,
            ids_without_text=ids_without_text,
        ),
    )
    return [
        PromptRow(
            request_id=str(rid),
            replica=str(rep),
            deployment=dep,
            model=model,
            t_arrival=float(t),
            messages=_messages(msgs),
            prompt_text=text,
            prompt_ids=[int(x) for x in (ids or [])],
            template_fp=fp,
        )
        for rid, rep, dep, model, t, msgs, text, ids, fp in rows
    ]


def replica_request_counts(
    store: Store, window: dict[str, Any]
) -> dict[tuple[str, str | None], int]:
    """Requests per (replica, deployment) in the window (the population a sample is drawn from)."""
    _, rows = store.query(
        f"SELECT replica, deployment, count() FROM requests WHERE {_WINDOW} "
        "GROUP BY replica, deployment",
        window,
    )
    return {(str(r), d): int(n) for r, d, n in rows}
