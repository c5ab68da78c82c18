"""One sampling draw per row on CUDA: sampler.py's semantics (top-p on the untempered softmax, top-k,
temperature, exponential race with counter-based noise, repetition-aware resampling) without a sort.

The kept set is a prefix of the logits ordered by value, then index; it is found by a binary search over
a key that orders tokens that way, and the noise is the same integer hash as sampler.py, so the kernel
draws the same tokens (tests/test_kernels.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from engine.kernels.launch import LAUNCH, after_previous


@triton.jit
def _hash32(x):
    """sampler._hash32 on uint32 (products wrap mod 2**32 as the reference's masks do)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x5BD1E995
    return x ^ (x >> 16)


@triton.jit
def _bisect(keys, packed, lo, hi, top_k, limit):
    """One search step over [lo, hi]: the candidate set keys >= mid fits when its count is at most
    top_k and its mass (the low 48 bits of the packed sum) at most `limit`."""
    mid = lo + (hi - lo) // 2
    total = tl.sum(tl.where(keys >= mid, packed, 0), axis=0)
    ok = ((total >> 48) <= top_k) & ((total & ((1 << 48) - 1)) <= limit)  # pyright: ignore[reportOperatorIssue]  # tl.sum stub
    active = lo < hi
    return tl.where(active & ~ok, mid + 1, lo), tl.where(active & ok, mid, hi)


@triton.jit
def _thresholds(keys, p, top_k, top_p, top_p2, TWO: tl.constexpr, KEY_BITS: tl.constexpr):
    """Smallest key threshold whose prefix respects top_k and top_p (the top token is always kept),
    by binary search; with TWO also the one for top_p2, in the same loop.

    A candidate set's count and probability mass come from one integer sum: each token adds
    2**48 + its probability in units of 2**-40, so the sum is exact and independent of order."""
    packed = tl.where(keys >= 0, (1 << 48) + (p * 1099511627776.0).to(tl.int64), 0)
    limit = (top_p.to(tl.float64) * 1099511627776.0).to(tl.int64)
    limit2 = (top_p2.to(tl.float64) * 1099511627776.0).to(tl.int64)
    lo = tl.zeros((), tl.int64)
    hi = tl.max(keys, axis=0)
    lo2 = lo
    hi2 = hi
    for _ in range(KEY_BITS + 1):
        lo, hi = _bisect(keys, packed, lo, hi, top_k, limit)
        if TWO:
            lo2, hi2 = _bisect(keys, packed, lo2, hi2, top_k, limit2)
    return hi, hi2


@triton.jit
def _pick(logits, keys, idx, threshold, noise_key, temperature):
    """The token drawn from the kept set (keys >= threshold) at `temperature` with Exp(1) noise."""
    x = tl.where(keys >= threshold, logits / tl.maximum(temperature, 1e-5), float("-inf"))
    q = tl.exp(x - tl.max(x, axis=0))
    probs = q / tl.sum(q, axis=0)
    bits = _hash32(noise_key ^ _hash32(idx.to(tl.uint32) * 0x2545F491))
    uniform = ((bits >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
    return tl.argmax(probs / -tl.log(uniform), axis=0, tie_break_left=True)


@triton.jit
def _sample_kernel(logits_ptr, stride_l, vocab, slots_ptr, frames_ptr, temp_ptr, top_p_ptr, top_k_ptr,
                   ras_ptr, seed_ptr, recent_ptr, out_ptr, stride_o, out_col, draw, ignore_ptr,
                   SLOW: tl.constexpr, WINDOW: tl.constexpr, BLOCK_V: tl.constexpr, SHIFT: tl.constexpr,
                   PDL: tl.constexpr):
    after_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, BLOCK_V)
    valid = idx < vocab
    logits = tl.load(logits_ptr + row * stride_l + idx, mask=valid, other=float("-inf")).to(tl.float32)
    if SLOW:
        ignore_last = tl.load(ignore_ptr)
        logits = tl.where(valid & ((idx < vocab - 1) | (ignore_last == 0)), logits, float("-inf"))
    # Order key: value (with -0.0 as +0.0), then lower index first; padding gets -1.
    bits = (logits + 0.0).to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    order = tl.where(bits >= 0x80000000, 0xFFFFFFFF - bits, bits + 0x80000000) >> SHIFT
    keys = tl.where(valid, order * 8192 + (8191 - idx), -1)
    slot = tl.load(slots_ptr + row)
    seed = tl.load(seed_ptr + slot)
    top_k = tl.load(top_k_ptr + slot)
    temperature = tl.load(temp_ptr + slot)
    top_p = tl.load(top_p_ptr + slot)
    seed_key = _hash32(seed.to(tl.uint32) ^ _hash32((seed >> 32).to(tl.uint32)))
    counter = tl.load(frames_ptr + row) * 16 + draw
    m = tl.max(logits, axis=0)
    e = tl.exp(logits - m)
    p = e / tl.sum(e, axis=0)
    # SLOW: the RAS redraw (temperature 1.0, top-p 0.9, same top_k) is searched in the same loop.
    kept, kept_ras = _thresholds(keys, p, top_k, top_p, tl.full((), 0.9, tl.float32), SLOW,
                                  32 - SHIFT + 13)
    tok = _pick(logits, keys, idx, kept, _hash32(seed_key ^ _hash32(counter.to(tl.uint32))), temperature)
    if SLOW:
        high = _pick(logits, keys, idx, kept_ras, _hash32(seed_key ^ _hash32((counter + 1).to(tl.uint32))), 1.0)
        w = tl.arange(0, 16)
        recent = tl.load(recent_ptr + slot * WINDOW + w, mask=w < WINDOW, other=-2)
        repeats = tl.sum((recent == tok).to(tl.int32), axis=0) > 0  # pyright: ignore[reportOperatorIssue]  # tl.sum stub
        ras = tl.load(ras_ptr + slot).to(tl.int32) != 0
        tok = tl.where(ras & (tok < vocab - 1) & repeats, high, tok)
        shifted = tl.load(recent_ptr + slot * WINDOW + w + 1, mask=w < WINDOW - 1, other=-2)
        tl.store(recent_ptr + slot * WINDOW + w, tl.where(w == WINDOW - 1, tok.to(tl.int64), shifted),
                 mask=w < WINDOW)
        tl.store(out_ptr + row * stride_o + out_col + 1, tl.minimum(tok, vocab - 2).to(tl.int64))
    tl.store(out_ptr + row * stride_o + out_col, tok.to(tl.int64))


def sample_into(logits: Tensor, slots: Tensor, frames: Tensor, params, out: Tensor, out_col: int,
                draw: int, recent: Tensor | None = None, ignore_last: Tensor | None = None) -> None:
    """Sample one token per row of logits [B, V] into out[:, out_col] (int64 [B, C]).

    params: sampler.BatchParams indexed by `slots` [B]; frames [B] the frame counter; `draw` the
    frame's draw id. With `recent` ([rows, window] by slot) this is the slow AR's draw: a second draw
    (id draw + 1) at the RAS temperature/top-p replaces a semantic token that repeats in the window,
    and the window is pushed in place; a nonzero `ignore_last` (int32 [1], read on the device, required
    with `recent`) makes the last column impossible. The slow draw also stores its token clamped to a
    code (codebook 0, the fast AR's first input) in out_col + 1."""
    batch, vocab = logits.shape
    slow = recent is not None
    if slow and ignore_last is None:
        raise ValueError("the slow draw needs the ignore_last flag tensor")
    _sample_kernel[(batch,)](
        logits, logits.stride(0), vocab, slots, frames, params.temperature, params.top_p, params.top_k,
        params.ras, params.seed, recent if slow else out, out, out.stride(0), out_col, draw,
        ignore_last if slow else slots,
        SLOW=slow, WINDOW=recent.shape[1] if slow else 1, BLOCK_V=triton.next_power_of_2(vocab),
        SHIFT=16 if logits.dtype == torch.bfloat16 else 0,
        num_warps=8, **LAUNCH)  # pyright: ignore[reportCallIssue]  # not in Triton's stub; the fastest warp count for the slow draw (docs/BENCHMARKS.md)
