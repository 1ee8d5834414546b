"""Spool frames of contract records (JSONL), the sink of the scraper and the GPU sampler.

A frame is the records of one scrape or one batch of GPU samples, ``encode_records`` lines of
any kinds; ``RecordSink`` loads each kind into its table through ClickHouse's own JSONL
parser, every row tagged with the chunk's ``_batch`` so a load cut short is rolled back.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable

import msgspec

from infdebug.collectors.spool import Spool
from infdebug.collectors.spool_loader import SpoolLoader
from infdebug.store.base import Store
from infdebug.store.ddl import JSONL_READ_SETTINGS, TABLES
from infdebug.store.ingest_state import rollback_batch

Say = Callable[[str], None]


class _Kind(msgspec.Struct):
    kind: str = ""


_KIND = msgspec.json.Decoder(_Kind)


def split_kinds(payloads: list[bytes]) -> dict[str, list[bytes]]:
    """The frames' lines by record kind (a line of no known kind is dropped: frames are
    written by this process from records, so that means corruption, which the CRC caught)."""
    out: dict[str, list[bytes]] = defaultdict(list)
    for payload in payloads:
        for line in payload.splitlines():
            if not line.strip():
                continue
            try:
                kind = _KIND.decode(line).kind
            except msgspec.DecodeError:
                continue
            if kind in TABLES:
                out[kind].append(line)
    return out


class RecordSink:
    """Frames of contract JSONL records into their tables."""

    def __init__(self, label: str, source: str, say: Say = lambda line: None) -> None:
        self.label = label
        self._source = source
        self._say = say

    def load(self, store: Store, payloads: list[bytes], batch: int) -> Counter[str]:
        got: Counter[str] = Counter()
        settings = dict(JSONL_READ_SETTINGS, input_format_skip_unknown_fields=1)
        for kind, lines in split_kinds(payloads).items():
            with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as fh:
                fh.write(b"\n".join(lines) + b"\n")
            try:
                store.insert_jsonl(
                    TABLES[kind], fh.name, self._source, batch, settings, guarded=False
                )
            finally:
                os.unlink(fh.name)
            got[kind] += len(lines)
        return got

    def undo(self, store: Store, payloads: list[bytes], batch: int) -> None:
        kinds = split_kinds(payloads)
        if kinds:
            rollback_batch(store, batch, [TABLES[k] for k in kinds])


def record_loader(
    spool: Spool,
    open_store: Callable[[], Store],
    label: str,
    *,
    say: Say = lambda line: None,
    server: bool = False,
    interval: float = 0.5,
) -> SpoolLoader:
    """A loader of a spool of record frames (``label``: "scrape", "gpu" …)."""
    sink = RecordSink(label, f"{label}:{spool.directory}", say)
    return SpoolLoader(spool, open_store, sink, say=say, server=server, interval=interval)
