"""Store migration from the owner-less WAV store (v0): rows, clips and takes carried over, idempotent,
and safe against a crash before the commit."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.audio_out import float_to_int16
from playground.store import (
    DB_FILE,
    EXPORTS_DIR,
    Store,
    audio_sha256,
)
from tests.store_helpers import SR, codes, files_bytes, samples

# -- migration from the owner-less WAV store --------------------------------------------------------
_V0_SCHEMA = """
CREATE TABLE voices (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, transcript TEXT NOT NULL,
    created_at REAL NOT NULL, duration_s REAL NOT NULL, audio_sha256 TEXT NOT NULL);
CREATE TABLE codes (audio_sha256 TEXT PRIMARY KEY, codes BLOB NOT NULL);
CREATE TABLE history (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, text TEXT NOT NULL, voice_id TEXT, voice_name TEXT,
    params TEXT NOT NULL, seed INTEGER NOT NULL, stats TEXT NOT NULL, duration_s REAL NOT NULL,
    chunks TEXT NOT NULL);
CREATE INDEX history_created ON history (created_at);
"""


def _npy(array: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def make_v0_store(root: Path) -> dict:
    """A data dir as the old store left it: float32 WAV clips per voice id, 16-bit WAV takes."""
    (root / "voices").mkdir(parents=True)
    (root / "history").mkdir()
    db = sqlite3.connect(root / DB_FILE)
    db.executescript(_V0_SCHEMA)
    clips = {"voice_000000000000000a": samples(0.5, seed=1), "voice_000000000000000b": samples(0.5, seed=1),
             "voice_000000000000000c": samples(0.3, seed=2)}  # a and b share a clip
    names = {"voice_000000000000000a": "Straße", "voice_000000000000000b": "STRASSE", "voice_000000000000000c": "Eve"}
    for i, (voice_id, clip) in enumerate(clips.items()):
        sf.write(root / "voices" / f"{voice_id}.wav", clip, SR, subtype="FLOAT")
        db.execute("INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?)",
                   (voice_id, names[voice_id], f"said {i}", 100.0 + i, len(clip) / SR, audio_sha256(clip)))
        db.execute("INSERT OR REPLACE INTO codes VALUES (?, ?)", (audio_sha256(clip), _npy(codes(seed=i))))
    takes = {f"hist_000000000000000{i}": samples(0.2, seed=10 + i) for i in range(2)}
    for i, (take_id, take) in enumerate(takes.items()):
        sf.write(root / "history" / f"{take_id}.wav", float_to_int16(take), SR, subtype="PCM_16")
        db.execute("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (take_id, 200.0 + i, f"take {i}", None, None, json.dumps({"t": i}), i, "{}", 0.2, "[]"))
    (root / EXPORTS_DIR / "hist_0000000000000001").mkdir(parents=True)
    (root / EXPORTS_DIR / "hist_0000000000000001" / "x.mp3").write_bytes(b"z" * 777)
    db.commit()
    db.close()
    return {"clips": clips, "takes": takes}


def test_migration_from_v0(tmp_path: Path) -> None:
    old = make_v0_store(tmp_path)
    store = Store(tmp_path)
    voices = store.list_voices("shared")
    assert [(v.id, v.name, v.owner) for v in sorted(voices, key=lambda v: v.id)] == [
        ("voice_000000000000000a", "Straße", "shared"), ("voice_000000000000000b", "STRASSE (2)", "shared"),
        ("voice_000000000000000c", "Eve", "shared")]  # the NFKC/casefold collision renamed, not dropped
    for i, (voice_id, clip) in enumerate(old["clips"].items()):
        voice = store.get_voice("shared", voice_id)
        assert voice is not None
        assert voice.audio_sha256 == audio_sha256(clip) and voice.transcript == f"said {i}"
        shared_codes = codes(seed=max(i, 1))  # a and b share one codes row: the last one written (b's)
        np.testing.assert_array_equal(store.voice_codes("shared", voice_id), shared_codes)
        stored, rate = sf.read(store.voice_audio_path("shared", voice_id), dtype="float32")
        assert rate == SR and np.abs(stored - clip).max() <= 2.0 ** -24  # 24-bit: far below hearing
    for i, (take_id, take) in enumerate(old["takes"].items()):
        entry = store.get_history("shared", take_id)
        assert entry is not None
        assert entry.text == f"take {i}" and entry.params == {"t": i} and entry.owner == "shared"
        np.testing.assert_array_equal(sf.read(store.history_audio_path("shared", take_id), dtype="int16")[0],
                                      float_to_int16(take))
    assert sorted(p.name for p in tmp_path.glob("*/*.wav")) == []
    assert len(list(store.voices_dir.iterdir())) == 2  # the shared clip once
    assert store.disk_bytes() == files_bytes(store)
    assert sqlite3.connect(tmp_path / DB_FILE).execute("PRAGMA user_version").fetchone()[0] == 2


def test_migration_is_idempotent_and_survives_a_crash_before_commit(tmp_path: Path) -> None:
    make_v0_store(tmp_path)
    # A migration that converted a file and died before its transaction: FLAC beside WAV, rows still v0.
    wav = tmp_path / "history" / "hist_0000000000000000.wav"
    sf.write(tmp_path / "history" / "hist_0000000000000000.flac", sf.read(wav, dtype="int16")[0], SR,
             subtype="PCM_16", format="FLAC")
    first = Store(tmp_path)
    snapshot = (first.list_voices("shared"), first.list_history("shared"), first.disk_bytes())
    second = Store(tmp_path)
    assert (second.list_voices("shared"), second.list_history("shared"), second.disk_bytes()) == snapshot
    assert len(snapshot[0]) == 3 and len(snapshot[1]) == 2 and snapshot[2] == files_bytes(second)
