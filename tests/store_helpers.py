"""Shared by the store's tests: clips of noise, codes, byte counts of the files on disk, takes.
The fixtures `store` and `spoken_clip` (real speech) live in conftest.py."""
from __future__ import annotations

import numpy as np

from engine.audio import SAMPLE_RATE, DecodedClip
from playground.store import EXPORTS_DIR, Store

SR = SAMPLE_RATE
A, B = "s:alice", "s:bob"


def noise_clip(seconds: float = 1.0, seed: int = 0, rate: int = SR) -> DecodedClip:
    """Noise (incompressible: sizes are predictable) at `rate`; its 44.1 kHz side is a linear resample."""
    native = (np.random.default_rng(seed).standard_normal(int(rate * seconds)) * 0.1).astype(np.float32)
    return DecodedClip(to_44k(native, rate), native, rate)


def to_44k(native: np.ndarray, rate: int) -> np.ndarray:
    n = round(len(native) * SR / rate)
    return np.interp(np.arange(n) * rate / SR, np.arange(len(native)), native).astype(np.float32)


def samples(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return noise_clip(seconds, seed).samples


def codes(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=(10, n), dtype=np.int64)


def files_bytes(store: Store) -> int:
    return sum(p.stat().st_size for d in ("voices", "history", EXPORTS_DIR)
               for p in (store.data_dir / d).rglob("*") if p.is_file())


def add_take(store: Store, owner: str = A, seconds: float = 0.05, seed: int = 0, text: str = "t") -> str:
    return store.add_history(owner, text, None, None, {}, seed, {}, samples(seconds, seed), []).id
