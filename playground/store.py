"""Store: the voice library and the generation history, in SQLite plus audio files under the data dir.

Layout: `data_dir/s2pro.sqlite3` (WAL mode) holds the rows; `data_dir/voices/<id>.wav` (32-bit float,
so a downloaded clip re-encodes to the very same codes) and `data_dir/history/<id>.wav` (16-bit PCM,
what users play and download) hold the audio. Codec codes live in the database, keyed by the SHA-256
of the clip's float32 samples, so the same clip is encoded once however often it is uploaded.

Ids are generated here (`voice_<16 hex>`, `hist_<16 hex>`) and every path is built from an id that
matches that pattern, so no caller-supplied string ever names a file. One lock serialises writers
(file and row change together); every call opens its own short-lived connection, so any thread may
call any method.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.audio import SAMPLE_RATE, float_to_int16

DB_FILE = "s2pro.sqlite3"
MAX_NAME_CHARS = 64
MAX_TRANSCRIPT_CHARS = 5000
VOICE_ID = re.compile(r"voice_[0-9a-f]{16}")
HISTORY_ID = re.compile(r"hist_[0-9a-f]{16}")
# The speech API reads these `voice` values as "the model's own voice"; a saved voice may not take them.
RESERVED_NAMES = frozenset({"default", "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova",
                            "sage", "shimmer", "verse", "marin", "cedar"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS voices (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, transcript TEXT NOT NULL,
    created_at REAL NOT NULL, duration_s REAL NOT NULL, audio_sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS codes (audio_sha256 TEXT PRIMARY KEY, codes BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, text TEXT NOT NULL, voice_id TEXT, voice_name TEXT,
    params TEXT NOT NULL, seed INTEGER NOT NULL, stats TEXT NOT NULL, duration_s REAL NOT NULL,
    chunks TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_created ON history (created_at);
"""


class DuplicateName(ValueError):
    """Another voice already has this name (names are unique, case-insensitively)."""


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    transcript: str
    created_at: float  # unix seconds
    duration_s: float
    audio_sha256: str


@dataclass(frozen=True)
class HistoryEntry:
    id: str
    created_at: float  # unix seconds
    text: str
    voice_id: str | None
    voice_name: str | None
    params: dict
    seed: int
    stats: dict
    duration_s: float
    chunks: list[dict]  # per text chunk: {text, start_sample, end_sample}


def audio_sha256(samples: np.ndarray) -> str:
    """The content key of a clip: SHA-256 of its float32 samples (the engine's codes cache uses the same)."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


def check_name(name: str) -> str:
    """The cleaned voice name (surrounding spaces dropped), or ValueError saying what to change."""
    if not isinstance(name, str):
        raise ValueError("the voice name must be a string")
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise ValueError(f"the voice name must have 1 to {MAX_NAME_CHARS} characters, got {len(name)}")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise ValueError("the voice name must not contain control or invisible characters")
    if name.lower() in RESERVED_NAMES:
        raise ValueError(f"the voice name {name!r} is reserved: in the speech API it selects the model's "
                         "own voice; choose another name")
    if VOICE_ID.fullmatch(name) or HISTORY_ID.fullmatch(name):
        raise ValueError("the voice name must not look like a generated id")
    return name


def check_transcript(transcript: str) -> str:
    transcript = transcript.strip() if isinstance(transcript, str) else ""
    if not transcript:
        raise ValueError("the transcript is empty: type exactly what the clip says")
    if len(transcript) > MAX_TRANSCRIPT_CHARS:
        raise ValueError(f"the transcript has {len(transcript)} characters; the limit is {MAX_TRANSCRIPT_CHARS}")
    return transcript


def _codes_blob(codes: np.ndarray) -> bytes:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != 10 or codes.shape[1] < 1 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be an integer array [10, N >= 1], got {codes.dtype} {codes.shape}")
    buf = io.BytesIO()
    np.save(buf, codes.astype(np.int64), allow_pickle=False)
    return buf.getvalue()


def _codes_array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def _write_wav(path: Path, samples: np.ndarray, subtype: str) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half-written clip behind a row."""
    samples = np.asarray(samples, dtype=np.float32)
    if subtype == "PCM_16":  # the API's own rounding and clipping, so stored and served audio agree
        samples = float_to_int16(samples)
    tmp = path.with_suffix(".tmp")
    sf.write(tmp, samples, SAMPLE_RATE, subtype=subtype, format="WAV")
    os.replace(tmp, path)


