"""Blocks of whole lines from a byte stream: how a large JSONL file is read in pieces.

One chunker for both sides of the load: the ingestor's careful path validates a file block
by block (collectors/ingestor.py), and the store streams a file to a ClickHouse server as
``input()`` bodies cut at line ends (store/client.py). It lives outside both packages
because the store never imports collectors (the arrows of DESIGN.md run one way).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO


def line_blocks(fh: IO[bytes], size: int) -> Iterator[tuple[bytes, bool]]:
    """Blocks of about ``size`` bytes (more where one line is longer), each ending at a line
    end, and whether it does (``True`` = complete): only the last block, the stream's tail
    after its final newline, may not."""
    carry = b""
    while True:
        block = fh.read(size)
        if not block:
            if carry:
                yield carry, carry.endswith(b"\n")
            return
        if carry:
            block = carry + block
        cut = block.rfind(b"\n") + 1
        if cut == 0:
            carry = block
            continue
        carry = block[cut:]
        yield block[:cut], True
