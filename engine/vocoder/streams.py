"""Turns each request's new frames into PCM with one batched RowVocoder call per step.

A streaming request gets a vocoder row at its first frame and keeps it for its whole life (across
text chunks). Rows hold no more streams than decode at once: a row is taken only by a request that
is decoding, and one between chunks holds a row but its next chunk is queued first and admitted
before any new request, so the engine's max_batch rows always suffice (asserted). A row is reset on
the vocoder's stream, behind any push of its previous owner still queued there. Its first frame is
decoded at once (time to first audio); later frames are decoded in growing groups (1, 2, 4, ... up to
`group_frames`), so the audio already out always covers the time until the next group; while a
stream ramps, each group is handed out in the step its frames are read (`starting`). Past that
ramp, whenever one stream's group is full every other stream past its ramp pushes what it has with
it: streams that started at different steps fall into step after one group and then share one
decoder call, which reads the codec's weights once for all of them. Rows with the same number of
pending frames share one call, of at most `push_rows` rows. A stream alone keeps the plain 1, 2, 4,
..., group_frames cadence, so its audio is the same at every run (the split into pushes moves float
rounding).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.cuda_graph import capture_graph
from engine.models.codec import Codec
from engine.vocoder.rows import RowVocoder

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    row: int = -1
    pending: list[np.ndarray] = field(default_factory=list)  # [10] codes per frame
    pushes: int = 0

    def ramping(self, group_frames: int) -> bool:
        return 2 ** self.pushes < group_frames


@dataclass
class _Decoded:
    """One push's PCM [B, n·2048], copied to host memory behind the push (CUDA) or already there."""

    rids: list[int]
    pcm: torch.Tensor
    done: torch.cuda.Event | None = None

    def ready(self) -> bool:
        return self.done is None or self.done.query()


