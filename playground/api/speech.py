"""POST /v1/audio/speech: one complete file, a chunked audio stream, or OpenAI's SSE events.

- No `stream_format`: the whole clip is generated, then sent as one file (a WAV with real sizes, an
  mp3 with its LAME header) with timing headers (X-TTFB-Ms, X-RTF, X-Frames, X-Finish-Reason).
- `stream_format: "audio"`: encoded bytes go out as each frame's PCM exists (StreamEncoder).
- `stream_format: "sse"`: `speech.audio.delta` events with base64 audio, then `speech.audio.done`.
Every response carries X-Request-Id and X-Seed. A client that goes away aborts its engine request:
streaming bodies are closed however the response ends, and a complete-file request watches for the
disconnect while it waits.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from engine import (
    ALIGN_WAIT_SECONDS,
    CONTENT_TYPES,
    SAMPLE_RATE,
    AlignerBusy,
    EngineUnhealthy,
    StreamEncoder,
    StreamPiece,
    align_words,
    alignable,
    as_json,
    encode_audio,
    time_stretch,
)
from playground.api.errors import APIError
from playground.api.synthesis import SpeechBody, check_model, param_of, references, synthesis_request
from playground.state import AppState

log = logging.getLogger(__name__)
T = TypeVar("T")
EngineStream = AsyncGenerator[StreamPiece, None]  # what AsyncEngine.stream() returns
# Streaming with speed != 1 stretches blocks of at least this many samples (4 frames, ~0.19 s):
# WSOLA needs several 40 ms windows to find good splice points, and fewer block joins mean fewer seams.
STRETCH_BLOCK_SAMPLES = 4 * 2048
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but /metrics counts it


class ClosingStreamingResponse(StreamingResponse):
    """Closes the engine stream however the response ends (client gone, error, never started), so the
    request is aborted and its KV blocks freed at once, not whenever the generator is collected."""

    def __init__(self, content: AsyncGenerator[bytes, None], source: EngineStream, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.content, self.source = content, source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.content.aclose()
            await self.source.aclose()


class Disconnected(Exception):
    """The client went away while a request was waiting for audio."""


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (which aborts its engine request) if the client disconnects."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise Disconnected()


async def _first_audio(stream: EngineStream) -> StreamPiece:
    """The piece after the stream's announcement of its request id (the first with audio, or the end)."""
    piece = await anext(stream)
    return await anext(stream) if piece.text_chunks is not None else piece


async def first_piece(request: Request, stream: EngineStream) -> StreamPiece:
    """The request's first piece (bad input raises ValueError here, before any header is sent).

    A disconnect meanwhile is honoured once the piece has come, by closing the stream, never by
    cancelling: a cancel that lands while AsyncEngine.stream() still waits for the engine thread to
    add the request makes that thread die (AsyncEngine.call sets a result on a cancelled Future).
    """
    task = asyncio.ensure_future(_first_audio(stream))
    try:
        return await until_disconnected(request, asyncio.shield(task))
    except Disconnected:
        await asyncio.gather(task, return_exceptions=True)
        await stream.aclose()
        raise


async def collect(first: StreamPiece, stream: EngineStream) -> tuple[np.ndarray, StreamPiece]:
    """All PCM of a request and its final piece (with stats)."""
    pieces, piece = [], first
    async with aclosing(stream):
        while not piece.finished:
            pieces.append(piece.pcm)
            piece = await anext(stream)
    return np.concatenate([np.zeros(0, np.float32), *pieces]), piece


