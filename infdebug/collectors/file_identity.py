"""Which saved ingest state a file is: the one whose first line it starts with, and whose
content, as far as it was read, is still the file's prefix.

A file's first line finds its candidates (``ingest_state.load_states``: a file renamed,
rotated or gzipped after it was ingested starts with the same line). The hashes of the first
and the last ``MARK_BYTES`` of what was read (``head_hash``, ``tail_hash``) then tell which
candidate it is, if any: another file that merely starts with the same line, or this one
rewritten, is none of them and is read as a new file, never from another file's offset.
Two reads of 64 KiB for a plain file; a ``.gz`` decompresses its way to the offset.
"""

from __future__ import annotations

import os
import secrets

from infdebug.schema import open_bytes
from infdebug.store.ingest_state import MARK_BYTES, IngestState, mark

REWRITTEN = (
    "changed before the point ingested earlier (not only appended to): read again as a new "
    "file; the rows of its earlier version stay in the store"
)


def marks_at(path: str, offset: int, *, head_only: bool = False) -> tuple[str, str] | None:
    """``(head_hash, tail_hash)`` of the file's content up to ``offset``; None if it is
    shorter. ``head_only``: the tail is not read (``""``)."""
    n = min(offset, MARK_BYTES)
    with open_bytes(path) as fh:
        head = fh.read(n)
        if len(head) < n:
            return None
        if head_only:
            return mark(head), ""
        if offset <= MARK_BYTES:
            return mark(head), mark(head)
        fh.seek(offset - MARK_BYTES)  # a gzip stream decompresses its way there
        tail = fh.read(MARK_BYTES)
    return (mark(head), mark(tail)) if len(tail) == MARK_BYTES else None


def identify(
    path: str, st: os.stat_result, first_id: str, states: list[IngestState], label: str
) -> tuple[IngestState, bool, bool]:
    """This file's saved state among ``states`` (those of files that start with the same
    line, ``first_id``), whether it is unchanged since, and whether the state saved under
    its name (``label``) no longer fits it (``REWRITTEN``). None fits: a new state."""
    gz = path.endswith(".gz")
    rewritten = False
    for s in states:
        if s.offset == 0:
            continue
        same = s.size == st.st_size and s.mtime == st.st_mtime
        if not gz and st.st_size < s.offset:
            rewritten |= s.path == label
            continue
        if not s.head_hash:
            return s, same, False  # saved before prefixes were hashed: the first line is all
        marks = marks_at(path, s.offset, head_only=same and gz)
        if marks is not None and marks[0] == s.head_hash and marks[1] in ("", s.tail_hash):
            return s, same, False
        rewritten |= s.path == label
    fresh = next((s for s in states if s.offset == 0), None)
    if fresh is not None:
        return fresh, False, rewritten
    taken = {s.content_id for s in states}
    cid = first_id if first_id not in taken else f"{first_id}.{secrets.token_hex(8)}"
    return IngestState(cid), False, rewritten


def set_marks(path: str, state: IngestState, before: int, tail: bytes | bytearray) -> None:
    """Hash what has now been read of the file (up to ``state.offset``; ``before`` the
    load, up to ``before``); ``tail``, the last bytes the load read, saves reading them
    again when it is long enough."""
    if state.offset == before and state.head_hash:
        return
    if len(tail) >= min(state.offset, MARK_BYTES) and state.offset - before >= len(tail):
        with open_bytes(path) as fh:
            head = fh.read(min(state.offset, MARK_BYTES))
        state.head_hash = mark(head)
        state.tail_hash = mark(tail[-MARK_BYTES:] if state.offset > MARK_BYTES else head)
        return
    marks = marks_at(path, state.offset)
    state.head_hash, state.tail_hash = marks if marks is not None else ("", "")
