"""The current take's chunks (replay one, regenerate one) and the history list (load, re-run, delete).

Every take is persisted through the Store with its raw audio, settings, seed, figures and chunk
boundaries; the take on screen is the one in the per-session `take_id` state. Re-run lives with the
other generation handlers in generate.
"""
from __future__ import annotations

import asyncio
import html
import time
from dataclasses import dataclass

import gradio as gr
import numpy as np

from engine import SAMPLE_RATE, AlignerBusy, EngineBusy, EngineUnhealthy
from playground.store import HistoryEntry
from playground.ui.figures import message_html, summary_html
from playground.ui.output import OutputOptions, read_take
from playground.ui.page import Ctx
from playground.ui.take import GenSettings, regenerate_chunk
from playground.ui.voices import from_history

HISTORY_LIMIT = 100
HEADERS = ["Take", "When", "Text", "Voice", "Seed", "Length", "RTF"]


@dataclass
class TakePanel:
    take_id: gr.State
    chunk: gr.Dropdown
    play: gr.Button
    regenerate: gr.Button
    note: gr.HTML
    chunk_audio: gr.Audio
    make_subtitles: gr.Button
    subtitles: gr.File
    subtitles_note: gr.HTML


@dataclass
class HistoryPanel:
    table: gr.Dataframe
    selected: gr.State
    rerun: gr.Button
    delete: gr.Button


def build_take_panel() -> TakePanel:
    take_id = gr.State(None)
    with gr.Accordion("Chunks of this take", open=False, elem_id="s2-chunks"):
        chunk = gr.Dropdown([], label="Chunk", elem_id="s2-chunk-pick", interactive=True)
        with gr.Row():
            play = gr.Button("Play chunk", elem_id="s2-chunk-play", size="sm")
            regenerate = gr.Button("Regenerate chunk (new seed)", elem_id="s2-chunk-regen", size="sm")
        note = gr.HTML("", elem_id="s2-chunk-note")
        chunk_audio = gr.Audio(label="Chunk", type="filepath", interactive=False, elem_id="s2-chunk-audio",
                               autoplay=True, buttons=["download"])
    with gr.Accordion("Subtitles of this take", open=False, elem_id="s2-subtitles-panel"):
        make_subtitles = gr.Button("Make subtitles (SRT and WebVTT, word times aligned to the text)",
                                   elem_id="s2-subtitles-make", size="sm")
        subtitles = gr.File(label="Subtitles", file_count="multiple", interactive=False, elem_id="s2-subtitles")
        subtitles_note = gr.HTML("", elem_id="s2-subtitles-note")
    return TakePanel(take_id, chunk, play, regenerate, note, chunk_audio, make_subtitles, subtitles, subtitles_note)


def build_history_panel() -> HistoryPanel:
    with gr.Group(elem_id="s2-history-panel"):
        gr.HTML('<div class="s2-section-title">History <span>select a take to load it; '
                "your takes, kept on the server for this browser only</span></div>")
        table = gr.Dataframe(headers=HEADERS, value=[], interactive=False, wrap=True, max_height=360,
                             elem_id="s2-history", column_widths=["8%", "12%", "40%", "14%", "10%", "8%", "8%"])
    with gr.Row(elem_classes="s2-history-actions"):
        rerun = gr.Button("Re-run with the same settings", elem_id="s2-history-rerun", size="sm")
        delete = gr.Button("Delete take", elem_id="s2-history-delete", size="sm", variant="stop")
    return HistoryPanel(table, gr.State(None), rerun, delete)


def _row(e: HistoryEntry) -> list:
    text = e.text if len(e.text) <= 90 else e.text[:89] + "…"
    rtf = e.stats.get("rtf")
    return [e.id.removeprefix("hist_")[:8], time.strftime("%b %d %H:%M:%S", time.localtime(e.created_at)), text,
            e.voice_name or "model voice", str(e.seed), f"{e.duration_s:.1f} s", "–" if rtf is None else f"{rtf:.2f}"]


def table_update(ctx: Ctx, owner: str) -> dict:
    entries = ctx.state.store.list_history(owner, HISTORY_LIMIT)
    return {ctx.page.history.table: [_row(e) for e in entries]}


