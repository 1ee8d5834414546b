"""What a file holds, told from its first bytes before any reader is picked: empty, a JSON
array, binary, or text for the log-format registry (``readers.detect_format``) to tell.

Each answer that is not a format comes with its own one-line message for the ingest
report, so that an empty file, a ``[{…}, …]`` export and a stray binary are each named for
what they are rather than all reported as "not a log".

``unrotated(name)`` is the name a rotated log had before rotation (``app.jsonl.1.gz`` →
``app.jsonl.gz``, ``app.log-20251201`` → ``app.log``): what the file's suffix is judged by.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from infdebug.schema import open_bytes

HEAD_BYTES = 64 << 10
_CONTROL = bytes(
    [*range(0, 9), 11, 12, *range(14, 27), *range(28, 32), 127]
)  # not in text (ESC is)

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip-compressed, but its name does not end in .gz (rename it to {name}.gz)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed: only gzip is read; decompress it first (zstd -d)"),
    (b"BZh", "bzip2-compressed: only gzip is read; decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "xz-compressed: only gzip is read; decompress it first (xz -d)"),
    (b"PK\x03\x04", "a zip archive: unpack it and ingest the files inside"),
    (b"PAR1", "a Parquet file: only JSON Lines and text logs are read"),
    (b"\xff\xfe", "UTF-16 text: convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"),
    (b"\xfe\xff", "UTF-16 text: convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"),
)


# What log rotation appends to a name (before a compression suffix): logrotate's count
# (``.1``) or dateext (``-20251201``, ``-2025120113``, ``-20251201-1733000000``), Python's
# TimedRotatingFileHandler and others' dates (``.2025-12-01``, ``.2025-12-01_13-00``).
_ROTATED_RE = re.compile(
    r"(?:\.\d{1,6}|[-._]\d{8}(?:\d{2}|[-_]\d{1,12})?"
    r"|[-._]\d{4}-\d{2}-\d{2}(?:[-_T.]\d{2}(?:[-:]?\d{2}){0,2})?)$"
)


def unrotated(name: str) -> str:
    """``name`` without what log rotation appended to it (a ``.gz`` stays at the end)."""
    gz = name.endswith(".gz")
    base = name[:-3] if gz else name
    stem = _ROTATED_RE.sub("", base)
    if not stem:
        stem = base  # nothing but a rotation suffix: not a rotated name
    return stem + (".gz" if gz else "")


@dataclass(frozen=True)
class Sniffed:
    """``kind``: empty | blank | json_array | binary | text; ``message`` says
    what it is in one line (for the kinds that are not read on)."""

    kind: str
    message: str = ""


def sniff(path: str) -> Sniffed:
    """Look at the first ``HEAD_BYTES`` of ``path`` (decompressed when it is ``.gz``).
    OSError / EOFError (a missing or corrupt file) propagate to the caller."""
    with open_bytes(path) as fh:
        head = fh.read(HEAD_BYTES)
    name = os.path.basename(path)
    if not head:
        return Sniffed("empty", "empty file: nothing to load")
    why = _binary(head, name)
    if why:
        return Sniffed("binary", f"{path}: {why}: not loaded")
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    if not text.strip():
        return Sniffed("blank", "only blank lines: nothing to load")
    if _json_array(text):
        stem = name.removesuffix(".gz").rsplit(".", 1)[0] or name
        out = f"{stem}.jsonl" if f"{stem}.jsonl" != name else f"{stem}.lines.jsonl"
        return Sniffed(
            "json_array",
            (
                f"{path}: a JSON array, not JSON Lines (one record per line): not loaded; "
                f"convert it with: jq -c '.[]' {name} > {out}"
            ),
        )
    return Sniffed("text")


def _binary(head: bytes, name: str) -> str | None:
    for magic, why in _MAGIC:
        if head.startswith(magic):
            return "a binary file: " + why.format(name=name)
    if b"\x00" in head:
        return "a binary file (it has NUL bytes), not a text log"
    # Text, in whatever encoding, has next to no control bytes; compressed or binary data
    # has about 11% (29 of 256 values).
    ctrl = len(head) - len(head.translate(None, _CONTROL))
    if ctrl > max(4, len(head) // 50):
        return (
            f"a binary file ({ctrl} of its first {len(head)} bytes are control characters), "
            "not a text log"
        )
    return None


def _json_array(text: str) -> bool:
    """A ``[{…}, …]`` document (pretty-printed, or all on one line), as opposed to a JSON
    Lines file that happens to start with some other array line (that line is rejected)."""
    s = text.lstrip()
    if not s.startswith("["):
        return False
    try:
        doc = json.loads(s.split("\n", 1)[0])
    except RecursionError:
        return False  # nested too deeply to be an export: its lines are judged one by one
    except ValueError:
        # The first line does not parse on its own: the array goes on (``[`` then ``{…},``).
        return s[1:].lstrip().startswith(("{", "]"))
    return isinstance(doc, list) and all(isinstance(x, dict) for x in doc)
