"""What the user hears and downloads: post-processing options and the files rendered from a take.

History keeps each take's raw engine audio (so a regenerated chunk splices in at the same level and
sample positions); the options here are applied whenever a take is shown: trim leading/trailing
silence, then normalize loudness to a target (ITU-R BS.1770), then encode in the chosen format.
Rendered files live under `data_dir/exports/<take id>/` and are deleted with the take.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import soundfile as sf

from engine.audio import SAMPLE_RATE, encode_audio, normalize_loudness, trim_silence

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
    def inputs(self) -> list[gr.components.Component]:
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
    """Rendered files of takes, cached by content: the same audio with the same options renders once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def render(self, take_id: str, samples: np.ndarray, opts: OutputOptions, label: str = "",
               trim: bool | None = None) -> Path:
        key = hashlib.sha1(np.ascontiguousarray(samples, np.float32).tobytes())
        key.update(repr((opts, label, trim)).encode())
        folder = self.root / take_id / key.hexdigest()[:16]
        path = folder / f"s2pro-{take_id.removeprefix('hist_')[:8]}{label}.{opts.fmt}"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            data = encode_audio(opts.apply(samples, trim), opts.fmt)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)
        return path

    def forget(self, take_id: str) -> None:
        shutil.rmtree(self.root / take_id, ignore_errors=True)


def warm_up() -> None:
    """Import the loudness meter (scipy, about 2 s) before the first take needs it."""
    normalize_loudness(np.zeros(SAMPLE_RATE, np.float32))


def read_take(path: Path) -> np.ndarray:
    """A stored take's raw samples as float32 mono."""
    samples, _ = sf.read(path, dtype="float32", always_2d=False)
    return samples
