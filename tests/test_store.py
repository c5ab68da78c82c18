"""Store: voices and history in SQLite + audio files; names, ids, codes cache, persistence, threads."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.audio import float_to_int16
from playground.store import DB_FILE, DuplicateName, Store, audio_sha256

SR = 44100


def clip(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(SR * seconds)) * 0.1).astype(np.float32)


def codes(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=(10, n), dtype=np.int64)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def test_add_voice_round_trip(store: Store, tmp_path: Path) -> None:
    samples, c = clip(1.5), codes(7)
    voice = store.add_voice("  Anna  ", samples, " Hello there. ", c)
    assert voice.name == "Anna" and voice.transcript == "Hello there."
    assert voice.id.startswith("voice_") and voice.duration_s == pytest.approx(1.5)
    assert voice.audio_sha256 == audio_sha256(samples)
    assert store.get_voice(voice.id) == voice
    assert store.get_voice("anna") == voice  # names are case-insensitive
    assert store.list_voices() == [voice]
    np.testing.assert_array_equal(store.voice_codes(voice.id), c)
    assert store.voice_codes(voice.id).dtype == np.int64
    stored, rate = sf.read(store.voice_audio_path(voice.id), dtype="float32")
    assert rate == SR
    np.testing.assert_array_equal(stored, samples)  # float WAV: bit-exact, so re-encoding gives the same codes
    assert (tmp_path / DB_FILE).is_file() and store.voice_audio_path(voice.id).parent == tmp_path / "voices"


def test_list_voices_sorted_by_name(store: Store) -> None:
    for name in ("zed", "Bob", "alice"):
        store.add_voice(name, clip(), "t", codes())
    assert [v.name for v in store.list_voices()] == ["alice", "Bob", "zed"]


@pytest.mark.parametrize("name, message", [
    ("", "1 to 64"), ("   ", "1 to 64"), ("x" * 65, "1 to 64"), ("a\nb", "control"), ("bad\x00", "control"),
    ("alloy", "reserved"), ("Default", "reserved"), ("voice_0123456789abcdef", "generated id"),
])
def test_bad_names_rejected(store: Store, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.add_voice(name, clip(), "t", codes())
    assert store.list_voices() == []
    assert list(store.voices_dir.iterdir()) == []


def test_name_limits_and_duplicates(store: Store) -> None:
    assert store.add_voice("x" * 64, clip(), "t", codes()).name == "x" * 64
    store.add_voice("Anna", clip(), "t", codes())
    with pytest.raises(DuplicateName, match="already exists"):
        store.add_voice("ANNA", clip(seed=1), "t", codes())
    assert len(store.list_voices()) == 2


def test_bad_transcript_and_codes_rejected(store: Store) -> None:
    with pytest.raises(ValueError, match="transcript is empty"):
        store.add_voice("a", clip(), "  ", codes())
    with pytest.raises(ValueError, match=r"\[10, N"):
        store.add_voice("a", clip(), "t", np.zeros((9, 3), np.int64))
    with pytest.raises(ValueError, match="mono"):
        store.add_voice("a", np.zeros(0, np.float32), "t", codes())


def test_rename(store: Store) -> None:
    a = store.add_voice("a", clip(), "t", codes())
    store.add_voice("b", clip(), "t", codes())
    renamed = store.rename_voice(a.id, "c")
    assert renamed.name == "c" and renamed.id == a.id and store.get_voice("c") == renamed
    assert store.get_voice("a") is None
    assert store.rename_voice(a.id, "C").name == "C"  # a case change of its own name is fine
    with pytest.raises(DuplicateName):
        store.rename_voice(a.id, "B")
    with pytest.raises(ValueError, match="1 to 64"):
        store.rename_voice(a.id, "")
    with pytest.raises(KeyError):
        store.rename_voice("voice_ffffffffffffffff", "d")


def test_delete_voice_removes_row_file_and_unshared_codes(store: Store) -> None:
    samples = clip()
    a = store.add_voice("a", samples, "t", codes())
    b = store.add_voice("b", samples, "t", codes())  # same clip: shares the codes row
    path = store.voice_audio_path(a.id)
    assert store.delete_voice(a.id) is True
    assert not path.exists() and store.get_voice(a.id) is None
    assert store.delete_voice(a.id) is False
    assert store.cached_codes(b.audio_sha256) is not None  # still used by b
    assert store.delete_voice(b.id) is True
    assert store.cached_codes(b.audio_sha256) is None
    with pytest.raises(KeyError):
        store.voice_codes(a.id)


def test_codes_cache(store: Store) -> None:
    key = audio_sha256(clip())
    assert store.cached_codes(key) is None
    store.put_codes(key, codes(3))
    np.testing.assert_array_equal(store.cached_codes(key), codes(3))
    with pytest.raises(ValueError, match="hex"):
        store.put_codes("../x", codes())


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "voice_../../x", "/etc/passwd", "voice_FFFFFFFFFFFFFFFF",
                                    "voice_0123456789abcdef/../x", ""])
def test_ids_never_name_paths(store: Store, bad_id: str) -> None:
    store.add_voice("a", clip(), "t", codes())
    with pytest.raises(KeyError):
        store.voice_audio_path(bad_id)
    with pytest.raises(KeyError):
        store.history_audio_path(bad_id)
    assert store.delete_voice(bad_id) is False and store.delete_history(bad_id) is False
    assert store.get_history(bad_id) is None


def test_persists_across_instances(tmp_path: Path) -> None:
    first = Store(tmp_path)
    voice = first.add_voice("a", clip(), "t", codes())
    entry = first.add_history("hi", voice.id, voice.name, {"t": 0.7}, 5, {"frames": 2}, clip(0.1), [])
    second = Store(tmp_path)
    assert second.get_voice(voice.id) == voice and second.get_history(entry.id) == entry
    np.testing.assert_array_equal(second.voice_codes(voice.id), codes())


def test_history_round_trip(store: Store) -> None:
    samples = clip(0.5)
    chunks = [{"text": "Hello.", "start_sample": 0, "end_sample": 10000},
              {"text": "World.", "start_sample": 10000, "end_sample": len(samples)}]
    entry = store.add_history("Hello. World.", None, None, {"temperature": 0.8, "top_k": 30}, 42,
                              {"frames": 11, "rtf": 0.5}, samples, chunks)
    assert entry.id.startswith("hist_") and entry.duration_s == pytest.approx(0.5)
    got = store.get_history(entry.id)
    assert got == entry and got.params == {"temperature": 0.8, "top_k": 30} and got.chunks == chunks
    stored, rate = sf.read(store.history_audio_path(entry.id), dtype="int16")
    assert rate == SR and len(stored) == len(samples)
    np.testing.assert_array_equal(stored, float_to_int16(samples))  # as the API rounds


def test_history_order_limit_delete(store: Store) -> None:
    ids = [store.add_history(f"t{i}", None, None, {}, i, {}, clip(0.05), []).id for i in range(5)]
    assert [e.id for e in store.list_history()] == ids[::-1]
    assert [e.id for e in store.list_history(limit=2)] == ids[:2:-1][:2]
    path = store.history_audio_path(ids[0])
    assert store.delete_history(ids[0]) is True and not path.exists()
    assert store.delete_history(ids[0]) is False
    assert len(store.list_history()) == 4


def test_replace_history_audio(store: Store) -> None:
    entry = store.add_history("x", None, None, {}, 1, {}, clip(0.2), [{"text": "x", "start_sample": 0,
                                                                      "end_sample": 8820}])
    new_chunks = [{"text": "x", "start_sample": 0, "end_sample": 22050}]
    updated = store.replace_history_audio(entry.id, clip(0.5, seed=3), new_chunks)
    assert updated.duration_s == pytest.approx(0.5) and updated.chunks == new_chunks
    assert store.get_history(entry.id) == updated
    assert sf.info(store.history_audio_path(entry.id)).frames == int(0.5 * SR)
    with pytest.raises(KeyError):
        store.replace_history_audio("hist_0000000000000000", clip(), [])


def test_clipping_history_audio_does_not_wrap(store: Store) -> None:
    entry = store.add_history("x", None, None, {}, 1, {}, np.array([2.0, -2.0, 0.5], np.float32), [])
    stored, _ = sf.read(store.history_audio_path(entry.id), dtype="float32")
    assert stored[0] > 0.99 and stored[1] < -0.99 and stored[2] == pytest.approx(0.5, abs=1e-4)


def test_concurrent_writers(store: Store) -> None:
    def add(i: int) -> str:
        store.add_history(f"t{i}", None, None, {}, i, {}, clip(0.05), [])
        return store.add_voice(f"v{i}", clip(0.1, seed=i), "t", codes(seed=i)).id
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(add, range(24)))
    assert len(set(ids)) == 24 and len(store.list_voices()) == 24 and len(store.list_history()) == 24
    for i, voice_id in enumerate(ids):
        np.testing.assert_array_equal(store.voice_codes(voice_id), codes(seed=i))
