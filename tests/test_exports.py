"""Rendered downloads: one file per take and kind, replaced (never piled up) when the options change,
counted in the store's disk budget, and only for the take's owner."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from playground.store import Store, StoreLimits
from playground.ui.output import Exports, OutputOptions


def take(store: Store, owner: str = "s:alice") -> str:
    t = np.arange(44100) / 44100
    samples = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    chunks = [{"text": "a", "start_sample": 0, "end_sample": len(samples)}]
    return store.add_history(owner, "a", None, None, {}, 1, {}, samples, chunks).id


def test_re_renders_replace_the_previous_file(tmp_path: Path) -> None:
    store = Store(tmp_path, StoreLimits())
    exports, take_id = Exports(store), take(store)
    samples = sf.read(store.history_audio_path("s:alice", take_id), dtype="float32")[0]
    paths = [exports.render("s:alice", take_id, samples, OutputOptions("wav", True, lufs)) for lufs in range(-30, -10)]
    files = [p for p in (store.exports_root / take_id).rglob("*") if p.is_file()]
    assert files == [paths[-1]] and len(set(paths)) == 20
    assert exports.render("s:alice", take_id, samples, OutputOptions("wav", True, -11)) == paths[-1]  # cached
    chunk = exports.render("s:alice", take_id, samples[:1000], OutputOptions("mp3"), "-chunk1", False)
    assert sorted(p for p in (store.exports_root / take_id).rglob("*") if p.is_file()) == sorted([paths[-1], chunk])
    on_disk = sum(p.stat().st_size for p in store.data_dir.rglob("*") if p.is_file() and "sqlite" not in p.name)
    assert store.disk_bytes() == on_disk


def test_another_owner_cannot_render_a_take(tmp_path: Path) -> None:
    store = Store(tmp_path, StoreLimits())
    take_id = take(store)
    with pytest.raises(KeyError):
        Exports(store).render("s:mallory", take_id, np.zeros(100, np.float32), OutputOptions())
    assert not (store.exports_root / take_id).exists() or not any((store.exports_root / take_id).iterdir())


def test_subtitles_are_one_pair_per_take_and_counted(tmp_path: Path) -> None:
    """SRT and WebVTT of a take: made once per audio and text, replaced when the rendering changes (a
    trimmed take is timed anew), in the disk budget, only for the take's owner; no English word: refused."""
    store = Store(tmp_path, StoreLimits())
    exports, take_id = Exports(store), take(store)
    samples = np.concatenate([np.zeros(22050, np.float32),
                              sf.read(store.history_audio_path("s:alice", take_id), dtype="float32")[0]])
    first = exports.subtitles("s:alice", take_id, samples, "a tone", OutputOptions())
    assert [p.suffix for p in first] == [".srt", ".vtt"] and all(p.is_file() for p in first)
    assert exports.subtitles("s:alice", take_id, samples, "a tone", OutputOptions()) == first  # not made again
    trimmed = exports.subtitles("s:alice", take_id, samples, "a tone", OutputOptions(trim=True))
    assert trimmed != first and not any(p.exists() for p in first)
    on_disk = sum(p.stat().st_size for p in store.data_dir.rglob("*") if p.is_file() and "sqlite" not in p.name)
    assert store.disk_bytes() == on_disk
    with pytest.raises(ValueError, match="English"):
        exports.subtitles("s:alice", take_id, samples, "Zorbulax", OutputOptions())
    with pytest.raises(KeyError):
        exports.subtitles("s:mallory", take_id, samples, "a tone", OutputOptions())
