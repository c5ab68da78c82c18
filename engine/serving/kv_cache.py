"""Paged KV cache bookkeeping: a pool of fixed-size blocks, block tables and a prefix cache.

Pure Python (no torch): the runner owns the tensors, this module decides which block holds which
tokens. A full block is keyed by a hash chained over (previous block's hash, this block's 11-row
content), so two requests whose prompts start with the same voice prompt share those blocks.
Blocks are reference-counted; a free block keeps its cached content (and stays findable by hash)
until it is reused, least recently freed first.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

Column = tuple[int, ...]  # one grid column: token id + 10 codes


def block_hash(parent: bytes, columns: Sequence[Column]) -> bytes:
    """Chained hash of one block: every column has the same 11 ints, so fixed-width packing is
    unambiguous (and ~50x faster than formatting; admission hashes every waiting prompt)."""
    flat = array("q", [v for col in columns for v in col])
    return hashlib.blake2b(parent + flat.tobytes(), digest_size=16).digest()


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None


@dataclass
class Allocation:
    """What a sequence holds: its block table and how many leading tokens were already cached."""

    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    hashes: list[bytes] = field(default_factory=list)  # hashes of the leading full prompt blocks


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        assert num_blocks > 0 and block_size > 0
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in reuse order (oldest freed first); cached ones stay findable until reused.
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}
        self.prefix_queries = 0
        self.prefix_hit_tokens = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def chain_hashes(self, columns: Sequence[Column]) -> list[bytes]:
        hashes, parent = [], b""
        for start in range(0, len(columns) - self.block_size + 1, self.block_size):
            parent = block_hash(parent, columns[start:start + self.block_size])
            hashes.append(parent)
        return hashes

    def _cached_prefix(self, hashes: list[bytes]) -> list[int]:
        found = []
        for h in hashes:
            block_id = self.cached.get(h)
            if block_id is None:
                break
            found.append(block_id)
        return found

    def can_allocate(self, prompt: Sequence[Column], total_tokens: int) -> bool:
        hits = self._cached_prefix(self.chain_hashes(prompt))
        reusable_free = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        need = self.blocks_for(total_tokens) - len(hits)
        return need <= self.num_free - reusable_free

    def allocate(self, prompt: Sequence[Column], total_tokens: int) -> Allocation:
        """Reserve blocks for `total_tokens` (prompt + generation budget), reusing cached prefix blocks.

        At least the last prompt token is always recomputed so the caller gets its hidden state.
        """
        assert self.can_allocate(prompt, total_tokens), "caller must check can_allocate first"
        hashes = self.chain_hashes(prompt)
        hits = self._cached_prefix(hashes)
        if hits and len(hits) * self.block_size >= len(prompt):
            hits = hits[:-1]
        for b in hits:
            self._take(b)
        table = list(hits)
        while len(table) < self.blocks_for(total_tokens):
            table.append(self._take_fresh())
        self.prefix_queries += len(prompt)
        self.prefix_hit_tokens += len(hits) * self.block_size
        return Allocation(table, len(hits) * self.block_size, hashes)

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def _take_fresh(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]
        block.hash = None
        block.ref_count = 1
        return block_id

    def register(self, alloc: Allocation, columns: Sequence[Column]) -> None:
        """Publish the full blocks of `columns` (whose KV is now computed) to the prefix cache."""
        hashes = self.chain_hashes(columns)
        for block_id, h in zip(alloc.block_table, hashes):
            block = self.blocks[block_id]
            if block.hash is None and h not in self.cached:
                block.hash = h
                self.cached[h] = block_id

    def release(self, alloc: Allocation) -> None:
        """Drop a sequence's references; freed blocks keep their cached content for reuse."""
        for block_id in reversed(alloc.block_table):
            block = self.blocks[block_id]
            assert block.ref_count > 0, f"block {block_id} released twice"
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        alloc.block_table = []

    def hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_queries if self.prefix_queries else 0.0
