"""Replica lifecycle events: written as contract records, loadable into the store."""

from __future__ import annotations

import os
import time
from typing import Any

from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Event, read_records
from infdebug.store.queries import fetch_records
from infdebug.tracer.lifecycle import PHASES, Lifecycle, process_start_time


def test_process_start_time_is_this_process() -> None:
    t = process_start_time()
    assert time.time() - 24 * 3600 < t <= time.time()


def test_lifecycle_events_round_trip_into_the_store(tmp_path: Any, store: Any) -> None:
    lc = Lifecycle("r9", deployment="canary", trace_dir=str(tmp_path))
    for name in PHASES[1:]:
        lc.mark(name, note=name)
    assert lc.path and os.path.exists(lc.path)
    recs = [r for _, r in read_records(lc.path, strict=True)]
    assert [r.name for r in recs] == list(PHASES)
    assert all(isinstance(r, Event) and r.replica == "r9" and r.pid == os.getpid() for r in recs)
    assert recs[0].duration_s is None and all(
        r.duration_s is not None and r.duration_s >= 0 for r in recs[1:]
    )
    since = [r.since_start_s for r in recs]
    assert since == sorted(since)
    # each phase's duration is the gap since the previous event
    for a, b in zip(recs, recs[1:], strict=False):
        assert abs((b.t - a.t) - (b.duration_s or 0)) < 1e-6
    rep = ingest_paths(store, [lc.path], rejects_path=str(tmp_path / "rej.jsonl"))
    assert rep.rows["event"] == len(PHASES) and rep.rejected == 0
    assert fetch_records(store, "event") == recs
