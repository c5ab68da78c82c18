"""Word timestamps by forced alignment (engine/alignment.py) on real speech: espeak-ng words joined with
known pauses, so every word's true start and end are known; and the SRT / WebVTT built from them."""
from __future__ import annotations

import itertools
import re
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.alignment import WordTime, align_words, spoken_words, to_srt, to_vtt
from tests.tools import tool

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "seven", "tired",
         "sailors", "watch", "quietly"]
PAUSES = [0.12, 0.3, 0.08, 0.45, 0.2, 0.15, 0.35, 0.1, 0.25, 0.5, 0.18, 0.22, 0.3, 0.12, 0.4]


@pytest.fixture(scope="module")
def joined_words(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int, list[tuple[float, float]]]:
    """Each word spoken alone, its silence cut (|x| > 0.01), then joined with the pauses: (audio, rate,
    the true (start, end) of every word)."""
    folder = tmp_path_factory.mktemp("words")
    parts, truth, t, rate = [], [], 0.0, 0
    for i, (word, pause) in enumerate(zip(WORDS, PAUSES)):
        path = folder / f"{i}.wav"
        subprocess.run([tool("espeak-ng"), "-w", str(path), word], check=True)
        x, rate = sf.read(str(path), dtype="float32")
        loud = np.flatnonzero(np.abs(x) > 0.01)
        x = x[loud[0]:loud[-1] + 1]
        gap = np.zeros(round(pause * rate), np.float32)
        parts += [gap, x]
        t += len(gap) / rate
        truth.append((t, t + len(x) / rate))
        t += len(x) / rate
    parts.append(np.zeros(round(0.3 * rate), np.float32))
    return np.concatenate(parts), rate, truth


def test_word_boundaries_within_50_ms_median(joined_words) -> None:
    audio, rate, truth = joined_words
    got = align_words(audio, rate, "The quick brown fox [whisper] jumps over the lazy dog, while seven tired "
                                   "sailors watch quietly.")
    assert [w.word.lower() for w in got] == WORDS and all(w.aligned for w in got)
    errors = [abs(w.start - a) for w, (a, _) in zip(got, truth)] + [abs(w.end - b) for w, (_, b) in zip(got, truth)]
    assert statistics.median(errors) <= 0.050, errors
    assert all(w.start < w.end for w in got) and all(a.end <= b.start for a, b in itertools.pairwise(got))


def test_words_missing_from_the_dictionary_share_the_gap_around_them(joined_words) -> None:
    audio, rate, _ = joined_words
    text = " ".join(WORDS[:3]) + " Zorbulax " + " ".join(WORDS[3:])  # no such word: no speech for it either
    got = align_words(audio, rate, text)
    assert [w.word for w in got][3] == "Zorbulax" and not got[3].aligned
    assert got[2].end <= got[3].start < got[3].end <= got[4].start


def test_subtitles_parse_and_follow_the_words(joined_words, tmp_path: Path) -> None:
    audio, rate, _ = joined_words
    words = align_words(audio, rate, " ".join(WORDS))
    duration = len(audio) / rate
    srt = to_srt(words)
    blocks = [b.split("\n") for b in srt.strip().split("\n\n")]
    clock = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"

    def seconds(m: re.Match, at: int) -> float:
        h, mi, s, ms = (int(m.group(at + i)) for i in range(4))
        return h * 3600 + mi * 60 + s + ms / 1000
    times, text = [], []
    for n, block in enumerate(blocks, start=1):
        assert block[0] == str(n)
        m = re.fullmatch(clock + " --> " + clock, block[1])
        assert m is not None, block
        times.append((seconds(m, 1), seconds(m, 5)))
        text += " ".join(block[2:]).split()
        assert len(" ".join(block[2:])) <= 42
    assert text == WORDS
    assert all(a < b for a, b in times) and all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(times))
    assert times[-1][1] <= duration + 0.01
    vtt = to_vtt(words)
    assert vtt.startswith("WEBVTT\n\n")
    cues = vtt.strip().split("\n\n")[1:]
    assert len(cues) == len(blocks)
    assert [c.split("\n")[0] for c in cues] == [b[1].replace(",", ".") for b in blocks]


def test_text_without_words_and_text_without_english() -> None:
    assert spoken_words("[laugh] <|im_end|> ... !") == []
    assert align_words(np.zeros(16000, np.float32), 16000, "[laugh] ...") == []
    with pytest.raises(ValueError, match="English words"):
        align_words(np.zeros(16000, np.float32), 16000, "Zorbulax Quindreth")
    assert WordTime("a", 0.0, 0.1).aligned
    spread = align_words(np.zeros(1600, np.float32), 16000, "the quick brown fox")  # 0.1 s: no path fits
    assert [w.word for w in spread] == ["the", "quick", "brown", "fox"] and not any(w.aligned for w in spread)
    assert spread[0].start == 0.0 and abs(spread[-1].end - 0.1) < 1e-9


def test_a_busy_aligner_says_so_after_its_wait(monkeypatch) -> None:
    """While another alignment holds the aligner past ALIGN_WAIT_SECONDS the caller hears AlignerBusy
    (an HTTP API answers 503), and the aligner works again once it is free."""
    import threading

    from engine import alignment
    monkeypatch.setattr(alignment, "ALIGN_WAIT_SECONDS", 0.2)
    taken = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with alignment._aligner():
            taken.set()
            release.wait(5)
    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(5)
    try:
        with pytest.raises(alignment.AlignerBusy, match="busy"):
            align_words(np.zeros(16000, np.float32), 16000, "the quick brown fox")
    finally:
        release.set()
        holder.join()
    assert len(align_words(np.zeros(16000, np.float32), 16000, "the quick brown fox")) == 4
