"""Store: each owner's voice library and take history, in SQLite plus compact audio files, on bounded disk.

Layout under data_dir (folders, lock, disk cap and eviction: base.py; schema: schema.py): `s2pro.sqlite3`
(WAL) holds the rows;
`voices/<audio sha256>.flac` holds a clip (24-bit at its own rate, one file however many voices use it);
`history/<take id>.flac` a take (16-bit); `exports/<take id>/` the files the web layer rendered from it.
Codec codes live in the database, keyed by the SHA-256 of the clip's float32 samples at 44.1 kHz.

Owners: every voice and take belongs to an opaque owner string ("s:<session>", "api", "shared") and every
method sees only its owner's rows: another owner's id behaves exactly like an unknown one. The codes cache
is owner-free: it maps audio content to codes, and its key cannot be guessed without the audio.

Ids are generated here and every path is built from an id or hash matching its pattern, so no
caller-supplied string ever names a file. One lock serialises writers (file, row and the running byte
count change together); every call opens its own short-lived connection, so any thread may call any method.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import time
from pathlib import Path

import numpy as np

from engine import SAMPLE_RATE, DecodedClip
from playground.store.base import DB_FILE, EXPORTS_DIR, StoreBase
from playground.store.files import codes_array, codes_blob, name_key, quote, tree_bytes, write_clip, write_take
from playground.store.schema import SHARED_OWNER
from playground.store.types import (
    HISTORY_ID,
    MAX_NAME_CHARS,
    MAX_TRANSCRIPT_CHARS,
    RESERVED_NAMES,
    SHA256,
    VOICE_ID,
    DuplicateName,
    HistoryEntry,
    LibraryFull,
    StoreLimits,
    Voice,
    audio_sha256,
    check_name,
    check_owner,
    check_transcript,
)

__all__ = [
    "DB_FILE",
    "EXPORTS_DIR",
    "HISTORY_ID",
    "MAX_NAME_CHARS",
    "MAX_TRANSCRIPT_CHARS",
    "RESERVED_NAMES",
    "SHARED_OWNER",
    "VOICE_ID",
    "DuplicateName",
    "HistoryEntry",
    "LibraryFull",
    "Store",
    "StoreLimits",
    "Voice",
    "audio_sha256",
    "check_name",
    "check_transcript",
]


def _voice(row: sqlite3.Row) -> Voice:
    return Voice(row["id"], row["owner"], row["name"], row["transcript"], row["created_at"], row["duration_s"],
                 row["audio_sha256"])


def _entry(row: sqlite3.Row) -> HistoryEntry:
    return HistoryEntry(row["id"], row["owner"], row["created_at"], row["text"], row["voice_id"],
                        row["voice_name"], json.loads(row["params"]), row["seed"], json.loads(row["stats"]),
                        row["duration_s"], json.loads(row["chunks"]))


class Store(StoreBase):
    """Voices, the codes cache, takes and their exports, each owner seeing only its own."""

    # -- voices -------------------------------------------------------------------------------
    def add_voice(self, owner: str, name: str, clip: DecodedClip, transcript: str, codes: np.ndarray) -> Voice:
        """Save a clip, its transcript and its codes [10, N]. ValueError / DuplicateName / LibraryFull."""
        owner, name, transcript = check_owner(owner), check_name(name), check_transcript(transcript)
        samples = np.asarray(clip.samples, dtype=np.float32)
        if samples.ndim != 1 or len(samples) == 0:
            raise ValueError(f"voice audio must be non-empty mono samples, got shape {samples.shape}")
        blob, now = codes_blob(codes), time.time()
        voice = Voice(f"voice_{secrets.token_hex(8)}", owner, name, transcript, now,
                      len(samples) / SAMPLE_RATE, audio_sha256(samples))
        with self._lock:
            self._check_room(owner, name)
            path, new_bytes = self._clip_path(voice.audio_sha256), 0
            with self._db() as db:
                clip_row = db.execute("SELECT 1 FROM clips WHERE audio_sha256 = ?", (voice.audio_sha256,)).fetchone()
            if clip_row is None:  # identical clips are stored once, whoever saves them
                new_bytes = write_clip(path, clip.native, clip.native_rate)
            try:
                with self._db() as db:
                    if new_bytes:
                        db.execute("INSERT INTO clips VALUES (?, ?, ?)",
                                   (voice.audio_sha256, int(clip.native_rate), new_bytes))
                    db.execute("INSERT OR REPLACE INTO codes VALUES (?, ?, ?)", (voice.audio_sha256, blob, now))
                    db.execute("INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (voice.id, owner, name, name_key(name), transcript, now, voice.duration_s,
                                voice.audio_sha256, now))
            except BaseException as e:
                if new_bytes:
                    path.unlink(missing_ok=True)
                if isinstance(e, sqlite3.IntegrityError):  # UNIQUE(owner, name_key): another writer won
                    raise DuplicateName(f"a voice named {quote(name)} already exists; choose another name") from e
                raise
            self._disk_bytes += new_bytes
            self._fit_disk(keep=voice.id)
        return voice

    def _check_room(self, owner: str, name: str, except_id: str | None = None) -> None:
        with self._db() as db:
            other = db.execute("SELECT * FROM voices WHERE owner = ? AND name_key = ?",
                               (owner, name_key(name))).fetchone()
            count = db.execute("SELECT COUNT(*) FROM voices WHERE owner = ?", (owner,)).fetchone()[0]
        if other is not None and other["id"] != except_id:
            raise DuplicateName(f"a voice named {quote(other['name'])} already exists ({other['id']}); "
                                "choose another name")
        if except_id is None and count >= self.limits.max_voices_per_owner:
            raise LibraryFull(f"the voice library is full ({self.limits.max_voices_per_owner} voices); "
                              "delete one first")

    def list_voices(self, owner: str) -> list[Voice]:
        """The owner's voices, alphabetically by name (ignoring case)."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM voices WHERE owner = ? ORDER BY name_key, id",
                              (check_owner(owner),)).fetchall()
        return [_voice(r) for r in rows]

    def get_voice(self, owner: str, id_or_name: str) -> Voice | None:
        """The owner's voice with this id, else with this name (after NFKC and case folding)."""
        owner = check_owner(owner)
        if not isinstance(id_or_name, str) or len(id_or_name) > 4 * MAX_NAME_CHARS:
            return None
        by_id = VOICE_ID.fullmatch(id_or_name)
        column, value = ("id", id_or_name) if by_id else ("name_key", name_key(id_or_name.strip()))
        with self._db() as db:
            row = db.execute(f"SELECT * FROM voices WHERE owner = ? AND {column} = ?", (owner, value)).fetchone()
        return None if row is None else _voice(row)

    def _require_voice(self, owner: str, voice_id: str) -> Voice:
        voice = self.get_voice(owner, voice_id) if VOICE_ID.fullmatch(str(voice_id)) else None
        if voice is None:
            raise KeyError(f"no voice with id {quote(voice_id)}")
        return voice

    def rename_voice(self, owner: str, voice_id: str, name: str) -> Voice:
        """Rename; KeyError for an unknown id, ValueError / DuplicateName for a bad name."""
        name = check_name(name)
        with self._lock:
            voice = self._require_voice(owner, voice_id)
            self._check_room(voice.owner, name, except_id=voice.id)
            with self._db() as db:
                db.execute("UPDATE voices SET name = ?, name_key = ? WHERE id = ?", (name, name_key(name), voice.id))
        return Voice(voice.id, voice.owner, name, voice.transcript, voice.created_at, voice.duration_s,
                     voice.audio_sha256)

    def delete_voice(self, owner: str, voice_id: str) -> bool:
        """Remove the voice; its clip file and codes go with the last voice that uses them."""
        with self._lock:
            voice = self.get_voice(owner, voice_id) if VOICE_ID.fullmatch(str(voice_id)) else None
            if voice is None:
                return False
            self._drop_voice(voice.id, voice.audio_sha256)
        return True

    def voice_codes(self, owner: str, voice_id: str) -> np.ndarray:
        """The voice's codes [10, N] int64 (and marks it used); KeyError for an unknown or deleted id."""
        owner = check_owner(owner)
        if not VOICE_ID.fullmatch(str(voice_id)):
            raise KeyError(f"no voice with id {quote(voice_id)}")
        with self._lock, self._db() as db:  # one transaction: a voice deleted meanwhile is simply unknown
            row = db.execute("SELECT c.codes FROM voices v JOIN codes c ON c.audio_sha256 = v.audio_sha256 "
                             "WHERE v.id = ? AND v.owner = ?", (voice_id, owner)).fetchone()
            if row is None:
                raise KeyError(f"no voice with id {quote(voice_id)}")
            db.execute("UPDATE voices SET used_at = ? WHERE id = ?", (time.time(), voice_id))
        return codes_array(row["codes"])

    def voice_audio_path(self, owner: str, voice_id: str) -> Path:
        """The stored clip (24-bit FLAC at the upload's rate); KeyError for an unknown id."""
        return self._clip_path(self._require_voice(owner, voice_id).audio_sha256)

    # -- codes cache (owner-free: keyed by content) -------------------------------------------
    def cached_codes(self, audio_sha256: str) -> np.ndarray | None:
        if not isinstance(audio_sha256, str) or not SHA256.fullmatch(audio_sha256):
            return None
        with self._lock, self._db() as db:
            row = db.execute("SELECT codes FROM codes WHERE audio_sha256 = ?", (audio_sha256,)).fetchone()
            if row is not None:
                db.execute("UPDATE codes SET used_at = ? WHERE audio_sha256 = ?", (time.time(), audio_sha256))
        return None if row is None else codes_array(row["codes"])

    def put_codes(self, audio_sha256: str, codes: np.ndarray) -> None:
        if not isinstance(audio_sha256, str) or not SHA256.fullmatch(audio_sha256):
            raise ValueError("audio_sha256 must be 64 lowercase hex digits")
        blob = codes_blob(codes)
        with self._lock, self._db() as db:
            db.execute("INSERT OR REPLACE INTO codes VALUES (?, ?, ?)", (audio_sha256, blob, time.time()))
            # Rows a voice uses never go; the others are a cache, kept to max_cached_codes by last use.
            db.execute("DELETE FROM codes WHERE audio_sha256 IN (SELECT audio_sha256 FROM codes c WHERE NOT EXISTS "
                       "(SELECT 1 FROM voices v WHERE v.audio_sha256 = c.audio_sha256) "
                       "ORDER BY used_at DESC LIMIT -1 OFFSET ?)", (self.limits.max_cached_codes,))

    # -- history ------------------------------------------------------------------------------
    def add_history(self, owner: str, text: str, voice_id: str | None, voice_name: str | None, params: dict,
                    seed: int, stats: dict, samples: np.ndarray, chunks: list[dict]) -> HistoryEntry:
        """Save a take (16-bit FLAC); beyond max_history_per_owner the owner's oldest takes go."""
        owner = check_owner(owner)
        samples = np.asarray(samples, dtype=np.float32)
        entry = HistoryEntry(f"hist_{secrets.token_hex(8)}", owner, time.time(), text, voice_id, voice_name,
                             dict(params), int(seed), dict(stats), len(samples) / SAMPLE_RATE, list(chunks))
        with self._lock:
            path = self._take_path(entry.id)
            num_bytes = write_take(path, samples, SAMPLE_RATE)
            try:
                with self._db() as db:
                    db.execute("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                               (entry.id, owner, entry.created_at, text, voice_id, voice_name,
                                json.dumps(entry.params), entry.seed, json.dumps(entry.stats), entry.duration_s,
                                json.dumps(entry.chunks), num_bytes))
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            self._disk_bytes += num_bytes
            with self._db() as db:
                extra = db.execute("SELECT id FROM history WHERE owner = ? ORDER BY created_at DESC, rowid DESC "
                                   "LIMIT -1 OFFSET ?", (owner, self.limits.max_history_per_owner)).fetchall()
            for row in extra:
                self._drop_take(row["id"])
            self._fit_disk(keep=entry.id)
        return entry

    def list_history(self, owner: str, limit: int = 100) -> list[HistoryEntry]:
        """The owner's newest `limit` takes, newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM history WHERE owner = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
                              (check_owner(owner), max(0, int(limit)))).fetchall()
        return [_entry(r) for r in rows]

    def get_history(self, owner: str, entry_id: str) -> HistoryEntry | None:
        owner = check_owner(owner)
        if not isinstance(entry_id, str) or not HISTORY_ID.fullmatch(entry_id):
            return None
        with self._db() as db:
            row = db.execute("SELECT * FROM history WHERE id = ? AND owner = ?", (entry_id, owner)).fetchone()
        return None if row is None else _entry(row)

    def _require_entry(self, owner: str, entry_id: str) -> HistoryEntry:
        entry = self.get_history(owner, entry_id)
        if entry is None:
            raise KeyError(f"no history entry with id {quote(entry_id)}")
        return entry

    def history_audio_path(self, owner: str, entry_id: str) -> Path:
        """The take's 16-bit FLAC; KeyError for an unknown id."""
        return self._take_path(self._require_entry(owner, entry_id).id)

    def replace_history_audio(self, owner: str, entry_id: str, samples: np.ndarray,
                              chunks: list[dict]) -> HistoryEntry:
        """Swap in new audio (e.g. one chunk regenerated); KeyError for an unknown id."""
        samples = np.asarray(samples, dtype=np.float32)
        duration_s = len(samples) / SAMPLE_RATE
        with self._lock:
            entry = self._require_entry(owner, entry_id)
            with self._db() as db:
                old = db.execute("SELECT audio_bytes FROM history WHERE id = ?", (entry.id,)).fetchone()[0]
            num_bytes = write_take(self._take_path(entry.id), samples, SAMPLE_RATE)
            with self._db() as db:
                db.execute("UPDATE history SET duration_s = ?, chunks = ?, audio_bytes = ? WHERE id = ?",
                           (duration_s, json.dumps(list(chunks)), num_bytes, entry.id))
            self._disk_bytes += num_bytes - old
            self._fit_disk(keep=entry.id)
        return HistoryEntry(entry.id, entry.owner, entry.created_at, entry.text, entry.voice_id, entry.voice_name,
                            entry.params, entry.seed, entry.stats, duration_s, list(chunks))

    def delete_history(self, owner: str, entry_id: str) -> bool:
        """Remove the take, its audio and its exports folder."""
        with self._lock:
            entry = self.get_history(owner, entry_id)
            if entry is None:
                return False
            self._drop_take(entry.id)
        return True

    # -- exports (rendered downloads, written by the web layer) -------------------------------
    def exports_dir(self, owner: str, entry_id: str) -> Path:
        """The folder for files rendered from this take (created); deleted with the take. KeyError if unknown."""
        path = self.exports_root / self._require_entry(owner, entry_id).id
        path.mkdir(exist_ok=True)
        return path

    def track_exports(self, owner: str, entry_id: str) -> int:
        """Count what the web layer wrote into exports_dir(owner, entry_id) (call after writing there);
        measures only that folder. Returns its bytes; KeyError if the take is unknown (or was evicted)."""
        with self._lock:
            entry = self._require_entry(owner, entry_id)
            num_bytes = tree_bytes(self.exports_root / entry.id)
            with self._db() as db:
                old = db.execute("SELECT export_bytes FROM history WHERE id = ?", (entry.id,)).fetchone()[0]
                db.execute("UPDATE history SET export_bytes = ? WHERE id = ?", (num_bytes, entry.id))
            self._disk_bytes += num_bytes - old
            self._fit_disk(keep=entry.id)
        return num_bytes

