"""EngineConfig: limits and switches of the serving core (KV pool, batching, graphs, admission, watchdog)."""
from __future__ import annotations

from dataclasses import dataclass

from engine.params import MAX_REFERENCE_SECONDS


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 64  # tokens per KV block
    num_blocks: int | None = None  # None: sized from free device memory (GPU) or cpu_kv_mb (CPU)
    # share of the GPU's free memory given to KV, measured after the weights and the vocoder (its
    # state rows and graphs) are on the device (memory_plan.py)
    gpu_memory_fraction: float = 0.80
    # Bytes of device memory the whole process may use (weights included): the KV pool is planned from it
    # and the allocator held to it, so a 16 or 24 GB card can be reproduced on a bigger one. None: all.
    gpu_memory_bytes: int | None = None
    cpu_kv_mb: int = 1024
    max_batch: int = 32  # sequences decoded together in one frame
    prefill_budget: int = 2048  # prompt tokens computed per step (chunked prefill)
    # ... and at most this many while any sequence decodes: a 2,048-token step (~35 ms on an H100)
    # plus a frame of 128 rows fell below 21.5 frames/s, and playing streams ran dry during bursts
    decode_prefill_budget: int = 1024
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
    max_reference_seconds: float = MAX_REFERENCE_SECONDS
    vocoder_group_frames: int = 8  # streamed audio is decoded in groups of up to this many frames
    overlap_vocoder: bool = True  # CUDA: decode audio on a second stream, overlapping the next frame
    # Queue frame k+1 before reading frame k, so host work hides behind the device (None = on CUDA).
    run_ahead: bool | None = None
    # Streams decoded in one vocoder call at most (larger groups are split): bounds the codec's
    # activation memory and its graph shapes whatever max_batch is.
    vocoder_push_rows: int = 64
    # Requests waiting for a decode slot before add_request raises EngineBusy. None: 2 * max_batch,
    # so a queued request starts within about two request lengths (~10 s at 400 frames a request).
    max_waiting: int | None = None
    # Watchdog: a step running longer than this fails every request and marks the engine unhealthy.
    # None: 30 s on CUDA (a frame takes ~10 ms), 600 s on CPU (real weights take seconds a step); 0: off.
    step_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.max_batch < 1 or self.prefill_budget < 1 or self.decode_prefill_budget < 1:
            raise ValueError("block_size, max_batch, prefill_budget and decode_prefill_budget must be positive")
        if self.burst_hold_tokens < 0:
            raise ValueError("burst_hold_tokens must be >= 0 (0: every sequence starts when its prompt is done)")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError("num_blocks must be positive")
        if self.gpu_memory_bytes is not None and self.gpu_memory_bytes < 1 << 30:
            raise ValueError("gpu_memory_bytes must be at least 1 GiB")
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
        if self.vocoder_push_rows < 1:
            raise ValueError("vocoder_push_rows must be positive")
        if self.max_waiting is not None and self.max_waiting < 0:
            raise ValueError("max_waiting must be >= 0 (0: refuse every request that would wait)")
        if self.step_timeout_s is not None and self.step_timeout_s < 0:
            raise ValueError("step_timeout_s must be >= 0 (0: no watchdog)")

    @property
    def waiting_limit(self) -> int:
        return 2 * self.max_batch if self.max_waiting is None else self.max_waiting

    def step_limit_s(self, cuda: bool) -> float:
        """The watchdog's limit in seconds on this device (0: off)."""
        if self.step_timeout_s is not None:
            return self.step_timeout_s
        return 30.0 if cuda else 600.0

    def graph_buckets(self) -> list[int]:
        if self.graph_batch_sizes:
            return sorted({min(b, self.max_batch) for b in self.graph_batch_sizes} | {self.max_batch})
        sizes = [b for b in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128) if b < self.max_batch]
        return [*sizes, self.max_batch]
