"""CUDA graphs of prefills (one per token-count bucket), so a prefill step costs a graph replay
instead of ~10 launches per layer (eagerly, their host time bounds a step of a few hundred tokens).

Attention runs through the paged prefill kernel over tiles of each sequence's new tokens
(ModelRunner.prefill_paged), with block tables and tiles padded to the most a bucket can need, so a
bucket's graph serves any mix of sequences, starts and lengths: only the static input tensors
change. Padding rows write to the scratch block and are never read. Steps beyond the largest bucket
run eagerly through the same kernels.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from engine.ar.runner import ModelRunner, PrefillInputs
from engine.ar.seq import SeqLike
from engine.cuda_graph import capture_graph

log = logging.getLogger(__name__)

class PrefillGraphs:
    def __init__(self, runner: ModelRunner, max_tokens: int) -> None:
        self.runner = runner
        self.buckets = [n for n in (16, 32, 64, 128, 256, 512, 1024, 2048) if n <= max_tokens]
        self.max_tokens = self.buckets[-1]
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, PrefillInputs, torch.Tensor]] = {}
        self.replays = 0
        start = time.perf_counter()
        for n in reversed(self.buckets):  # largest first: smaller graphs reuse its memory
            self.graphs[n] = self._capture(n)
        log.info("captured prefill CUDA graphs for %s tokens in %.1f s", self.buckets,
                 time.perf_counter() - start)

    def _capture(self, tokens: int) -> tuple[torch.cuda.CUDAGraph, PrefillInputs, torch.Tensor]:
        static = self.runner.prefill_inputs([], tokens, fixed=True)  # all padding: warm-up writes only scratch
        graph, out = capture_graph(lambda: self.runner.prefill_paged(static), self.pool, "ar")
        return graph, static, out

    def run(self, items: Sequence[tuple[SeqLike, int, int]]) -> torch.Tensor:
        """Prefill `items` (at most max_tokens in all); returns hidden rows in item order [bucket, dim]."""
        total = sum(n for _, _, n in items)
        bucket = next(b for b in self.buckets if b >= total)
        graph, static, out = self.graphs[bucket]
        host = self.runner.prefill_inputs(items, bucket, torch.device("cpu"), fixed=True)
        for name in PrefillInputs.__dataclass_fields__:
            getattr(static, name).copy_(getattr(host, name), non_blocking=True)
        graph.replay()
        self.replays += 1
        return out