class AudioStreams:
    def __init__(self, codec: Codec, max_rows: int, group_frames: int, overlap: bool = True,
                 fused: bool = False, push_rows: int | None = None, device_streams: bool = False) -> None:
        """fused: decode with the codec kernels of fused_decoder.py (the backend decides; float32 codec).
        push_rows: streams decoded in one call at most (default max_rows). device_streams (the backend's,
        CUDA): pushes padded to graph shapes, on a second stream when `overlap`, read back asynchronously."""
        # One extra row is scratch: batches are padded to a few sizes with it, so the codec sees a
        # handful of shapes (each new conv shape costs a slow first call on the GPU).
        self.vocoder = RowVocoder(codec, max_rows + 1, fused)
        self.max_rows = max_rows
        self.scratch_row = max_rows
        self.push_rows = min(max_rows, push_rows or max_rows)
        self.buckets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b < self.push_rows] + [self.push_rows]
        self.device = next(codec.parameters()).device
        self.device_streams = device_streams
        # High priority: a stream's first audio must not queue behind the next AR frame's kernels.
        self.side = torch.cuda.Stream(self.device, priority=-1) if device_streams and overlap else None
        self.pad = device_streams
        self.group_frames = group_frames
        self.free_rows = list(range(max_rows - 1, -1, -1))
        self.streams: dict[int, _Stream] = {}
        self.graphs: dict[tuple[int, int], tuple] = {}  # (rows, frames) -> graph, inputs, output
        self.decoded: deque[_Decoded] = deque()  # pushes whose PCM has not been handed out yet
        self.graph_pool = torch.cuda.graph_pool_handle() if device_streams else None

    def warm_up(self) -> None:
        """CUDA: capture a graph of every (rows, frames) shape the streams will use, on the scratch
        row (a first call per shape is slow: cuDNN picks algorithms, Triton compiles; and eager
        pushes are launch-bound). Groups are powers of two, but a flush (first frame, end of a
        chunk) pushes whatever is pending, so every count up to group_frames gets a graph."""
        start = time.perf_counter()
        for rows in self.buckets:
            for n in range(1, self.group_frames + 1):
                self._capture(rows, n)
        self.vocoder.reset(self.scratch_row)
        log.info("captured vocoder CUDA graphs for %d shapes (rows %s x 1-%d frames) in %.1f s", len(self.graphs),
                 self.buckets, self.group_frames, time.perf_counter() - start)

    def _capture(self, rows: int, n: int) -> None:
        row_ids = torch.full((rows,), self.scratch_row, dtype=torch.long, device=self.device)
        codes = torch.zeros(rows, 10, n, dtype=torch.long, device=self.device)
        assert self.graph_pool is not None
        try:
            graph, out = capture_graph(lambda: self.vocoder.push(row_ids, codes), self.graph_pool, "vocoder",
                                       self.device)
        except RuntimeError as exc:  # keep serving eagerly rather than not at all
            log.warning("vocoder graph for %d rows x %d frames not captured: %s", rows, n, exc)
            return
        self.graphs[(rows, n)] = (graph, row_ids, codes, out)

    def open(self, request_id: int) -> None:
        self.streams[request_id] = _Stream()

    def close(self, request_id: int) -> None:
        stream = self.streams.pop(request_id, None)
        if stream is not None and stream.row >= 0:
            self.free_rows.append(stream.row)

    def add(self, request_id: int, codes: np.ndarray) -> None:
        stream = self.streams.get(request_id)
        if stream is not None:
            stream.pending.append(codes)

    def due(self, stream: _Stream, full: bool) -> bool:
        """full: some stream past its ramp has a whole group pending (the others push with it)."""
        if stream.ramping(self.group_frames):
            return len(stream.pending) >= 2 ** stream.pushes
        return full

    def starting(self) -> set[int]:
        """Streams whose audio is handed out in the step its frames are read: a first frame (time to
        first audio) and a ramp group that is due (the listener holds less than one more group;
        left to the next step's pickup, it arrived a frame later and early streams ran dry)."""
        return {rid for rid, s in self.streams.items()
                if s.pending and (s.pushes == 0 or (s.ramping(self.group_frames) and self.due(s, full=False)))}

    def decode(self, flush: set[int]) -> list[tuple[int, np.ndarray]]:
        """Queue a push for every stream whose next group is due (or that is in `flush`) and hand out
        the PCM of finished pushes, in order. The host never waits for the side stream, except for
        the streams in `flush` (a first frame, an ended chunk), whose audio is returned now."""
        groups: dict[int, list[int]] = defaultdict(list)
        full = any(len(s.pending) >= self.group_frames and not s.ramping(self.group_frames)
                   for s in self.streams.values())
        with self._side_stream():  # row resets too: ordered after the pushes of a row's last owner
            for rid, stream in self.streams.items():
                if stream.pending and (rid in flush or self.due(stream, full)):
                    self._take_row(stream)
                    groups[len(stream.pending)].append(rid)
            for rids in groups.values():
                for start in range(0, len(rids), self.push_rows):
                    self.decoded.append(self._push(rids[start:start + self.push_rows]))
        out = []
        while self.decoded and (flush or self.decoded[0].ready()):
            item = self.decoded.popleft()
            if item.done is not None:
                item.done.synchronize()
            pcm = item.pcm.numpy()
            out += [(rid, pcm[i].copy()) for i, rid in enumerate(item.rids) if rid in self.streams]
        return out

    def busy(self) -> bool:
        return bool(self.decoded)

    def _side_stream(self) -> contextlib.AbstractContextManager:
        """On CUDA the vocoder runs on its own stream, so it overlaps the AR frame queued before it."""
        return torch.cuda.stream(self.side) if self.side is not None else contextlib.nullcontext()

    def rows_free(self) -> int:
        return len(self.free_rows)

    def _take_row(self, stream: _Stream) -> None:
        if stream.row < 0:
            assert self.free_rows, f"all {self.max_rows} vocoder rows are taken: more streams decode than rows"
            stream.row = self.free_rows.pop()
            self.vocoder.reset(stream.row)

    def _push(self, rids: list[int]) -> _Decoded:
        streams = [self.streams[r] for r in rids]
        rows = [s.row for s in streams]
        codes = np.stack([np.stack(s.pending, axis=1) for s in streams])  # [B, 10, n]
        if self.pad:
            extra = next(b for b in self.buckets if b >= len(rows)) - len(rows)
            rows += [self.scratch_row] * extra
            codes = np.concatenate([codes, np.zeros((extra, *codes.shape[1:]), np.int64)])
        graph = self.graphs.get((len(rows), codes.shape[-1]))
        if graph is not None:
            g, rows_buf, codes_buf, out = graph
            rows_buf.copy_(torch.tensor(rows, dtype=torch.long), non_blocking=True)
            codes_buf.copy_(torch.from_numpy(codes), non_blocking=True)
            g.replay()
            pcm = out
        else:
            pcm = self.vocoder.push(torch.tensor(rows, dtype=torch.long, device=self.device),
                                    torch.from_numpy(codes).to(self.device))
        for s in streams:
            s.pending.clear()
            s.pushes += 1
        pcm = pcm[:len(streams)].float()  # [B, n * 2048]
        if not self.device_streams:
            return _Decoded(rids, pcm)
        # The graph's output buffer is reused by its next replay: copy out now, read when done.
        host = torch.empty(pcm.shape, dtype=pcm.dtype, pin_memory=True)
        host.copy_(pcm, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _Decoded(rids, host, done)
