"""Batched reference-exact sampling with per-row parameters, counter-based noise and RAS.

Semantics (per sampled distribution): sort logits (descending, equal values in index order);
cumulative softmax of the *untempered* logits; drop rank r when cum[r] > top_p or r >= top_k (rank 0
always kept, so the token that crosses top_p is itself dropped); divide by max(temperature, 1e-5);
softmax; pick argmax(p / E) with E ~ Exp(1).

The exponential noise is a pure function of (seed, counter, vocabulary index), computed with integer
hashing on the device. A request's draws therefore depend only on its seed and its position in the
generation, never on the batch it shares or on the device, and sampling needs no host sync and can
be captured in a CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.params import SamplingParams

RAS_WINDOW = 10
RAS_TEMPERATURE = 1.0
RAS_TOP_P = 0.9
# Draw ids inside one frame: each distribution of a frame gets its own counter.
DRAW_SLOW, DRAW_SLOW_RAS, DRAW_FAST = 0, 1, 2  # fast codebook k uses DRAW_FAST + k
DRAWS_PER_FRAME = 16
_MASK32 = 0xFFFFFFFF


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer on int64 tensors holding values < 2**32. Both multipliers are < 2**31,
    so no product leaves the int64 range on any backend."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


_INDEX_HASH: dict[tuple[str, int], Tensor] = {}


def index_hash(vocab: int, device: torch.device | str) -> Tensor:
    """Per-vocabulary-index hashes [vocab], computed eagerly once per device.

    Kept as data (not recomputed from an arange inside the frame) because torch.compile lowers
    arange arithmetic to 32-bit index math, where the mixing products would overflow.
    """
    key = (str(torch.device(device)), vocab)
    if key not in _INDEX_HASH:
        idx = torch.arange(vocab, dtype=torch.int64, device=device)
        _INDEX_HASH[key] = _hash32((idx * 0x2545F491) & _MASK32)
    return _INDEX_HASH[key]


def exponential_noise(seed: Tensor, counter: Tensor, vocab: int) -> Tensor:
    """Exp(1) noise [B, vocab] from int64 seed [B] and counter [B]; deterministic on any device."""
    key = _hash32((seed & _MASK32) ^ _hash32((seed >> 32) & _MASK32))
    key = _hash32(key ^ _hash32(counter & _MASK32))
    bits = _hash32(key[:, None] ^ index_hash(vocab, seed.device)[None, :])
    uniform = ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))  # in (0, 1), never 0
    return -torch.log(uniform)


def filtered_probs(logits: Tensor, temperature: Tensor, top_p: Tensor, top_k: Tensor) -> Tensor:
    """logits [B, V] float32; params [B] -> sampling distribution [B, V] after top-p/top-k/temperature."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    rank = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    remove = (cum > top_p[:, None]) | (rank >= top_k[:, None])
    remove[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    filtered = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return torch.softmax(filtered / temperature.clamp(min=1e-5)[:, None], dim=-1)


def sample(logits: Tensor, temperature: Tensor, top_p: Tensor, top_k: Tensor, seed: Tensor,
           counter: Tensor) -> Tensor:
    """One token index per row [B]; the noise comes from (seed, counter)."""
    probs = filtered_probs(logits, temperature, top_p, top_k)
    noise = exponential_noise(seed, counter, logits.shape[-1])
    return torch.argmax(probs / noise, dim=-1)


@dataclass
class BatchParams:
    """Per-row sampling parameters as device tensors (rows = requests in the batch)."""

    temperature: Tensor  # [B] float32
    top_p: Tensor  # [B] float32
    top_k: Tensor  # [B] int64
    ras: Tensor  # [B] bool
    seed: Tensor  # [B] int64

    @classmethod
    def build(cls, params: list[SamplingParams], device: torch.device | str) -> BatchParams:
        def t(values: list, dtype: torch.dtype) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=device)
        return cls(t([p.temperature for p in params], torch.float32),
                   t([p.top_p for p in params], torch.float32),
                   t([p.top_k for p in params], torch.int64),
                   t([p.ras for p in params], torch.bool),
                   t([p.seed for p in params], torch.int64))


def sample_slow(logits: Tensor, p: BatchParams, frame: Tensor, recent: Tensor) -> Tensor:
    """Slow-token column [B] with repetition-aware sampling.

    logits [B, 4097] (column 4096 = end of speech); frame [B] int64 index of the frame being made;
    recent [B, RAS_WINDOW] the last slow columns of each request (-1 where none yet).
    A normal draw that is semantic and repeats within the window is replaced by a draw at
    temperature 1.0 / top_p 0.9 (same top_k).
    """
    base = frame * DRAWS_PER_FRAME
    normal = sample(logits, p.temperature, p.top_p, p.top_k, p.seed, base + DRAW_SLOW)
    high = sample(logits, torch.full_like(p.temperature, RAS_TEMPERATURE),
                  torch.full_like(p.top_p, RAS_TOP_P), p.top_k, p.seed, base + DRAW_SLOW_RAS)
    is_semantic = normal < logits.shape[-1] - 1
    repeats = (recent == normal[:, None]).any(dim=-1)
    return torch.where(p.ras & is_semantic & repeats, high, normal)


def sample_fast(logits: Tensor, p: BatchParams, frame: Tensor, codebook: int) -> Tensor:
    """Codebook `codebook` (1..9) [B] from fast logits [B, 4096]: request params, no RAS."""
    counter = frame * DRAWS_PER_FRAME + DRAW_FAST + codebook
    return sample(logits, p.temperature, p.top_p, p.top_k, p.seed, counter)


def push_recent(recent: Tensor, column: Tensor) -> Tensor:
    """Shift the RAS window left and append this frame's slow column [B]."""
    return torch.cat([recent[:, 1:], column[:, None]], dim=1)
