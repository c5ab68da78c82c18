"""AsyncEngine: one device thread runs Engine.step() in a loop; asyncio callers stream audio chunks.

Every touch of the Engine happens on the device thread: callers send commands (add, abort, call)
through a queue and receive Events through per-request asyncio queues. Leaving `stream()` early (a
client disconnect, a Stop button, an exception) aborts the request and frees its KV blocks.

A watchdog (watchdog.py) fails every waiting client with EngineUnhealthy when one step runs past
the limit, after which `healthy` is False, every call is refused and, by default, the process exits
with EXIT_HUNG so a supervisor restarts it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from engine.params import SamplingParams
from engine.serving.admission import EngineUnhealthy
from engine.serving.engine import Engine, Event
from engine.serving.metrics import EngineMetrics
from engine.serving.request import ChunkDone, SynthesisRequest
from engine.serving.watchdog import Hang, Watchdog, exit_process

log = logging.getLogger(__name__)
SHUTDOWN_WAIT_S = 10  # how long shutdown waits for the device thread to finish its step


@dataclass
class StreamPiece:
    """A piece of one request's output stream; the last one has `finished` set and the final figures.
    ("Chunk" always means a text chunk: the parts a long text is spoken in.)

    The first piece of a stream carries no audio: it tells the request id and `text_chunks`, the text
    chunks the request is spoken in, before any audio. A piece with `chunk_done` closes that text chunk.
    """

    request_id: int
    pcm: np.ndarray  # float32 mono, may be empty
    codes: np.ndarray  # [10, n] int64 frames behind this pcm
    finished: bool = False
    reason: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    chunk_index: int = 0  # which text chunk this audio belongs to
    text_chunks: tuple[str, ...] | None = None  # set on the first piece only
    chunk_done: ChunkDone | None = None  # the text chunk that ended here (its text and frame span)


class AsyncEngine:
    def __init__(self, engine: Engine, on_hang: Callable[[Hang], None] | None = exit_process) -> None:
        """on_hang: what to do, besides failing the clients, when a step hangs past the watchdog's
        limit (EngineConfig.step_timeout_s); by default end the process (watchdog.exit_process)."""
        self.engine = engine
        self.on_hang = on_hang
        self._commands: queue.Queue[tuple[Future, Callable[[], None]]] = queue.Queue()
        self._listeners: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event]]] = {}
        limit = engine.cfg.step_limit_s(engine.loaded.device.type == "cuda")
        self.watchdog = Watchdog(limit, lambda: (engine.steps, engine.phase), self._hung) if limit > 0 else None
        self._current: Future | None = None  # the command the device thread runs now
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._stopped = False
        self._thread.start()

    # -- device thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped and self.healthy:
            block = not self.engine.has_work()
            try:
                while True:
                    self._current, command = self._commands.get(block=block, timeout=0.5 if block else None)
                    self._timed(command)
                    self._current = None
                    block = False
            except queue.Empty:
                pass
            if self.engine.has_work() and self.healthy:
                self._timed(self._step)

    def _timed(self, fn: Callable[[], None]) -> None:
        """Run fn under the watchdog's eye; nothing it raises may end the device thread."""
        if self.watchdog is not None:
            self.watchdog.busy_since = time.monotonic()
        try:
            fn()
        except Exception:
            log.exception("engine thread: unexpected error")
        finally:
            if self.watchdog is not None:
                self.watchdog.busy_since = None

    def _hung(self, hang: Hang) -> None:
        """On the watchdog's thread, the device thread being stuck: fail every client and every queued
        command, then hand over to on_hang."""
        for rid, (loop, q) in self._listeners.copy().items():  # copy(): atomic under the GIL
            loop.call_soon_threadsafe(q.put_nowait, Event(rid, finished=True, reason="unhealthy", error=hang.message))
        current = self._current
        if current is not None:  # e.g. an add_request stuck on the device
            with contextlib.suppress(InvalidStateError):  # it may have finished meanwhile
                current.set_exception(EngineUnhealthy(hang.message))
        self._fail_commands()
        if self.on_hang is not None:
            self.on_hang(hang)

    def _fail_commands(self) -> None:
        while True:
            try:
                fut, _ = self._commands.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(self._unhealthy())

    @property
    def metrics(self) -> EngineMetrics:
        """The engine's counters and histograms (thread-safe: they carry their own lock)."""
        return self.engine.metrics

    def _unhealthy(self) -> EngineUnhealthy:
        hang = None if self.watchdog is None else self.watchdog.hang
        return EngineUnhealthy(hang.message if hang is not None else "the engine stopped serving")

    @property
    def healthy(self) -> bool:
        return self.watchdog is None or self.watchdog.hang is None

    def health(self) -> dict[str, Any]:
        """Readable from any thread without the device thread (which may be the one that hangs)."""
        hang = None if self.watchdog is None else self.watchdog.hang
        return {"healthy": hang is None, "reason": None if hang is None else hang.message,
                "step": self.engine.steps if hang is None else hang.step,
                "phase": self.engine.phase if hang is None else hang.phase,
                "step_seconds": 0.0 if self.watchdog is None else self.watchdog.busy_seconds(),
                "limit_s": None if self.watchdog is None else self.watchdog.limit_s,
                "running": len(self.engine.scheduler.running), "waiting": len(self.engine.scheduler.waiting),
                "kv_blocks_total": self.engine.blocks.num_blocks, "kv_blocks_free": self.engine.blocks.num_free}

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except Exception as exc:  # a device error must not kill the server: fail the running requests
            log.exception("engine step failed")
            events = [Event(rid, finished=True, reason="error", error=f"{type(exc).__name__}: {exc}")
                      for rid in list(self.engine.jobs)]
            for rid in list(self.engine.jobs):
                self.engine.abort(rid)
            self.engine.pending.clear()
        for ev in events:
            target = self._listeners.get(ev.request_id)
            if target is not None:
                loop, q = target
                loop.call_soon_threadsafe(q.put_nowait, ev)

    def call(self, fn: Callable[[Engine], Any]) -> Future:
        """Run fn(engine) on the device thread; the Future holds its result or exception
        (EngineUnhealthy at once once the watchdog has fired)."""
        fut: Future = Future()
        if not self.healthy:
            fut.set_exception(self._unhealthy())
            return fut

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return  # the caller gave up before the command ran
            try:
                result = fn(self.engine)
            except Exception as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
        self._commands.put((fut, run))
        if not self.healthy:  # the watchdog fired between the check and the put
            self._fail_commands()
        return fut

    def shutdown(self) -> None:
        self._stopped = True
        if self.watchdog is not None:
            self.watchdog.stop()
        self._commands.put((Future(), lambda: None))
        self._thread.join(timeout=SHUTDOWN_WAIT_S)

    # -- asyncio side -----------------------------------------------------------------------
    async def run(self, fn: Callable[[Engine], Any]) -> Any:
        return await asyncio.wrap_future(self.call(fn))

    async def encode_reference(self, samples: np.ndarray) -> np.ndarray:
        """Codec codes [10, N] int64 of mono 44.1 kHz reference samples (cached by content)."""
        codes = await self.run(lambda engine: engine.encode_audio(np.asarray(samples, dtype=np.float32)))
        return codes.numpy()

    def stream(self, req: SynthesisRequest, on_added: Callable[[int], None] | None = None
               ) -> AsyncGenerator[StreamPiece, None]:
        """Submit `req` and yield its audio as it is made: first a piece without audio that tells the
        request id and its text chunks, then audio. Raises RequestError (a ValueError) for bad input, EngineBusy
        when the waiting queue is full, EngineUnhealthy when the engine stopped serving (also in the
        middle of a stream), RuntimeError when a step failed. on_added(request_id) runs as soon as the
        request is queued (for queue_position)."""
        return self._stream(lambda engine: engine.add_request(req), on_added)

    def stream_prompt(self, prompt: Tensor, params: SamplingParams, max_frames: int,
                      stream_pcm: bool = True) -> AsyncGenerator[StreamPiece, None]:
        """stream() for a ready prompt grid [11, T] (Engine.add_prompt): benchmarks and tests."""
        return self._stream(lambda engine: engine.add_prompt(prompt, params, max_frames, stream_pcm), None)

    async def _stream(self, add_to: Callable[[Engine], int], on_added: Callable[[int], None] | None
                      ) -> AsyncGenerator[StreamPiece, None]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def add(engine: Engine) -> tuple[int, list[str]]:
            rid = add_to(engine)
            self._listeners[rid] = (loop, events)  # registered before any step can emit for rid
            return rid, engine.text_chunks(rid)

        fut = self.call(add)
        try:
            rid, text_chunks = await asyncio.shield(asyncio.wrap_future(fut))
        except asyncio.CancelledError:
            # Cancelled while the request was being added: make sure it does not run unheard.
            fut.add_done_callback(lambda f: f.exception() is None and self.call(
                lambda engine: self._drop(engine, f.result()[0])))
            raise
        if on_added is not None:
            on_added(rid)
        finished = False
        try:
            yield StreamPiece(rid, np.zeros(0, np.float32), np.zeros((10, 0), np.int64), text_chunks=tuple(text_chunks))
            while True:
                ev = await events.get()
                if ev.finished:
                    finished = True
                    if ev.reason == "unhealthy":
                        raise EngineUnhealthy(ev.error)
                    if ev.reason == "error":
                        raise RuntimeError(ev.error or "generation failed")
                    yield StreamPiece(rid, np.zeros(0, np.float32), np.zeros((10, 0), np.int64), True,
                                     ev.reason, self._stats(ev), ev.chunk_index, chunk_done=ev.chunk_done)
                    return
                yield StreamPiece(rid, ev.pcm if ev.pcm is not None else np.zeros(0, np.float32),
                                 ev.codes if ev.codes is not None else np.zeros((10, 0), np.int64),
                                 chunk_index=ev.chunk_index, chunk_done=ev.chunk_done)
        finally:
            if not finished:
                self.call(lambda engine: self._drop(engine, rid))
            else:
                self._listeners.pop(rid, None)

    def _drop(self, engine: Engine, rid: int) -> None:
        """Abort a request nobody listens to any more (runs on the device thread)."""
        self._listeners.pop(rid, None)
        engine.abort(rid)

    @staticmethod
    def _stats(ev: Event) -> dict[str, Any]:
        return dict(ev.stats or {})

    async def status(self) -> dict[str, Any]:
        def read(engine: Engine) -> dict[str, Any]:
            return {"running": len(engine.scheduler.running), "waiting": len(engine.scheduler.waiting),
                    "kv_blocks_total": engine.blocks.num_blocks,
                    "kv_blocks_free": engine.blocks.num_free,
                    "prefix_hit_rate": engine.blocks.hit_rate()}
        return await self.run(read)

    async def queue_position(self, request_id: int) -> int:
        return await self.run(lambda engine: engine.queue_position(request_id))
