"""Figures as small HTML: one take's (live while it generates, a summary when it ends) and the
engine's status line.

Live figures are measured where the playground sees the audio (the Generate handler), from the moment
the request is submitted: time to first audio, real-time factor (wall time / audio time; below 1 is
faster than real time), frames per second since the first frame, audio seconds, and the queue position
reported by the scheduler. The summary uses the engine's own per-request figures (engine.metrics).
"""
from __future__ import annotations

import asyncio
import html
import math
import time
from dataclasses import dataclass

from engine import SAMPLE_RATE
from playground.state import AppState

STATUS_SECONDS = 2.0  # the status line's refresh interval


@dataclass
class LiveFigures:
    """Counters of a take in flight; `samples_per_frame` is the codec hop (2048)."""

    samples_per_frame: int
    submitted: float  # time.perf_counter() at submission
    first_audio: float | None = None
    last_audio: float | None = None
    samples: int = 0
    queue_position: int = -1  # 0 running, n ≥ 1 waiting, -1 unknown
    chunk: int = 1
    num_chunks: int = 1

    def on_audio(self, num_samples: int) -> None:
        now = time.perf_counter()
        self.first_audio = self.first_audio or now
        self.last_audio = now
        self.samples += num_samples

    @property
    def frames(self) -> int:
        return self.samples // self.samples_per_frame

    @property
    def audio_seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def ttfa_ms(self) -> float | None:
        return None if self.first_audio is None else (self.first_audio - self.submitted) * 1e3

    def rtf(self, now: float) -> float | None:
        return (now - self.submitted) / self.audio_seconds if self.samples else None

    def frames_per_second(self) -> float | None:
        if self.frames < 2 or self.first_audio is None or self.last_audio is None:
            return None
        return (self.frames - 1) / max(self.last_audio - self.first_audio, 1e-9)


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "–" if value is None else f"{value:{fmt}}{unit}"


def _cards(cards: list[tuple[str, str]]) -> str:
    return "".join(f'<div class="s2-fig"><span class="s2-fig-value">{html.escape(value)}</span>'
                   f'<span class="s2-fig-label">{html.escape(label)}</span></div>' for value, label in cards)


def _panel(state: str, pill: str, note: str, cards: list[tuple[str, str]], frames: int = 0) -> str:
    return (f'<div class="s2-figures" data-state="{state}" data-frames="{frames}">'
            f'<div class="s2-fig-head"><span class="s2-pill s2-pill-{state}">{html.escape(pill)}</span>'
            f'<span class="s2-fig-note">{html.escape(note)}</span></div>'
            f'<div class="s2-fig-grid">{_cards(cards)}</div></div>')


def live_html(fig: LiveFigures) -> str:
    now = time.perf_counter()
    if fig.queue_position > 0:
        queue = f"#{fig.queue_position} in queue"
    else:
        queue = "running" if fig.samples or fig.queue_position == 0 else "submitted"
    note = f"chunk {fig.chunk} of {fig.num_chunks} · {now - fig.submitted:.1f} s elapsed"
    cards = [(_num(fig.ttfa_ms, ".0f", " ms"), "time to first audio"), (_num(fig.rtf(now), ".2f", "×"), "RTF"),
             (_num(fig.frames_per_second(), ".1f"), "frames / s"), (f"{fig.audio_seconds:.1f} s", "audio"),
             (queue, "queue")]
    pill = "Waiting in queue" if fig.queue_position > 0 else "Generating"
    return _panel("running", pill, note, cards, fig.frames)


REASONS = {"eos": "finished speaking", "length": "reached the max length", "aborted": "stopped"}


def summary_html(stats: dict, seed: int, state: str = "done", pill: str = "Done") -> str:
    """The final figures of a take; `stats` = the engine's figures plus `reason` and `ttfa_ms`."""
    frames = int(stats.get("frames") or 0)
    reason = stats.get("reason", "eos")
    note = f"{REASONS.get(reason, reason)} · seed {seed} · {frames} frames in {stats.get('chunks', 1)} chunk(s)"
    cards = [(_num(stats.get("ttfa_ms"), ".0f", " ms"), "time to first audio"),
             (_num(stats.get("rtf"), ".2f", "×"), "RTF"),
             (_num(stats.get("frames_per_second"), ".1f"), "frames / s"),
             (f"{stats.get('audio_seconds', 0.0):.2f} s", "audio"),
             (_num(stats.get("ttfb_ms"), ".0f", " ms"), "engine first audio")]
    return _panel(state, pill, note, cards, frames)


def message_html(state: str, pill: str, message: str) -> str:
    """A panel without figures: idle, stopped, or an error the user can act on."""
    return _panel(state, pill, message, [])


class StatusLine:
    """The model/device/engine line. Every open page polls it, so the engine is asked at most once per
    half interval and all pages share the answer."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._html = ""
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    async def html(self) -> str:
        async with self._lock:
            if time.monotonic() - self._read_at >= STATUS_SECONDS / 2:
                self._html = self._render(await self.state.engine.status())
                self._read_at = time.monotonic()
        return self._html

    def _render(self, s: dict) -> str:
        if s["running"] or s["waiting"]:
            activity = f'<span class="s2-dot s2-dot-busy"></span>{s["running"]} generating · {s["waiting"]} queued'
        else:
            activity = '<span class="s2-dot"></span>idle'
        kv = f'KV cache {s["kv_blocks_total"] - s["kv_blocks_free"]}/{s["kv_blocks_total"]} blocks in use'
        return (f'<div class="s2-status" data-running="{s["running"]}" data-waiting="{s["waiting"]}">'
                f"{html.escape(self.state.describe())} · {activity} · {kv}</div>")
