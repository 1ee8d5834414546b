"""Queries behind the tokenizer-drift analyzers. SQL lives here, nowhere in the analyzers.

Every function takes the analysis window (``AnalysisContext.window()``: ``since``, ``until``,
``replicas``) as bound parameters and returns plain dataclasses / tuples. Fields named
``replica`` hold the unit (``q_common.UNIT``: replica within deployment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import MODEL as _MODEL
from infdebug.store.q_common import UNIT as _UNIT
from infdebug.store.q_common import WINDOW as _WINDOW
from infdebug.store.q_common import earliest_ids
from infdebug.store.q_common import window_params as _params


@dataclass(frozen=True)
class FingerprintVariant:
    """Requests of one model on one replica that carried one tokenizer fingerprint."""

    model: str
    fp: str
    replica: str
    requests: int
    first_seen: float
    last_seen: float
    request_ids: list[str]
    deployments: list[str]


def fingerprint_variants(store: Store, window: Mapping[str, Any]) -> list[FingerprintVariant]:
    _, rows = store.query(
        f"""
        SELECT ifNull(model, '') AS m, tokenizer_fp AS fp, {_UNIT} AS unit, count() AS n,
               min(t_arrival), max(t_arrival), {earliest_ids(10)},
               arraySort(groupUniqArray(10)(ifNull(deployment, '')))
        FROM requests
        WHERE {_WINDOW} AND tokenizer_fp IS NOT NULL AND tokenizer_fp != ''
        GROUP BY m, fp, unit
        ORDER BY m, fp, unit
        """,
        _params(window),
    )
    return [
        FingerprintVariant(
            str(m), str(fp), str(r), int(n), float(a), float(b), list(ids), list(deps)
        )
        for m, fp, r, n, a, b, ids, deps in rows
    ]


def replica_totals(store: Store, window: Mapping[str, Any], model: str = "") -> dict[str, int]:
    """Requests per unit in the window (of ``model`` where given)."""
    _, rows = store.query(
        f"SELECT {_UNIT} AS unit, count() FROM requests WHERE {_WINDOW} AND {_MODEL} GROUP BY unit",
        _params(window, model=model),
    )
    return {str(r): int(n) for r, n in rows}


@dataclass(frozen=True)
class TextVariant:
    """Requests of one unit that logged one prompt text (``text_hash``) with one sequence of
    prompt IDs (``ids_hash``), where that text was logged with more than one sequence."""

    model: str
    text_hash: int
    ids_hash: int
    unit: str
    requests: int
    first_seen: float
    request_id: str  # the earliest
    request_ids: list[str]  # the earliest few
    first_id: int  # the IDs' first (a BOS, where the tokenizer writes one)
    second_id: int  # the IDs' second (0 where there is one ID)
    max_id: int
    n_ids: int


def conflicting_variants(store: Store, window: Mapping[str, Any]) -> list[TextVariant]:
    """Every (text, IDs, unit) group of the prompt texts that were logged with more than one
    ID sequence (the same text, other IDs: one side encodes differently). A clean fleet has
    none, so this returns nothing at any size."""
    _, rows = store.query(
        f"""
        WITH per AS (
            SELECT ifNull(model, '') AS m, prompt_text_hash AS th,
                   prompt_ids_hash AS ih, {_UNIT} AS unit,
                   count() AS n, min(t_arrival) AS first, {earliest_ids(10)} AS rids,
                   any(prompt_ids[1]) AS first_id, any(prompt_ids[2]) AS second_id,
                   any(arrayMax(prompt_ids)) AS max_id,
                   any(length(prompt_ids)) AS n_ids
            FROM requests
            WHERE {_WINDOW} AND prompt_text IS NOT NULL AND notEmpty(prompt_ids)
            GROUP BY m, th, ih, unit
        )
        SELECT m, th, ih, unit, n, first, rids, first_id, second_id, max_id, n_ids FROM per
        WHERE (m, th) IN (SELECT m, th FROM per GROUP BY m, th HAVING uniqExact(ih) > 1)
        ORDER BY m, th, ih, unit
        """,
        _params(window),
    )
    return [
        TextVariant(
            str(m),
            int(th),
            int(ih),
            str(u),
            int(n),
            float(first),
            str(rids[0]),
            [str(x) for x in rids],
            int(fid),
            int(sid),
            int(mx),
            int(nids),
        )
        for m, th, ih, u, n, first, rids, fid, sid, mx, nids in rows
    ]


@dataclass(frozen=True)
class SideOverlap:
    """Two ID sequences one prompt text was logged with (``ids_a`` ≤ ``ids_b``; equal: one
    sequence with itself): how many distinct IDs ≥ the floor they share, and how many the
    one with fewer holds."""

    model: str
    text_hash: int
    ids_a: int
    ids_b: int
    shared: int
    smaller: int


_CONFLICT_ROWS = f"{_WINDOW} AND prompt_text IS NOT NULL AND notEmpty(prompt_ids)"


def side_overlaps(
    store: Store, window: Mapping[str, Any], per_unit: int, floor: int
) -> list[SideOverlap]:
    """For the prompt texts logged with more than one ID sequence — up to ``per_unit`` of each
    unit's, chosen by text hash (no replica name decides) — every pair of their sequences
    with the distinct IDs ≥ ``floor`` both hold. Only counts come back, no IDs; the keys are
    chosen on the hash columns first, so only the chosen texts' IDs are read."""
    _, rows = store.query(
        f"""
        WITH picked AS (
            SELECT DISTINCT m, th FROM (
                SELECT ifNull(model, '') AS m, prompt_text_hash AS th, {_UNIT} AS unit
                FROM requests
                WHERE {_CONFLICT_ROWS}
                  AND (ifNull(model, ''), prompt_text_hash) IN (
                      SELECT ifNull(model, ''), prompt_text_hash FROM requests
                      WHERE {_CONFLICT_ROWS}
                      GROUP BY 1, 2 HAVING uniqExact(prompt_ids_hash) > 1)
                GROUP BY m, th, unit
                ORDER BY m, unit, th
                LIMIT {{n:UInt64}} BY m, unit)
        ),
        sides AS (
            SELECT ifNull(model, '') AS m, prompt_text_hash AS th, prompt_ids_hash AS ih,
                   arrayDistinct(arrayFilter(x -> x >= {{floor:UInt32}}, any(prompt_ids))) AS hi
            FROM requests
            WHERE {_CONFLICT_ROWS}
              AND (ifNull(model, ''), prompt_text_hash) IN (SELECT m, th FROM picked)
            GROUP BY m, th, ih
        )
        SELECT a.m, a.th, a.ih, b.ih, length(arrayIntersect(a.hi, b.hi)),
               least(length(a.hi), length(b.hi))
        FROM sides AS a INNER JOIN sides AS b ON a.m = b.m AND a.th = b.th
        WHERE a.ih <= b.ih
        ORDER BY a.m, a.th, a.ih, b.ih
        """,
        _params(window, n=per_unit, floor=floor),
    )
    return [
        SideOverlap(str(m), int(th), int(a), int(b), int(k), int(s)) for m, th, a, b, k, s in rows
    ]


