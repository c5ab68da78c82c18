"""Per-request timings and global counters (TTFT, TTFB, RTF, frames/s, queue, KV use, prefix hits)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from engine.serving.kv_cache import BlockManager

FRAME_SECONDS = 2048 / 44100
TTFB_BUCKETS_MS = (10, 25, 50, 100, 200, 400, 800, 1600, 3200, 6400)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)


@dataclass
class RequestTimes:
    submitted: float
    first_frame: float | None = None
    first_audio: float | None = None
    last_frame: float | None = None
    ended: float | None = None
    frames: int = 0

    def frame(self, t: float) -> None:
        self.first_frame = self.first_frame or t
        self.last_frame = t
        self.frames += 1

    def audio(self, t: float) -> None:
        self.first_audio = self.first_audio or t

    def done(self, t: float) -> None:
        self.ended = t

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_frame is None else (self.first_frame - self.submitted) * 1e3

    @property
    def ttfb_ms(self) -> float | None:
        return None if self.first_audio is None else (self.first_audio - self.submitted) * 1e3

    @property
    def audio_seconds(self) -> float:
        return self.frames * FRAME_SECONDS

    @property
    def rtf(self) -> float | None:
        end = self.ended or self.last_frame
        if not self.frames or end is None:
            return None
        return (end - self.submitted) / self.audio_seconds

    @property
    def frames_per_second(self) -> float | None:
        if self.frames < 2 or self.first_frame is None or self.last_frame is None:
            return None
        return (self.frames - 1) / max(self.last_frame - self.first_frame, 1e-9)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.total += value
        self.n += 1


@dataclass
class EngineMetrics:
    requests: dict[str, int] = field(default_factory=dict)  # finished requests by reason
    frames: int = 0
    steps: int = 0
    running: int = 0
    blocks_used: int = 0
    blocks_total: int = 0
    prefix_hit_rate: float = 0.0
    ttfb_ms: Histogram = field(default_factory=lambda: Histogram(TTFB_BUCKETS_MS))
    rtf: Histogram = field(default_factory=lambda: Histogram(RTF_BUCKETS))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def step(self, batch: int, blocks: BlockManager) -> None:
        with self.lock:
            self.steps += 1
            self.frames += batch
            self.running = batch
            self.blocks_total = blocks.num_blocks
            self.blocks_used = blocks.num_blocks - blocks.num_free
            self.prefix_hit_rate = blocks.hit_rate()

    def finished(self, reason: str, times: RequestTimes | None = None, frames: int = 0) -> None:
        with self.lock:
            self.requests[reason] = self.requests.get(reason, 0) + 1
            if times is not None and times.ttfb_ms is not None:
                self.ttfb_ms.observe(times.ttfb_ms)
            if times is not None and times.rtf is not None:
                self.rtf.observe(times.rtf)
