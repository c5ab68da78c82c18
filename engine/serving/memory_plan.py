"""The device memory plan: how many KV blocks the pool gets, and what the rest of the memory holds.

The KV pool is sized last, from the memory left once the weights and the streaming vocoder (its
state rows and CUDA graphs, the largest fixed cost besides the weights) are on the device, keeping a
margin for the AR's graphs and activations (captured after the pool: they point into it). Sizing it
first left the vocoder's graph capture without memory at large batches. The plan is logged at start:
weights, vocoder, graphs, KV blocks and how many streams of a typical length they hold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.config import ModelConfig

if TYPE_CHECKING:
    from engine.loader import LoadedModel

GIB = 1 << 30
AR_RESERVE_BYTES = 1 << 30  # the AR's frame and prefill graphs and activations (~0.3 GiB at batch 256)
# A typical stream: a 20 s voice (430 frames) and a sentence in the prompt, then ~25 s of speech.
TYPICAL_STREAM_TOKENS = 1024


def block_bytes(config: ModelConfig, dtype: torch.dtype, block_size: int) -> int:
    """Bytes of one KV block: keys and values of every slow layer for `block_size` tokens."""
    t = config.text
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * t.n_layer * block_size * t.n_local_heads * t.head_dim * elem


def kv_blocks_for(free_bytes: int, fraction: float, one_block: int) -> int:
    """Blocks the pool gets out of `free_bytes` (the memory left after weights and vocoder)."""
    return max(1, (int(free_bytes * fraction) - AR_RESERVE_BYTES) // one_block)


def streams_held(num_blocks: int, block_size: int, tokens: int = TYPICAL_STREAM_TOKENS) -> int:
    """How many sequences of `tokens` tokens (prompt + frames) the pool holds at once."""
    return num_blocks // -(-tokens // block_size)


def device_bytes(device: torch.device) -> int:
    """Memory torch holds on `device` now, graph pools included (0 on CPU). Cached free blocks are
    released first: a graph capture releases them too, so counting them made the vocoder's share
    negative (the loader's leftovers, released by its first capture)."""
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved(device)


def available_bytes(driver_free: int, reserved: int, allocated: int, cap: int | None) -> int:
    """Memory left for new allocations: the driver's free memory plus what torch holds unused, and
    under a cap (`--gpu-memory`) at most the cap less what is allocated."""
    available = driver_free + reserved - allocated
    return available if cap is None else max(0, min(available, cap - allocated))


def free_bytes(device: torch.device, cap: int | None = None) -> int:
    """Device memory free for new allocations now (under `cap` bytes for the whole process)."""
    free, _ = torch.cuda.mem_get_info(device)
    return available_bytes(free, torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device), cap)


def cap_device_memory(device: torch.device, cap: int) -> None:
    """Hold the process to `cap` bytes of the device (the caching allocator refuses beyond it), so a
    smaller card can be reproduced on a bigger one. Refused when the weights alone exceed it."""
    total = torch.cuda.get_device_properties(device).total_memory
    held = torch.cuda.memory_allocated(device)
    if cap > total:
        raise ValueError(f"--gpu-memory {cap / GIB:.1f} GB is more than this GPU has ({total / GIB:.1f} GiB)")
    if held >= cap:
        raise ValueError(f"the weights alone take {held / GIB:.1f} GiB: --gpu-memory {cap / GIB:.1f} GB leaves "
                         "nothing for the KV cache")
    torch.cuda.set_per_process_memory_fraction(cap / total, device)


@dataclass(frozen=True)
class MemoryPlan:
    weights_bytes: int
    vocoder_bytes: int  # state rows, graph buffers and the codec's working memory
    graphs_bytes: int  # the AR's frame and prefill graphs
    num_blocks: int
    block_bytes: int
    block_size: int
    max_batch: int
    buckets: tuple[int, ...] = ()  # batch sizes with a captured frame graph

    @property
    def kv_bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    @property
    def largest_batch(self) -> int:
        """The most streams of the typical length that decode together with every KV block they need."""
        return streams_held(self.num_blocks, self.block_size)

    def describe(self) -> str:
        streams = self.largest_batch
        buckets = f", frame graphs for batches {','.join(map(str, self.buckets))}" if self.buckets else ""
        text = (f"memory plan: weights {self.weights_bytes / GIB:.1f} GiB, vocoder {self.vocoder_bytes / GIB:.1f} GiB, "
                f"AR graphs {self.graphs_bytes / GIB:.2f} GiB, KV {self.kv_bytes / GIB:.1f} GiB = {self.num_blocks} "
                f"blocks of {self.block_size} tokens ({self.num_blocks * self.block_size} tokens) = {streams} streams "
                f"of {TYPICAL_STREAM_TOKENS} tokens (max_batch {self.max_batch}{buckets})")
        if streams < self.max_batch:
            text += (f"; at that length at most {streams} streams decode at once, the rest wait for KV blocks: "
                     f"--max-batch {max(1, streams)} fits this card")
        return text


def kv_blocks(loaded: LoadedModel, block_size: int, fraction: float, cpu_kv_mb: int, cap: int | None = None) -> int:
    """The pool's size when none is given: from the device memory free now (call it after the vocoder
    is built), under `cap` bytes for the process if given, or `cpu_kv_mb` on the CPU."""
    one = block_bytes(loaded.config, loaded.dtype, block_size)
    if loaded.device.type == "cuda":
        return kv_blocks_for(free_bytes(loaded.device, cap), fraction, one)
    return max(1, (cpu_kv_mb << 20) // one)