class Stretcher:
    """Pitch-preserving speed change of a stream, block by block (see STRETCH_BLOCK_SAMPLES)."""

    def __init__(self, speed: float) -> None:
        self.speed, self.pending = speed, np.zeros(0, np.float32)

    def push(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        if self.speed == 1.0:
            return pcm
        self.pending = np.concatenate([self.pending, pcm])
        if len(self.pending) < STRETCH_BLOCK_SAMPLES and not last:
            return np.zeros(0, np.float32)
        block, self.pending = self.pending, np.zeros(0, np.float32)
        return time_stretch(block, self.speed)


async def encoded_chunks(first: StreamPiece, stream: EngineStream, fmt: str, speed: float,
                         kept: list[np.ndarray] | None = None) -> AsyncIterator[tuple[bytes, StreamPiece | None]]:
    """(bytes, None) per piece of encoded audio as PCM arrives, then (tail bytes, final piece). `kept`
    collects the PCM as sent (after any speed change)."""
    encoder, stretcher = StreamEncoder(fmt), Stretcher(speed)
    async with aclosing(stream):
        piece = first
        while not piece.finished:
            pcm = stretcher.push(piece.pcm)
            if kept is not None:
                kept.append(pcm)
            data = encoder.push(pcm)
            if data:
                yield data, None
            piece = await anext(stream)
        tail = stretcher.push(np.zeros(0, np.float32), last=True)
        if kept is not None:
            kept.append(tail)
        yield encoder.push(tail) + encoder.finish(), piece


async def audio_body(first: StreamPiece, stream: EngineStream, fmt: str,
                     speed: float) -> AsyncGenerator[bytes, None]:
    async for data, _ in encoded_chunks(first, stream, fmt, speed):
        if data:
            yield data


def sse_event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def sse_body(first: StreamPiece, stream: EngineStream, fmt: str, speed: float,
                   input_tokens: int, timestamps_of: str | None = None) -> AsyncGenerator[bytes, None]:
    """timestamps_of: the text whose word times are sent (speech.audio.timestamps) before done."""
    kept: list[np.ndarray] | None = [] if timestamps_of is not None else None
    try:
        async for data, final in encoded_chunks(first, stream, fmt, speed, kept):
            if data:
                yield sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
            if final is not None and timestamps_of is not None:
                try:
                    event = {"words": await word_times(np.concatenate([np.zeros(0, np.float32), *(kept or [])]),
                                                       timestamps_of)}
                except AlignerBusy as exc:  # the audio is out already: say why its words are missing
                    event = {"words": [], "error": str(exc)}
                yield sse_event({"type": "speech.audio.timestamps", **event})
            if final is not None:
                frames = int(final.stats.get("frames") or 0)
                usage = {"input_tokens": input_tokens, "output_tokens": frames,
                         "total_tokens": input_tokens + frames}
                yield sse_event({"type": "speech.audio.done", "usage": usage})
    except (RuntimeError, EngineUnhealthy) as exc:  # failed mid-stream: say so in-band, the status is sent
        log.error("speech stream failed: %s", exc)
        yield sse_event({"type": "error", "error": {"message": f"generation failed: {exc}",
                                                    "type": "server_error", "param": None, "code": None}})


def aligner_busy(exc: AlignerBusy) -> APIError:
    return APIError(503, str(exc), param="timestamps", code="server_busy",
                    headers={"Retry-After": str(int(ALIGN_WAIT_SECONDS))})


async def word_times(samples: np.ndarray, text: str) -> list[dict[str, Any]]:
    """The words of `text` with their times in `samples` (engine.align_words, off the event loop).
    AlignerBusy when the aligner stayed taken."""
    try:
        return as_json(await run_in_threadpool(align_words, samples, SAMPLE_RATE, text))
    except ValueError as exc:  # checked before generating (alignable): only a changed dictionary gets here
        log.warning("word timestamps: %s", exc)
        return []


def timing_headers(stats: dict[str, Any], reason: str | None) -> dict[str, str]:
    headers = {"X-Frames": str(int(stats.get("frames") or 0)), "X-Finish-Reason": str(reason)}
    if stats.get("ttfb_ms") is not None:
        headers["X-TTFB-Ms"] = f"{stats['ttfb_ms']:.1f}"
    if stats.get("rtf") is not None:
        headers["X-RTF"] = f"{stats['rtf']:.4f}"
    return headers


async def complete_file(request: Request, stream: EngineStream, body: SpeechBody,
                        headers: dict[str, str]) -> Response:
    first = await first_piece(request, stream)
    samples, final = await until_disconnected(request, collect(first, stream))
    if body.speed != 1.0:
        samples = await run_in_threadpool(time_stretch, samples, body.speed)
    data = await run_in_threadpool(encode_audio, samples, body.response_format)
    headers |= timing_headers(final.stats, final.reason)
    if body.timestamps == "word":
        try:
            words = await word_times(samples, body.input)
        except AlignerBusy as exc:
            raise aligner_busy(exc) from exc
        return JSONResponse({"audio": base64.b64encode(data).decode(),
                             "content_type": CONTENT_TYPES[body.response_format],
                             "duration": round(len(samples) / SAMPLE_RATE, 3),
                             "words": words}, headers=headers)
    return Response(data, media_type=CONTENT_TYPES[body.response_format], headers=headers)


async def streamed(request: Request, state: AppState, stream: EngineStream, body: SpeechBody,
                   headers: dict[str, str]) -> Response:
    fmt = body.response_format
    tokens = len(state.loaded.tokenizer.encode(body.input)) if body.stream_format == "sse" else 0
    # The first piece comes before the answer, so bad input still gets a 400 rather than a broken
    # stream; from here on nothing can fail before the response owns (and will close) the engine stream.
    first = await first_piece(request, stream)
    if body.stream_format == "sse":
        content = sse_body(first, stream, fmt, body.speed, tokens,
                           body.input if body.timestamps == "word" else None)
        return ClosingStreamingResponse(content, stream, media_type="text/event-stream",
                                        headers=headers | {"Cache-Control": "no-cache"})
    return ClosingStreamingResponse(audio_body(first, stream, fmt, body.speed), stream,
                                    media_type=CONTENT_TYPES[fmt], headers=headers)


def router(state: AppState) -> APIRouter:
    r = APIRouter()

    @r.post("/v1/audio/speech", response_model=None)
    async def speech(body: SpeechBody, request: Request) -> Response:
        check_model(body.model)
        if body.timestamps == "word":
            if body.stream_format == "audio":
                raise APIError(400, 'timestamps "word" need stream_format "sse" (a speech.audio.timestamps event) '
                               "or a complete file (a JSON answer); a raw audio stream has no place for them",
                               param="timestamps")
            try:
                known = await run_in_threadpool(alignable, body.input)
            except AlignerBusy as exc:
                raise aligner_busy(exc) from exc
            if not known:
                raise APIError(400, "word timestamps are aligned with an English dictionary, and none of the "
                               "input's words is in it", param="timestamps")
        req, seed = synthesis_request(body)
        req = replace(req, references=await references(state, body))
        request_id = f"req_{secrets.token_hex(12)}"
        headers = {"X-Request-Id": request_id, "X-Seed": str(seed)}
        stream = state.engine.stream(req)
        try:
            if body.stream_format is None:
                return await complete_file(request, stream, body, headers)
            return await streamed(request, state, stream, body, headers)
        except ValueError as exc:  # the engine rejected the request when it was added
            raise APIError(400, str(exc), param=param_of(exc)) from exc
        except Disconnected:
            log.info("%s: client disconnected, request aborted", request_id)
            return Response(status_code=CLIENT_CLOSED)
        except RuntimeError as exc:
            raise APIError(500, f"generation failed: {exc}", code="generation_failed") from exc

    return r