def _voice(row: sqlite3.Row) -> Voice:
    return Voice(row["id"], row["name"], row["transcript"], row["created_at"], row["duration_s"],
                 row["audio_sha256"])


def _entry(row: sqlite3.Row) -> HistoryEntry:
    return HistoryEntry(row["id"], row["created_at"], row["text"], row["voice_id"], row["voice_name"],
                        json.loads(row["params"]), row["seed"], json.loads(row["stats"]), row["duration_s"],
                        json.loads(row["chunks"]))


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.voices_dir = self.data_dir / "voices"
        self.history_dir = self.data_dir / "history"
        for d in (self.voices_dir, self.history_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / DB_FILE
        self._lock = threading.RLock()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection per call: sqlite3 connections must not be shared across threads."""
        db = sqlite3.connect(self.db_path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:  # commits on success, rolls back on error
                yield db
        finally:
            db.close()

    # -- voices -------------------------------------------------------------------------------
    def add_voice(self, name: str, samples: np.ndarray, transcript: str, codes: np.ndarray) -> Voice:
        """Save a clip, its transcript and its codes [10, N]. ValueError / DuplicateName on bad input."""
        name, transcript = check_name(name), check_transcript(transcript)
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1 or len(samples) == 0:
            raise ValueError(f"voice audio must be non-empty mono samples, got shape {samples.shape}")
        blob = _codes_blob(codes)
        voice = Voice(f"voice_{secrets.token_hex(8)}", name, transcript, time.time(),
                      len(samples) / SAMPLE_RATE, audio_sha256(samples))
        with self._lock:
            self._check_free(name)
            path = self.voices_dir / f"{voice.id}.wav"
            _write_wav(path, samples, "FLOAT")
            try:
                with self._db() as db:
                    db.execute("INSERT OR REPLACE INTO codes VALUES (?, ?)", (voice.audio_sha256, blob))
                    db.execute("INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?)",
                               (voice.id, voice.name, voice.transcript, voice.created_at, voice.duration_s,
                                voice.audio_sha256))
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        return voice

    def _check_free(self, name: str, except_id: str | None = None) -> None:
        other = self._voice_by_name(name)
        if other is not None and other.id != except_id:
            raise DuplicateName(f"a voice named {other.name!r} already exists ({other.id}); choose another name")

    def _voice_by_name(self, name: str) -> Voice | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM voices WHERE name = ?", (name,)).fetchone()
        return None if row is None else _voice(row)

    def list_voices(self) -> list[Voice]:
        """All voices, alphabetically by name."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM voices ORDER BY name COLLATE NOCASE, id").fetchall()
        return [_voice(r) for r in rows]

    def get_voice(self, id_or_name: str) -> Voice | None:
        """Look a voice up by its id, else by its name (case-insensitive)."""
        if not isinstance(id_or_name, str):
            return None
        if VOICE_ID.fullmatch(id_or_name):
            with self._db() as db:
                row = db.execute("SELECT * FROM voices WHERE id = ?", (id_or_name,)).fetchone()
            return None if row is None else _voice(row)
        return self._voice_by_name(id_or_name.strip())

    def rename_voice(self, voice_id: str, name: str) -> Voice:
        """Rename; KeyError for an unknown id, ValueError / DuplicateName for a bad name."""
        name = check_name(name)
        with self._lock:
            voice = self._require_voice(voice_id)
            self._check_free(name, except_id=voice.id)
            with self._db() as db:
                db.execute("UPDATE voices SET name = ? WHERE id = ?", (name, voice.id))
        return Voice(voice.id, name, voice.transcript, voice.created_at, voice.duration_s, voice.audio_sha256)

    def delete_voice(self, voice_id: str) -> bool:
        """Remove the voice, its clip, and its codes unless another voice shares the same clip."""
        with self._lock:
            voice = self.get_voice(voice_id) if VOICE_ID.fullmatch(str(voice_id)) else None
            if voice is None:
                return False
            with self._db() as db:
                db.execute("DELETE FROM voices WHERE id = ?", (voice.id,))
                db.execute("DELETE FROM codes WHERE audio_sha256 = ? AND NOT EXISTS "
                           "(SELECT 1 FROM voices WHERE audio_sha256 = ?)", (voice.audio_sha256,) * 2)
            (self.voices_dir / f"{voice.id}.wav").unlink(missing_ok=True)
        return True

    def _require_voice(self, voice_id: str) -> Voice:
        voice = self.get_voice(voice_id) if VOICE_ID.fullmatch(str(voice_id)) else None
        if voice is None:
            raise KeyError(f"no voice with id {voice_id!r}")
        return voice

    def voice_codes(self, voice_id: str) -> np.ndarray:
        """The voice's codes [10, N] int64; KeyError for an unknown id."""
        codes = self.cached_codes(self._require_voice(voice_id).audio_sha256)
        assert codes is not None, f"voice {voice_id} has no codes row"
        return codes

    def voice_audio_path(self, voice_id: str) -> Path:
        """The stored clip (float WAV); KeyError for an unknown id."""
        return self.voices_dir / f"{self._require_voice(voice_id).id}.wav"

    def cached_codes(self, audio_sha256: str) -> np.ndarray | None:
        with self._db() as db:
            row = db.execute("SELECT codes FROM codes WHERE audio_sha256 = ?", (audio_sha256,)).fetchone()
        return None if row is None else _codes_array(row["codes"])

    def put_codes(self, audio_sha256: str, codes: np.ndarray) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", audio_sha256):
            raise ValueError("audio_sha256 must be 64 lowercase hex digits")
        blob = _codes_blob(codes)
        with self._lock, self._db() as db:
            db.execute("INSERT OR REPLACE INTO codes VALUES (?, ?)", (audio_sha256, blob))

    # -- history ------------------------------------------------------------------------------
    def add_history(self, text: str, voice_id: str | None, voice_name: str | None, params: dict, seed: int,
                    stats: dict, samples: np.ndarray, chunks: list[dict]) -> HistoryEntry:
        samples = np.asarray(samples, dtype=np.float32)
        entry = HistoryEntry(f"hist_{secrets.token_hex(8)}", time.time(), text, voice_id, voice_name,
                             dict(params), int(seed), dict(stats), len(samples) / SAMPLE_RATE, list(chunks))
        with self._lock:
            path = self.history_dir / f"{entry.id}.wav"
            _write_wav(path, samples, "PCM_16")
            try:
                with self._db() as db:
                    db.execute("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (entry.id, entry.created_at, text, voice_id, voice_name, json.dumps(entry.params),
                                entry.seed, json.dumps(entry.stats), entry.duration_s, json.dumps(entry.chunks)))
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        return entry

    def list_history(self, limit: int = 100) -> list[HistoryEntry]:
        """The newest `limit` entries, newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM history ORDER BY created_at DESC, rowid DESC LIMIT ?",
                              (max(0, int(limit)),)).fetchall()
        return [_entry(r) for r in rows]

    def get_history(self, entry_id: str) -> HistoryEntry | None:
        if not isinstance(entry_id, str) or not HISTORY_ID.fullmatch(entry_id):
            return None
        with self._db() as db:
            row = db.execute("SELECT * FROM history WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None else _entry(row)

    def _require_entry(self, entry_id: str) -> HistoryEntry:
        entry = self.get_history(entry_id)
        if entry is None:
            raise KeyError(f"no history entry with id {entry_id!r}")
        return entry

    def history_audio_path(self, entry_id: str) -> Path:
        """The entry's 16-bit WAV; KeyError for an unknown id."""
        return self.history_dir / f"{self._require_entry(entry_id).id}.wav"

    def replace_history_audio(self, entry_id: str, samples: np.ndarray, chunks: list[dict]) -> HistoryEntry:
        """Swap in new audio (e.g. one chunk regenerated); KeyError for an unknown id."""
        samples = np.asarray(samples, dtype=np.float32)
        duration_s = len(samples) / SAMPLE_RATE
        with self._lock:
            entry = self._require_entry(entry_id)
            _write_wav(self.history_dir / f"{entry.id}.wav", samples, "PCM_16")
            with self._db() as db:
                db.execute("UPDATE history SET duration_s = ?, chunks = ? WHERE id = ?",
                           (duration_s, json.dumps(list(chunks)), entry.id))
        return HistoryEntry(entry.id, entry.created_at, entry.text, entry.voice_id, entry.voice_name,
                            entry.params, entry.seed, entry.stats, duration_s, list(chunks))

    def delete_history(self, entry_id: str) -> bool:
        with self._lock:
            entry = self.get_history(entry_id)
            if entry is None:
                return False
            with self._db() as db:
                db.execute("DELETE FROM history WHERE id = ?", (entry.id,))
            (self.history_dir / f"{entry.id}.wav").unlink(missing_ok=True)
        return True