def requests_by_id(
    store: Store, window: Mapping[str, Any], request_ids: list[str]
) -> dict[tuple[str, str], tuple[list[int], str]]:
    """(unit, request ID) → (prompt IDs, prompt text) for the given request IDs."""
    _, rows = store.query(
        f"""
        SELECT {_UNIT} AS unit, request_id, prompt_ids, ifNull(prompt_text, '')
        FROM requests
        WHERE {_WINDOW} AND has({{ids:Array(String)}}, request_id)
        """,
        _params(window, ids=request_ids),
    )
    return {(str(u), str(rid)): ([int(x) for x in ids], str(txt)) for u, rid, ids, txt in rows}


@dataclass(frozen=True)
class PromptSample:
    replica: str
    text: str
    ids: list[int]
    requests: int
    first_seen: float
    request_ids: list[str]


def prompt_sample(
    store: Store, window: Mapping[str, Any], per_replica: int, model: str = ""
) -> list[PromptSample]:
    """Up to ``per_replica`` distinct (prompt text, prompt IDs) pairs per replica, chosen by
    the text's hash (deterministic, spread over the window)."""
    _, rows = store.query(
        f"""
        SELECT {_UNIT} AS unit, prompt_text_hash AS th, any(prompt_text), any(prompt_ids),
               count(), min(t_arrival), {earliest_ids(10)}, prompt_ids_hash AS ih
        FROM requests
        WHERE {_WINDOW} AND {_MODEL} AND prompt_text IS NOT NULL AND notEmpty(prompt_ids)
          -- the keys first (the hash columns ingest materialized: no prompt is read), then the
          -- texts and IDs of just those (grouping every prompt would hold them all: 8 GB at 1M)
          AND ({_UNIT}, prompt_text_hash, prompt_ids_hash) IN (
              SELECT unit, th, ih FROM (
                  SELECT {_UNIT} AS unit, prompt_text_hash AS th, prompt_ids_hash AS ih
                  FROM requests
                  WHERE {_WINDOW} AND {_MODEL} AND prompt_text IS NOT NULL AND notEmpty(prompt_ids)
                  GROUP BY unit, th, ih)
              ORDER BY unit, th, ih
              LIMIT {{n:UInt64}} BY unit)
        GROUP BY unit, th, ih
        ORDER BY unit, th, ih
        """,
        _params(window, n=per_replica, model=model),
    )
    return [
        PromptSample(str(r), str(txt), list(ids), int(n), float(first), list(rids))
        for r, _th, txt, ids, n, first, rids, _ih in rows
    ]


