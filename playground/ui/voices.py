"""The reference panel: upload or record a clip, check it, and the voice library (save, pick, rename,
delete) on the Store the speech API shares, so voices saved through /v1/voices appear here too.

The Voice dropdown says what a generation clones: nothing (the model's own voice), the clip in the box
(unsaved), or a saved voice. Clip codes are cached in the Store by the SHA-256 of the samples, so a clip
is encoded once (right after upload, while the user types) and a take can be re-run from its history
entry alone.
"""
from __future__ import annotations

import asyncio
import html
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from engine import AudioError, DecodedClip, ReferenceInput
from playground.clips import read_clip
from playground.state import AppState
from playground.store import audio_sha256, check_transcript
from playground.ui.page import Ctx

NO_VOICE, CLIP = "none", "clip"


@dataclass(frozen=True)
class VoiceRef:
    """A resolved reference for one take; `codes` None means the model's own voice."""

    voice_id: str | None = None
    name: str | None = None
    sha: str | None = None
    transcript: str = ""
    codes: np.ndarray | None = None  # [10, N] int64

    def inputs(self) -> tuple[ReferenceInput, ...]:
        if self.codes is None:
            return ()
        return (ReferenceInput(self.transcript, codes=tuple(map(tuple, self.codes.tolist()))),)

    def params(self) -> dict | None:
        return None if self.codes is None else {"sha": self.sha, "transcript": self.transcript}


@dataclass
class VoicePanel:
    choice: gr.Dropdown
    clip: gr.Audio
    transcript: gr.Textbox
    check: gr.HTML
    name: gr.Textbox
    save: gr.Button
    rename: gr.Button
    delete: gr.Button

    @property
    def inputs(self) -> list[Any]:  # Gradio components, as event inputs
        return [self.choice, self.clip, self.transcript]


def _fixed_choices() -> list[tuple[str, str]]:
    return [("No reference: the model's own voice", NO_VOICE), ("The clip below (unsaved)", CLIP)]


def voice_choices(state: AppState, owner: str) -> list[tuple[str, str]]:
    """The fixed choices and this visitor's saved voices."""
    voices = state.store.list_voices(owner)
    return [*_fixed_choices(), *((f"{v.name} · {v.duration_s:.1f} s", v.id) for v in voices)]


def build_voice_panel() -> VoicePanel:
    with gr.Group(elem_id="s2-voice"):
        choice = gr.Dropdown(_fixed_choices(), value=NO_VOICE, label="Voice", elem_id="s2-voice-choice",
                             info="what the take clones")
        clip = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Reference clip (1–30 s)",
                        elem_id="s2-clip", buttons=["download"])
        transcript = gr.Textbox(label="Transcript of the clip", lines=2, elem_id="s2-transcript",
                                placeholder="Exactly what the clip says; cloning needs it")
        check = gr.HTML(_note("info", "Upload or record 1–30 s of clean speech to clone a voice."),
                        elem_id="s2-clip-check", padding=True)
    with gr.Row(equal_height=True, elem_classes="s2-voice-actions"):
        name = gr.Textbox(show_label=False, placeholder="Voice name", elem_id="s2-voice-name", scale=2,
                          min_width=120, container=False)
        save = gr.Button("Save", elem_id="s2-voice-save", size="sm", variant="primary", scale=1, min_width=60)
        rename = gr.Button("Rename", elem_id="s2-voice-rename", size="sm", scale=1, min_width=60)
        delete = gr.Button("Delete", elem_id="s2-voice-delete", size="sm", variant="stop", scale=1, min_width=60)
    return VoicePanel(choice, clip, transcript, check, name, save, rename, delete)


def _note(kind: str, text: str) -> str:
    return f'<div class="s2-note s2-note-{kind}">{html.escape(text)}</div>'


def load_clip(path: str | None) -> DecodedClip:
    """The clip in the box (a file this visitor uploaded: Gradio admits no other path), or AudioError."""
    if not path:
        raise AudioError("No clip: upload or record one first.")
    return read_clip(path)


async def clip_codes(state: AppState, samples: np.ndarray) -> tuple[str, np.ndarray]:
    """(sha, codes [10, N]) of a clip, encoded on the device thread once and then read from the Store."""
    sha = audio_sha256(samples)
    codes = await asyncio.to_thread(state.store.cached_codes, sha)
    if codes is None:
        codes = await state.engine.encode_reference(samples)
        await asyncio.to_thread(state.store.put_codes, sha, codes)
    return sha, codes


async def resolve(state: AppState, owner: str, choice: str, clip: str | None, transcript: str) -> VoiceRef:
    """The reference the controls describe; ValueError (incl. AudioError) with a message to show."""
    if choice == NO_VOICE or not choice:
        return VoiceRef()
    if choice == CLIP:
        decoded = await asyncio.to_thread(load_clip, clip)
        sha, codes = await clip_codes(state, decoded.samples)
        return VoiceRef(None, "unsaved clip", sha, check_transcript(transcript), codes)
    voice = state.store.get_voice(owner, choice)
    try:
        if voice is None:
            raise KeyError(choice)
        codes = await asyncio.to_thread(state.store.voice_codes, owner, voice.id)
    except KeyError:
        raise ValueError("That voice was deleted; pick another one.") from None
    return VoiceRef(voice.id, voice.name, voice.audio_sha256, (transcript or "").strip() or voice.transcript, codes)


