"""What every analysis query shares: the window filter, the model filter and the unit.

The **unit** an analyzer compares is a replica within a deployment: replica names are
reused across deployments (``r3`` of ``baseline`` and ``r3`` of ``canary`` are different
pods, often days apart), so grouping by the name alone would mix them. SQL groups by
``UNIT`` (one string: replica, a separator, deployment) and Python splits it back with
``split_unit``; ``unit_label`` is how a finding names it ("r3 (canary)").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WINDOW = """t_arrival >= {since:Float64} AND t_arrival < {until:Float64}
  AND (empty({replicas:Array(String)}) OR has({replicas:Array(String)}, replica))"""
MODEL = "({model:String} = '' OR ifNull(model, '') = {model:String})"

_SEP = "\x1f"  # ASCII unit separator: never part of a replica or deployment name we accept
UNIT = r"concat(replica, '\x1F', ifNull(deployment, ''))"


def earliest_ids(n: int, cond: str | None = None) -> str:
    """SQL aggregate: the ``n`` earliest request IDs of a group (by arrival, then ID) — a
    choice that does not depend on the order rows were ingested or read in."""
    agg = (
        f"groupArraySortedIf({n})((t_arrival, request_id), {cond})"
        if cond
        else f"groupArraySorted({n})((t_arrival, request_id))"
    )
    return f"arrayMap(x -> x.2, {agg})"


def window_params(window: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The bound parameters of ``WINDOW`` (from ``AnalysisContext.window()``) plus ``extra``."""
    p: dict[str, Any] = {
        "since": float(window.get("since", 0.0)),
        "until": float(window.get("until", 1e11)),
        "replicas": [str(r) for r in window.get("replicas") or []],
    }
    p.update(extra)
    return p


def split_unit(unit: str) -> tuple[str, str | None]:
    """(replica, deployment or None) of a ``UNIT`` value."""
    replica, _, deployment = str(unit).partition(_SEP)
    return replica, deployment or None


def make_unit(replica: str, deployment: str | None = None) -> str:
    """The ``UNIT`` value of a replica and deployment."""
    return f"{replica}{_SEP}{deployment or ''}"


def unit_label(unit: str) -> str:
    """How a finding names a unit: ``r3`` or ``r3 (canary)``."""
    replica, deployment = split_unit(unit)
    return replica if deployment is None else f"{replica} ({deployment})"
