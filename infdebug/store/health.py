"""Store health: what can leave the store unopenable or its bookkeeping wrong, found
(``check_files``, ``check_store``) and mended (``repair_files``, ``repair_store``).

What is looked for:

- ``broken_mutation_file`` (embedded store): a ``mutation_N.txt`` that a full disk left empty
  or cut short. chDB refuses to start while one is there, so ``open_embedded`` moves such
  files aside itself (to ``HOME/quarantine/<time>/``); ``store check`` opens without that,
  to report them. A mutation ingest started is a rollback of a failed load, whose batch is
  still marked pending, so the rollback is done again later.
- ``failing_mutation``: a mutation that keeps failing; every later mutation of its table
  waits behind it, ingest's rollbacks among them. Mended with ``KILL MUTATION``.
- ``missing_table``: a table an applied migration created is gone (a ``DROP``); re-created,
  empty, by re-running those migrations' statements for it (``base.restore_tables``).
- ``pending_load``: a load that did not finish (its batch is still pending in
  ``ingest_state``): its rows may be half there. Rolled back, the mark cleared.
- ``stale_ingest_state``: ``ingest_state`` lists a file whose rows are all gone (a table
  dropped or truncated, rows deleted, expired): ingest would call it "already ingested".
  Forgotten, so that the next ingest loads it again.

SQL goes through the ``Store`` and ``ingest_state``; nothing here is run on every query.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from infdebug.store.base import Store, migrate, missing_tables, restore_tables
from infdebug.store.ddl import TABLES
from infdebug.store.ingest_state import (
    IngestState,
    all_states,
    before_mutation,
    failing_mutations,
    forget_states,
    rollback_batch,
    save_state,
)

_MUTATION_HEAD = b"format version: 1\n"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the store: ``kind`` (see the module), ``what`` is wrong in one
    line, ``fix`` what ``repair`` does about it, ``ids`` what it acts on."""

    kind: str
    what: str
    fix: str
    ids: tuple[Any, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "fix": self.fix}


# -- files (the embedded store, before chDB starts) ---------------------------------------------


def broken_mutation_files(home: str) -> list[str]:
    """The embedded store's mutation files that chDB cannot read (empty, or cut short
    before the end of their last line)."""
    pattern = os.path.join(home, "clickhouse", "store", "*", "*", "mutation_*.txt")
    return sorted(p for p in glob.glob(pattern) if not _mutation_ok(p))


def _mutation_ok(path: str) -> bool:
    """What ClickHouse writes: ``format version: 1``, ``create time: …``, ``commands: …``,
    each line ended (read: the head and the last byte; opening the store looks at them all)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
    except OSError:
        return False
    return (
        head.startswith(_MUTATION_HEAD + b"create time: ")
        and b"\ncommands: " in head
        and last == b"\n"
    )


def quarantine(home: str, paths: list[str]) -> list[tuple[str, str]]:
    """Move ``paths`` (under ``HOME/clickhouse``) to ``HOME/quarantine/<time>/``, keeping
    their place under it; ``(from, to)`` of each."""
    root = os.path.join(home, "clickhouse")
    dest = os.path.join(home, "quarantine", time.strftime("%Y%m%dT%H%M%S", time.gmtime()))
    moved = []
    for p in paths:
        to = os.path.join(dest, os.path.relpath(p, root))
        os.makedirs(os.path.dirname(to), exist_ok=True)
        shutil.move(p, to)
        moved.append((p, to))
    return moved


def check_files(home: str) -> list[Problem]:
    """What is wrong with the embedded store's files (without starting chDB)."""
    broken = broken_mutation_files(home)
    if not broken:
        return []
    sizes = ", ".join(f"{os.path.relpath(p, home)} ({_size(p)} bytes)" for p in broken[:5])
    more = f" and {len(broken) - 5} more" if len(broken) > 5 else ""
    return [
        Problem(
            "broken_mutation_file",
            f"{len(broken)} mutation file(s) left broken by a full disk: {sizes}{more}; "
            "chDB cannot start while they are there",
            f"move them to {os.path.join(home, 'quarantine')}/ (opening the store does too)",
            tuple(broken),
        )
    ]


def repair_files(home: str, problems: list[Problem]) -> list[str]:
    """Mend the file problems of ``check_files``; one line per thing done."""
    done = []
    for p in problems:
        if p.kind == "broken_mutation_file":
            moved = quarantine(home, list(p.ids))
            done.append(
                f"moved {len(moved)} broken mutation file(s) to "
                f"{os.path.commonpath([to for _, to in moved])}"
            )
    return done


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# -- the store (opened) ---------------------------------------------------------------------------


def open_unmended(clickhouse: str | None, home: str | None) -> Store:
    """The store as ``open_store`` opens it, but without mending anything on the way (no
    broken mutation file moved aside, no missing table re-created), so that ``check_*``
    can report what is wrong."""
    from infdebug import settings
    from infdebug.store.client import open_embedded, open_server

    url = settings.clickhouse_url(clickhouse)
    store: Store = open_server(url) if url else open_embedded(home or settings.home(), mend=False)
    try:
        migrate(store, restore=False)
    except Exception:
        store.close()
        raise
    return store


