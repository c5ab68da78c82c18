"""EngineConfig: limits and switches of the serving core (KV pool, batching, graphs)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from engine.loader import LoadedModel


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 64  # tokens per KV block
    num_blocks: int | None = None  # None: sized from free device memory (GPU) or cpu_kv_mb (CPU)
    gpu_memory_fraction: float = 0.80  # share of the GPU's free memory (after weights) given to KV
    cpu_kv_mb: int = 1024
    max_batch: int = 32  # sequences decoded together in one frame
    prefill_budget: int = 2048  # prompt tokens computed per step (chunked prefill)
    # New sequences whose prompts are done wait (at most this many tokens' worth of prefill steps)
    # while the rest of the admitted prompts fit in this many tokens, then start decoding together.
    burst_hold_tokens: int = 16384
    cuda_graphs: bool = True
    # The fused Triton path (fused_stack.py; on CUDA also the codec decoder's); None = on CUDA, off on CPU.
    fused_kernels: bool | None = None
    # Prefills of up to this many tokens replay a CUDA graph (fused path; 0 = always eager).
    prefill_graph_tokens: int = 2048
    compile: bool = False  # torch.compile the module-path frame before capturing it (no fused kernels)
    graph_batch_sizes: tuple[int, ...] | None = None  # CUDA-graph buckets; None = 1,2,4,8,... up to max_batch
    max_reference_seconds: float = 30.0
    vocoder_group_frames: int = 8  # streamed audio is decoded in groups of up to this many frames
    overlap_vocoder: bool = True  # CUDA: decode audio on a second stream, overlapping the next frame
    # Queue frame k+1 before reading frame k, so host work hides behind the device (None = on CUDA).
    run_ahead: bool | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.max_batch < 1 or self.prefill_budget < 1:
            raise ValueError("block_size, max_batch and prefill_budget must be positive")
        if self.burst_hold_tokens < 0:
            raise ValueError("burst_hold_tokens must be >= 0 (0: every sequence starts when its prompt is done)")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError("num_blocks must be positive")
        if not 0.05 <= self.gpu_memory_fraction <= 0.98:
            raise ValueError("gpu_memory_fraction must be in [0.05, 0.98]")
        if not 1 <= self.vocoder_group_frames <= 16:  # CUDA captures a vocoder graph per group size
            raise ValueError("vocoder_group_frames must be in [1, 16]")
        if self.prefill_graph_tokens not in (0, 16, 32, 64, 128, 256, 512, 1024, 2048):
            raise ValueError("prefill_graph_tokens must be 0 or a power of two from 16 to 2048")
        if self.compile and self.fused_kernels:
            raise ValueError("compile applies to the module path: it cannot be combined with fused_kernels")
        if self.max_reference_seconds <= 0:
            raise ValueError("max_reference_seconds must be positive")

    def block_bytes(self, loaded: LoadedModel) -> int:
        t = loaded.config.text
        elem = torch.empty((), dtype=loaded.dtype).element_size()
        return 2 * t.n_layer * self.block_size * t.n_local_heads * t.head_dim * elem

    def blocks_from_memory(self, loaded: LoadedModel) -> int:
        if loaded.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(loaded.device)
            budget = int(free * self.gpu_memory_fraction) - (1 << 30)  # 1 GiB for activations/graphs
        else:
            budget = self.cpu_kv_mb << 20
        return max(1, budget // self.block_bytes(loaded))

    def graph_buckets(self) -> list[int]:
        if self.graph_batch_sizes:
            return sorted({min(b, self.max_batch) for b in self.graph_batch_sizes} | {self.max_batch})
        sizes = [b for b in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128) if b < self.max_batch]
        return sizes + [self.max_batch]
