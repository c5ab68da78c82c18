"""What the user hears and downloads: post-processing options and the files rendered from a take.

History keeps each take's raw engine audio (so a regenerated chunk splices in at the same level and
sample positions); the options here are applied whenever a take is shown: trim leading/trailing
silence, then normalize loudness to a target (ITU-R BS.1770), then encode in the chosen format.
Rendered files live under `data_dir/exports/<take id>/`, one per take and kind, and go with the take.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import soundfile as sf

from engine import SAMPLE_RATE, align_words, encode_audio, normalize_loudness, to_srt, to_vtt, trim_silence
from playground.store import Store

FORMATS = ("wav", "mp3", "flac", "opus")
DEFAULT_LUFS = -16.0


@dataclass(frozen=True)
class OutputOptions:
    fmt: str = "wav"
    normalize: bool = True
    target_lufs: float = DEFAULT_LUFS
    trim: bool = False

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if not -40.0 <= self.target_lufs <= -5.0:
            raise ValueError(f"target loudness must be in [-40, -5] LUFS, got {self.target_lufs}")

    def apply(self, samples: np.ndarray, trim: bool | None = None) -> np.ndarray:
        if self.trim if trim is None else trim:
            samples = trim_silence(samples)
        if self.normalize:
            samples = normalize_loudness(samples, self.target_lufs)
        return samples

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class OutputPanel:
    fmt: gr.Dropdown
    normalize: gr.Checkbox
    target_lufs: gr.Slider
    trim: gr.Checkbox

    @property
    def inputs(self) -> list[Any]:  # Gradio components, as event inputs
        return [self.fmt, self.normalize, self.target_lufs, self.trim]


def build_output_panel() -> OutputPanel:
    with gr.Accordion("Output", open=False, elem_id="s2-output"):
        with gr.Row():
            fmt = gr.Dropdown(list(FORMATS), value="wav", label="Download format", elem_id="s2-format", scale=1)
            target = gr.Slider(-30, -10, value=DEFAULT_LUFS, step=1, label="Target loudness (LUFS)", scale=2,
                               elem_id="s2-lufs")
        with gr.Row():
            normalize = gr.Checkbox(True, label="Normalize loudness", elem_id="s2-normalize")
            trim = gr.Checkbox(False, label="Trim leading/trailing silence", elem_id="s2-trim")
    return OutputPanel(fmt, normalize, target, trim)


class Exports:
    """Rendered files of takes, in the store's exports folder of each take (counted in its disk
    budget, deleted with the take). One file per take and kind (the take, chunk n): a new rendering
    with other options replaces the old one, so re-renders never pile up; the same audio with the
    same options is not rendered again."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.exports_root

    def render(self, owner: str, take_id: str, samples: np.ndarray, opts: OutputOptions, label: str = "",
               trim: bool | None = None) -> Path:
        """KeyError if the take is not this owner's (or is gone)."""
        key = hashlib.sha1(np.ascontiguousarray(samples, np.float32).tobytes())
        key.update(repr((opts, label, trim)).encode())
        kind = f"take{label}"
        folder = self.store.exports_dir(owner, take_id) / f"{kind}-{key.hexdigest()[:16]}"
        path = folder / f"s2pro-{take_id.removeprefix('hist_')[:8]}{label}.{opts.fmt}"
        if not path.is_file():
            for old in folder.parent.glob(f"{kind}-*"):
                shutil.rmtree(old, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
            data = encode_audio(opts.apply(samples, trim), opts.fmt)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)
            self.store.track_exports(owner, take_id)
        return path


    def subtitles(self, owner: str, take_id: str, samples: np.ndarray, text: str, opts: OutputOptions) -> list[Path]:
        """SRT and WebVTT of the take's words (engine.align_words), timed for its download as `opts`
        render it (a trimmed take starts later in its text). KeyError if the take is not this owner's;
        ValueError if the text has no English word to align."""
        rendered = opts.apply(samples)
        key = hashlib.sha1(np.ascontiguousarray(rendered, np.float32).tobytes())
        key.update(text.encode())
        folder = self.store.exports_dir(owner, take_id) / f"subtitles-{key.hexdigest()[:16]}"
        stem = folder / f"s2pro-{take_id.removeprefix('hist_')[:8]}"
        paths = [stem.with_suffix(".srt"), stem.with_suffix(".vtt")]
        if not all(p.is_file() for p in paths):
            words = align_words(rendered, SAMPLE_RATE, text)
            for old in folder.parent.glob("subtitles-*"):
                shutil.rmtree(old, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
            for path, body in zip(paths, (to_srt(words), to_vtt(words))):
                path.with_suffix(".part").write_text(body, encoding="utf-8")
                path.with_suffix(".part").replace(path)
            self.store.track_exports(owner, take_id)
        return paths


def warm_up() -> None:
    """Import the loudness meter (scipy, about 2 s) before the first take needs it."""
    normalize_loudness(np.zeros(SAMPLE_RATE, np.float32))


def read_take(path: Path) -> np.ndarray:
    """A stored take's raw samples as float32 mono."""
    samples, _ = sf.read(path, dtype="float32", always_2d=False)
    return samples