def check_store(store: Store) -> list[Problem]:
    """What is wrong inside the opened store (see the module)."""
    out: list[Problem] = []
    for table, mutation, reason in failing_mutations(store):
        out.append(
            Problem(
                "failing_mutation",
                f"mutation {mutation} of table {table} keeps failing "
                f"({reason.splitlines()[0][:200]}); every later one of {table} waits for it",
                "kill it (KILL MUTATION)",
                (table, mutation),
            )
        )
    gone = missing_tables(store)
    if gone:
        out.append(
            Problem(
                "missing_table",
                f"table(s) missing: {', '.join(gone)}",
                "re-create them, empty, from the migrations",
                tuple(gone),
            )
        )
    states = all_states(store)
    pending = [s for s in states if s.pending_batch]
    if pending:
        out.append(
            Problem(
                "pending_load",
                f"{len(pending)} load(s) did not finish (their rows may be half there): "
                + _names(pending),
                "roll them back (the files load again on the next ingest)",
                tuple(s.content_id for s in pending),
            )
        )
    stale = stale_states(store, states, set(gone))
    if stale:
        out.append(
            Problem(
                "stale_ingest_state",
                f"ingest state lists {len(stale)} file(s) whose rows are all gone: "
                + _names(stale),
                "forget them, so that the next ingest loads them again",
                tuple(s.content_id for s in stale),
            )
        )
    return out


def _names(states: list[IngestState], limit: int = 5) -> str:
    shown = ", ".join(f"{s.path or s.content_id} ({s.rows} rows)" for s in states[:limit])
    return shown + (f" and {len(states) - limit} more" if len(states) > limit else "")


def stale_states(
    store: Store, states: list[IngestState], missing: set[str] | None = None
) -> list[IngestState]:
    """The files of ``states`` that gave rows of which none is left: counted by the batches
    that loaded them, or, for states saved before batches were kept, by file name."""
    gone = missing if missing is not None else set(missing_tables(store))
    wanted = [s for s in states if s.rows > 0 and not s.pending_batch]
    batches = sorted({b for s in wanted for b in s.batches})
    files = sorted({s.path for s in wanted if not s.batches})
    by_batch: dict[int, int] = {}
    by_file: dict[str, int] = {}
    for t in TABLES.values():
        if t.name in gone:
            continue
        if batches:
            _, rows = store.query(
                f"SELECT _batch, count() FROM {t.name} WHERE _batch IN {{b:Array(UInt64)}} "
                "GROUP BY _batch",
                {"b": batches},
            )
            for b, n in rows:
                by_batch[int(b)] = by_batch.get(int(b), 0) + int(n)
        if files:
            _, rows = store.query(
                f"SELECT _file, count() FROM {t.name} WHERE _file IN {{f:Array(String)}} "
                "GROUP BY _file",
                {"f": files},
            )
            for f, n in rows:
                by_file[str(f)] = by_file.get(str(f), 0) + int(n)
    return [
        s
        for s in wanted
        if (sum(by_batch.get(b, 0) for b in s.batches) if s.batches else by_file.get(s.path, 0))
        == 0
    ]


def repair_store(store: Store, problems: list[Problem]) -> list[str]:
    """Mend what ``check_store`` found; one line per thing done. Failing mutations go
    first (every rollback would wait behind them), stale state last (a rollback can leave
    more files without rows). Run it while nothing else writes to the same store."""
    done: list[str] = []
    kinds = {p.kind: p for p in problems}
    if "failing_mutation" in kinds:
        for p in problems:
            if p.kind == "failing_mutation":
                table, mutation = p.ids
                store.command(
                    "KILL MUTATION WHERE database = currentDatabase() AND table = {t:String} "
                    "AND mutation_id = {m:String} SYNC",
                    {"t": table, "m": mutation},
                )
                done.append(f"killed mutation {mutation} of table {table}")
    if "missing_table" in kinds:
        tables = list(kinds["missing_table"].ids)
        restore_tables(store, tables)
        done.append(f"re-created table(s) {', '.join(tables)} (empty)")
    if "pending_load" in kinds:
        ids = set(kinds["pending_load"].ids)
        states = [s for s in all_states(store) if s.content_id in ids and s.pending_batch]
        if states:
            before_mutation(store, [])
        for s in states:
            rollback_batch(store, s.pending_batch)
            s.pending_batch = 0
            save_state(store, s, s.path)
        done.append(f"rolled back {len(states)} load(s) that did not finish")
    states = all_states(store)
    stale = stale_states(store, states)
    if stale:
        forget_states(store, [s.content_id for s in stale])
        done.append(
            f"forgot {len(stale)} file(s) whose rows were gone (the next ingest loads them): "
            + _names(stale)
        )
    return done
