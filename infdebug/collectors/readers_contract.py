"""Contract JSONL (``{"kind": "request", …}`` lines, infdebug's own records) as a log format.

Ingest loads such a file as it is (``native``: the Ingestor's fast path, not converted);
reading it as a request log (``read_engine_log``, ``convert_to_contract``) yields its request
records, its bad lines as errors, and counts its other records (gpu, metrics, …) as ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from infdebug.collectors.readers_base import Context, ReaderSpec
from infdebug.schema import LineError, Request, read_records


def read_contract(
    lines: Iterable[tuple[int, str]], ctx: Context
) -> Iterator[tuple[int, Request | LineError]]:
    """The file's records through the contract decoder (``lines`` are not needed: the
    decoder reads ``ctx.path`` itself)."""
    for n, rec in read_records(ctx.path):
        ctx.stats.lines += 1
        if isinstance(rec, LineError | Request):
            yield n, rec
        else:
            ctx.stats.ignored += 1


READER = ReaderSpec(
    "contract",
    "contract JSONL",
    read=read_contract,
    json_line=lambda obj: isinstance(obj.get("kind"), str),
    order=10,  # a "kind" tag wins over every other JSON format
    native=True,
)
