"""The one way the engine captures a CUDA graph: the decode frame, prefill steps and vocoder pushes.

Graphs that may replay at the same time on different CUDA streams must be captured on different
streams. cuBLAS keeps its workspace (split-K partials and the flags its stream-K GEMMs wait on) per
stream, and a captured GEMM keeps the address of the capture stream's workspace. PyTorch captures
every graph on one default stream, so the AR graphs (replayed on the main stream) and the vocoder's
(on its side stream) shared one workspace: two GEMMs running together overwrote each other's flags,
and one waited on them forever with the GPU at 100 % (the many-streams stop of docs/BENCHMARKS.md).
Each `family` (one per replay stream) therefore captures on its own stream.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch

T = TypeVar("T")
# Calls before capture: the first allocates (the caching allocator must not allocate inside the
# graph), Triton compiles and autotunes, cuDNN picks algorithms, torch.compile traces; the later ones
# run on settled state.
WARMUP_CALLS = 3
Family = Literal["ar", "vocoder"]  # the AR frame and prefill (main stream); the vocoder (its side stream)
_capture_streams: dict[tuple[Family, torch.device], torch.cuda.Stream] = {}


def capture_stream(family: Family, device: torch.device | None = None) -> torch.cuda.Stream:
    """The stream the graphs of `family` are captured on (kept for the process: the graphs keep the
    address of its cuBLAS workspace)."""
    device = torch.device("cuda", torch.cuda.current_device() if device is None or device.index is None
                          else device.index)
    key = (family, device)
    if key not in _capture_streams:
        _capture_streams[key] = torch.cuda.Stream(device)
    return _capture_streams[key]


def capture_graph(fn: Callable[[], T], pool: Any, family: Family, device: torch.device | None = None
                  ) -> tuple[torch.cuda.CUDAGraph, T]:
    """Warm fn up, then capture one call of it into a graph in the shared memory `pool`
    (torch.cuda.graph_pool_handle()), both on `family`'s capture stream; returns the graph and that
    call's output (static buffers a replay overwrites)."""
    stream = capture_stream(family, device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(WARMUP_CALLS):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        out = fn()
    return graph, out
