"""Storing analyzer findings in the ``findings`` table (one bound INSERT … SELECT each)."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from infdebug.schema import Finding
from infdebug.store.base import Store

_INSERT = """
INSERT INTO findings (kind, analyzer, severity, summary, scope, `values`, evidence, t, v, _file)
SELECT {kind:String}, {analyzer:String}, {severity:String}, {summary:String},
       {scope:Nullable(String)}, {values:Nullable(String)}, {evidence:Nullable(String)},
       {t:Nullable(Float64)}, {v:UInt16}, {file:String}
"""


def _json(obj: object) -> str | None:
    return None if obj is None else msgspec.json.encode(obj).decode()


def store_findings(store: Store, findings: Iterable[Finding], *, source: str = "analyze") -> int:
    """Insert ``findings``; returns how many were stored. ``source`` lands in ``_file``."""
    n = 0
    for f in findings:
        store.command(
            _INSERT,
            {
                "kind": f.kind,
                "analyzer": f.analyzer,
                "severity": f.severity,
                "summary": f.summary,
                "scope": _json(f.scope),
                "values": _json(f.values),
                "evidence": _json(f.evidence),
                "t": f.t,
                "v": f.v,
                "file": source,
            },
        )
        n += 1
    return n
