"""What the runner reads of a sequence: the serving core's `Sequence` (engine/serving/request.py) has
these fields; the runner depends on this shape, not on the serving core."""
from __future__ import annotations

from typing import Any, Protocol


class SeqLike(Protocol):
    prompt: list[tuple[int, ...]]  # columns of the [11, T] prompt grid
    slot: int  # row in the runner's per-sequence state buffers
    alloc: Any  # kv_cache.Allocation: its block_table

    @property
    def prompt_len(self) -> int: ...

    @property
    def next_position(self) -> int: ...
