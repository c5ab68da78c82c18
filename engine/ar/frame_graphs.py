"""CUDA graphs of the whole decode frame, one per batch-size bucket, replayed with padded batches.

Each bucket owns static input tensors; a replay copies the step's inputs into them (one host-to-device
copy per tensor), replays the captured frame and reads back [B, 11]. Padded rows point at the runner's
scratch slot and scratch block, so they never touch a live sequence. With `compile`, the frame is first
run through torch.compile (its kernels then get captured like any other).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from engine.ar.runner import FrameInputs, ModelRunner
from engine.ar.seq import SeqLike
from engine.cuda_graph import capture_graph

log = logging.getLogger(__name__)


class FrameGraphs:
    def __init__(self, runner: ModelRunner, buckets: list[int], compile: bool = False) -> None:
        self.runner = runner
        self.buckets = sorted(b for b in buckets if b <= runner.cfg.max_batch)
        self.max_batch = self.buckets[-1]
        self.frame = runner.decode_frame
        if compile:
            self.frame = torch.compile(runner.decode_frame, dynamic=False, fullgraph=False)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, FrameInputs, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()
        start = time.perf_counter()
        for b in reversed(self.buckets):  # largest first so smaller graphs reuse its memory pool
            self.graphs[b] = self._capture(b)
        log.info("captured decode-frame CUDA graphs for batch sizes %s in %.1f s", self.buckets,
                 time.perf_counter() - start)

    def _static_inputs(self, batch: int) -> FrameInputs:
        return self.runner.frame_inputs([], [], batch, full_width=True)

    def _capture(self, batch: int) -> tuple[torch.cuda.CUDAGraph, FrameInputs, torch.Tensor]:
        static = self._static_inputs(batch)
        graph, out = capture_graph(lambda: self.frame(static), self.pool, "ar")
        return graph, static, out

    def bucket_for(self, batch: int) -> int:
        return next(b for b in self.buckets if b >= batch)

    def launch(self, seqs: Sequence[SeqLike], frame_offsets: list[int]) -> torch.Tensor:
        """Replay the frame for `seqs` without waiting; returns the [B, 11] device output."""
        bucket = self.bucket_for(len(seqs))
        graph, static, out = self.graphs[bucket]
        host = self.runner.frame_inputs(seqs, frame_offsets, bucket, full_width=True,
                                        device=torch.device("cpu"))
        for name in ("slots", "positions", "slot_mapping", "block_tables", "context_lens", "frames"):
            getattr(static, name).copy_(getattr(host, name), non_blocking=True)
        graph.replay()
        return out[:len(seqs)]