def _chunk_choices(entry: HistoryEntry) -> list[tuple[str, int]]:
    def label(i: int, c: dict) -> str:
        text = c["text"] if len(c["text"]) <= 60 else c["text"][:59] + "…"
        return f"{i + 1}. {c['start_sample'] / SAMPLE_RATE:.1f}–{c['end_sample'] / SAMPLE_RATE:.1f} s · {text}"
    return [(label(i, c), i) for i, c in enumerate(entry.chunks)]


async def take_updates(ctx: Ctx, owner: str, entry: HistoryEntry, opts: OutputOptions) -> dict:
    """Show `entry` as the current take: rendered clip, seed, chunk list."""
    samples = await asyncio.to_thread(read_take, ctx.state.store.history_audio_path(owner, entry.id))
    path = await asyncio.to_thread(ctx.exports.render, owner, entry.id, samples, opts)
    p = ctx.page
    return {p.run.audio: str(path), p.settings.used_seed: str(entry.seed), p.take.take_id: entry.id,
            p.take.chunk: gr.update(choices=_chunk_choices(entry), value=0 if entry.chunks else None),
            p.take.chunk_audio: None, p.take.note: ""}


def _entry(ctx: Ctx, owner: str, take_id: str | None) -> HistoryEntry:
    entry = ctx.state.store.get_history(owner, take_id or "")
    if entry is None:
        raise KeyError("No take yet: generate one, or select one in the history.")
    return entry


def _note(kind: str, text: str) -> str:
    return f'<div class="s2-note s2-note-{kind}">{html.escape(text)}</div>'


