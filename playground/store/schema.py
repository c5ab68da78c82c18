"""The store's SQLite schema, its version (`PRAGMA user_version`) and the migration from version 0.

Version 0 (no owners): `voices` unique by NOCASE name, clips as float32 WAV `voices/<voice id>.wav`,
takes as 16-bit WAV `history/<id>.wav`. Version 2: every voice and take has an owner; names are unique
per owner by `name_key`; clips are 24-bit FLAC named by content (`voices/<audio sha256>.flac`, one file
however many voices use it, rows in `clips`); takes are 16-bit FLAC; file sizes live in the rows so the
store can keep a running byte count without walking the tree.

Migration converts files first (atomic writes, old files kept), then swaps the tables in one
transaction; the store's sweep at open then deletes the old WAVs, which no row names any more. A crash
at any point leaves a store that opens and migrates again to the same result, and no data is lost.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from playground.store.files import name_key, tree_bytes, write_clip, write_take

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
SHARED_OWNER = "shared"  # the owner of everything a version-0 store held (one library for all)
SCHEMA = """
CREATE TABLE IF NOT EXISTS voices (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, name_key TEXT NOT NULL,
    transcript TEXT NOT NULL, created_at REAL NOT NULL, duration_s REAL NOT NULL,
    audio_sha256 TEXT NOT NULL, used_at REAL NOT NULL, UNIQUE (owner, name_key));
CREATE INDEX IF NOT EXISTS voices_sha ON voices (audio_sha256);
CREATE INDEX IF NOT EXISTS voices_used ON voices (used_at);
CREATE TABLE IF NOT EXISTS clips (
    audio_sha256 TEXT PRIMARY KEY, sample_rate INTEGER NOT NULL, num_bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS codes (audio_sha256 TEXT PRIMARY KEY, codes BLOB NOT NULL, used_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS codes_used ON codes (used_at);
CREATE TABLE IF NOT EXISTS history (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at REAL NOT NULL, text TEXT NOT NULL, voice_id TEXT,
    voice_name TEXT, params TEXT NOT NULL, seed INTEGER NOT NULL, stats TEXT NOT NULL,
    duration_s REAL NOT NULL, chunks TEXT NOT NULL, audio_bytes INTEGER NOT NULL,
    export_bytes INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS history_owner ON history (owner, created_at);
CREATE INDEX IF NOT EXISTS history_created ON history (created_at);
"""
_V0_SAMPLE_RATE = 44100  # version 0 stored every clip and take at the engine's rate


def prepare(db_path: Path, data_dir: Path) -> None:
    """Bring the database at db_path to SCHEMA_VERSION, creating or migrating it."""
    db = sqlite3.connect(db_path, timeout=30, isolation_level=None)  # explicit BEGIN: DDL in the transaction
    db.row_factory = sqlite3.Row
    try:
        db.execute("PRAGMA journal_mode=WAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        has_v0 = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='voices'").fetchone()
        if version == 0 and has_v0:
            _migrate_v0(db, data_dir)
        elif version == 0:
            db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        elif version != SCHEMA_VERSION:
            raise RuntimeError(f"{db_path} has schema version {version}; this build reads {SCHEMA_VERSION}")
    finally:
        db.close()


def _migrate_v0(db: sqlite3.Connection, data_dir: Path) -> None:
    voices = db.execute("SELECT * FROM voices ORDER BY created_at, id").fetchall()
    history = db.execute("SELECT * FROM history").fetchall()
    clips = {v["audio_sha256"]: _convert_clip(data_dir, v["id"], v["audio_sha256"]) for v in voices}
    takes = {h["id"]: _convert_take(data_dir, h["id"]) for h in history}
    now = time.time()
    db.execute("BEGIN IMMEDIATE")
    try:
        for table in ("voices", "codes", "history"):
            db.execute(f"ALTER TABLE {table} RENAME TO {table}_v0")
        for statement in ("DROP INDEX IF EXISTS history_created", *filter(str.strip, SCHEMA.split(";"))):
            db.execute(statement)
        _copy_voices(db, voices, now)
        db.executemany("INSERT INTO clips VALUES (?, ?, ?)",
                       [(sha, _V0_SAMPLE_RATE, size) for sha, size in clips.items()])
        db.execute("INSERT INTO codes SELECT audio_sha256, codes, ? FROM codes_v0", (now,))
        db.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            (h["id"], SHARED_OWNER, h["created_at"], h["text"], h["voice_id"], h["voice_name"], h["params"],
             h["seed"], h["stats"], h["duration_s"], h["chunks"], takes[h["id"]],
             tree_bytes(data_dir / "exports" / h["id"])) for h in history])
        for table in ("voices", "codes", "history"):
            db.execute(f"DROP TABLE {table}_v0")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    log.info("store migrated to schema %d: %d voices, %d takes", SCHEMA_VERSION, len(voices), len(history))


def _copy_voices(db: sqlite3.Connection, voices: list[sqlite3.Row], now: float) -> None:
    """Version 0 names were unique only by ASCII case; one that now collides gets a ' (2)' suffix."""
    taken: set[str] = set()
    for v in voices:
        name, n = v["name"], 1
        while name_key(name) in taken:
            n += 1
            name = f"{v['name'][:56]} ({n})"
        taken.add(name_key(name))
        db.execute("INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (v["id"], SHARED_OWNER, name, name_key(name), v["transcript"], v["created_at"],
                    v["duration_s"], v["audio_sha256"], now))


def _convert_clip(data_dir: Path, voice_id: str, sha: str) -> int:
    """voices/<voice id>.wav (float32) -> voices/<sha>.flac (24-bit, 44.1 kHz); returns the FLAC's size."""
    wav, flac = data_dir / "voices" / f"{voice_id}.wav", data_dir / "voices" / f"{sha}.flac"
    if wav.is_file():
        samples, rate = sf.read(wav, dtype="float32", always_2d=False)
        return write_clip(flac, np.asarray(samples, np.float32).reshape(-1), rate)
    if not flac.is_file():
        log.warning("voice %s has no audio file to migrate", voice_id)
    return flac.stat().st_size if flac.is_file() else 0


def _convert_take(data_dir: Path, entry_id: str) -> int:
    """history/<id>.wav (16-bit) -> history/<id>.flac holding the very same int16 values."""
    wav, flac = data_dir / "history" / f"{entry_id}.wav", data_dir / "history" / f"{entry_id}.flac"
    if wav.is_file():
        pcm, rate = sf.read(wav, dtype="int16", always_2d=False)
        return write_take(flac, pcm.astype(np.float32) / 32768.0, rate)
    if not flac.is_file():
        log.warning("take %s has no audio file to migrate", entry_id)
    return flac.stat().st_size if flac.is_file() else 0
