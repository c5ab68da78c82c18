"""Store: owners' voices and takes in SQLite + FLAC on disk; names, ids, the codes cache, owners.
Caps, eviction, the byte count and threads: test_store_disk.py; migration: test_store_migration.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.audio import DecodedClip
from engine.audio_out import float_to_int16
from playground.store import (
    DB_FILE,
    DuplicateName,
    Store,
    StoreLimits,
    audio_sha256,
)
from tests.store_helpers import SR, A, B, add_take, codes, files_bytes, noise_clip, samples


# -- voices -----------------------------------------------------------------------------------------
def test_add_voice_round_trip_exact_flac(store: Store, spoken_clip: DecodedClip) -> None:
    voice = store.add_voice(A, "  Anna  ", spoken_clip, " Hello there. ", codes(7))
    assert (voice.owner, voice.name, voice.transcript) == (A, "Anna", "Hello there.")
    assert voice.id.startswith("voice_") and voice.duration_s == pytest.approx(len(spoken_clip.samples) / SR)
    assert voice.audio_sha256 == audio_sha256(spoken_clip.samples)  # the codes-cache key, as before
    assert store.get_voice(A, voice.id) == voice == store.get_voice(A, "ANNA") and store.list_voices(A) == [voice]
    np.testing.assert_array_equal(store.voice_codes(A, voice.id), codes(7))
    assert store.voice_codes(A, voice.id).dtype == np.int64
    path = store.voice_audio_path(A, voice.id)
    assert path == store.voices_dir / f"{voice.audio_sha256}.flac"
    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate) == ("FLAC", "PCM_24", spoken_clip.native_rate)
    stored, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(stored, spoken_clip.native)  # lossless for a 16-bit source
    assert (store.data_dir / DB_FILE).is_file()


def test_flac_much_smaller_than_float_wav(store: Store, spoken_clip: DecodedClip) -> None:
    voice = store.add_voice(A, "a", spoken_clip, "t", codes())
    float_wav_bytes = 44 + 4 * len(spoken_clip.samples)  # what the old store wrote for this clip
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


def test_identical_clips_stored_once_and_removed_with_the_last_voice(store: Store, spoken_clip: DecodedClip) -> None:
    a = store.add_voice(A, "a", spoken_clip, "t", codes())
    b = store.add_voice(B, "b", spoken_clip, "t", codes())  # another owner, the same clip
    a2 = store.add_voice(A, "a2", spoken_clip, "t", codes())
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
