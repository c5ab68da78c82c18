"""A take: one engine request from the playground, streamed, measured, and split into its text chunks.

`run_take` consumes `AsyncEngine.stream()` in its own task and tees every PCM chunk into the live
stream, so the figures can tick on a clock (every TICK_SECONDS) however slowly audio arrives; leaving
it early (Stop cancels the handler) cancels that task, which leaves `stream()` and so aborts the
request in the engine. A finished take knows where each text chunk starts and ends in its samples,
so one chunk can be regenerated alone and spliced back.
"""
from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, replace

import numpy as np

from engine import MAX_FRAMES_LIMIT, SAMPLE_RATE, AudioChunk, SamplingParams, SynthesisRequest
from engine.serving.engine import Engine, Job
from playground.state import AppState
from playground.ui.figures import LiveFigures
from playground.ui.stream import PcmStream
from playground.ui.voices import VoiceRef

TICK_SECONDS = 0.25  # live figures refresh at least this often
SEED_LIMIT = 2**31  # random seeds stay short enough to read out and retype
NEIGHBOUR_MAX_SECONDS = 30.0  # the engine's reference limit
_LEADING_SPEAKER = re.compile(r"^\s*(<\|speaker:\d+\|>)")


@dataclass(frozen=True)
class GenSettings:
    """Everything that shapes a take's audio besides the voice; what history keeps to re-run it."""

    text: str
    temperature: float
    top_p: float
    top_k: int
    ras: bool
    seed: int
    max_frames: int
    chunk_length: int

    @classmethod
    def from_controls(cls, text: str, temperature: float, top_p: float, top_k: float, ras: bool,
                      seed: float | None, max_seconds: float, chunk_length: float, hop: int) -> GenSettings:
        seed = secrets.randbelow(SEED_LIMIT) if seed is None or seed < 0 else int(seed)
        max_frames = min(MAX_FRAMES_LIMIT, max(1, math.ceil(float(max_seconds) * SAMPLE_RATE / hop)))
        return cls(text or "", float(temperature), float(top_p), int(top_k), bool(ras), seed, max_frames,
                   int(chunk_length))

    @classmethod
    def from_history(cls, text: str, params: dict, seed: int) -> GenSettings:
        keys = ("temperature", "top_p", "top_k", "ras", "max_frames", "chunk_length")
        return cls(text, seed=seed, **{k: params[k] for k in keys})

    def request(self, voice: VoiceRef) -> SynthesisRequest:
        sampling = SamplingParams(self.temperature, self.top_p, self.top_k, self.ras, self.seed)
        return SynthesisRequest(self.text, voice.inputs(), sampling, self.max_frames, self.chunk_length)

    def params(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("text", "seed")}


@dataclass
class Take:
    samples: np.ndarray  # float32 mono, raw engine output
    chunks: list[dict]  # {text, start_sample, end_sample} per text chunk
    stats: dict  # the engine's figures + reason + ttfa_ms


async def run_take(state: AppState, req: SynthesisRequest, live: PcmStream | None,
                   figs: LiveFigures) -> AsyncIterator[LiveFigures | Take]:
    """Yield `figs` every tick while generating, then the Take. Engine errors raise RuntimeError."""
    pieces: list[np.ndarray] = []
    task = asyncio.create_task(_consume(state, req, live, figs, pieces))
    await asyncio.sleep(0)  # the task submits the request now, so the lookup below queues after it
    try:
        job = await state.engine.run(_find_job(req.sampling))
        while not task.done():
            await asyncio.wait({task}, timeout=TICK_SECONDS)
            if job is not None:
                figs.chunk, figs.num_chunks = job.chunk_index + 1, len(job.chunks)
                if not figs.samples:
                    figs.queue_position = await state.engine.queue_position(job.request_id)
            if not task.done():
                yield figs
        final = task.result()
    finally:
        if not task.done():
            task.cancel()  # leaves stream(), which aborts the request in the engine
            with suppress(asyncio.CancelledError):
                await task
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    stats = {**final.stats, "reason": final.reason, "ttfa_ms": figs.ttfa_ms}
    yield Take(samples, chunk_bounds(job, req.text, len(samples), figs.samples_per_frame), stats)


