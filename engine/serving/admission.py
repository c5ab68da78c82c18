"""Admission control: how many requests may wait for a decode slot, and when a refused one should retry.

The scheduler keeps every admitted request until it is served, so without a bound a burst of clients
queues for minutes and each waiting stream looks dead to its listener. The engine refuses a request
beyond `max_waiting` with `EngineBusy` (the HTTP layer answers 503 with Retry-After), and refuses
everything with `EngineUnhealthy` once its watchdog has seen a step hang. Plain Python.
"""
from __future__ import annotations

import time


class EngineBusy(Exception):
    """The waiting queue is full: retry after `retry_after_s` seconds. `position` is the place the
    request would have taken in the queue (1 = next to start)."""

    def __init__(self, retry_after_s: float, position: int, waiting: int, limit: int) -> None:
        self.retry_after_s, self.position, self.waiting, self.limit = retry_after_s, position, waiting, limit
        super().__init__(f"the server is busy: {waiting} requests are already waiting (limit {limit}); "
                         f"retry in {retry_after_s:.0f} s")


class EngineUnhealthy(Exception):
    """The engine stopped serving (a step hung past the watchdog limit); the process is restarting."""


class QueueRate:
    """How fast sequences leave the waiting queue (exponential moving average over departures), for
    the Retry-After of a refused request and the expected wait of a queued one."""

    def __init__(self, half_life_s: float = 10.0, default_s: float = 2.0) -> None:
        self.half_life_s = half_life_s
        self.default_s = default_s  # assumed seconds between departures before any is seen
        self._interval_s: float | None = None
        self._last: float | None = None

    def departed(self, count: int = 1, at: float | None = None) -> None:
        """`count` sequences left the queue (started) at time `at`."""
        at = time.monotonic() if at is None else at
        if self._last is not None and count > 0:
            interval = (at - self._last) / count
            if self._interval_s is None:
                self._interval_s = interval
            else:  # weight the new interval by how much time it covers
                keep = 0.5 ** ((at - self._last) / self.half_life_s)
                self._interval_s = keep * self._interval_s + (1 - keep) * interval
        if count > 0:
            self._last = at

    def seconds_for(self, departures: int) -> float:
        """Expected seconds until `departures` more sequences have left the queue."""
        interval = self.default_s if self._interval_s is None else self._interval_s
        return max(0, departures) * interval


def retry_after_s(rate: QueueRate, waiting: int, limit: int) -> float:
    """Seconds until the queue has room again (at least 1, at most 60: a client must not give up on a
    server that is only busy, nor hammer it)."""
    return min(60.0, max(1.0, rate.seconds_for(waiting - limit + 1)))