class TakeHandlers:
    """The current take: replay or regenerate one chunk, re-render when the output options change."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx, self.state, self.t = ctx, ctx.state, ctx.page.take

    def wire(self) -> None:
        p, t = self.ctx.page, self.t
        outs = [p.run.audio, p.settings.used_seed, t.take_id, t.chunk, t.chunk_audio, t.note, p.history.table]
        t.play.click(self.play, [t.take_id, t.chunk, *p.output.inputs], outs)
        t.regenerate.click(self.regenerate, [t.take_id, t.chunk, *p.output.inputs], outs, concurrency_limit=None)
        t.make_subtitles.click(self.subtitles, [t.take_id, *p.output.inputs], [t.subtitles, t.subtitles_note])
        for control in p.output.inputs:
            control.change(self.rerender, [t.take_id, *p.output.inputs], p.run.audio, show_progress="hidden",
                           trigger_mode="always_last")

    async def _raw(self, owner: str, entry: HistoryEntry) -> np.ndarray:
        return await asyncio.to_thread(read_take, self.state.store.history_audio_path(owner, entry.id))

    async def play(self, request: gr.Request, take_id: str | None, index: int | None, *output_values) -> dict:
        return await self._play(self.ctx.owner(request), take_id, index, *output_values)

    async def _play(self, owner: str, take_id: str | None, index: int | None, *output_values) -> dict:
        try:
            entry, opts, index = _entry(self.ctx, owner, take_id), OutputOptions(*output_values), int(index or 0)
            c = entry.chunks[index]
            piece = (await self._raw(owner, entry))[c["start_sample"]:c["end_sample"]]
            path = await asyncio.to_thread(self.ctx.exports.render, owner, entry.id, piece, opts,
                                           f"-chunk{index + 1}", False)
        except (KeyError, ValueError, IndexError) as exc:
            return {self.t.note: _note("error", _message(exc))}
        return {self.t.chunk_audio: str(path), self.t.note: ""}

    async def regenerate(self, request: gr.Request, take_id: str | None, index: int | None,
                         *output_values) -> dict:
        owner = self.ctx.owner(request)
        try:
            entry, opts, index = _entry(self.ctx, owner, take_id), OutputOptions(*output_values), int(index or 0)
            settings = GenSettings.from_history(entry.text, entry.params, entry.seed)
            voice = from_history(self.state, entry.voice_id, entry.voice_name, entry.params.get("reference"))
            samples, chunks, seed = await regenerate_chunk(self.state, settings, voice,
                                                           await self._raw(owner, entry), entry.chunks, index,
                                                           self.ctx.hop)
            entry = await asyncio.to_thread(self.state.store.replace_history_audio, owner, entry.id, samples, chunks)
            shown = await take_updates(self.ctx, owner, entry, opts)
        except (KeyError, ValueError, IndexError, RuntimeError, EngineBusy, EngineUnhealthy) as exc:
            return {self.t.note: _note("error", f"Not regenerated: {_message(exc)}")}
        played = await self._play(owner, entry.id, index, *output_values)
        note = _note("ok", f"Chunk {index + 1} regenerated with seed {seed} and spliced into the take.")
        return {**shown, **played, self.t.chunk: gr.update(choices=_chunk_choices(entry), value=index),
                self.t.note: note, **table_update(self.ctx, owner)}

    async def subtitles(self, request: gr.Request, take_id: str | None, *output_values) -> dict:
        owner = self.ctx.owner(request)
        try:
            entry, opts = _entry(self.ctx, owner, take_id), OutputOptions(*output_values)
            paths = await asyncio.to_thread(self.ctx.exports.subtitles, owner, entry.id, await self._raw(owner, entry),
                                            entry.text, opts)
        except (KeyError, ValueError, AlignerBusy) as exc:
            return {self.t.subtitles: None, self.t.subtitles_note: _note("error", f"No subtitles: {_message(exc)}")}
        return {self.t.subtitles: [str(p) for p in paths], self.t.subtitles_note: ""}

    async def rerender(self, request: gr.Request, take_id: str | None, *output_values) -> dict:
        audio, owner = self.ctx.page.run.audio, self.ctx.owner(request)
        entry = self.state.store.get_history(owner, take_id or "")
        try:
            opts = OutputOptions(*output_values)
        except ValueError:  # e.g. a loudness typed out of range: keep the clip until it is valid
            return {audio: gr.skip()}
        if entry is None:
            return {audio: gr.skip()}
        try:
            return {audio: (await take_updates(self.ctx, owner, entry, opts))[audio]}
        except KeyError:  # deleted (or evicted) meanwhile
            return {audio: gr.skip()}


class HistoryHandlers:
    """The history list: selecting a row loads that take; Delete removes it (Re-run: generate)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx, self.state, self.h = ctx, ctx.state, ctx.page.history

    def wire(self) -> None:
        p, h = self.ctx.page, self.h
        outs = [h.selected, h.table, p.run.figures, p.run.audio, p.settings.used_seed, p.take.take_id,
                p.take.chunk, p.take.chunk_audio, p.take.note]
        h.table.select(self.select, p.output.inputs, outs)
        h.delete.click(self.delete, [h.selected, p.take.take_id], outs)

    async def select(self, request: gr.Request, fmt: str, normalize: bool, target_lufs: float, trim: bool,
                     evt: gr.SelectData) -> dict:
        owner = self.ctx.owner(request)
        short = str((evt.row_value or [""])[0])[:16]
        entries = self.state.store.list_history(owner, HISTORY_LIMIT)
        entry = next((e for e in entries if short and e.id.startswith(f"hist_{short}")), None)
        if entry is None:
            return {self.h.selected: None}
        try:
            shown = await take_updates(self.ctx, owner, entry, OutputOptions(fmt, normalize, target_lufs, trim))
        except (KeyError, ValueError):  # deleted meanwhile, or options out of range
            return {self.h.selected: None}
        when = time.strftime("%b %d %H:%M", time.localtime(entry.created_at))
        return {**shown, self.h.selected: entry.id,
                self.ctx.page.run.figures: summary_html(entry.stats, entry.seed, "loaded", f"From history · {when}")}

    def delete(self, request: gr.Request, selected: str | None, take_id: str | None) -> dict:
        p, owner = self.ctx.page, self.ctx.owner(request)
        if not selected or not self.state.store.delete_history(owner, selected):
            return {p.run.figures: message_html("error", "Nothing deleted", "Select a take in the history first.")}
        cleared = {}
        if selected == take_id:
            cleared = {p.run.audio: None, p.take.take_id: None, p.take.chunk: gr.update(choices=[], value=None),
                       p.take.chunk_audio: None}
        return {**table_update(self.ctx, owner), **cleared, self.h.selected: None,
                p.run.figures: message_html("idle", "Deleted", "The take and its audio were deleted.")}


def _message(exc: Exception) -> str:
    return exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
