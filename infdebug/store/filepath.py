"""A file path that ClickHouse's ``file()`` reads literally.

``file()`` expands ``*``, ``?``, ``{a,b}`` and ``[…]`` in its path and has no escape for
them, so ingesting ``x?.jsonl`` would also load ``xY.jsonl`` beside it. A path holding any of
them is read through a symlink with a plain name (its compression suffix kept, which is how
ClickHouse tells a ``.gz``) in a private temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator

_GLOB = re.compile(r"[*?{}\[\]]")
_SUFFIX = re.compile(r"(\.[A-Za-z0-9]{1,8}){0,2}$")


@contextlib.contextmanager
def literal_path(path: str) -> Iterator[str]:
    """``path`` made absolute, or a plain-named symlink to it while the ``with`` lasts."""
    full = os.path.abspath(path)
    if not _GLOB.search(full):
        yield full
        return
    name = os.path.basename(full)
    m = _SUFFIX.search(name)
    suffix = m.group(0) if m and not _GLOB.search(m.group(0)) else ""
    with tempfile.TemporaryDirectory(prefix="infdebug-file-") as d:
        link = os.path.join(d, "input" + suffix)
        os.symlink(full, link)
        yield link
