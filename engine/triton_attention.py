"""Paged decode attention on CUDA (Triton): one query token per sequence, GQA, split over the context.

Grid: (batch, kv_head, split). Each program walks its share of the sequence's blocks for all query heads
that read its kv head, keeping an online softmax; a second small kernel merges the splits by their
log-sum-exp. With one split the first kernel writes the result itself (the fast AR's 10-position cache).
The loop bound comes from context_lens at run time, so the kernels are CUDA-graph safe with fixed-width
block tables. Tested against attention.paged_decode_reference (tests/test_kernels.py, tests/test_cuda.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from engine.kernels import LAUNCH, _after_previous

NUM_SPLITS = 8


@triton.jit
def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, lse_ptr, scale,
                         stride_tb, num_kv_heads,
                         GROUPS: tl.constexpr, GROUPS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK: tl.constexpr, NUM_SPLITS: tl.constexpr, PRECISION: tl.constexpr,
                         PDL: tl.constexpr):
    _after_previous(PDL)
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    length = tl.load(lens_ptr + b)
    num_blocks = tl.cdiv(length, BLOCK)
    per_split = tl.cdiv(num_blocks, NUM_SPLITS)
    first = split * per_split
    last = tl.minimum(first + per_split, num_blocks)

    g = tl.arange(0, GROUPS_PAD)
    d = tl.arange(0, HEAD_DIM)
    t = tl.arange(0, BLOCK)
    heads = kvh * GROUPS + g
    q_mask = g < GROUPS
    q = tl.load(q_ptr + (b * num_kv_heads * GROUPS + heads)[:, None] * HEAD_DIM + d[None, :],
                mask=q_mask[:, None], other=0.0)
    m = tl.full((GROUPS_PAD,), float("-inf"), tl.float32)
    s = tl.zeros((GROUPS_PAD,), tl.float32)
    acc = tl.zeros((GROUPS_PAD, HEAD_DIM), tl.float32)
    for i in range(first, last):
        block = tl.load(tables_ptr + b * stride_tb + i)
        pos = i * BLOCK + t
        kv_off = ((block * BLOCK + t) * num_kv_heads + kvh)[:, None] * HEAD_DIM + d[None, :]
        k = tl.load(k_ptr + kv_off)  # [BLOCK, D], bf16 operands with fp32 accumulation
        v = tl.load(v_ptr + kv_off)
        # Cast after scaling: under torch.compile a Python float arrives as fp64.
        logits = (tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale).to(tl.float32)  # [G, BLOCK]
        logits = tl.where((pos < length)[None, :], logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(logits - m_new[:, None])
        s = s * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    if NUM_SPLITS == 1:
        out_off = b * num_kv_heads * GROUPS + heads
        result = (acc / s[:, None]).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + out_off[:, None] * HEAD_DIM + d[None, :], result, mask=q_mask[:, None])
    else:
        # A split with no blocks stores zeros and lse -inf: the merge gives it zero weight.
        out_off = (b * NUM_SPLITS + split) * num_kv_heads * GROUPS + heads
        safe = tl.where(s > 0, s, 1.0)
        tl.store(out_ptr + out_off[:, None] * HEAD_DIM + d[None, :], acc / safe[:, None], mask=q_mask[:, None])
        tl.store(lse_ptr + out_off, tl.where(s > 0, m + tl.log(safe), float("-inf")), mask=q_mask)


@triton.jit
def _merge_splits_kernel(part_ptr, lse_ptr, out_ptr, num_heads,
                         NUM_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr, PDL: tl.constexpr):
    _after_previous(PDL)
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    sp = tl.arange(0, NUM_SPLITS)
    d = tl.arange(0, HEAD_DIM)
    rows = (b * NUM_SPLITS + sp) * num_heads + h
    lse = tl.load(lse_ptr + rows)
    w = tl.exp(lse - tl.max(lse, axis=0))
    w = w / tl.sum(w, axis=0)
    part = tl.load(part_ptr + rows[:, None] * HEAD_DIM + d[None, :])
    merged = tl.sum(part * w[:, None], axis=0)
    tl.store(out_ptr + (b * num_heads + h) * HEAD_DIM + d, merged.to(out_ptr.dtype.element_ty))


def paged_decode_triton(q: Tensor, k_pool: Tensor, v_pool: Tensor, block_tables: Tensor,
                        context_lens: Tensor, num_splits: int = NUM_SPLITS) -> Tensor:
    """Same contract as attention.paged_decode_reference: q [B, H, D] -> [B, H, D].

    num_splits (a power of two): programs per (sequence, kv head); 1 for short contexts."""
    batch, heads, dim = q.shape
    _, block, kv_heads, _ = k_pool.shape
    groups = heads // kv_heads
    q = q.contiguous()
    out = torch.empty_like(q)
    if num_splits == 1:
        part, lse = out, out
    else:
        part = torch.empty((batch, num_splits, heads, dim), dtype=torch.float32, device=q.device)
        lse = torch.empty((batch, num_splits, heads), dtype=torch.float32, device=q.device)
    _paged_decode_kernel[(batch, kv_heads, num_splits)](
        q, k_pool, v_pool, block_tables, context_lens, part, lse, dim ** -0.5, block_tables.stride(0), kv_heads,
        GROUPS=groups, GROUPS_PAD=max(16, triton.next_power_of_2(groups)), HEAD_DIM=dim, BLOCK=block,
        NUM_SPLITS=num_splits,
        # float32 pools (tests, CPU-parity runs) must not silently use TF32
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **LAUNCH)
    if num_splits > 1:
        _merge_splits_kernel[(batch, heads)](part, lse, out, heads, NUM_SPLITS=num_splits, HEAD_DIM=dim,
                                             num_warps=1, **LAUNCH)
    return out
