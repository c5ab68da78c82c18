"""Generation controls and the Generate / Re-run / Stop wiring.

Generate runs in the browser first: its script makes a generation id and starts the live player's
fetch of /playground/stream/<id>, then hands the id to the handler as its first input. The handler
(an async generator, no concurrency limit, so every user is served at once and the engine batches
them) opens that stream, runs the take, yields live figures every tick, and finally saves the take to
history and shows the rendered clip. Stop cancels the handler (Gradio `cancels=`), which aborts the
engine request, and stops the player in the browser.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from engine import (
    DEFAULT_CHUNK_LENGTH,
    MAX_FRAMES_LIMIT,
    SAMPLE_RATE,
    SEED_LIMIT,
    EngineBusy,
    EngineUnhealthy,
    SamplingParams,
    random_seed,
)
from playground.store import HistoryEntry
from playground.ui.figures import LiveFigures, live_html, message_html, summary_html
from playground.ui.history import table_update, take_updates
from playground.ui.output import OutputOptions
from playground.ui.page import Ctx
from playground.ui.take import GenSettings, Take, run_take
from playground.ui.voices import VoiceRef, from_history, resolve

START_JS = """(...args) => {
  args[0] = window.s2Player ? window.s2Player.start(window.s2Player.newId()) : "";
  return args;
}"""
STOP_JS = """() => {
  const player = window.s2Player;
  if (!player) return [""];
  const genId = player.genId || "";
  player.stop();
  return [genId];
}"""
STOP_WAIT_SECONDS = 5.0
# GenSettings.from_controls takes the settings panel's inputs in this order.
SETTINGS_INPUTS = ("temperature", "top_p", "top_k", "ras", "seed", "max_seconds", "chunk_length")
MAX_SECONDS = 600
Prepared = tuple[GenSettings, VoiceRef, OutputOptions]


@dataclass
class SettingsPanel:
    temperature: gr.Slider
    top_p: gr.Slider
    top_k: gr.Slider
    ras: gr.Checkbox
    seed: gr.Number
    dice: gr.Button
    reuse: gr.Button
    used_seed: gr.Textbox
    max_seconds: gr.Slider
    chunk_length: gr.Slider

    @property
    def inputs(self) -> list[Any]:  # Gradio components, as event inputs
        return [getattr(self, name) for name in SETTINGS_INPUTS]


@dataclass
class RunPanel:
    gen_id: gr.Textbox
    generate: gr.Button
    stop: gr.Button
    figures: gr.HTML
    audio: gr.Audio


def build_settings_panel(hop: int) -> SettingsPanel:
    longest = min(MAX_SECONDS, MAX_FRAMES_LIMIT * hop // SAMPLE_RATE)
    default = SamplingParams()
    with gr.Accordion("Generation", open=True, elem_id="s2-settings"):
        with gr.Row():
            temperature = gr.Slider(0.0, 1.5, value=default.temperature, step=0.05, label="Temperature",
                                    elem_id="s2-temperature")
            top_p = gr.Slider(0.05, 1.0, value=default.top_p, step=0.01, label="Top-p", elem_id="s2-top-p")
        with gr.Row(equal_height=True):
            top_k = gr.Slider(1, 256, value=default.top_k, step=1, label="Top-k", elem_id="s2-top-k")
            ras = gr.Checkbox(default.ras, label="RAS (repetition-aware sampling)", elem_id="s2-ras")
        with gr.Row(equal_height=True, elem_classes="s2-seed-row"):
            seed = gr.Number(-1, precision=0, minimum=-1, maximum=SEED_LIMIT - 1, label="Seed (−1: random)",
                             elem_id="s2-seed", min_width=120)
            used_seed = gr.Textbox("", label="Used seed", interactive=False, placeholder="–", elem_id="s2-used-seed",
                                   min_width=120)
        with gr.Row(elem_classes="s2-seed-row"):
            dice = gr.Button("Random seed", elem_id="s2-seed-dice", size="sm", min_width=60)
            reuse = gr.Button("Keep used seed", elem_id="s2-seed-keep", size="sm", min_width=60)
        max_seconds = gr.Slider(1, longest, value=30, step=0.5, label="Max length (seconds of audio)",
                                elem_id="s2-max-seconds")
        chunk_length = gr.Slider(0, 1000, value=DEFAULT_CHUNK_LENGTH, step=50,
                                 label="Chunk length (characters; 0 = never split)", elem_id="s2-chunk-length")
    return SettingsPanel(temperature, top_p, top_k, ras, seed, dice, reuse, used_seed, max_seconds, chunk_length)


def build_run_panel() -> RunPanel:
    gen_id = gr.Textbox(visible="hidden", elem_id="s2-gen-id")
    with gr.Row(elem_classes="s2-run-row"):
        generate = gr.Button("Generate", variant="primary", size="lg", elem_id="s2-generate", scale=3)
        stop = gr.Button("Stop", variant="stop", size="lg", elem_id="s2-stop", interactive=False, scale=1)
    figures = gr.HTML(message_html("idle", "Ready", "Figures appear here while a take is generated."),
                      elem_id="s2-figures")
    gr.HTML('<div id="s2-live" class="s2-live" data-state="idle">Live playback: ready</div>')
    audio = gr.Audio(label="Result", type="filepath", interactive=False, elem_id="s2-result",
                     buttons=["download"])
    return RunPanel(gen_id, generate, stop, figures, audio)


def _running(run: RunPanel, on: bool) -> dict:
    return {run.generate: gr.update(interactive=not on), run.stop: gr.update(interactive=on)}


class Generation:
    """Generate, Re-run and Stop. Per-user state stays in the browser (the generation id) and in
    gr.State (the take on screen); this object holds only process-wide things (through `ctx`)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx, self.run, self.state = ctx, ctx.page.run, ctx.state

    def wire(self) -> None:
        p, run = self.ctx.page, self.run
        outputs = [run.generate, run.stop, run.figures, run.audio, p.settings.used_seed, p.take.take_id,
                   p.take.chunk, p.take.chunk_audio, p.take.note, p.history.table]
        controls = [p.text.box, *p.settings.inputs, p.voice.choice]
        gen_event = run.generate.click(
            self.generate, [run.gen_id, p.text.box, *p.voice.inputs, *p.settings.inputs, *p.output.inputs],
            outputs, js=START_JS, concurrency_limit=None, show_progress="hidden")
        rerun_event = p.history.rerun.click(
            self.rerun, [run.gen_id, p.history.selected, *p.output.inputs], outputs + controls,
            js=START_JS, concurrency_limit=None, show_progress="hidden")
        # Gradio cancels after an event's own fn, so the cancel is one event and the answer a second one.
        run.stop.click(None, run.gen_id, run.gen_id, cancels=[gen_event, rerun_event], js=STOP_JS).then(
            self.stopped, run.gen_id, [run.generate, run.stop, run.figures])
        s = p.settings
        s.dice.click(random_seed, None, s.seed, queue=False)
        s.reuse.click(lambda used: int(used) if str(used).isdigit() else gr.skip(), s.used_seed, s.seed,
                      queue=False)

    async def generate(self, request: gr.Request, gen_id: str, text: str, choice: str, clip: str | None,
                       transcript: str, *values) -> AsyncIterator[dict]:
        """`values`: the settings panel's inputs, then the output panel's."""
        owner = self.ctx.owner(request)

        async def prepare() -> Prepared:
            settings = GenSettings.from_controls(text, *values[:len(SETTINGS_INPUTS)], hop=self.ctx.hop)
            opts = OutputOptions(*values[len(SETTINGS_INPUTS):])
            return settings, await resolve(self.state, owner, choice, clip, transcript), opts
        async for update in self._take(owner, gen_id, prepare, {}):
            yield update

    async def rerun(self, request: gr.Request, gen_id: str, entry_id: str | None,
                    *output_values) -> AsyncIterator[dict]:
        owner = self.ctx.owner(request)
        entry = self.state.store.get_history(owner, entry_id or "")

        async def prepare() -> Prepared:
            if entry is None:
                raise KeyError("Select a take in the history first.")
            settings = GenSettings.from_history(entry.text, entry.params, entry.seed)
            voice = from_history(self.state, entry.voice_id, entry.voice_name, entry.params.get("reference"))
            return settings, voice, OutputOptions(*output_values)
        first = {} if entry is None else _fill_controls(self.ctx, owner, entry)
        async for update in self._take(owner, gen_id, prepare, first):
            yield update

    async def stopped(self, gen_id: str) -> dict:
        # Answer once the handler has really ended, so no live update of it can land after this one.
        await self.ctx.hub.wait_closed(gen_id, STOP_WAIT_SECONDS)
        return {**_running(self.run, False),
                self.run.figures: message_html("stopped", "Stopped", "The take was aborted.")}

    async def _take(self, owner: str, gen_id: str, prepare: Callable[[], Awaitable[Prepared]],
                    first: dict) -> AsyncIterator[dict]:
        """What Generate and Re-run share: prepare, stream live, save to history, show."""
        ctx, run = self.ctx, self.run
        live = ctx.hub.open(gen_id, owner)
        try:
            yield {**first, **_running(run, True), run.figures: message_html("running", "Starting", "preparing…")}
            settings, voice, opts = await prepare()
            take = None
            figs = LiveFigures(ctx.hop, time.perf_counter())
            async for item in run_take(self.state, settings.request(voice), live, figs):
                if isinstance(item, Take):
                    take = item
                else:
                    yield {run.figures: live_html(item)}
            if take is None:
                raise RuntimeError("the take ended without its audio")
            ctx.hub.close(gen_id)  # now, not after saving: the player flushes its pre-roll on the stream's end
            yield await self._saved(owner, settings, voice, opts, take)
        except EngineBusy as exc:
            message = (f"The server is busy: {exc.waiting} requests are ahead of you. Try again in about "
                       f"{max(1, round(exc.retry_after_s))} s.")
            yield {**_running(run, False), run.figures: message_html("error", "Busy", message)}
        except EngineUnhealthy:
            message = "The engine stopped serving; the server is restarting. Try again in a minute."
            yield {**_running(run, False), run.figures: message_html("error", "Restarting", message)}
        except (ValueError, KeyError, RuntimeError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            yield {**_running(run, False), run.figures: message_html("error", "Not generated", message)}
        finally:
            ctx.hub.close(gen_id)

    async def _saved(self, owner: str, settings: GenSettings, voice: VoiceRef, opts: OutputOptions,
                     take: Take) -> dict:
        params = {**settings.params(), "reference": voice.params(), "output": opts.as_dict()}
        entry = await asyncio.to_thread(self.state.store.add_history, owner, settings.text, voice.voice_id,
                                        voice.name, params, settings.seed, take.stats, take.samples, take.chunks)
        shown = await take_updates(self.ctx, owner, entry, opts)
        return {**shown, **_running(self.run, False), self.run.figures: summary_html(entry.stats, entry.seed),
                **table_update(self.ctx, owner)}


def _fill_controls(ctx: Ctx, owner: str, entry: HistoryEntry) -> dict:
    """Show a re-run's settings in the controls (the take itself uses the stored values)."""
    s, p, params = ctx.page.settings, ctx.page, entry.params
    updates = {p.text.box: entry.text, s.seed: entry.seed, s.max_seconds: params["max_frames"] * ctx.hop / SAMPLE_RATE,
               **{getattr(s, k): params[k] for k in ("temperature", "top_p", "top_k", "ras", "chunk_length")}}
    if entry.voice_id and ctx.state.store.get_voice(owner, entry.voice_id) is not None:
        updates[p.voice.choice] = entry.voice_id
    return updates
