"""Store: owners' voices and takes in SQLite + FLAC on disk; names, ids, codes cache, caps and eviction,
the running byte count, migration from the owner-less WAV store, threads."""
from __future__ import annotations

import json
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from engine.audio import SAMPLE_RATE, DecodedClip
from engine.audio_out import float_to_int16
from playground.store import (
    DB_FILE,
    EXPORTS_DIR,
    DuplicateName,
    LibraryFull,
    Store,
    StoreLimits,
    audio_sha256,
    check_name,
)
from tests.tools import tool

SR = SAMPLE_RATE
A, B = "s:alice", "s:bob"


def noise_clip(seconds: float = 1.0, seed: int = 0, rate: int = SR) -> DecodedClip:
    """Noise (incompressible: sizes are predictable) at `rate`; its 44.1 kHz side is a linear resample."""
    native = (np.random.default_rng(seed).standard_normal(int(rate * seconds)) * 0.1).astype(np.float32)
    return DecodedClip(_to_44k(native, rate), native, rate)


def _to_44k(native: np.ndarray, rate: int) -> np.ndarray:
    n = round(len(native) * SR / rate)
    return np.interp(np.arange(n) * rate / SR, np.arange(len(native)), native).astype(np.float32)


def samples(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return noise_clip(seconds, seed).samples


def codes(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=(10, n), dtype=np.int64)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> DecodedClip:
    """Real speech: espeak-ng writes 16-bit mono WAV at 22.05 kHz."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run([tool("espeak-ng"), "-w", str(path), "Hello, this is the voice I would like to keep in my "
                    "library, so that later takes sound just like me."], check=True, timeout=60)
    assert sf.info(path).subtype == "PCM_16"
    native, rate = sf.read(path, dtype="float32")
    return DecodedClip(_to_44k(native, rate), native, rate)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def files_bytes(store: Store) -> int:
    return sum(p.stat().st_size for d in ("voices", "history", EXPORTS_DIR)
               for p in (store.data_dir / d).rglob("*") if p.is_file())


def add_take(store: Store, owner: str = A, seconds: float = 0.05, seed: int = 0, text: str = "t") -> str:
    return store.add_history(owner, text, None, None, {}, seed, {}, samples(seconds, seed), []).id


# -- voices -----------------------------------------------------------------------------------------
def test_add_voice_round_trip_exact_flac(store: Store, speech: DecodedClip) -> None:
    voice = store.add_voice(A, "  Anna  ", speech, " Hello there. ", codes(7))
    assert (voice.owner, voice.name, voice.transcript) == (A, "Anna", "Hello there.")
    assert voice.id.startswith("voice_") and voice.duration_s == pytest.approx(len(speech.samples) / SR)
    assert voice.audio_sha256 == audio_sha256(speech.samples)  # the codes-cache key, as before
    assert store.get_voice(A, voice.id) == voice == store.get_voice(A, "ANNA") and store.list_voices(A) == [voice]
    np.testing.assert_array_equal(store.voice_codes(A, voice.id), codes(7))
    assert store.voice_codes(A, voice.id).dtype == np.int64
    path = store.voice_audio_path(A, voice.id)
    assert path == store.voices_dir / f"{voice.audio_sha256}.flac"
    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate) == ("FLAC", "PCM_24", speech.native_rate)
    stored, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(stored, speech.native)  # lossless for a 16-bit source
    assert (store.data_dir / DB_FILE).is_file()


def test_flac_much_smaller_than_float_wav(store: Store, speech: DecodedClip) -> None:
    voice = store.add_voice(A, "a", speech, "t", codes())
    float_wav_bytes = 44 + 4 * len(speech.samples)  # what the old store wrote for this clip
    flac_bytes = store.voice_audio_path(A, voice.id).stat().st_size
    assert flac_bytes * 5 < float_wav_bytes and store.disk_bytes() == flac_bytes


def test_list_voices_sorted_by_name(store: Store) -> None:
    for i, name in enumerate(("zed", "Bob", "alice")):
        store.add_voice(A, name, noise_clip(seed=i), "t", codes())
    assert [v.name for v in store.list_voices(A)] == ["alice", "Bob", "zed"]


@pytest.mark.parametrize("name, message", [
    ("", "1 to 64"), ("   ", "1 to 64"), ("x" * 65, "1 to 64"), ("a\nb", "control"), ("bad\x00", "control"),
    ("a\ud800", "control"), ("alloy", "reserved"), ("Default", "reserved"), ("ＡＬＬＯＹ", "reserved"),
    ("voice_0123456789abcdef", "generated id"), ("VOICE_0123456789ABCDEF", "generated id"),
    ("hist_０１２３４５６７８９abcdef", "generated id"),
])
def test_bad_names_rejected(store: Store, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.add_voice(A, name, noise_clip(), "t", codes())
    assert store.list_voices(A) == [] and list(store.voices_dir.iterdir()) == [] and store.disk_bytes() == 0


@pytest.mark.parametrize("first, second", [("Ｅｖｅ", "eve"), ("STRASSE", "straße"), ("ﬁle", "FILE"),
                                           ("Ölaf", "O\u0308LAF")])
def test_names_unique_after_nfkc_and_casefold(store: Store, first: str, second: str) -> None:
    voice = store.add_voice(A, first, noise_clip(), "t", codes())
    with pytest.raises(DuplicateName, match="already exists"):
        store.add_voice(A, second, noise_clip(seed=1), "t", codes())
    assert store.get_voice(A, second) == voice
    assert store.rename_voice(A, voice.id, second).name == second  # its own name in another form is fine
    other = store.add_voice(A, "other", noise_clip(seed=2), "t", codes())
    with pytest.raises(DuplicateName):
        store.rename_voice(A, other.id, first)
    assert store.add_voice(B, second, noise_clip(seed=1), "t", codes()).owner == B  # unique per owner only


def test_bad_transcript_codes_and_owner_rejected(store: Store) -> None:
    with pytest.raises(ValueError, match="transcript is empty"):
        store.add_voice(A, "a", noise_clip(), "  ", codes())
    with pytest.raises(ValueError, match="surrogate"):
        store.add_voice(A, "a", noise_clip(), "hi \udc00", codes())
    with pytest.raises(ValueError, match=r"\[10, N"):
        store.add_voice(A, "a", noise_clip(), "t", np.zeros((9, 3), np.int64))
    empty = np.zeros(0, np.float32)
    with pytest.raises(ValueError, match="mono"):
        store.add_voice(A, "a", DecodedClip(empty, empty, SR), "t", codes())
    for owner in ("", "x" * 129, "a\nb", None):
        with pytest.raises(ValueError, match="owner"):
            store.list_voices(owner)  # type: ignore[arg-type]
    assert store.list_voices(A) == [] and list(store.voices_dir.iterdir()) == []


def test_errors_do_not_echo_huge_input(store: Store) -> None:
    huge = "voice_" + "x" * 100_000
    for call in (lambda: store.voice_codes(A, huge), lambda: store.voice_audio_path(A, huge),
                 lambda: store.history_audio_path(A, huge), lambda: store.rename_voice(A, huge, "n")):
        with pytest.raises(KeyError) as err:
            call()
        assert len(str(err.value)) < 120
    with pytest.raises(ValueError) as err:
        store.list_history("o" * 100_000)
    assert len(str(err.value)) < 120
    assert store.get_voice(A, "n" * 100_000) is None


def test_rename(store: Store) -> None:
    a = store.add_voice(A, "a", noise_clip(), "t", codes())
    store.add_voice(A, "b", noise_clip(seed=1), "t", codes())
    renamed = store.rename_voice(A, a.id, "c")
    assert renamed.name == "c" and renamed.id == a.id and store.get_voice(A, "c") == renamed
    assert store.get_voice(A, "a") is None and store.rename_voice(A, a.id, "C").name == "C"
    with pytest.raises(DuplicateName):
        store.rename_voice(A, a.id, "B")
    with pytest.raises(ValueError, match="1 to 64"):
        store.rename_voice(A, a.id, "")
    with pytest.raises(KeyError):
        store.rename_voice(A, "voice_ffffffffffffffff", "d")


def test_identical_clips_stored_once_and_removed_with_the_last_voice(store: Store, speech: DecodedClip) -> None:
    a = store.add_voice(A, "a", speech, "t", codes())
    b = store.add_voice(B, "b", speech, "t", codes())  # another owner, the same clip
    a2 = store.add_voice(A, "a2", speech, "t", codes())
    path = store.voice_audio_path(A, a.id)
    assert store.voice_audio_path(B, b.id) == path and list(store.voices_dir.iterdir()) == [path]
    assert store.disk_bytes() == path.stat().st_size
    assert store.delete_voice(A, a.id) and store.delete_voice(B, b.id)
    assert path.is_file() and store.cached_codes(a.audio_sha256) is not None  # a2 still uses them
    np.testing.assert_array_equal(store.voice_codes(A, a2.id), codes())
    assert store.delete_voice(A, a2.id) is True and store.delete_voice(A, a2.id) is False
    assert not path.exists() and store.cached_codes(a.audio_sha256) is None and store.disk_bytes() == 0


def test_voice_deleted_mid_use_is_unknown(store: Store) -> None:
    voice = store.add_voice(A, "a", noise_clip(), "t", codes())
    held = store.voice_codes(A, voice.id)  # a running synthesis holds its codes
    store.delete_voice(A, voice.id)
    with pytest.raises(KeyError):
        store.voice_codes(A, voice.id)  # a new request gets "unknown" (the API's 404)
    np.testing.assert_array_equal(held, codes())


def test_codes_cache_lru_keeps_voice_codes(tmp_path: Path) -> None:
    store = Store(tmp_path, StoreLimits(max_cached_codes=2))
    voice = store.add_voice(A, "v", noise_clip(seed=9), "t", codes(seed=9))
    keys = [audio_sha256(samples(0.01, seed=i)) for i in range(4)]
    store.put_codes(keys[0], codes(seed=0))
    store.put_codes(keys[1], codes(seed=1))
    assert store.cached_codes(keys[0]) is not None  # 0 used: 1 is now the least recent
    store.put_codes(keys[2], codes(seed=2))
    assert store.cached_codes(keys[1]) is None
    store.put_codes(keys[3], codes(seed=3))  # 0 was used before 2 was put: 0 goes
    assert [store.cached_codes(k) is not None for k in keys] == [False, False, True, True]
    np.testing.assert_array_equal(store.voice_codes(A, voice.id), codes(seed=9))  # a voice's codes never go
    with pytest.raises(ValueError, match="hex"):
        store.put_codes("../x", codes())
    assert store.cached_codes("../x") is None


# -- owners -----------------------------------------------------------------------------------------
def test_another_owners_ids_are_unknown(store: Store) -> None:
    voice = store.add_voice(A, "Anna", noise_clip(), "t", codes())
    take = store.add_history(A, "secret text", voice.id, voice.name, {}, 1, {}, samples(0.1), [])
    unknown_voice, unknown_take = "voice_ffffffffffffffff", "hist_ffffffffffffffff"
    for voice_id in (voice.id, unknown_voice):
        assert store.get_voice(B, voice_id) is None and store.delete_voice(B, voice_id) is False
        for call in (store.voice_codes, store.voice_audio_path, lambda o, i: store.rename_voice(o, i, "x")):
            with pytest.raises(KeyError, match="no voice with id"):
                call(B, voice_id)
    for take_id in (take.id, unknown_take):
        assert store.get_history(B, take_id) is None and store.delete_history(B, take_id) is False
        for call in (store.history_audio_path, store.exports_dir, store.track_exports,
                     lambda o, i: store.replace_history_audio(o, i, samples(0.1), [])):
            with pytest.raises(KeyError, match="no history entry with id"):
                call(B, take_id)
    assert store.get_voice(B, "anna") is None and store.list_voices(B) == [] and store.list_history(B) == []
    assert store.add_voice(B, "Anna", noise_clip(seed=1), "t", codes()).owner == B  # B's own Anna
    assert store.list_voices(A) == [voice] and store.get_history(A, take.id) == take  # untouched
    assert store.voice_audio_path(A, voice.id).is_file() and store.history_audio_path(A, take.id).is_file()


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "voice_../../x", "/etc/passwd", "voice_FFFFFFFFFFFFFFFF",
                                    "voice_0123456789abcdef/../x", "", "hist_../../x"])
def test_ids_never_name_paths(store: Store, bad_id: str) -> None:
    store.add_voice(A, "a", noise_clip(), "t", codes())
    for call in (store.voice_audio_path, store.history_audio_path, store.exports_dir, store.voice_codes):
        with pytest.raises(KeyError):
            call(A, bad_id)
    assert store.delete_voice(A, bad_id) is False and store.delete_history(A, bad_id) is False
    assert store.get_history(A, bad_id) is None


# -- history ----------------------------------------------------------------------------------------
def test_history_round_trip_flac_equals_old_wav(store: Store, tmp_path: Path) -> None:
    take = samples(0.5)
    chunks = [{"text": "Hello.", "start_sample": 0, "end_sample": 10000},
              {"text": "World.", "start_sample": 10000, "end_sample": len(take)}]
    entry = store.add_history(A, "Hello. World.", None, None, {"temperature": 0.8, "top_k": 30}, 42,
                              {"frames": 11, "rtf": 0.5}, take, chunks)
    assert entry.id.startswith("hist_") and entry.owner == A and entry.duration_s == pytest.approx(0.5)
    got = store.get_history(A, entry.id)
    assert got is not None
    assert got == entry and got.params == {"temperature": 0.8, "top_k": 30} and got.chunks == chunks
    path = store.history_audio_path(A, entry.id)
    info = sf.info(path)
    assert (path.suffix, info.format, info.subtype, info.samplerate) == (".flac", "FLAC", "PCM_16", SR)
    np.testing.assert_array_equal(sf.read(path, dtype="int16")[0], float_to_int16(take))  # as the API rounds
    old_wav = tmp_path / "old.wav"  # what the old store wrote: its float read-back is the same
    sf.write(old_wav, float_to_int16(take), SR, subtype="PCM_16")
    np.testing.assert_array_equal(sf.read(path, dtype="float32")[0], sf.read(old_wav, dtype="float32")[0])


def test_history_order_limit_delete(store: Store) -> None:
    ids = [add_take(store, seed=i) for i in range(5)]
    assert [e.id for e in store.list_history(A)] == ids[::-1]
    assert [e.id for e in store.list_history(A, limit=2)] == ids[:2:-1][:2]
    path, exports = store.history_audio_path(A, ids[0]), store.exports_dir(A, ids[0])
    (exports / "take.mp3").write_bytes(b"x" * 100)
    assert store.track_exports(A, ids[0]) == 100
    assert store.delete_history(A, ids[0]) is True and not path.exists() and not exports.exists()
    assert store.delete_history(A, ids[0]) is False and len(store.list_history(A)) == 4
    assert store.disk_bytes() == files_bytes(store)


def test_replace_history_audio(store: Store) -> None:
    entry = store.add_history(A, "x", None, None, {}, 1, {}, samples(0.2), [{"text": "x", "start_sample": 0,
                                                                           "end_sample": 8820}])
    new_chunks = [{"text": "x", "start_sample": 0, "end_sample": 22050}]
    updated = store.replace_history_audio(A, entry.id, samples(0.5, seed=3), new_chunks)
    assert updated.duration_s == pytest.approx(0.5) and updated.chunks == new_chunks
    assert store.get_history(A, entry.id) == updated
    assert sf.info(store.history_audio_path(A, entry.id)).frames == int(0.5 * SR)
    assert store.disk_bytes() == files_bytes(store)
    with pytest.raises(KeyError):
        store.replace_history_audio(A, "hist_0000000000000000", samples(), [])


def test_clipping_history_audio_does_not_wrap(store: Store) -> None:
    entry = store.add_history(A, "x", None, None, {}, 1, {}, np.array([2.0, -2.0, 0.5], np.float32), [])
    stored, _ = sf.read(store.history_audio_path(A, entry.id), dtype="float32")
    assert stored[0] > 0.99 and stored[1] < -0.99 and stored[2] == pytest.approx(0.5, abs=1e-4)


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


def test_running_byte_count_matches_disk(tmp_path: Path, speech: DecodedClip) -> None:
    store = Store(tmp_path, StoreLimits(max_history_per_owner=4, max_disk_mb=2))
    voices = [store.add_voice(o, f"v{i}", speech if i % 2 else noise_clip(0.5, seed=i), "t", codes())
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
