"""The playground page: layout and wiring only. `install(app, state)` adds the playground's own routes
(live PCM stream, player script) to the API's FastAPI app and mounts the Gradio Blocks at `/`.

Panels and their handlers live beside it: text (palette, linter, chunk preview), voices
(reference clip, voice library), generate (controls, Generate/Stop), history (chunks of a take,
history), output (post-processing, rendered files), stream (the PCM route), take (engine side),
figures (figures and status line), page (the panels, for cross-panel handlers).
"""
from __future__ import annotations

import html
import logging
import re
import threading

import gradio as gr
from fastapi import FastAPI
from gradio.themes import Soft

from playground.server.uploads import UPLOAD_KEEP_SECONDS, UPLOAD_SWEEP_SECONDS, start_uploads
from playground.state import DEMO_HELP, AppState
from playground.ui.figures import STATUS_SECONDS, StatusLine
from playground.ui.generate import Generation, build_run_panel, build_settings_panel
from playground.ui.history import HistoryHandlers, TakeHandlers, build_history_panel, build_take_panel, table_update
from playground.ui.output import Exports, build_output_panel, warm_up
from playground.ui.page import Ctx, Page
from playground.ui.stream import STATIC_DIR, StreamHub, install_routes
from playground.ui.text import build_text_panel, wire_text_panel
from playground.ui.voices import VoiceHandlers, build_voice_panel, voice_choices

log = logging.getLogger(__name__)

HEAD = '<script src="/playground/static/player.js"></script>'
THEME = Soft(primary_hue="indigo", secondary_hue="violet", neutral_hue="slate")


def install(app: FastAPI, state: AppState) -> FastAPI:
    hub = StreamHub()
    install_routes(app, hub, state.access)
    exports = Exports(state.store)
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    uploads = start_uploads(state.settings.data_dir, state.settings.max_disk_mb)
    blocks = build_blocks(state, hub, exports)
    mounted = gr.mount_gradio_app(
        app, blocks, path="/", theme=THEME, css_paths=[STATIC_DIR / "playground.css"], head=HEAD,
        allowed_paths=[str(exports.root.resolve()), str(state.store.voices_dir.resolve())], footer_links=[],
        show_error=True, max_file_size=f"{state.settings.max_upload_mb}mb", run_history=False)
    # Gradio admits only files this visitor uploaded as inputs, and serves only its own directories,
    # once it counts as launched; mounting alone never sets that, and the check would never run.
    blocks.has_launched = True
    log.info("playground uploads in %s, kept %d s", uploads, UPLOAD_KEEP_SECONDS)
    return mounted


def build_blocks(state: AppState, hub: StreamHub, exports: Exports) -> gr.Blocks:
    with gr.Blocks(title="S2 Pro Playground", delete_cache=(UPLOAD_SWEEP_SECONDS, UPLOAD_KEEP_SECONDS)) as blocks:
        gr.HTML(_header(), elem_id="s2-header")
        if state.demo:
            gr.HTML(f'<div class="s2-banner" role="alert">{_code_spans(DEMO_HELP)}</div>', elem_id="s2-demo")
        status = gr.HTML(f'<div class="s2-status">{html.escape(state.describe())}</div>', elem_id="s2-status")
        with gr.Row(equal_height=False, elem_classes="s2-main"):
            with gr.Column(scale=3, min_width=420):
                text = build_text_panel()
                run = build_run_panel()
                take = build_take_panel()
            with gr.Column(scale=2, min_width=320):
                voice = build_voice_panel()
                settings = build_settings_panel(state.loaded.hop_length)
                output = build_output_panel()
        history = build_history_panel()
        ctx = Ctx(state, hub, exports, Page(text, voice, settings, output, run, take, history))
        wire_text_panel(text, settings.chunk_length)
        VoiceHandlers(ctx).wire()
        Generation(ctx).wire()
        TakeHandlers(ctx).wire()
        HistoryHandlers(ctx).wire()
        _wire_page(ctx, blocks, status)
    return blocks


def _code_spans(text: str) -> str:
    """Escape `text`, showing its `backticked` commands as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _header() -> str:
    return ('<div class="s2-title"><h1>S2 Pro Playground</h1><p>Expressive text-to-speech with voice cloning: '
            "tags like [whisper] or [laughing] steer the delivery, <code>&lt;|speaker:N|&gt;</code> switches "
            "speakers.</p></div>")


def _wire_page(ctx: Ctx, blocks: gr.Blocks, status: gr.HTML) -> None:
    """Page load refreshes what other tabs or the API may have changed; a timer keeps the status live."""
    state, p = ctx.state, ctx.page
    line = StatusLine(state)

    async def on_load(request: gr.Request) -> dict:
        owner = ctx.owner(request)
        return {status: await line.html(), p.voice.choice: gr.update(choices=voice_choices(state, owner)),
                **table_update(ctx, owner)}

    blocks.load(on_load, None, [status, p.voice.choice, p.history.table], show_progress="hidden")
    gr.Timer(STATUS_SECONDS).tick(line.html, None, status, show_progress="hidden", concurrency_limit=None)
