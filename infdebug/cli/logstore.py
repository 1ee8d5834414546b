"""Log files given on the command line, loaded into a throwaway embedded store: what
``analyze LOGS`` and ``workload LOGS`` work on instead of the store."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from infdebug.cli.base import (
    CommandFailed,
    default_rejects_path,
    failure_reasons,
    resolve_max_latency,
)
from infdebug.cli.ingest import print_file_messages, print_notes, print_rejects
from infdebug.store import Store, StoreError
from infdebug.store.base import migrate


@contextmanager
def temporary_store(prefix: str = "infdebug-") -> Iterator[tuple[Store, str]]:
    """A throwaway embedded chDB store (never a server, whatever the environment says) and
    the temporary directory it lives in."""
    from infdebug.store.client import open_embedded

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        st = open_embedded(os.path.join(tmp, "home"))
        try:
            migrate(st)
            yield st, tmp
        finally:
            st.close()


@contextmanager
def loaded_logs(
    logs: list[str],
    *,
    command: str,
    home: str | None,
    clickhouse: str | None,
    rejects_path: str | None,
    max_latency: str | None,
    doc: dict[str, Any],
    empty: dict[str, Any] | None = None,
) -> Iterator[tuple[Store, Any]]:
    """``logs`` ingested (as ``infdebug ingest`` does: file messages, notes and the rejected
    lines on stderr, rejects written to ``--rejects`` or HOME/rejects/COMMAND-…) into a
    temporary store: yields (store, ingest report). ``doc["ingest"]`` gets the report;
    nothing loadable, or a store failure, is a :class:`CommandFailed` whose JSON carries
    ``empty`` (the command's empty result) and ``doc``."""
    from infdebug.collectors.ingest import ingest_paths

    ceiling = resolve_max_latency(max_latency)
    rejects = rejects_path or default_rejects_path(home, clickhouse, command)
    with temporary_store(f"infdebug-{command}-") as (st, _tmp):
        try:
            report = ingest_paths(st, list(logs), rejects_path=rejects, max_latency=ceiling)
        except StoreError as e:
            msg = f"loading the logs failed: {e}"
            raise CommandFailed(msg, 2, {**(empty or {}), **doc}) from None
        doc["ingest"] = report.to_json()
        print_file_messages(report)
        print_notes(report)
        print_rejects(report)
        if report.exit_code() == 2:
            raise CommandFailed(
                "nothing could be loaded: "
                + ("; ".join(failure_reasons(report)) or "no input files"),
                2,
                {**(empty or {}), **doc},
            )
        yield st, report
