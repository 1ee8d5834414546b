"""Queries behind the speculative-decoding analyzer (``infdebug.analyzers.spec_acceptance``).

Per model and unit (``q_common.UNIT``): requests that drafted tokens, the draft and accepted
token totals, and ``Σ a²/d`` over requests (what the analyzer needs for the request-level
dispersion of the acceptance rate without sending every request to Python); and, for the
units found, the request IDs of the lowest acceptance. Requests that accepted more than
they drafted are counted apart and left out (a logging bug, not a rate). Aggregates group
by the raw columns (no per-row unit string); request IDs are fetched for found units only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import UNIT as _UNIT
from infdebug.store.q_common import WINDOW as _WINDOW
from infdebug.store.q_common import split_unit, window_params
from infdebug.store.q_units import by_unit

_D = "toFloat64(assumeNotNull(spec_draft_tokens))"
_A = "toFloat64(assumeNotNull(spec_accepted_tokens))"


@dataclass(frozen=True)
class SpecCounts:
    model: str
    unit: str
    requests: int
    draft: int
    accepted: int
    sum_a2_over_d: float
    invalid: int  # accepted > draft: left out
    first: float
    last: float


def spec_counts(store: Store, window: Mapping[str, Any]) -> list[SpecCounts]:
    rows = by_unit(
        store,
        "countIf(ok), sumIf(d, ok), sumIf(a, ok), sumIf(a * a / d, ok), countIf(NOT ok), "
        "minIf(t_arrival, ok), maxIf(t_arrival, ok)",
        "1",
        window_params(window),
        source=f"""(
            SELECT replica, deployment, model, t_arrival, {_D} AS d, {_A} AS a, a <= d AS ok
            FROM requests
            WHERE {_WINDOW} AND spec_draft_tokens > 0 AND spec_accepted_tokens IS NOT NULL
        )""",
    )
    return [
        SpecCounts(
            model,
            unit,
            int(a[0]),
            int(a[1] or 0),
            int(a[2] or 0),
            float(a[3] or 0.0),
            int(a[4]),
            float(a[5]) if int(a[0]) else 0.0,
            float(a[6]) if int(a[0]) else 0.0,
        )
        for _, unit, model, a in rows
    ]


def lowest_acceptance_ids(
    store: Store, window: Mapping[str, Any], units: list[str], k: int = 10
) -> dict[str, list[str]]:
    """Per unit of ``units``: the ``k`` request IDs with the lowest acceptance rate (ties:
    earliest first)."""
    if not units:
        return {}
    _, rows = store.query(
        f"""
        SELECT {_UNIT} AS unit, request_id
        FROM requests
        WHERE {_WINDOW} AND has({{reps:Array(String)}}, replica)
          AND has({{units:Array(String)}}, {_UNIT})
          AND spec_draft_tokens > 0 AND spec_accepted_tokens <= spec_draft_tokens
        ORDER BY unit, {_A} / {_D}, t_arrival, request_id
        LIMIT {{k:UInt32}} BY unit
        """,
        window_params(
            window, units=sorted(units), reps=sorted({split_unit(u)[0] for u in units}), k=k
        ),
    )
    out: dict[str, list[str]] = {}
    for unit, rid in rows:
        out.setdefault(str(unit), []).append(str(rid))
    return out
