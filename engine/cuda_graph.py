"""The one way the engine captures a CUDA graph: the decode frame, prefill steps and vocoder pushes."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")
# Calls before capture: the first allocates (the caching allocator must not allocate inside the
# graph), Triton compiles and autotunes, cuDNN picks algorithms, torch.compile traces; the later ones
# run on settled state.
WARMUP_CALLS = 3


def capture_graph(fn: Callable[[], T], pool: Any, device: torch.device | None = None
                  ) -> tuple[torch.cuda.CUDAGraph, T]:
    """Warm fn up on a side stream, then capture one call of it into a graph in the shared memory
    `pool` (torch.cuda.graph_pool_handle()); returns the graph and that call's output (static buffers
    a replay overwrites)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(WARMUP_CALLS):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out