@dataclass(frozen=True)
class OutputSample:
    replica: str
    request_id: str
    ids: list[int]
    text: str
    t_arrival: float
    finish_reason: str | None


def output_sample(
    store: Store, window: Mapping[str, Any], per_replica: int, model: str = ""
) -> list[OutputSample]:
    """Up to ``per_replica`` requests per replica with both output IDs and output text."""
    _, rows = store.query(
        f"""
        SELECT {_UNIT} AS unit, request_id, output_ids, output_text, t_arrival, finish_reason
        FROM requests
        WHERE {_WINDOW} AND {_MODEL} AND output_text IS NOT NULL AND notEmpty(output_ids)
        ORDER BY unit, cityHash64(request_id), request_id
        LIMIT {{n:UInt64}} BY unit
        """,
        _params(window, n=per_replica, model=model),
    )
    return [
        OutputSample(
            str(r), str(rid), list(ids), str(txt), float(t), None if fr is None else str(fr)
        )
        for r, rid, ids, txt, t, fr in rows
    ]


@dataclass(frozen=True)
class IdRange:
    """Per (model, replica): requests, the largest token ID seen, and requests holding an
    ID ≥ the threshold asked for."""

    model: str
    replica: str
    requests: int
    max_id: int
    bad: int
    first_bad: float | None
    bad_request_ids: list[str]


def id_ranges(
    store: Store, window: Mapping[str, Any], threshold: int, model: str = ""
) -> list[IdRange]:
    _, rows = store.query(
        f"""
        SELECT m, unit, count(), max(mx), countIf(bad), minIf(t_arrival, bad),
               {earliest_ids(10, "bad")}
        FROM (
            SELECT ifNull(model, '') AS m, {_UNIT} AS unit, t_arrival, request_id,
                   greatest(arrayMax(prompt_ids), arrayMax(output_ids)) AS mx,
                   arrayExists(x -> x >= {{vocab:UInt32}}, prompt_ids)
                     OR arrayExists(x -> x >= {{vocab:UInt32}}, output_ids) AS bad
            FROM requests
            WHERE {_WINDOW} AND {_MODEL}
        )
        GROUP BY m, unit
        ORDER BY m, unit
        """,
        _params(window, vocab=threshold, model=model),
    )
    return [
        IdRange(str(m), str(r), int(n), int(mx), int(bad), float(fb) if bad else None, list(ids))
        for m, r, n, mx, bad, fb, ids in rows
    ]
