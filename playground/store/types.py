"""The store's value types and input rules: ids, names, transcripts, owners, limits, errors.

Kept apart from store.py so the rules (which the web layer also calls to check input early) read on
their own; import them from playground.store.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from playground.store.files import name_key, quote

MAX_NAME_CHARS = 64
MAX_TRANSCRIPT_CHARS = 5000
MAX_OWNER_CHARS = 128
VOICE_ID = re.compile(r"voice_[0-9a-f]{16}")
HISTORY_ID = re.compile(r"hist_[0-9a-f]{16}")
SHA256 = re.compile(r"[0-9a-f]{64}")
# The speech API reads these `voice` values as "the model's own voice"; a saved voice may not take them.
RESERVED_NAMES = frozenset({"default", "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova",
                            "sage", "shimmer", "verse", "marin", "cedar"})


class DuplicateName(ValueError):
    """This owner already has a voice of this name (unique after NFKC normalization and case folding)."""


class LibraryFull(ValueError):
    """This owner has max_voices_per_owner voices already."""


@dataclass(frozen=True)
class StoreLimits:
    """Caps that keep a public box's disk bounded; eviction is oldest-first (see Store._fit_disk)."""

    max_voices_per_owner: int = 50  # a new voice beyond this is refused (LibraryFull)
    max_history_per_owner: int = 200  # a new take beyond this evicts that owner's oldest
    max_disk_mb: int = 2048  # voices + history + exports; beyond it takes go first, then LRU voices
    max_cached_codes: int = 2000  # codes rows no voice uses, kept by least recent use

    def __post_init__(self) -> None:
        for name in ("max_voices_per_owner", "max_history_per_owner", "max_disk_mb", "max_cached_codes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def max_disk_bytes(self) -> int:
        return self.max_disk_mb << 20


@dataclass(frozen=True)
class Voice:
    id: str
    owner: str
    name: str
    transcript: str
    created_at: float  # unix seconds
    duration_s: float
    audio_sha256: str


@dataclass(frozen=True)
class HistoryEntry:
    id: str
    owner: str
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
    if any(unicodedata.category(c).startswith("C") for c in name):  # also lone surrogates (Cs)
        raise ValueError("the voice name must not contain control or invisible characters")
    key = name_key(name)
    if key in RESERVED_NAMES:
        raise ValueError(f"the voice name {name!r} is reserved: in the speech API it selects the model's "
                         "own voice; choose another name")
    if VOICE_ID.fullmatch(key) or HISTORY_ID.fullmatch(key):
        raise ValueError("the voice name must not look like a generated id")
    return name


def check_transcript(transcript: str) -> str:
    transcript = transcript.strip() if isinstance(transcript, str) else ""
    if not transcript:
        raise ValueError("the transcript is empty: type exactly what the clip says")
    if len(transcript) > MAX_TRANSCRIPT_CHARS:
        raise ValueError(f"the transcript has {len(transcript)} characters; the limit is {MAX_TRANSCRIPT_CHARS}")
    if any(unicodedata.category(c) == "Cs" for c in transcript):
        raise ValueError("the transcript contains a lone surrogate (invalid Unicode); re-type it")
    return transcript


def check_owner(owner: str) -> str:
    """The owner string as given; the web layer makes it, so a bad one is a bug worth a clear error."""
    if not isinstance(owner, str) or not 1 <= len(owner) <= MAX_OWNER_CHARS or not owner.isprintable():
        raise ValueError(f"owner must be 1 to {MAX_OWNER_CHARS} printable characters, got {quote(owner)}")
    return owner
