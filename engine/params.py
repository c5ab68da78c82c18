"""What a caller may ask of the engine: sampling parameters, every request limit and default, and the
typed error for a request that breaks one. Plain Python (no torch): the UI and the API read these
names (through `engine`) instead of restating them.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

# -- limits and defaults ------------------------------------------------------------------------
MAX_TEXT_CHARS = 20_000  # of the text, and of each reference transcript
MAX_FRAMES_LIMIT = 32_768
DEFAULT_MAX_FRAMES = 2048  # budget over all text chunks of a request
MIN_CHUNK_LENGTH, MAX_CHUNK_LENGTH = 50, 5000  # characters per text chunk when the text is split
DEFAULT_CHUNK_LENGTH = 300  # 0 = never split
MIN_REFERENCE_SECONDS, MAX_REFERENCE_SECONDS = 1.0, 30.0  # a reference clip: long enough to carry a voice
SEED_LIMIT = 2**63  # seeds lie in [0, SEED_LIMIT): the sampler hashes both 32-bit halves of an int64
RANDOM_SEED_LIMIT = 2**32  # a drawn seed stays short enough to read out and retype
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 4096  # the codebook size: a larger k keeps every code anyway


def random_seed() -> int:
    """The one draw of a seed for a request that sent none."""
    return secrets.randbelow(RANDOM_SEED_LIMIT)


class RequestError(ValueError):
    """Bad input a caller can fix; `field` names the request field it is about (None: the request as a
    whole, e.g. one too long for the model's context)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_p: float = 0.8
    top_k: int = 30
    ras: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise RequestError("temperature", f"temperature must be in [0, {MAX_TEMPERATURE:g}], "
                                              f"got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise RequestError("top_k", f"top_k must be in [1, {MAX_TOP_K}], got {self.top_k}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise RequestError("seed", f"seed must be in [0, 2**63), got {self.seed}")
