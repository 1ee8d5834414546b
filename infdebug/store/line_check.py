"""The fast ingest path's check of a JSONL file's raw lines, run by ClickHouse itself.

ClickHouse's JSONEachRow reader is more lenient than the contract (``Table.line_guard``
lists how), so before the fast path loads a file as JSONEachRow, ClickHouse reads the same
file again as ``LineAsString`` and judges every non-blank line with ``Table.line_guard``
(one simdjson parse a line). The ingestor trusts the file only if no line is in doubt and
the load then stores exactly one row per non-blank line. A check may doubt a good line
(the file then takes the careful path), never pass a bad one. It costs about half the
load's time again (bench/ingest.py, 211 MB of requests on two idle cores: 0.55-0.6 s beside
a 1.0-1.2 s load), two thirds of it in ``JSONExtractKeysAndValuesRaw``; the careful path
costs three times the load.

Only the embedded store can run it: chDB reads the file through ``file()``. A server would
need the body streamed to ``INSERT INTO FUNCTION null(…) SELECT throwIf(…) FROM
input('line String') FORMAT LineAsString``, which the ``Store`` protocol has no call for
yet, so ``check_lines`` answers ``None`` there and the file takes the careful path.

One of those leniencies bites the careful path too, which loads the contract decoder's
good lines through the same reader: JSONEachRow takes a field name in any ASCII case as
the column (``"TTFT_S": 7`` is ``ttft_s``), where the contract ignores it as an unknown
field. ``column_in_other_case`` finds such a line, and the careful path loads it
re-encoded from the decoded record instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from infdebug.store.base import Store
from infdebug.store.ddl import TABLES, Table
from infdebug.store.filepath import literal_path

# Blank as the careful path means it (``bytes.strip()``): ASCII whitespace only.
_BLANK = r"'^[ \\t\\r\\x0b\\x0c]*$'"

# simdjson is what the JSON functions' strictness was measured with; rapidjson is not.
CHECK_SETTINGS = {"allow_simdjson": 1}


@dataclass(frozen=True)
class LineCheck:
    lines: int  # non-blank lines
    doubtful: int  # of those, lines the fast path cannot vouch for


def check_sql(table: Table, source: str) -> str:
    """The check query over ``source``, a table of one ``line String`` column."""
    return (
        f"SELECT count(), countIf(NOT ({table.line_guard('line', 'fields')})) FROM ("
        f"SELECT line, JSONExtractKeysAndValuesRaw(line) AS fields FROM {source} "
        f"WHERE NOT match(line, {_BLANK}))"
    )


def check_lines(store: Store, table: Table, path: str) -> LineCheck | None:
    """How many non-blank lines ``path`` (plain or ``.gz``) has and how many of them are in
    doubt; ``None`` where the store cannot read the file itself (a server)."""
    if getattr(store, "home", None) is None:
        return None
    src = "file({path:String}, 'LineAsString', 'line String')"
    with literal_path(path) as literal:
        _, rows = store.query(check_sql(table, src), {"path": literal}, settings=CHECK_SETTINGS)
    lines, doubtful = rows[0]
    return LineCheck(int(lines), int(doubtful))


_KEYS = msgspec.json.Decoder(dict[str, msgspec.Raw])  # top-level names, values unparsed
_READ_NAMES = {
    kind: frozenset([c.name for c in t.read_columns] + ([] if kind == "finding" else ["kind"]))
    for kind, t in TABLES.items()
}


def column_in_other_case(line: bytes, kind: str) -> str | None:
    """A field name of ``line`` (a valid JSON object of ``kind``) that JSONEachRow reads as
    a column but the contract does not: the column's name in other ASCII case."""
    names = _READ_NAMES[kind]
    for key in _KEYS.decode(line):
        if key not in names and key.lower() in names:
            return key
    return None
