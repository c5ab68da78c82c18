"""Live PCM for the browser player: a per-generation byte buffer and the route that streams it.

The Generate handler writes each engine chunk into a `PcmStream` (int16 LE, 44.1 kHz mono) under a
generation id that the page created; `GET /playground/stream/{gen_id}` sends those bytes as `audio/pcm`
while they arrive (Chromium holds back `application/octet-stream` bodies to sniff them, which delays
the first audio). The page starts that fetch in the same click that starts the handler, so the route
usually waits for the id to be opened rather than the other way round. A stream is readable from its
first byte until `KEEP_SECONDS` after it closed, so a slow or late reader still hears everything.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from fastapi.staticfiles import StaticFiles

from engine import SAMPLE_RATE, float_to_int16
from playground.server.access import Access

GEN_ID = re.compile(r"[0-9a-f]{32}")
OPEN_WAIT_SECONDS = 20.0  # how long a fetch waits for its handler to open the id (queueing included)
IDLE_SECONDS = 120.0  # a reader gives up when an open stream sends nothing for this long
KEEP_SECONDS = 60.0  # a closed stream stays readable this long
STATIC_DIR = Path(__file__).resolve().parent / "static"


class PcmStream:
    """Bytes written once, read by any number of readers from the start; closed when the take ends."""

    def __init__(self, owner: str) -> None:
        self.owner = owner  # only this visitor's requests may read it
        self.parts: list[bytes] = []
        self.closed = False
        self._changed = asyncio.Event()

    def write(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self.parts.append(float_to_int16(pcm).astype("<i2").tobytes())
            self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        # Swap in a fresh Event so every reader waiting on the old one wakes exactly once.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_closed(self) -> None:
        while not self.closed:
            await self._changed.wait()

    async def read(self) -> AsyncIterator[bytes]:
        sent = 0
        while True:
            changed = self._changed  # taken before the checks: a write after them sets this Event
            while sent < len(self.parts):
                yield self.parts[sent]
                sent += 1
            if self.closed:
                return
            try:
                await asyncio.wait_for(changed.wait(), IDLE_SECONDS)
            except TimeoutError:
                return


class StreamHub:
    """The open and recently closed streams of this process, by generation id."""

    def __init__(self) -> None:
        self._streams: dict[str, PcmStream] = {}
        self._opened = asyncio.Event()

    def open(self, gen_id: str, owner: str) -> PcmStream | None:
        """A new stream for a page-made id; None when the id is malformed or taken (no live playback)."""
        if not GEN_ID.fullmatch(gen_id or "") or gen_id in self._streams:
            return None
        stream = self._streams[gen_id] = PcmStream(owner)
        self._opened.set()
        self._opened = asyncio.Event()
        return stream

    def close(self, gen_id: str) -> None:
        stream = self._streams.get(gen_id)
        if stream is not None and not stream.closed:
            stream.close()
            asyncio.get_running_loop().call_later(KEEP_SECONDS, self._streams.pop, gen_id, None)

    async def wait_closed(self, gen_id: str, timeout: float) -> None:
        """Until the generation `gen_id` has ended (its handler closes the stream on any exit)."""
        stream = self._streams.get(gen_id)
        if stream is not None:
            with suppress(TimeoutError):
                await asyncio.wait_for(stream.wait_closed(), timeout)

    async def wait_for(self, gen_id: str, timeout: float = OPEN_WAIT_SECONDS) -> PcmStream | None:
        deadline = asyncio.get_running_loop().time() + timeout
        while gen_id not in self._streams:
            opened, left = self._opened, deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(opened.wait(), left)
            except TimeoutError:
                return None
        return self._streams[gen_id]


def install_routes(app: FastAPI, hub: StreamHub, access: Access) -> None:
    """The stream route and the player's static files (registered before Gradio takes `/`)."""

    @app.get("/playground/stream/{gen_id}", include_in_schema=False)
    async def stream_pcm(gen_id: str, request: Request) -> StreamingResponse:
        if not GEN_ID.fullmatch(gen_id):
            raise HTTPException(404, "unknown generation id")
        stream = await hub.wait_for(gen_id)
        # Another visitor's stream is answered exactly like one that never started.
        if stream is None or stream.owner != access.owner(dict(request.cookies)):
            raise HTTPException(404, "no generation with this id started in time")
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                   "X-Accel-Buffering": "no",  # proxies (nginx, Spaces) must not buffer live audio
                   "X-Sample-Rate": str(SAMPLE_RATE), "X-Sample-Format": "s16le"}
        return StreamingResponse(stream.read(), media_type="audio/pcm", headers=headers)

    app.mount("/playground/static", StaticFiles(directory=STATIC_DIR), name="playground-static")
