"""The engine's prefix cache: KV blocks of prompt prefixes, keyed by a hash chain over the
prompt's token IDs, least recently used evicted first."""

from __future__ import annotations

from collections import OrderedDict

import torch


class PrefixCache:
    """KV blocks keyed by a hash chain over prompt token IDs (block i's key covers blocks
    0..i), least recently used evicted first."""

    def __init__(self, block_size: int, capacity: int) -> None:
        self.block_size, self.capacity = block_size, capacity
        self.blocks: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.hits = self.queries = 0

    def keys(self, ids: list[int], n_blocks: int) -> list[int]:
        out, h = [], 0
        bs = self.block_size
        for i in range(n_blocks):
            h = hash((h, tuple(ids[i * bs : (i + 1) * bs])))
            out.append(h)
        return out

    def lookup(self, keys: list[int]) -> list[torch.Tensor]:
        found = []
        for k in keys:
            b = self.blocks.get(k)
            if b is None:
                break
            self.blocks.move_to_end(k)
            found.append(b)
        return found

    def insert(self, key: int, block: torch.Tensor) -> None:
        if self.capacity <= 0:
            return
        self.blocks[key] = block
        self.blocks.move_to_end(key)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