def from_history(state: AppState, voice_id: str | None, voice_name: str | None, ref: dict | None) -> VoiceRef:
    """The reference a history entry was made with (its codes are cached by sha)."""
    if ref is None:
        return VoiceRef()
    codes = state.store.cached_codes(ref["sha"])
    if codes is None:
        raise ValueError(f"The voice of this take ({voice_name}) was deleted, so it cannot be re-run.")
    return VoiceRef(voice_id, voice_name, ref["sha"], ref["transcript"], codes)


class VoiceHandlers:
    """The reference panel's events; they read and write the Store every page and the API share."""

    def __init__(self, ctx: Ctx) -> None:
        self.p, self.ctx, self.state = ctx.page.voice, ctx, ctx.state

    def wire(self) -> None:
        p = self.p
        outs = [p.check, p.choice, p.clip, p.transcript, p.name]
        # `input` is every user change: an upload, a finished recording, a trim, a clear (not our own updates).
        p.clip.input(self.checked, p.clip, outs, show_progress="minimal")
        p.choice.input(self.picked, p.choice, outs, show_progress="hidden")
        p.save.click(self.save, [p.clip, p.transcript, p.name], outs)
        p.rename.click(self.rename, [p.choice, p.name], outs)
        p.delete.click(self.delete, [p.choice, p.clip], outs)

    def _choices(self, owner: str, value: str) -> dict:
        return {self.p.choice: gr.update(choices=voice_choices(self.state, owner), value=value)}

    async def checked(self, request: gr.Request, clip: str | None) -> dict:
        p = self.p
        if not clip:
            return {p.check: _note("info", "No clip."), p.choice: NO_VOICE}
        try:
            decoded = await asyncio.to_thread(load_clip, clip)
            await clip_codes(self.state, decoded.samples)  # encode now, while the user types the transcript
        except AudioError as exc:
            return {p.check: _note("error", str(exc)), p.choice: NO_VOICE}
        note = f"Clip OK: {decoded.seconds:.1f} s. Type its transcript, then generate or save it."
        return {p.check: _note("ok", note), **self._choices(self.ctx.owner(request), CLIP)}

    async def picked(self, request: gr.Request, choice: str) -> dict:
        p, store, owner = self.p, self.state.store, self.ctx.owner(request)
        voice = store.get_voice(owner, choice) if choice not in (NO_VOICE, CLIP) else None
        if voice is None:
            return {p.check: gr.skip()}
        note = f"Saved voice “{voice.name}”: {voice.duration_s:.1f} s clip."
        return {p.clip: str(store.voice_audio_path(owner, voice.id)), p.transcript: voice.transcript,
                p.name: voice.name, p.check: _note("ok", note)}

    async def save(self, request: gr.Request, clip: str | None, transcript: str, name: str) -> dict:
        owner = self.ctx.owner(request)
        try:
            decoded = await asyncio.to_thread(load_clip, clip)
            _, codes = await clip_codes(self.state, decoded.samples)
            voice = await asyncio.to_thread(self.state.store.add_voice, owner, name, decoded, transcript, codes)
        except ValueError as exc:
            return {self.p.check: _note("error", f"Not saved: {exc}")}
        return {**self._choices(owner, voice.id), self.p.check: _note("ok", f"Saved as “{voice.name}”.")}

    def rename(self, request: gr.Request, choice: str, name: str) -> dict:
        owner = self.ctx.owner(request)
        try:
            voice = self.state.store.rename_voice(owner, _saved(choice), name)
        except (KeyError, ValueError) as exc:
            return {self.p.check: _note("error", f"Not renamed: {_message(exc)}")}
        return {**self._choices(owner, voice.id), self.p.check: _note("ok", f"Renamed to “{voice.name}”.")}

    def delete(self, request: gr.Request, choice: str, clip: str | None) -> dict:
        owner = self.ctx.owner(request)
        try:
            voice = self.state.store.get_voice(owner, _saved(choice))
        except KeyError as exc:
            return {self.p.check: _note("error", _message(exc))}
        after = self._choices(owner, CLIP if clip else NO_VOICE)
        if voice is None or not self.state.store.delete_voice(owner, voice.id):
            return {**after, self.p.check: _note("error", "That voice was already deleted.")}
        note = f"Deleted “{voice.name}”; the clip stays in the box until you clear it."
        return {**after, self.p.check: _note("ok", note)}


def _saved(choice: str) -> str:
    if choice in (NO_VOICE, CLIP, None, ""):
        raise KeyError("Pick a saved voice in the Voice list first.")
    return choice


def _message(exc: Exception) -> str:
    return exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
