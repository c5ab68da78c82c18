"""Store limits: per-owner caps, the disk cap and its eviction order, the running byte count against the
files on disk, persistence across instances, concurrent writers, and the sweep of files no row names."""
from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.audio import DecodedClip
from playground.store import (
    DB_FILE,
    LibraryFull,
    Store,
    StoreLimits,
    check_name,
)
from tests.store_helpers import A, B, add_take, codes, files_bytes, noise_clip, samples


# -- caps and eviction ------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["max_voices_per_owner", "max_history_per_owner", "max_disk_mb",
                                   "max_cached_codes"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_limits_validated(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        StoreLimits(**{field: value})


def test_voice_cap_refuses_per_owner(tmp_path: Path) -> None:
    store = Store(tmp_path, StoreLimits(max_voices_per_owner=2))
    first = store.add_voice(A, "a", noise_clip(seed=0), "t", codes())
    store.add_voice(A, "b", noise_clip(seed=1), "t", codes())
    with pytest.raises(LibraryFull, match="delete one first"):
        store.add_voice(A, "c", noise_clip(seed=2), "t", codes())
    assert store.add_voice(B, "c", noise_clip(seed=2), "t", codes()).owner == B  # B's library is its own
    assert store.rename_voice(A, first.id, "z").name == "z"  # a full library still renames
    store.delete_voice(A, first.id)
    assert store.add_voice(A, "c", noise_clip(seed=2), "t", codes()).name == "c"
    assert len(list(store.voices_dir.iterdir())) == 2  # A's "c" and B's "c" are the same clip
    assert store.disk_bytes() == files_bytes(store)


def test_history_cap_evicts_that_owners_oldest(tmp_path: Path) -> None:
    store = Store(tmp_path, StoreLimits(max_history_per_owner=3))
    b_take = add_take(store, owner=B)
    ids = [add_take(store, seed=i) for i in range(5)]
    assert [e.id for e in store.list_history(A)] == ids[:1:-1]
    assert [e.id for e in store.list_history(B)] == [b_take]
    assert sorted(p.stem for p in store.history_dir.iterdir()) == sorted([b_take, *ids[2:]])
    assert store.disk_bytes() == files_bytes(store)


def test_disk_cap_evicts_takes_oldest_first_then_lru_voices(tmp_path: Path) -> None:
    store = Store(tmp_path, StoreLimits(max_disk_mb=1))  # noise: a voice ~120 KB/s, a take ~76 KB/s
    v1 = store.add_voice(A, "v1", noise_clip(2.0, seed=1), "t", codes())
    v2 = store.add_voice(B, "v2", noise_clip(2.0, seed=2), "t", codes())
    store.voice_codes(A, v1.id)  # v1 used last: v2 is the least recently used voice
    t1, t2 = add_take(store, A, 3.0, seed=1), add_take(store, B, 3.0, seed=2)
    assert store.disk_bytes() < 1 << 20 and len(store.list_history(A)) == 1
    t3 = add_take(store, B, 3.0, seed=3)  # over the cap: the oldest take goes, whoever made it
    assert store.get_history(A, t1) is None and store.get_history(B, t2) is not None
    assert store.list_voices(B) == [v2]
    t4 = add_take(store, A, 9.0, seed=4)  # takes alone cannot make room: then the LRU voice goes
    assert store.get_history(B, t2) is None and store.get_history(B, t3) is None
    assert store.list_voices(B) == [] and store.list_voices(A) == [v1] and store.get_history(A, t4) is not None
    assert store.disk_bytes() <= 1 << 20 and store.disk_bytes() == files_bytes(store)


def test_disk_cap_counts_exports(tmp_path: Path) -> None:
    store = Store(tmp_path, StoreLimits(max_disk_mb=1))
    old, new = add_take(store, A, seed=1), add_take(store, B, seed=2)
    old_exports = store.exports_dir(A, old)
    (old_exports / "a.wav").write_bytes(b"x" * 1000)
    store.track_exports(A, old)
    (store.exports_dir(B, new) / "b.wav").write_bytes(b"x" * (1 << 20))
    assert store.track_exports(B, new) == 1 << 20  # over the cap: the older take and its exports go
    assert store.get_history(A, old) is None and not old_exports.exists()
    assert store.get_history(B, new) is not None and store.disk_bytes() == files_bytes(store)


def test_running_byte_count_matches_disk(tmp_path: Path, spoken_clip: DecodedClip) -> None:
    store = Store(tmp_path, StoreLimits(max_history_per_owner=4, max_disk_mb=2))
    voices = [store.add_voice(o, f"v{i}", spoken_clip if i % 2 else noise_clip(0.5, seed=i), "t", codes())
              for i, o in enumerate((A, B, A, B))]
    takes = [add_take(store, (A, B)[i % 2], 0.3, seed=i) for i in range(12)]
    store.replace_history_audio(B, takes[-1], samples(1.0, seed=99), [])
    (store.exports_dir(A, takes[-2]) / "x.flac").write_bytes(b"y" * 5000)
    store.track_exports(A, takes[-2])
    store.delete_voice(B, voices[1].id)
    store.delete_history(A, takes[-4])
    assert store.disk_bytes() == files_bytes(store) > 0
    assert Store(tmp_path).disk_bytes() == store.disk_bytes()  # re-counted from the rows, not the tree


# -- persistence, threads ---------------------------------------------------------------------------
def test_persists_across_instances(tmp_path: Path) -> None:
    first = Store(tmp_path)
    voice = first.add_voice(A, "a", noise_clip(), "t", codes())
    entry = first.add_history(A, "hi", voice.id, voice.name, {"t": 0.7}, 5, {"frames": 2}, samples(0.1), [])
    second = Store(tmp_path)
    assert second.get_voice(A, voice.id) == voice and second.get_history(A, entry.id) == entry
    np.testing.assert_array_equal(second.voice_codes(A, voice.id), codes())
    assert sqlite3.connect(tmp_path / DB_FILE).execute("PRAGMA user_version").fetchone()[0] == 2


def test_concurrent_writers(store: Store) -> None:
    def add(i: int) -> str:
        owner = (A, B)[i % 2]
        store.add_history(owner, f"t{i}", None, None, {}, i, {}, samples(0.05, seed=i), [])
        return store.add_voice(owner, f"v{i}", noise_clip(0.1, seed=i), "t", codes(seed=i)).id
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(add, range(24)))
    assert len(set(ids)) == 24 and len(store.list_voices(A)) == len(store.list_voices(B)) == 12
    assert len(store.list_history(A)) == 12
    for i, voice_id in enumerate(ids):
        np.testing.assert_array_equal(store.voice_codes((A, B)[i % 2], voice_id), codes(seed=i))
    assert store.disk_bytes() == files_bytes(store)


def test_check_name_is_exported() -> None:
    assert check_name("  Zoë ") == "Zoë"


def test_open_sweeps_files_no_row_names(tmp_path: Path) -> None:
    store = Store(tmp_path)
    take = add_take(store)
    voice = store.add_voice(A, "a", noise_clip(), "t", codes())
    kept = files_bytes(store)
    orphans = [store.voices_dir / f"{'0' * 64}.flac", store.history_dir / "hist_0000000000000000.flac",
               store.history_dir / ".hist_x.flac.1234.tmp", store.exports_root / "hist_0000000000000000" / "a.wav"]
    for path in orphans:  # what a crash between a file write and its row leaves behind
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"o" * 10)
    (store.exports_dir(A, take) / "never-tracked.mp3").write_bytes(b"e" * 300)
    reopened = Store(tmp_path)
    assert not any(p.exists() for p in orphans) and files_bytes(reopened) == kept + 300 == reopened.disk_bytes()
    assert reopened.get_history(A, take) is not None and reopened.voice_audio_path(A, voice.id).is_file()
