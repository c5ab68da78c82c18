"""Word timestamps of a take and subtitles from them.

The words are known (the text the take was asked to speak), so they are aligned, not recognized: a
forced alignment with PocketSphinx's English acoustic model and pronouncing dictionary, which its
package ships (no download). Words the dictionary lacks (names, other languages) are not aligned
themselves: they share the time between the aligned words around them. Times are in seconds of the
take's audio; a 10 ms frame is the aligner's resolution.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from engine.audio import resample

ALIGN_RATE = 16000  # the acoustic model's sample rate
FRAME_S = 0.01  # the aligner's frame
_TAG = re.compile(r"\[[^\]]*\]|<\|[^|]*\|>")  # [whisper]-style tags and special tokens are not spoken
_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)*")
_LOCK = threading.Lock()  # one decoder, one alignment at a time
ALIGN_WAIT_SECONDS = 10.0  # an alignment waits this long for the aligner, then the caller hears "busy"


class AlignerBusy(RuntimeError):
    """The aligner stayed taken for ALIGN_WAIT_SECONDS: retry later (an HTTP API answers 503)."""


@contextmanager
def _aligner() -> Iterator[Any]:
    """The one decoder, for at most ALIGN_WAIT_SECONDS of waiting: a burst of requests for timestamps
    ties up a bounded time of the threads that wait, never the server."""
    if not _LOCK.acquire(timeout=ALIGN_WAIT_SECONDS):
        raise AlignerBusy("The server is busy aligning other takes; try again in a few seconds.")
    try:
        yield _decoder()
    finally:
        _LOCK.release()


@dataclass(frozen=True)
class WordTime:
    word: str  # as written in the text
    start: float
    end: float
    aligned: bool = True  # False: not in the dictionary, placed between its neighbours


def spoken_words(text: str) -> list[str]:
    """The words of `text` a take speaks, in order: tags removed, punctuation dropped."""
    return _WORD.findall(_TAG.sub(" ", text))


@lru_cache(maxsize=1)
def _decoder() -> Any:
    from pocketsphinx import Decoder
    # The alignment graph holds only the text's words: beams this wide cost little, and the default ones
    # lost every path on a 10 s take with long pauses.
    return Decoder(samprate=ALIGN_RATE, loglevel="FATAL", bestpath=False, beam=1e-80, wbeam=1e-60, pbeam=1e-80)


def alignable(text: str) -> bool:
    """Whether `text` has a word the aligner knows (else align_words raises)."""
    words = spoken_words(text)
    with _aligner() as decoder:
        return any(decoder.lookup_word(w.lower()) is not None for w in words)


def as_json(words: list[WordTime]) -> list[dict[str, float | str | bool]]:
    return [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "aligned": w.aligned}
            for w in words]


def align_words(samples: np.ndarray, sample_rate: int, text: str) -> list[WordTime]:
    """Start and end of every spoken word of `text` in mono `samples`. Empty when the text has no
    words; ValueError when none of its words is in the English dictionary (nothing to align); AlignerBusy
    when other alignments kept the aligner for ALIGN_WAIT_SECONDS. When the
    audio cannot be aligned at all (too short for the words, or not their speech), every word is spread
    over it by length, marked not aligned."""
    words = spoken_words(text)
    if not words:
        return []
    audio = resample(np.asarray(samples, dtype=np.float32), sample_rate, ALIGN_RATE)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
    with _aligner() as decoder:
        known = [i for i, w in enumerate(words) if decoder.lookup_word(w.lower()) is not None]
        if not known:
            raise ValueError("word timestamps need English words: none of the text's words is in the dictionary")
        decoder.set_align_text(" ".join(words[i].lower() for i in known))
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        segments = decoder.seg() if decoder.hyp() is not None else None
        spans = [(seg.start_frame * FRAME_S, (seg.end_frame + 1) * FRAME_S) for seg in segments or []
                 if not seg.word.startswith(("<", "[")) and seg.word != "(NULL)"]
    duration = len(audio) / ALIGN_RATE
    times: list[WordTime | None] = [None] * len(words)
    if len(spans) == len(known):  # else no path through the words fits the audio: all spread by length
        for i, (start, end) in zip(known, spans):
            times[i] = WordTime(words[i], start, min(end, duration))
    return _fill_unaligned(words, times, duration)


def _fill_unaligned(words: list[str], times: list[WordTime | None], duration: float) -> list[WordTime]:
    """Words without a time share the gap between the aligned words around them, by length."""
    out: list[WordTime] = []
    i = 0
    while i < len(words):
        if times[i] is not None:
            out.append(times[i])  # pyright: ignore[reportArgumentType]  # checked just above
            i += 1
            continue
        j = i
        while j < len(words) and times[j] is None:
            j += 1
        left = out[-1].end if out else 0.0
        right = times[j].start if j < len(words) else duration  # pyright: ignore[reportOptionalMemberAccess]
        weights = [len(w) for w in words[i:j]]
        t = left
        for w, weight in zip(words[i:j], weights):
            step = (right - left) * weight / sum(weights)
            out.append(WordTime(w, t, t + step, aligned=False))
            t += step
        i = j
    return out


def _clock(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def cues(words: list[WordTime], max_chars: int = 42, max_seconds: float = 5.0) -> list[tuple[float, float, str]]:
    """Subtitle cues (start, end, text): words in order, a new cue when the line would pass `max_chars`
    or the cue `max_seconds`."""
    out: list[tuple[float, float, str]] = []
    line: list[WordTime] = []
    for w in words:
        if line and (len(" ".join(x.word for x in line)) + 1 + len(w.word) > max_chars
                     or w.end - line[0].start > max_seconds):
            out.append((line[0].start, line[-1].end, " ".join(x.word for x in line)))
            line = []
        line.append(w)
    if line:
        out.append((line[0].start, line[-1].end, " ".join(x.word for x in line)))
    return out


def to_srt(words: list[WordTime]) -> str:
    return "".join(f"{n}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n\n"
                   for n, (a, b, text) in enumerate(cues(words), start=1))


def to_vtt(words: list[WordTime]) -> str:
    return "WEBVTT\n\n" + "".join(f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text}\n\n" for a, b, text in cues(words))
