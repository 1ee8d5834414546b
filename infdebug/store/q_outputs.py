"""Queries behind the output analyzers (stop-token drift, runaway generations, repetition).

Every function takes the store and the window parameters of ``AnalysisContext.window()``
(``since``, ``until``, ``replicas``) and binds them; nothing is formatted into SQL. Fields
named ``replica`` hold the unit (``q_common.UNIT``: replica within deployment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import UNIT as _UNIT
from infdebug.store.q_common import WINDOW as _WINDOW
from infdebug.store.q_common import earliest_ids, window_params

# The stop token IDs a request was sent with, and whether it asked to ignore EOS.
_STOP_IDS = "JSONExtract(ifNull(sampling, '{}'), 'stop_ids', 'Array(UInt32)')"
_IGNORE_EOS = "JSONExtractBool(ifNull(sampling, '{}'), 'ignore_eos')"


def _window(w: Mapping[str, Any]) -> dict[str, Any]:
    return window_params(w)


def _q(store: Store, sql: str, params: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
    return store.query(sql, params)  # lists bind as Array(…) parameters, server-side


@dataclass(frozen=True)
class FinishCounts:
    model: str
    replica: str
    requests: int
    length: int  # finish_reason = 'length'
    first_seen: float  # the first request that hit the cap (the first request when none did)
    last_seen: float
    length_request_ids: list[str]  # the earliest ones that hit the cap
    # requests with room to end their turn: max_tokens ≥ the floor asked for, not ignore_eos
    roomy: int = 0
    roomy_length: int = 0  # …of which hit the cap
    roomy_first_length: float | None = None
    roomy_length_request_ids: tuple[str, ...] = ()


def count_requests(store: Store, window: Mapping[str, Any]) -> int:
    """Requests in the window."""
    _, rows = _q(store, f"SELECT count() FROM requests WHERE {_WINDOW}", _window(window))
    return int(rows[0][0]) if rows else 0


def finish_counts(store: Store, window: Mapping[str, Any], room: int) -> list[FinishCounts]:
    """Per (model, replica): requests with a known finish reason and how many hit the length
    cap; and the same among the requests sent with ``max_tokens`` ≥ ``room`` (not ignore_eos)."""
    roomy = (
        f"(JSONExtractUInt(ifNull(sampling, '{{}}'), 'max_tokens') >= {{room:UInt32}} "
        f"AND NOT {_IGNORE_EOS})"
    )
    roomy_len = f"({roomy} AND finish_reason = 'length')"
    _, rows = _q(
        store,
        f"""
        SELECT ifNull(model, '') AS m, {_UNIT} AS unit, count(),
               countIf(finish_reason = 'length') AS n_len,
               if(n_len > 0, minIf(t_arrival, finish_reason = 'length'), min(t_arrival)),
               max(t_arrival),
               arraySlice(arrayMap(x -> x.2, arraySort(groupArrayIf((t_arrival, request_id),
                                                       finish_reason = 'length'))), 1, 10),
               countIf({roomy}), countIf({roomy_len}) AS n_roomy_len, minIf(t_arrival, {roomy_len}),
               {earliest_ids(10, roomy_len)}
        FROM requests
        WHERE {_WINDOW} AND finish_reason IN ('stop', 'length')
        GROUP BY m, unit
        ORDER BY m, unit
        """,
        {**_window(window), "room": room},
    )
    return [
        FinishCounts(
            str(r[0]),
            str(r[1]),
            int(r[2]),
            int(r[3]),
            float(r[4]),
            float(r[5]),
            [str(x) for x in r[6]],
            int(r[7]),
            int(r[8]),
            float(r[9]) if int(r[8]) else None,
            tuple(str(x) for x in r[10]),
        )
        for r in rows
    ]


def stop_id_shares(store: Store, window: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """Per model: each stop token ID → the share of the model's requests (those sent with a
    stop set at all) whose stop set holds it."""
    _, rows = _q(
        store,
        f"""
        SELECT m, sid, uniqExact(request_id) / any(total) AS share
        FROM (
            SELECT ifNull(model, '') AS m, request_id, {_STOP_IDS} AS sids,
                   count() OVER (PARTITION BY ifNull(model, '')) AS total
            FROM requests
            WHERE {_WINDOW} AND notEmpty({_STOP_IDS})
        )
        ARRAY JOIN sids AS sid
        GROUP BY m, sid
        ORDER BY m, sid
        """,
        _window(window),
    )
    out: dict[str, dict[int, float]] = {}
    for m, sid, share in rows:
        out.setdefault(str(m), {})[int(sid)] = float(share)
    return out


@dataclass(frozen=True)
class EotCounts:
    replica: str
    requests: int  # requests of the model on this replica (not sent with ignore_eos)
    hits: int  # outputs with an end-of-turn ID inside that did not stop there
    first_seen: float | None


@dataclass(frozen=True)
class EotHit:
    replica: str
    request_id: str
    t_arrival: float
    finish_reason: str | None
    position: int  # 0-based index of the first end-of-turn ID in the output
    eot_id: int
    output_len: int
    stop_ids: list[int]


# An end-of-turn ID inside the output that generation did not stop at: it is followed by
# more tokens, or the request still finished on the length cap.
_EOT_POS = "arrayFirstIndex(x -> has({eot:Array(UInt32)}, x), output_ids)"
_EOT_HIT = f"({_EOT_POS} > 0 AND ({_EOT_POS} < length(output_ids) OR finish_reason = 'length'))"


def eot_counts(
    store: Store, window: Mapping[str, Any], model: str, eot_ids: list[int]
) -> list[EotCounts]:
    params = {**_window(window), "model": model, "eot": sorted(set(eot_ids))}
    _, rows = _q(
        store,
        f"""
        SELECT {_UNIT} AS unit, count(), countIf({_EOT_HIT}), minIf(t_arrival, {_EOT_HIT})
        FROM requests
        WHERE {_WINDOW} AND ifNull(model, '') = {{model:String}} AND NOT {_IGNORE_EOS}
        GROUP BY unit
        ORDER BY unit
        """,
        params,
    )
    return [
        EotCounts(str(r[0]), int(r[1]), int(r[2]), float(r[3]) if int(r[2]) else None) for r in rows
    ]


def eot_hits(
    store: Store, window: Mapping[str, Any], model: str, eot_ids: list[int], per_replica: int
) -> list[EotHit]:
    """The earliest ``per_replica`` outputs per replica with an ignored end-of-turn ID."""
    params = {**_window(window), "model": model, "eot": sorted(set(eot_ids)), "k": per_replica}
    _, rows = _q(
        store,
        f"""
        SELECT {_UNIT} AS unit, request_id, t_arrival, finish_reason, {_EOT_POS} - 1 AS pos,
               output_ids[{_EOT_POS}] AS eot_id, length(output_ids), {_STOP_IDS}
        FROM requests
        WHERE {_WINDOW} AND ifNull(model, '') = {{model:String}}
          AND NOT {_IGNORE_EOS} AND {_EOT_HIT}
        ORDER BY unit, t_arrival, request_id
        LIMIT {{k:UInt32}} BY unit
        """,
        params,
    )
    return [
        EotHit(
            str(r[0]),
            str(r[1]),
            float(r[2]),
            r[3],
            int(r[4]),
            int(r[5]),
            int(r[6]),
            [int(x) for x in r[7]],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class RepetitionCandidates:
    replica: str
    requests: int  # requests with an output on this replica
    candidates: list[tuple[str, float, list[int]]]  # (request_id, t_arrival, output tail)
    capped: bool  # more candidates than the cap: the rest were not examined
    candidates_total: int = 0  # candidates before the cap


def repetition_candidates(
    store: Store, window: Mapping[str, Any], *, look: int, max_distinct: int, tail: int, cap: int
) -> list[RepetitionCandidates]:
    """Per replica: outputs of at least ``look`` IDs whose last ``look`` (or the ``look``
    before a final token) hold at most ``max_distinct`` distinct IDs — the criterion is the
    analyzer's (analyzers/repetition.py) — with the last ``tail`` IDs of each, the earliest
    ``cap`` per replica."""
    params = {**_window(window), "look": look, "distinct": max_distinct, "tail": tail, "cap": cap}
    w = _window(window)
    _, totals = _q(
        store,
        f"SELECT {_UNIT} AS unit, count() FROM requests "
        f"WHERE {_WINDOW} AND notEmpty(output_ids) GROUP BY unit",
        w,
    )
    cond = (
        "length(output_ids) >= {look:UInt32} AND ("
        "length(arrayDistinct(arraySlice(output_ids, -{look:UInt32}))) <= {distinct:UInt32} OR "
        "length(arrayDistinct(arraySlice(output_ids, -{look:UInt32} - 1, {look:UInt32}))) "
        "<= {distinct:UInt32})"
    )
    _, rows = _q(
        store,
        f"""
        SELECT {_UNIT} AS unit, request_id, t_arrival,
               arraySlice(output_ids, -{{tail:UInt32}}) AS t,
               count() OVER (PARTITION BY unit) AS n_cand
        FROM requests
        WHERE {_WINDOW} AND {cond}
        ORDER BY unit, t_arrival, request_id
        LIMIT {{cap:UInt32}} BY unit
        """,
        params,
    )
    by: dict[str, RepetitionCandidates] = {
        str(r): RepetitionCandidates(str(r), int(n), [], False) for r, n in totals
    }
    for rep, rid, t, ids, n_cand in rows:
        rc = by.setdefault(str(rep), RepetitionCandidates(str(rep), 0, [], False))
        rc.candidates.append((str(rid), float(t), [int(x) for x in ids]))
        if rc.candidates_total != int(n_cand):
            by[str(rep)] = RepetitionCandidates(
                rc.replica, rc.requests, rc.candidates, int(n_cand) > cap, int(n_cand)
            )
    return [by[k] for k in sorted(by)]