async def _consume(state: AppState, req: SynthesisRequest, live: PcmStream | None, figs: LiveFigures,
                   pieces: list[np.ndarray]) -> AudioChunk:
    """Run the request, keeping its PCM in `pieces` and teeing it into the live stream; the final chunk."""
    async for chunk in state.engine.stream(req):
        if len(chunk.pcm):
            figs.on_audio(len(chunk.pcm))
            pieces.append(chunk.pcm)
            if live is not None:
                live.write(chunk.pcm)
        if chunk.finished:
            return chunk
    raise RuntimeError("the engine stream ended without a final chunk")


def _find_job(sampling: SamplingParams) -> Callable[[Engine], Job | None]:
    """The engine's Job for our request, found by the identity of its SamplingParams.

    AsyncEngine.stream() yields neither the request id before the first audio (needed for the queue
    position) nor each chunk's index (needed for chunk boundaries); the Job holds both, and its
    `history` list is complete once the final chunk has arrived.
    """
    return lambda engine: next((job for job in engine.jobs.values() if job.params is sampling), None)


def chunk_bounds(job: Job | None, text: str, num_samples: int, hop: int) -> list[dict]:
    """Each generated text chunk's sample range; the whole take as one chunk when unknown."""
    if job is not None:
        bounds, start = [], 0
        for chunk_text, codes in job.history:
            end = start + codes.shape[1] * hop
            bounds.append({"text": chunk_text, "start_sample": start, "end_sample": end})
            start = end
        if bounds and start == num_samples:
            return bounds
    return [{"text": text.strip(), "start_sample": 0, "end_sample": num_samples}]


async def collect(state: AppState, req: SynthesisRequest, hop: int) -> Take:
    """Run a take to the end without live playback."""
    async for item in run_take(state, req, None, LiveFigures(hop, time.perf_counter())):
        if isinstance(item, Take):
            return item
    raise AssertionError("run_take ended without a Take")


def splice(samples: np.ndarray, chunks: list[dict], index: int, new: np.ndarray,
           seed: int) -> tuple[np.ndarray, list[dict]]:
    """Replace chunk `index`'s samples by `new`; later chunks shift by the change in length."""
    start, end = chunks[index]["start_sample"], chunks[index]["end_sample"]
    delta = len(new) - (end - start)
    out = []
    for i, chunk in enumerate(chunks):
        if i == index:
            chunk = {**chunk, "end_sample": start + len(new), "seed": seed}
        elif i > index:
            chunk = {**chunk, "start_sample": chunk["start_sample"] + delta, "end_sample": chunk["end_sample"] + delta}
        out.append(chunk)
    return np.concatenate([samples[:start], new, samples[end:]]), out


async def neighbour_voice(state: AppState, samples: np.ndarray, chunks: list[dict], index: int) -> VoiceRef:
    """Without a reference, the nearest other chunk of the same speaker becomes one: a regenerated
    chunk then keeps the voice the rest of the take has instead of drawing a new random one."""
    def speaker(text: str) -> str | None:
        match = _LEADING_SPEAKER.match(text)
        return match.group(1) if match else None

    order = sorted((i for i in range(len(chunks)) if i != index), key=lambda i: (abs(i - index), i > index))
    for i in order:
        c = chunks[i]
        clip = samples[c["start_sample"]:c["end_sample"]]
        seconds = len(clip) / SAMPLE_RATE
        if speaker(c["text"]) == speaker(chunks[index]["text"]) and 1.0 <= seconds <= NEIGHBOUR_MAX_SECONDS:
            codes = (await state.engine.run(lambda engine, clip=clip: engine.encode_audio(clip))).numpy()
            return VoiceRef(None, None, None, c["text"], codes)
    return VoiceRef()


async def regenerate_chunk(state: AppState, settings: GenSettings, voice: VoiceRef, samples: np.ndarray,
                           chunks: list[dict], index: int, hop: int) -> tuple[np.ndarray, list[dict], int]:
    """A new take of chunk `index` alone (new seed, same voice), spliced in: (samples, chunks, seed)."""
    if voice.codes is None:
        voice = await neighbour_voice(state, samples, chunks, index)
    seed = secrets.randbelow(SEED_LIMIT)
    one = replace(settings, text=chunks[index]["text"], seed=seed, chunk_length=0)
    take = await collect(state, one.request(voice), hop)
    new_samples, new_chunks = splice(samples, chunks, index, take.samples, seed)
    return new_samples, new_chunks, seed
