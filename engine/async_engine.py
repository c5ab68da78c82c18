"""AsyncEngine: one device thread runs Engine.step() in a loop; asyncio callers stream audio chunks.

Every touch of the Engine happens on the device thread: callers send commands (add, abort, call)
through a queue and receive Events through per-request asyncio queues. Leaving `stream()` early (a
client disconnect, a Stop button, an exception) aborts the request and frees its KV blocks.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.engine import Engine, Event
from engine.request import SynthesisRequest

log = logging.getLogger(__name__)


@dataclass
class AudioChunk:
    """A piece of one request's output; the last one has `finished` set and the final figures."""

    request_id: int
    pcm: np.ndarray  # float32 mono, may be empty
    codes: np.ndarray  # [10, n] int64 frames behind this pcm
    finished: bool = False
    reason: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    chunk_index: int = 0  # which text chunk this audio belongs to


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._listeners: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event]]] = {}
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._stopped = False
        self._thread.start()

    # -- device thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped:
            block = not self.engine.has_work()
            try:
                while True:
                    self._commands.get(block=block, timeout=0.5 if block else None)()
                    block = False
            except queue.Empty:
                pass
            if self.engine.has_work():
                self._step()

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
        """Run fn(engine) on the device thread; the Future holds its result or exception."""
        fut: Future = Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return  # the caller gave up before the command ran
            try:
                fut.set_result(fn(self.engine))
            except Exception as exc:
                fut.set_exception(exc)
        self._commands.put(run)
        return fut

    def shutdown(self) -> None:
        self._stopped = True
        self._commands.put(lambda: None)
        self._thread.join(timeout=10)

    # -- asyncio side -----------------------------------------------------------------------
    async def run(self, fn: Callable[[Engine], Any]) -> Any:
        return await asyncio.wrap_future(self.call(fn))

    async def stream(self, req: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        """Submit `req` and yield its audio as it is made. Raises ValueError for bad input."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        holder: dict[str, int] = {}

        def add(engine: Engine) -> int:
            rid = engine.add_request(req)
            self._listeners[rid] = (loop, events)  # registered before any step can emit for rid
            holder["id"] = rid
            return rid

        fut = self.call(add)
        try:
            rid = await asyncio.shield(asyncio.wrap_future(fut))
        except asyncio.CancelledError:
            # Cancelled while the request was being added: make sure it does not run unheard.
            fut.add_done_callback(lambda f: f.exception() is None and self.call(
                lambda engine: self._drop(engine, f.result())))
            raise
        finished = False
        try:
            while True:
                ev = await events.get()
                if ev.finished:
                    finished = True
                    if ev.reason == "error":
                        raise RuntimeError(ev.error or "generation failed")
                    yield AudioChunk(rid, np.zeros(0, np.float32), np.zeros((10, 0), np.int64), True,
                                     ev.reason, self._stats(ev))
                    return
                yield AudioChunk(rid, ev.pcm if ev.pcm is not None else np.zeros(0, np.float32),
                                 ev.codes if ev.codes is not None else np.zeros((10, 0), np.int64),
                                 chunk_index=ev.chunk_index)
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
