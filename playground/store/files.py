"""The store's files and blobs: compact FLAC audio written atomically, codes blobs, names' unique keys.

Voice clips are 24-bit FLAC at the upload's own rate (lossless for 16/24-bit sources, ~1/6 the size of a
float WAV); takes are 16-bit FLAC holding exactly the int16 values the API serves (`float_to_int16`).
Every write goes to a temp file in the same folder and is renamed into place, so a crash never leaves a
half-written file behind a row.
"""
from __future__ import annotations

import io
import os
import secrets
import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from engine import float_to_int16

_PCM24_SCALE = 1 << 23  # the scale libsndfile reads 24-bit PCM with, so a 16-bit source round-trips exactly
MIN_CLIP_RATE, MAX_CLIP_RATE = 8000, 384000  # what FLAC and libsndfile take
_QUOTE_CHARS = 40


def quote(text: object) -> str:
    """repr() of a user-supplied value, cut short: error messages never echo a huge input."""
    text = str(text)
    return repr(text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "…")


def name_key(name: str) -> str:
    """The form names are unique in: NFKC, case folded, NFKC again (folding can denormalize), i.e.
    Unicode's NFKC_Casefold in spirit: 'Ｅｖｅ' == 'eve', 'STRASSE' == 'straße'."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def _atomic(path: Path, write: Callable[[Path], None]) -> int:
    """Run write(tmp) then rename tmp onto path; returns the final file's size in bytes."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def write_clip(path: Path, native: np.ndarray, sample_rate: int) -> int:
    """A voice clip as 24-bit FLAC at its own rate. We round and clip ourselves (not libsndfile) so the
    stored integers do not depend on the library's version; returns the file size."""
    native = np.asarray(native, dtype=np.float32)
    if native.ndim != 1 or len(native) == 0:
        raise ValueError(f"voice audio must be non-empty mono samples, got shape {native.shape}")
    if not MIN_CLIP_RATE <= int(sample_rate) <= MAX_CLIP_RATE:
        raise ValueError(f"voice sample rate must be {MIN_CLIP_RATE} to {MAX_CLIP_RATE} Hz, got {sample_rate}")
    pcm = np.clip(np.rint(native.astype(np.float64) * _PCM24_SCALE), -_PCM24_SCALE, _PCM24_SCALE - 1)
    pcm = pcm.astype(np.int32) << 8  # libsndfile takes 24-bit from the top of an int32
    return _atomic(path, lambda tmp: sf.write(tmp, pcm, int(sample_rate), subtype="PCM_24", format="FLAC"))


def write_take(path: Path, samples: np.ndarray, sample_rate: int) -> int:
    """A take as 16-bit FLAC holding float_to_int16(samples), as the API rounds; returns the file size."""
    pcm = float_to_int16(np.asarray(samples, dtype=np.float32))
    return _atomic(path, lambda tmp: sf.write(tmp, pcm, sample_rate, subtype="PCM_16", format="FLAC"))


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under root (links not followed); 0 if it does not exist."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def codes_blob(codes: np.ndarray) -> bytes:
    """Codes [10, N] as an .npy blob, uint16 when they fit (codebooks are far below 65536): 4x smaller."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != 10 or codes.shape[1] < 1 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be an integer array [10, N >= 1], got {codes.dtype} {codes.shape}")
    fits = codes.min() >= 0 and codes.max() <= np.iinfo(np.uint16).max
    buf = io.BytesIO()
    np.save(buf, codes.astype(np.uint16 if fits else np.int64), allow_pickle=False)
    return buf.getvalue()


def codes_array(blob: bytes) -> np.ndarray:
    """Codes [10, N] int64 from a blob of either width (older stores wrote int64)."""
    return np.load(io.BytesIO(blob), allow_pickle=False).astype(np.int64)
