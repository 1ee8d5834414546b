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
from infdebug.store.q_common import window_params as _params


def _tuple(v: Any) -> list[Any]:
    """A ClickHouse tuple as a list (Arrow hands tuples back as structs: dicts)."""
    return list(v.values()) if isinstance(v, dict) else list(v)


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
               min(t_arrival), max(t_arrival), groupArray(10)(request_id),
               arraySort(groupUniqArray(10)(ifNull(deployment, '')))
        FROM requests
        WHERE {_WINDOW} AND tokenizer_fp IS NOT NULL AND tokenizer_fp != ''
        GROUP BY m, fp, unit
        ORDER BY m, fp, unit
        """,
        _params(window),
    )
    return [
        FingerprintVariant(str(m), str(fp), str(r), int(n), float(a), float(b), list(ids), list(deps))
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
class IdConflict:
    """Prompts of ``model`` that ``replica`` encoded to other IDs than the fleet's majority."""

    model: str
    replica: str
    prompts: int  # distinct prompt texts that differ
    requests: int
    first_seen: float
    request_ids: list[str]
    example_text_hash: int
    example_ids_hash: int
    reference_ids_hash: int
    reference_replicas: list[str]


def cross_replica_conflicts(store: Store, window: Mapping[str, Any]) -> list[IdConflict]:
    """Group requests by the hash of their prompt text; where one text has more than one
    prompt-ID hash, the variant seen on the most replicas (then requests, then the one whose
    first replica name sorts first, so a tie is broken the same way for every text) is the
    reference, and every other variant counts against its replicas."""
    _, rows = store.query(
        f"""
        WITH per AS (
            SELECT ifNull(model, '') AS m, cityHash64(prompt_text) AS th,
                   cityHash64(prompt_ids) AS ih, {_UNIT} AS unit,
                   count() AS n, min(t_arrival) AS first, any(request_id) AS rid
            FROM requests
            WHERE {_WINDOW} AND prompt_text IS NOT NULL AND notEmpty(prompt_ids)
            GROUP BY m, th, ih, unit
        ),
        variants AS (
            SELECT m, th, ih, uniqExact(unit) AS nrep, sum(n) AS nreq,
                   arraySort(groupArray(unit)) AS reps
            FROM per GROUP BY m, th, ih
        ),
        ref AS (
            SELECT m, th, argMin(tuple(ih, reps), tuple(-toInt64(nrep), -toInt64(nreq), reps[1], ih)) AS r, count() AS nvar
            FROM variants GROUP BY m, th HAVING nvar > 1
        )
        SELECT per.m, per.unit, count() AS prompts, sum(per.n) AS reqs, min(per.first),
               groupArray(10)(per.rid),
               argMin(tuple(per.th, per.ih, tupleElement(ref.r, 1)), per.first) AS ex,
               arraySort(groupUniqArrayArray(20)(tupleElement(ref.r, 2))) AS ref_reps
        FROM per INNER JOIN ref ON per.m = ref.m AND per.th = ref.th
        WHERE per.ih != tupleElement(ref.r, 1)
        GROUP BY per.m, per.unit
        ORDER BY per.m, per.unit
        """,
        _params(window),
    )
    out = []
    for m, rep, prompts, reqs, first, rids, ex_raw, ref_reps in rows:
        ex = _tuple(ex_raw)
        out.append(
            IdConflict(
                model=str(m), replica=str(rep), prompts=int(prompts), requests=int(reqs),
                first_seen=float(first), request_ids=sorted(rids), example_text_hash=int(ex[0]),
                example_ids_hash=int(ex[1]), reference_ids_hash=int(ex[2]), reference_replicas=list(ref_reps),
            )
        )
    return out


def prompt_variants(
    store: Store, window: Mapping[str, Any], text_hash: int, ids_hashes: list[int]
) -> dict[int, tuple[list[int], str, str, str]]:
    """For one prompt text: each of ``ids_hashes`` → (prompt IDs, request ID, replica, text)."""
    _, rows = store.query(
        f"""
        SELECT cityHash64(prompt_ids) AS ih, any(prompt_ids), min(request_id), min({_UNIT}), any(prompt_text)
        FROM requests
        WHERE {_WINDOW} AND prompt_text IS NOT NULL
          AND cityHash64(prompt_text) = {{th:UInt64}} AND has({{hs:Array(UInt64)}}, cityHash64(prompt_ids))
        GROUP BY ih
        """,
        _params(window, th=text_hash, hs=ids_hashes),
    )
    return {int(h): (list(ids), str(rid), str(rep), str(txt)) for h, ids, rid, rep, txt in rows}


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
        SELECT {_UNIT} AS unit, cityHash64(prompt_text) AS th, any(prompt_text), any(prompt_ids),
               count(), min(t_arrival), groupArray(10)(request_id)
        FROM requests
        WHERE {_WINDOW} AND {_MODEL} AND prompt_text IS NOT NULL AND notEmpty(prompt_ids)
        GROUP BY unit, th, cityHash64(prompt_ids)
        ORDER BY unit, th
        LIMIT {{n:UInt64}} BY unit
        """,
        _params(window, n=per_replica, model=model),
    )
    return [
        PromptSample(str(r), str(txt), list(ids), int(n), float(first), list(rids))
        for r, _th, txt, ids, n, first, rids in rows
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
        OutputSample(str(r), str(rid), list(ids), str(txt), float(t), None if fr is None else str(fr))
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


def id_ranges(store: Store, window: Mapping[str, Any], threshold: int = 2**32 - 1, model: str = "") -> list[IdRange]:
    _, rows = store.query(
        f"""
        SELECT m, unit, count(), max(mx), countIf(bad), minIf(t_arrival, bad),
               groupArrayIf(10)(request_id, bad)
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
