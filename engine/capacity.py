"""Real-time capacity (PERFORMANCE.md): the most staggered streaming clients one engine serves with
>= 99 % of streams continuous (no gap over 100 ms) and first audio p95 <= 1 s.

    python -m engine.bench --capacity 32,64,96,128,160,192,256 [--max-batch 128] [--frames 400]

Each client streams PCM through AsyncEngine (the layer the HTTP server streams from), starting at a
random moment over the first `spread_s` seconds, with a different ~20 s voice (no prefix hit). A
listener starts playing at the first audio at 1x speed; a gap is a time it has nothing to play.
Every round given runs, in order; the answer is the largest real-time one.
"""
from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass

import torch

from engine.params import SamplingParams
from engine.serving.admission import EngineBusy
from engine.serving.async_engine import AsyncEngine
from engine.serving.metrics import FRAME_SECONDS

SAMPLE_RATE = 44100
MAX_GAP_MS = 100.0
MAX_TTFB_P95_MS = 1000.0
MIN_CONTINUOUS = 0.99


@dataclass
class CapacityRow:
    clients: int
    ttfb_p50_ms: float
    ttfb_p95_ms: float
    ttfb_max_ms: float
    continuous: float  # share of served streams whose longest gap is at most MAX_GAP_MS
    longest_gap_ms: float
    frames_per_s_per_stream: float
    aggregate_frames_per_s: float
    wall_s: float
    served: int  # streams that ended with all their frames
    refused: int  # EngineBusy at submission
    failed: int  # ended with an error or short

    @property
    def real_time(self) -> bool:
        return (self.served == self.clients and self.continuous >= MIN_CONTINUOUS
                and self.ttfb_p95_ms <= MAX_TTFB_P95_MS)


def gaps(arrivals: list[tuple[float, int]]) -> list[float]:
    """Seconds of silence a listener meets who starts at the first audio: arrivals (time, samples)."""
    if not arrivals:
        return []
    clock, have, out = arrivals[0][0], 0.0, []  # play start, seconds of audio received
    for t, n in arrivals:
        runs_dry = clock + have
        if have > 0 and t > runs_dry:
            out.append(t - runs_dry)
            clock += t - runs_dry
        have += n / SAMPLE_RATE
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


async def client(aengine: AsyncEngine, prompt: torch.Tensor, seed: int, frames: int, delay_s: float) -> dict:
    await asyncio.sleep(delay_s)
    sent, arrivals, outcome = time.perf_counter(), [], "served"
    try:
        async for chunk in aengine.stream_prompt(prompt, SamplingParams(seed=seed), frames):
            if len(chunk.pcm):
                arrivals.append((time.perf_counter(), len(chunk.pcm)))
    except EngineBusy:
        outcome = "refused"
    except Exception:  # an error is counted, the round goes on
        outcome = "failed"
    if outcome == "served" and sum(n for _, n in arrivals) != frames * 2048:
        outcome = "failed"
    return {"sent": sent, "arrivals": arrivals, "outcome": outcome}


async def capacity_round(aengine: AsyncEngine, prompts: list[torch.Tensor], frames: int, spread_s: float,
                         seed: int) -> CapacityRow:
    rng = random.Random(seed)
    start = time.perf_counter()
    results = await asyncio.gather(*[client(aengine, p, i, frames, rng.uniform(0, spread_s))
                                     for i, p in enumerate(prompts)])
    wall = time.perf_counter() - start
    served = [r for r in results if r["outcome"] == "served"]
    ttfb = [(r["arrivals"][0][0] - r["sent"]) * 1e3 for r in served]
    worst = [max(gaps(r["arrivals"]), default=0.0) * 1e3 for r in served]
    rates = [frames / (r["arrivals"][-1][0] - r["sent"]) for r in served]
    return CapacityRow(len(prompts), pct(ttfb, 0.5), pct(ttfb, 0.95), max(ttfb, default=float("nan")),
                       sum(w <= MAX_GAP_MS for w in worst) / max(1, len(worst)), max(worst, default=0.0),
                       statistics.mean(rates) if rates else 0.0, len(served) * frames / wall, wall, len(served),
                       sum(r["outcome"] == "refused" for r in results), sum(r["outcome"] == "failed" for r in results))


def capacity(aengine: AsyncEngine, make_prompt, counts: list[int], frames: int, spread_s: float) -> list[CapacityRow]:
    """Rounds of `counts` clients (make_prompt(i) gives client i's prompt grid)."""
    rows = []
    for i, count in enumerate(counts):
        prompts = [make_prompt(1000 * (i + 1) + c) for c in range(count)]
        rows.append(asyncio.run(capacity_round(aengine, prompts, frames, spread_s, i + 1)))
        print(format_row(rows[-1]), flush=True)
    return rows


HEADER = ("| clients | TTFB p50 / p95 / max ms | continuous (no gap > 100 ms) | longest gap ms "
          "| frames/s per stream | aggregate frames/s | served / refused / failed | wall s | real time |\n"
          "|---|---|---|---|---|---|---|---|---|")


def format_row(r: CapacityRow) -> str:
    return (f"| {r.clients} | {r.ttfb_p50_ms:.0f} / {r.ttfb_p95_ms:.0f} / {r.ttfb_max_ms:.0f} | "
            f"{r.continuous * 100:.1f} % | {r.longest_gap_ms:.0f} | {r.frames_per_s_per_stream:.1f} | "
            f"{r.aggregate_frames_per_s:.0f} | {r.served} / {r.refused} / {r.failed} | {r.wall_s:.1f} | "
            f"{'yes' if r.real_time else 'no'} |")


def largest_real_time(rows: list[CapacityRow]) -> int:
    """The most clients of a real-time round (0 if none was)."""
    return max((r.clients for r in rows if r.real_time), default=0)


def stream_seconds(frames: int) -> float:
    return frames * FRAME_SECONDS
