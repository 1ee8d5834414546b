"""Prometheus exposition snapshots (``curl …/metrics > r1.prom``) as a log format.

Told by the file name (``.prom``, ``.prom.gz``) or by the first non-blank line (``# HELP
name …`` / ``# TYPE name …``); converted to contract ``metrics`` records by
``prom_snapshot.convert_exposition`` (which says how samples become records).
"""

from __future__ import annotations

from infdebug.collectors.prom_snapshot import convert_exposition
from infdebug.collectors.readers_base import Converted, ReaderSpec

PROM_SUFFIXES = (".prom", ".prom.gz")


def is_exposition_start(line: str) -> bool:
    """The exposition format's first non-blank line: ``# HELP name …`` or ``# TYPE name …``."""
    return line.startswith(("# HELP ", "# TYPE "))


def convert(path: str, out_path: str, replica: str | None) -> Converted:
    return convert_exposition(path, out_path, replica)


READER = ReaderSpec(
    "prometheus",
    "a Prometheus exposition (# HELP / # TYPE lines, or a .prom file)",
    convert=convert,
    first_line=is_exposition_start,
    suffixes=PROM_SUFFIXES,
    order=60,
    label="prometheus exposition",
)
