"""The HTTP server's own limits: a deadline for each request's head, idle keep-alive, and a cap on
open connections (uvicorn answers 503 beyond it).

uvicorn has no deadline for a request's head: a client that opens connections and dribbles header
bytes would hold them for ever and use up the connection cap. `HeadDeadlineH11` closes a connection
whose request head has not arrived in full within `HEAD_TIMEOUT_SECONDS` of the connection opening
or of its previous response ending. Body stalls are the gate's (gate.BodyLimits.idle_seconds).
"""
from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 5


class HeadDeadlineH11(H11Protocol):
    head_timeout: float = HEAD_TIMEOUT_SECONDS
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        waiting_after = self.cycle  # a new head replaces this cycle
        self._head_timer = self.loop.call_later(self.head_timeout, self._expire, waiting_after)

    def _expire(self, waiting_after: object) -> None:
        if self.cycle is waiting_after and not self.transport.is_closing():
            self.transport.close()


def serve(app: object, host: str, port: int, max_connections: int) -> None:
    uvicorn.run(app, host=host, port=port, log_level="info", http=HeadDeadlineH11,  # type: ignore[arg-type]
                limit_concurrency=max_connections, timeout_keep_alive=KEEP_ALIVE_SECONDS)
