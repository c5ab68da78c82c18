"""The page's panels in one place, so event handlers can address components of other panels.

`Ctx` is what every handler closes over: process-wide objects only (no per-user state; that lives in
`gr.State` components, in the browser, and in the Store under the visitor's session, `Ctx.owner`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr

if TYPE_CHECKING:
    from playground.state import AppState
    from playground.ui.generate import RunPanel, SettingsPanel
    from playground.ui.history import HistoryPanel, TakePanel
    from playground.ui.output import Exports, OutputPanel
    from playground.ui.stream import StreamHub
    from playground.ui.text import TextPanel
    from playground.ui.voices import VoicePanel


@dataclass
class Page:
    text: TextPanel
    voice: VoicePanel
    settings: SettingsPanel
    output: OutputPanel
    run: RunPanel
    take: TakePanel
    history: HistoryPanel


@dataclass
class Ctx:
    state: AppState
    hub: StreamHub
    exports: Exports
    page: Page

    def owner(self, request: gr.Request | None) -> str:
        """The library this visitor's request reads and writes (their signed session's)."""
        cookies = dict(request.cookies) if request is not None else {}
        return self.state.access.owner(cookies)

    @property
    def hop(self) -> int:
        """Samples per generated frame (the codec hop, 2048)."""
        return self.state.loaded.hop_length
