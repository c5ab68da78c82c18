"""End to end on the tiny checkpoint: `python -m engine synthesize`, with and without a voice clip."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.tools import tool

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "ref.wav"
    subprocess.run([tool("espeak-ng"), "-w", str(path), "The quick brown fox jumps over the lazy dog."], check=True)
    return path


def synthesize(tiny_dir: Path, out: Path, *extra: str) -> tuple[np.ndarray, int, np.ndarray]:
    codes_out = out.with_suffix(".npy")
    cmd = [sys.executable, "-m", "engine", "synthesize", "--model-path", str(tiny_dir), "--device", "cpu",
           "--out", str(out), "--codes-out", str(codes_out), *extra]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    audio, rate = sf.read(str(out), dtype="float32")
    return audio, rate, np.load(codes_out)


def test_plain_tts_length_and_reproducibility(tiny_dir: Path, tmp_path: Path) -> None:
    args = ("--text", "Hello there. [whisper] How are you today?", "--max-frames", "12", "--seed", "3")
    audio, rate, codes = synthesize(tiny_dir, tmp_path / "a.wav", *args)
    assert rate == 44100 and audio.ndim == 1
    assert codes.shape[0] == 10 and 1 <= codes.shape[1] <= 12
    assert len(audio) == 2048 * codes.shape[1]
    again, _, codes2 = synthesize(tiny_dir, tmp_path / "b.wav", *args)
    assert np.array_equal(codes, codes2) and np.array_equal(audio, again)
    _, _, other = synthesize(tiny_dir, tmp_path / "c.wav", *args[:-1], "4")
    assert not np.array_equal(codes, other)


def test_voice_cloning_with_espeak_reference(tiny_dir: Path, tmp_path: Path, speech_clip: Path) -> None:
    base = ("--text", "Nice to meet you.", "--max-frames", "8", "--seed", "1")
    ref = ("--reference", str(speech_clip), "--reference-text", "The quick brown fox jumps over the lazy dog.")
    audio, _, codes = synthesize(tiny_dir, tmp_path / "r.wav", *base, *ref)
    assert len(audio) == 2048 * codes.shape[1] and codes.shape[1] >= 1
    _, _, plain = synthesize(tiny_dir, tmp_path / "p.wav", *base)
    assert not np.array_equal(codes, plain)  # the reference changes the prompt, so the output


def test_top_k_1_engine_equals_reference_loop(tiny_dir: Path, tmp_path: Path) -> None:
    base = ("--text", "One two three.", "--max-frames", "10", "--top-k", "1", "--chunk-length", "0")
    audio, _, codes = synthesize(tiny_dir, tmp_path / "e.wav", *base, "--seed", "1")
    ref_audio, _, ref_codes = synthesize(tiny_dir, tmp_path / "r.wav", *base, "--seed", "2", "--reference-loop")
    assert np.array_equal(codes, ref_codes) and np.array_equal(audio, ref_audio)


def test_bad_input_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    cmd = [sys.executable, "-m", "engine", "synthesize", "--model-path", str(tiny_dir), "--device", "cpu",
           "--text", "hi", "--reference", str(bad), "--reference-text", "x", "--out", str(tmp_path / "o.wav")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and "error:" in res.stderr


def test_int8_weights_from_the_command_line(tiny_dir: Path, tmp_path: Path) -> None:
    """--weights int8: the engine's codes equal the reference loop's on the same int8 model, and the
    quantized weights land in --cache-dir (read back by the second run)."""
    cache = tmp_path / "cache"
    args = ("--text", "Hello there.", "--max-frames", "6", "--seed", "2", "--weights", "int8",
            "--cache-dir", str(cache))
    _, _, codes = synthesize(tiny_dir, tmp_path / "a.wav", *args)
    assert [p.suffix for p in (cache / "int8").iterdir()] == [".safetensors"]
    _, _, reference = synthesize(tiny_dir, tmp_path / "b.wav", *args, "--reference-loop")
    assert codes.shape[0] == 10 and codes.shape[1] >= 1 and np.array_equal(codes, reference)
