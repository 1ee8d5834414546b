"""Named queries over the store. SQL lives here (and in ddl.py), nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import make_unit, unit_label

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class LatencySummary:
    n: int
    p50: float | None
    p90: float | None
    p99: float | None

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "p50": self.p50, "p90": self.p90, "p99": self.p99}


@dataclass(frozen=True)
class ReplicaStats:
    """One unit of the fleet: a replica within a deployment (names are reused across
    deployments, so ``r3`` of ``stable`` and ``r3`` of ``canary`` are two rows)."""

    replica: str
    deployment: str | None
    requests: int
    errors: int
    ttft_s: LatencySummary
    itl_s: LatencySummary
    e2e_s: LatencySummary

    @property
    def label(self) -> str:
        """``r3`` or ``r3 (canary)``, as findings name it."""
        return unit_label(make_unit(self.replica, self.deployment))

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "deployment": self.deployment,
            "requests": self.requests,
            "errors": self.errors,
            "ttft_s": self.ttft_s.to_json(),
            "itl_s": self.itl_s.to_json(),
            "e2e_s": self.e2e_s.to_json(),
        }


def _summary(n: Any, qs: Any) -> LatencySummary:
    n = int(n or 0)
    if n == 0 or qs is None:
        return LatencySummary(0, None, None, None)
    return LatencySummary(n, float(qs[0]), float(qs[1]), float(qs[2]))


_FILTER = """
WHERE ({replica:String} = '' OR replica = {replica:String})
  AND ({deployment:String} = '' OR deployment = {deployment:String})
  AND t_arrival >= {since:Float64} AND t_arrival < {until:Float64}
"""


def replica_stats(
    store: Store,
    *,
    replica: str = "",
    deployment: str = "",
    since: float = 0.0,
    until: float = 1e11,
) -> list[ReplicaStats]:
    """Request counts and TTFT / inter-token / end-to-end p50, p90, p99 per replica within
    its deployment (one row per (replica, deployment), ordered by replica then deployment).

    Inter-token latency is every gap between consecutive output tokens (the first token's
    time is TTFT, not an inter-token gap), pooled over the unit's requests.
    """
    params = {"replica": replica, "deployment": deployment, "since": since, "until": until}
    _, rows = store.query(
        f"""
        SELECT replica,
               ifNull(deployment, '') AS dep,
               count() AS requests,
               countIf(error IS NOT NULL OR finish_reason = 'error') AS errors,
               countIf(ttft_s IS NOT NULL) AS n_ttft,
               quantilesExactIf(0.5, 0.9, 0.99)(ttft_s, ttft_s IS NOT NULL) AS q_ttft,
               countIf(e2e_s IS NOT NULL) AS n_e2e,
               quantilesExactIf(0.5, 0.9, 0.99)(e2e_s, e2e_s IS NOT NULL) AS q_e2e
        FROM requests
        {_FILTER}
        GROUP BY replica, dep
        ORDER BY replica, dep
        """,
        params,
    )
    _, itl_rows = store.query(
        f"""
        SELECT replica, ifNull(deployment, '') AS dep, count() AS n,
               quantilesExact(0.5, 0.9, 0.99)(gap) AS q
        FROM requests
        ARRAY JOIN arrayPopFront(arrayDifference(token_times_s)) AS gap
        {_FILTER}
        GROUP BY replica, dep
        """,
        params,
    )
    itl = {(r[0], r[1]): _summary(r[2], r[3]) for r in itl_rows}
    out = []
    for rep, dep, n, errors, n_ttft, q_ttft, n_e2e, q_e2e in rows:
        out.append(
            ReplicaStats(
                replica=rep,
                deployment=dep or None,
                requests=int(n),
                errors=int(errors),
                ttft_s=_summary(n_ttft, q_ttft),
                itl_s=itl.get((rep, dep), LatencySummary(0, None, None, None)),
                e2e_s=_summary(n_e2e, q_e2e),
            )
        )
    return out


def startup_times(store: Store) -> list[tuple[str, str, float]]:
    """(replica, event, seconds) of each replica's start-up milestones (weights_loaded, ready)."""
    _, rows = store.query(
        "SELECT replica, name, duration_s FROM events WHERE name IN ('weights_loaded', 'ready') "
        "AND duration_s IS NOT NULL ORDER BY replica, t"
    )
    return [(str(r), str(n), float(d)) for r, n, d in rows]


def table_counts(store: Store) -> dict[str, int]:
    _, rows = store.query(
        "SELECT table, sum(rows) FROM system.parts WHERE database = currentDatabase() AND active "
        "GROUP BY table"
    )
    return {r[0]: int(r[1]) for r in rows}


def fetch_records(
    store: Store, kind: str, *, where: str = "", params: dict[str, Any] | None = None
) -> list[Any]:
    """Read stored rows of one contract kind back into contract records (in store order).

    ``where`` is a SQL condition written by our own code; user values go in ``params``.
    """
    import msgspec

    from infdebug.schema import RECORD_TYPES, Finding
    from infdebug.store.ddl import TABLES

    table = TABLES[kind]
    cols = [c.name for c in table.columns]
    sql = f"SELECT {', '.join(f'`{c}`' for c in cols)} FROM {table.name}"
    if where:
        sql += f" WHERE {where}"
    sql += f" ORDER BY {table.order_by}"
    names, rows = store.query(sql, params)
    typ: Any = Finding if kind == "finding" else RECORD_TYPES[kind]
    json_cols = table.json_columns
    out = []
    for r in rows:
        d = {}
        for n, v in zip(names, r, strict=True):
            if n in json_cols and v is not None:
                v = msgspec.json.decode(v)
            d[n] = v
        out.append(msgspec.convert(d, typ))
    return out
