"""The store's foundation: folders, the SQLite connection per call, the one writer lock, and the disk
it may use. The running byte count (clips, takes, exports) starts from the sizes the rows hold and
changes with every file written or removed; beyond `max_disk_mb` the oldest takes of any owner go
first, then the least recently used voices. Files no row names are removed at open.
"""
from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playground.store.files import tree_bytes
from playground.store.schema import prepare
from playground.store.types import HISTORY_ID, SHA256, StoreLimits

log = logging.getLogger(__name__)

DB_FILE = "s2pro.sqlite3"
EXPORTS_DIR = "exports"


class StoreBase:
    def __init__(self, data_dir: Path, limits: StoreLimits = StoreLimits()) -> None:
        self.data_dir = Path(data_dir)
        self.limits = limits
        self.voices_dir = self.data_dir / "voices"
        self.history_dir = self.data_dir / "history"
        self.exports_root = self.data_dir / EXPORTS_DIR
        for d in (self.voices_dir, self.history_dir, self.exports_root):
            d.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / DB_FILE
        self._lock = threading.RLock()
        with self._lock:
            prepare(self.db_path, self.data_dir)
            self._sweep_orphans()
            with self._db() as db:  # the running count starts from the sizes the rows hold: no tree walk
                clips = db.execute("SELECT COALESCE(SUM(num_bytes), 0) FROM clips").fetchone()[0]
                takes = db.execute("SELECT COALESCE(SUM(audio_bytes + export_bytes), 0) FROM history").fetchone()[0]
            self._disk_bytes = int(clips) + int(takes)
            self._fit_disk(keep=None)  # the operator may have lowered max_disk_mb

    def _sweep_orphans(self) -> None:
        """Files no row names (a crash between a write and its row, temp files, exports of takes deleted
        by older code) are removed once at open, and exports re-measured, so the running count that
        starts from the rows is the bytes on disk."""
        with self._db() as db:
            clips = {r[0] for r in db.execute("SELECT audio_sha256 FROM clips")}
            takes = {r[0] for r in db.execute("SELECT id FROM history")}
        for path in self.voices_dir.iterdir():
            if path.is_dir() or path.name.removesuffix(".flac") not in clips:
                self._remove(path)
        for path in self.history_dir.iterdir():
            if path.is_dir() or path.name.removesuffix(".flac") not in takes:
                self._remove(path)
        exports = {}
        for path in self.exports_root.iterdir():
            if path.name not in takes:
                self._remove(path)
            else:  # re-measured once here, in case a render was never passed to track_exports
                exports[path.name] = tree_bytes(path)
        with self._db() as db:
            db.execute("UPDATE history SET export_bytes = 0")
            db.executemany("UPDATE history SET export_bytes = ? WHERE id = ?", [(n, i) for i, n in exports.items()])

    @staticmethod
    def _remove(path: Path) -> None:
        log.info("store: removing %s, which no row names", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

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

    def disk_bytes(self) -> int:
        """Bytes of the store's files (voice clips, takes, exports), kept as a running count."""
        return self._disk_bytes

    def _clip_path(self, sha: str) -> Path:
        assert SHA256.fullmatch(sha), sha
        return self.voices_dir / f"{sha}.flac"

    def _take_path(self, entry_id: str) -> Path:
        assert HISTORY_ID.fullmatch(entry_id), entry_id
        return self.history_dir / f"{entry_id}.flac"

    def _drop_voice(self, voice_id: str, sha: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM voices WHERE id = ?", (voice_id,))
            last = db.execute("SELECT 1 FROM voices WHERE audio_sha256 = ?", (sha,)).fetchone() is None
            clip = db.execute("SELECT num_bytes FROM clips WHERE audio_sha256 = ?", (sha,)).fetchone()
            if last:  # a deleted voice leaves nothing of itself behind
                db.execute("DELETE FROM clips WHERE audio_sha256 = ?", (sha,))
                db.execute("DELETE FROM codes WHERE audio_sha256 = ?", (sha,))
        if last and clip is not None:
            self._clip_path(sha).unlink(missing_ok=True)
            self._disk_bytes -= clip["num_bytes"]

    def _drop_take(self, entry_id: str) -> None:
        with self._db() as db:
            row = db.execute("SELECT audio_bytes, export_bytes FROM history WHERE id = ?", (entry_id,)).fetchone()
            db.execute("DELETE FROM history WHERE id = ?", (entry_id,))
        if row is not None:
            self._take_path(entry_id).unlink(missing_ok=True)
            shutil.rmtree(self.exports_root / entry_id, ignore_errors=True)
            self._disk_bytes -= row["audio_bytes"] + row["export_bytes"]

    # -- bounded disk -------------------------------------------------------------------------
    def _fit_disk(self, keep: str | None) -> None:
        """Beyond max_disk_mb: the oldest takes of any owner go first, then the least recently used
        voices; `keep` (what the caller just wrote) stays, even if it alone is over the cap."""
        while self._disk_bytes > self.limits.max_disk_bytes:
            with self._db() as db:
                take = db.execute("SELECT id FROM history WHERE id IS NOT ? ORDER BY created_at, rowid LIMIT 1",
                                  (keep,)).fetchone()
                voice = None if take else db.execute(
                    "SELECT id, audio_sha256 FROM voices WHERE id IS NOT ? ORDER BY used_at, rowid LIMIT 1",
                    (keep,)).fetchone()
            if take is not None:
                self._drop_take(take["id"])
            elif voice is not None:
                log.info("disk cap: evicting voice %s", voice["id"])
                self._drop_voice(voice["id"], voice["audio_sha256"])
            else:
                log.warning("store holds %d bytes, over max_disk_mb=%d, in one item", self._disk_bytes,
                            self.limits.max_disk_mb)
                return
