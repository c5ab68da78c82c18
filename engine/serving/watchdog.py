"""The step watchdog: a stuck device must never look like a live server.

A step that waits on a GPU that never finishes cannot be interrupted from Python, so a second thread
watches the device thread: when one step (or command) runs longer than the limit, it calls `on_hang`
once with a report of which step hung and where. AsyncEngine then fails every waiting client, reports
itself unhealthy and, by default, ends the process with EXIT_HUNG so a supervisor (Docker, Spaces,
systemd) starts a fresh one.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

EXIT_HUNG = 70  # EX_SOFTWARE: the process ended itself because the engine stopped serving
EXIT_GRACE_S = 2.0  # time for the clients' error responses to leave before the process ends


@dataclass(frozen=True)
class Hang:
    step: int  # the engine's step counter when it hung
    phase: str  # what that step was doing (Engine.phase)
    seconds: float  # how long it had run when the watchdog fired
    limit_s: float

    @property
    def message(self) -> str:
        return (f"the engine stopped serving: step {self.step} hung in '{self.phase}' for {self.seconds:.1f} s "
                f"(limit {self.limit_s:g} s); the server restarts")


class Watchdog:
    def __init__(self, limit_s: float, where: Callable[[], tuple[int, str]], on_hang: Callable[[Hang], None]) -> None:
        """where(): (step, phase) of the device thread now; on_hang runs once, on the watchdog's thread."""
        if limit_s <= 0:
            raise ValueError("the watchdog's limit must be positive")
        self.limit_s, self.where, self.on_hang = limit_s, where, on_hang
        self.poll_s = min(1.0, limit_s / 4)
        self.busy_since: float | None = None  # set by the device thread around each step and command
        self.hang: Hang | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="engine-watchdog", daemon=True)
        self._thread.start()

    def busy_seconds(self) -> float:
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def _watch(self) -> None:
        while not self._stopped.wait(self.poll_s):
            seconds = self.busy_seconds()
            if seconds > self.limit_s:
                step, phase = self.where()
                self.hang = Hang(step, phase, seconds, self.limit_s)
                log.critical("%s", self.hang.message)
                self.on_hang(self.hang)
                return

    def stop(self) -> None:
        self._stopped.set()


def exit_process(hang: Hang) -> None:
    """AsyncEngine's default reaction to a hang: end the process with EXIT_HUNG after EXIT_GRACE_S (the
    hung thread holds the device; only a new process gets it back)."""
    def later() -> None:
        time.sleep(EXIT_GRACE_S)
        log.critical("exiting with status %d so that a supervisor restarts the server", EXIT_HUNG)
        logging.shutdown()
        os._exit(EXIT_HUNG)
    threading.Thread(target=later, name="engine-exit", daemon=True).start()
