"""The two sides of a diff, loaded into one temporary embedded store and labelled.

Each side is ingested as ``infdebug ingest`` would (every reader, ``.gz``, the fast path
through ClickHouse's own parsers, bad lines set aside with file:line); the ingest state is
cleared between the sides so a file given on both (a log diffed against itself) loads twice.
Each row is labelled with its side as it loads (its ``deployment`` is the side's label; its
own deployment is kept beside it for the report, store/q_diff.py). A side from a store
(``--store``) is exported as contract JSONL by ClickHouse and loaded the same way.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infdebug.collectors.ingest import IngestReport, ingest_paths
from infdebug.errors import InputError
from infdebug.store import Store, q_diff


@dataclass
class SideLoad:
    """What loading one side did."""

    label: str
    spec: list[str]
    report: IngestReport | None = None
    deployments: list[str] = field(default_factory=list)
    requests: int = 0


def check_paths(label: str, paths: list[str]) -> None:
    """A side naming nothing that exists is a usage error, named."""
    missing = [p for p in paths if not os.path.exists(p) and not glob.glob(p)]
    if missing:
        raise InputError(f"{label} side: {missing[0]}: no such file, directory or glob match")


def load_side(
    store: Store,
    label: str,
    paths: list[str],
    *,
    rejects_path: str,
    max_latency: float | None = None,
) -> SideLoad:
    """Ingest one side's files, each row labelled ``label`` as it loads (the other side's
    ingest state cleared first)."""
    check_paths(label, paths)
    store.command("TRUNCATE TABLE IF EXISTS ingest_state")
    report = ingest_paths(
        store,
        paths,
        rejects_path=rejects_path,
        max_latency=max_latency,
        assign=q_diff.side_assign(),
        assign_params={"side": label},
    )
    _, rows = store.query(
        "SELECT count() FROM requests WHERE deployment = {label:String}", {"label": label}
    )
    side = SideLoad(label, paths, report, requests=int(rows[0][0]))
    side.deployments = q_diff.side_deployments(store, label)
    return side


def load_sides(
    store: Store,
    sides: list[tuple[str, list[str]]],
    *,
    rejects_path: Callable[[str], str],
    max_latency: float | None = None,
) -> list[SideLoad]:
    """Both sides into ``store``, labelled; each side's own deployments noted."""
    q_diff.prepare(store)
    return [
        load_side(store, label, paths, rejects_path=rejects_path(label), max_latency=max_latency)
        for label, paths in sides
    ]


def export_selection(
    source: Store, sel: Mapping[str, Any], directory: str, label: str
) -> tuple[list[str], int]:
    """One side of a store as contract JSONL files under ``directory``: (paths, requests)."""
    n = q_diff.count_selected(source, sel)
    paths = []
    os.makedirs(directory, exist_ok=True)
    for table in q_diff.SIDE_TABLES:
        text = q_diff.export_side(source, sel, table)
        if not text.strip():
            continue
        path = os.path.join(directory, f"{label}.{table}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        paths.append(path)
    return paths, n
