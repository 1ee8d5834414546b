"""Aggregates over requests per unit (replica within deployment), and per model, without a
unit string per row.

Grouping 10M rows by (replica, deployment, model) costs several times grouping them by
replica alone (measured on chDB: the nullable low-cardinality keys), and building
``q_common.UNIT`` per row costs more still. Almost every replica runs one deployment and
one model, so ``by_unit`` groups by replica and notes the deployments and models each one
saw; only the replicas that saw several are read again (their rows only, by the primary
key) and grouped by deployment and model. The SQL fragments passed in are the callers'
fixed text; values are bound parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import make_unit


def by_unit(
    store: Store,
    aggregates: str,
    where: str,
    params: Mapping[str, Any],
    source: str = "requests",
) -> list[tuple[str, str, str, tuple[Any, ...]]]:
    """(replica, unit, model, aggregate values) for every (replica, deployment, model) with
    rows in ``source WHERE where``; ``aggregates`` is a SELECT list of aggregate functions;
    ``source`` is the requests table or a subquery over it with the replica, deployment and
    model columns. Sorted by unit, then model."""
    _, rows = store.query(
        f"""
        SELECT replica, groupUniqArray(ifNull(deployment, '')), groupUniqArray(ifNull(model, '')),
               {aggregates}
        FROM {source} WHERE {where}
        GROUP BY replica
        """,
        dict(params),
    )
    out: list[tuple[str, str, str, tuple[Any, ...]]] = []
    multi: list[str] = []
    for r in rows:
        deps, models = list(r[1]), list(r[2])
        if len(deps) == 1 and len(models) == 1:
            out.append((str(r[0]), make_unit(str(r[0]), deps[0] or None), str(models[0]), r[3:]))
        else:
            multi.append(str(r[0]))
    if multi:
        _, rows = store.query(
            f"""
            SELECT replica, ifNull(deployment, ''), ifNull(model, ''), {aggregates}
            FROM {source} WHERE ({where}) AND has({{by_unit_multi:Array(String)}}, replica)
            GROUP BY replica, deployment, model
            """,
            {**params, "by_unit_multi": sorted(multi)},
        )
        out.extend(
            (str(r[0]), make_unit(str(r[0]), str(r[1]) or None), str(r[2]), r[3:]) for r in rows
        )
    out.sort(key=lambda x: (x[1], x[2]))
    return out
