"""A take: one engine request from the playground, streamed, measured, and split into its text chunks.

`run_take` consumes `AsyncEngine.stream()` in its own task and tees every PCM piece into the live
stream, so the figures can tick on a clock (every TICK_SECONDS) however slowly audio arrives; leaving
it early (Stop cancels the handler) cancels that task, which leaves `stream()` and so aborts the
request in the engine. A finished take knows where each text chunk starts and ends in its samples,
so one chunk can be regenerated alone and spliced back.
"""
from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from engine import (
    MAX_FRAMES_LIMIT,
    MAX_REFERENCE_SECONDS,
    MIN_REFERENCE_SECONDS,
    SAMPLE_RATE,
    ChunkDone,
    SamplingParams,
    StreamPiece,
    SynthesisRequest,
    random_seed,
)
from playground.state import AppState
from playground.ui.figures import LiveFigures
from playground.ui.stream import PcmStream
from playground.ui.voices import VoiceRef

TICK_SECONDS = 0.25  # live figures refresh at least this often
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
        seed = random_seed() if seed is None or seed < 0 else int(seed)
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
    progress = _Progress()
    task = asyncio.create_task(_consume(state, req, live, figs, progress))
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=TICK_SECONDS)
            if progress.request_id is not None:
                figs.chunk, figs.num_chunks = progress.chunk_index + 1, progress.num_chunks
                if not figs.samples:
                    figs.queue_position = await state.engine.queue_position(progress.request_id)
            if not task.done():
                yield figs
        final = task.result()
    finally:
        if not task.done():
            task.cancel()  # leaves stream(), which aborts the request in the engine
            with suppress(asyncio.CancelledError):
                await task
    samples = np.concatenate(progress.pieces) if progress.pieces else np.zeros(0, np.float32)
    stats = {**final.stats, "reason": final.reason, "ttfa_ms": figs.ttfa_ms}
    yield Take(samples, chunk_bounds(progress.done, req.text, len(samples), figs.samples_per_frame), stats)


@dataclass
class _Progress:
    """What the stream has told so far: the request id and text chunks, then audio and finished chunks."""

    request_id: int | None = None
    num_chunks: int = 1
    chunk_index: int = 0
    pieces: list[np.ndarray] = field(default_factory=list)
    done: list[ChunkDone] = field(default_factory=list)


async def _consume(state: AppState, req: SynthesisRequest, live: PcmStream | None, figs: LiveFigures,
                   progress: _Progress) -> StreamPiece:
    """Run the request, keeping its PCM and finished text chunks in `progress` and teeing the PCM into
    the live stream; the final piece."""
    async for piece in state.engine.stream(req):
        if piece.text_chunks is not None:
            progress.request_id, progress.num_chunks = piece.request_id, len(piece.text_chunks)
        progress.chunk_index = piece.chunk_index
        if piece.chunk_done is not None:
            progress.done.append(piece.chunk_done)
        if len(piece.pcm):
            figs.on_audio(len(piece.pcm))
            progress.pieces.append(piece.pcm)
            if live is not None:
                live.write(piece.pcm)
        if piece.finished:
            return piece
    raise RuntimeError("the engine stream ended without a final piece")


def chunk_bounds(done: list[ChunkDone], text: str, num_samples: int, hop: int) -> list[dict]:
    """Each generated text chunk's sample range (chunks that made no frame left out); the whole take as
    one chunk when they do not cover it."""
    bounds = [{"text": c.text, "start_sample": c.start_frame * hop, "end_sample": c.end_frame * hop}
              for c in done if c.end_frame > c.start_frame]
    if bounds and bounds[-1]["end_sample"] == num_samples:
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
        near = speaker(c["text"]) == speaker(chunks[index]["text"])
        if near and MIN_REFERENCE_SECONDS <= seconds <= MAX_REFERENCE_SECONDS:
            codes = await state.engine.encode_reference(clip)
            return VoiceRef(None, None, None, c["text"], codes)
    return VoiceRef()


async def regenerate_chunk(state: AppState, settings: GenSettings, voice: VoiceRef, samples: np.ndarray,
                           chunks: list[dict], index: int, hop: int) -> tuple[np.ndarray, list[dict], int]:
    """A new take of chunk `index` alone (new seed, same voice), spliced in: (samples, chunks, seed)."""
    if voice.codes is None:
        voice = await neighbour_voice(state, samples, chunks, index)
    seed = random_seed()
    one = replace(settings, text=chunks[index]["text"], seed=seed, chunk_length=0)
    take = await collect(state, one.request(voice), hop)
    new_samples, new_chunks = splice(samples, chunks, index, take.samples, seed)
    return new_samples, new_chunks, seed
