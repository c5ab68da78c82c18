"""Paged attention on CUDA (Triton): decode (one query token per sequence) and prefill (packed runs of
new tokens of several sequences, causal over each one's cached prefix and itself), GQA.

Decode:

Grid: (batch, kv_head, split). Each program walks its share of the sequence's blocks for all query heads
that read its kv head, keeping an online softmax; a second small kernel merges the splits by their
log-sum-exp. With one split the first kernel writes the result itself (the fast AR's 10-position cache,
and batches whose (sequence, kv head) programs fill the GPU alone).
The loop bound comes from context_lens at run time, so the kernels are CUDA-graph safe with fixed-width
block tables. Tested against attention.paged_decode_reference (tests/test_kernels.py, tests/test_cuda.py).

Prefill: grid (query tile, kv_head). A tile is up to BLOCK_M consecutive new tokens of one sequence;
its rows are (token, query head of the kv head) pairs, so each K/V block is loaded once for the whole
group. One launch per layer replaces a loop of gathers and attention calls per sequence. Tested
against attention.prefill_attention.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from engine.kernels.launch import LAUNCH, after_previous


def decode_splits(batch: int, kv_heads: int) -> int:
    """Programs per (sequence, kv head): enough for ~512 programs in all, up to 16 (the best split
    measured at the slow AR's shapes for 1, 8 and 32 rows: docs/BENCHMARKS.md)."""
    programs = batch * kv_heads
    return 1 if programs >= 256 else min(16, triton.next_power_of_2(512 // programs + 1) // 2)


@triton.jit
def _block_offsets(block, kvh, num_kv_heads, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """Offsets of one kv head's [BLOCK, D] keys (or values) in pool block `block`."""
    t = tl.arange(0, BLOCK)
    return ((block * BLOCK + t) * num_kv_heads + kvh)[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]


@triton.jit
def _attend_block(q, k_ptr, v_ptr, block, kvh, num_kv_heads, visible, m, s, acc, scale,
                  HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """One pool block of keys/values into a running softmax (m, s, acc) of the query rows q;
    `visible` says which (row, key) pairs count. bf16 operands with fp32 accumulation."""
    kv_off = _block_offsets(block, kvh, num_kv_heads, HEAD_DIM, BLOCK)
    return _attend_tile(q, tl.load(k_ptr + kv_off), tl.load(v_ptr + kv_off), visible, m, s, acc, scale, PRECISION)


@triton.jit
def _attend_tile(q, k, v, visible, m, s, acc, scale, PRECISION: tl.constexpr):
    """_attend_block on keys k and values v [BLOCK, D] already loaded."""
    # Cast after scaling: under torch.compile a Python float arrives as fp64.
    logits = (tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale).to(tl.float32)  # [rows, BLOCK]
    logits = tl.where(visible, logits, float("-inf"))
    m_new = tl.maximum(m, tl.max(logits, axis=1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(logits - m_new[:, None])
    s = s * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, s, acc


@triton.jit
def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, lse_ptr, scale,
                         stride_tb, num_kv_heads,
                         GROUPS: tl.constexpr, GROUPS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK: tl.constexpr, NUM_SPLITS: tl.constexpr, PRECISION: tl.constexpr,
                         PDL: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    length = tl.load(lens_ptr + b)
    num_blocks = tl.cdiv(length, BLOCK)
    per_split = tl.cdiv(num_blocks, NUM_SPLITS)
    first = split * per_split
    last = tl.minimum(first + per_split, num_blocks)
    # The split's first block is loaded before waiting for the previous kernel unless it is the
    # sequence's last block, where that kernel has just stored this step's key and value.
    t = tl.arange(0, BLOCK)
    ahead = (t * 0 + first < num_blocks - 1)[:, None]  # [BLOCK, 1] (a tensor mask for the interpreter)
    at = _block_offsets(tl.load(tables_ptr + b * stride_tb + tl.minimum(first, num_blocks - 1)), kvh,
                        num_kv_heads, HEAD_DIM, BLOCK)
    k_first = tl.load(k_ptr + at, mask=ahead, other=0.0)
    v_first = tl.load(v_ptr + at, mask=ahead, other=0.0)
    after_previous(PDL)

    g = tl.arange(0, GROUPS_PAD)
    d = tl.arange(0, HEAD_DIM)
    heads = kvh * GROUPS + g
    q_mask = g < GROUPS
    q = tl.load(q_ptr + (b * num_kv_heads * GROUPS + heads)[:, None] * HEAD_DIM + d[None, :],
                mask=q_mask[:, None], other=0.0)
    m = tl.full((GROUPS_PAD,), float("-inf"), tl.float32)
    s = tl.zeros((GROUPS_PAD,), tl.float32)
    acc = tl.zeros((GROUPS_PAD, HEAD_DIM), tl.float32)
    if first < last:
        k_first = tl.where(ahead, k_first, tl.load(k_ptr + at, mask=~ahead, other=0.0))
        v_first = tl.where(ahead, v_first, tl.load(v_ptr + at, mask=~ahead, other=0.0))
        m, s, acc = _attend_tile(q, k_first, v_first, (first * BLOCK + t < length)[None, :], m, s, acc, scale,
                                 PRECISION)
    for i in range(first + 1, last):
        block = tl.load(tables_ptr + b * stride_tb + i)
        m, s, acc = _attend_block(q, k_ptr, v_ptr, block, kvh, num_kv_heads, (i * BLOCK + t < length)[None, :],
                                  m, s, acc, scale, HEAD_DIM, BLOCK, PRECISION)
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
    after_previous(PDL)
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
                        context_lens: Tensor, num_splits: int | None = None) -> Tensor:
    """Same contract as attention.paged_decode_reference: q [B, H, D] -> [B, H, D].

    num_splits (a power of two): programs per (sequence, kv head), by default `decode_splits`; 1 for
    short contexts."""
    batch, heads, dim = q.shape
    _, block, kv_heads, _ = k_pool.shape
    num_splits = num_splits or decode_splits(batch, kv_heads)
    groups = heads // kv_heads
    q = q.contiguous()
    out = torch.empty_like(q)
    if num_splits == 1:
        part, lse = out, out
    else:
        part = torch.empty((batch, num_splits, heads, dim), dtype=torch.float32, device=q.device)
        lse = torch.empty((batch, num_splits, heads), dtype=torch.float32, device=q.device)
    # The tl.constexpr parameters take plain values at launch; Triton's stub types them as constexpr.
    _paged_decode_kernel[(batch, kv_heads, num_splits)](
        q, k_pool, v_pool, block_tables, context_lens, part, lse, dim ** -0.5, block_tables.stride(0), kv_heads,
        GROUPS=groups, GROUPS_PAD=max(16, triton.next_power_of_2(groups)), HEAD_DIM=dim, BLOCK=block,  # pyright: ignore[reportArgumentType]
        NUM_SPLITS=num_splits,  # pyright: ignore[reportArgumentType]
        # float32 pools (tests, CPU-parity runs) must not silently use TF32
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **LAUNCH)  # pyright: ignore[reportArgumentType]
    if num_splits > 1:
        _merge_splits_kernel[(batch, heads)](part, lse, out, heads, NUM_SPLITS=num_splits, HEAD_DIM=dim,
                                             num_warps=1, **LAUNCH)  # pyright: ignore[reportCallIssue]  # launch option
    return out


@triton.jit
def _paged_prefill_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, tiles_ptr, out_ptr, scale, stride_tb, num_kv_heads,
                          GROUPS: tl.constexpr, GROUPS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                          BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr,
                          PDL: tl.constexpr):
    after_previous(PDL)
    tile = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    seq = tl.load(tiles_ptr + tile * 4)  # row of the block tables
    row0 = tl.load(tiles_ptr + tile * 4 + 1)  # first packed row of q / out
    num_rows = tl.load(tiles_ptr + tile * 4 + 2)
    pos0 = tl.load(tiles_ptr + tile * 4 + 3)  # position of that row in its sequence

    r = tl.arange(0, BLOCK_M * GROUPS_PAD)
    tok = r // GROUPS_PAD
    g = r % GROUPS_PAD
    valid = (tok < num_rows) & (g < GROUPS)
    q_pos = pos0 + tok
    d = tl.arange(0, HEAD_DIM)
    t = tl.arange(0, BLOCK)
    rows = (row0 + tok) * (num_kv_heads * GROUPS) + kvh * GROUPS + g
    q = tl.load(q_ptr + rows[:, None] * HEAD_DIM + d[None, :], mask=valid[:, None], other=0.0)
    m = tl.full((BLOCK_M * GROUPS_PAD,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_M * GROUPS_PAD,), tl.float32)
    acc = tl.zeros((BLOCK_M * GROUPS_PAD, HEAD_DIM), tl.float32)
    # Every row sees key 0, so no row's running max stays -inf.
    for i in range(0, tl.cdiv(pos0 + num_rows, BLOCK)):
        block = tl.load(tables_ptr + seq * stride_tb + i)
        m, s, acc = _attend_block(q, k_ptr, v_ptr, block, kvh, num_kv_heads,
                                  (i * BLOCK + t)[None, :] <= q_pos[:, None], m, s, acc, scale, HEAD_DIM, BLOCK,
                                  PRECISION)
    safe = tl.where(s > 0, s, 1.0)  # unused tiles (no rows) run no block
    tl.store(out_ptr + rows[:, None] * HEAD_DIM + d[None, :], (acc / safe[:, None]).to(out_ptr.dtype.element_ty),
             mask=valid[:, None])


PREFILL_ROWS = 128  # query rows (token x head of a kv head) per program


def prefill_block_m(groups: int) -> int:
    """Tokens per query tile for `groups` query heads per kv head (padded to a power of two)."""
    return max(1, PREFILL_ROWS // triton.next_power_of_2(groups))


def prefill_tiles(runs: list[tuple[int, int]], block_m: int) -> list[tuple[int, int, int, int]]:
    """Tiles for runs of new tokens [(start position, count)] packed in this order:
    (run index, first packed row, rows, first position) per tile of up to block_m tokens."""
    tiles, row = [], 0
    for i, (start, count) in enumerate(runs):
        for j in range(0, count, block_m):
            tiles.append((i, row + j, min(block_m, count - j), start + j))
        row += count
    return tiles


def paged_prefill_triton(q: Tensor, k_pool: Tensor, v_pool: Tensor, block_tables: Tensor, tiles: Tensor,
                         block_m: int) -> Tensor:
    """Packed q [N, H, D] of several sequences' new tokens -> [N, H, D], each run of tokens attending
    causally to its sequence's cached prefix and itself (whose k/v are already in the pools).
    block_tables [runs, W]; tiles [T, 4] int64 from prefill_tiles."""
    _, heads, dim = q.shape
    _, block, kv_heads, _ = k_pool.shape
    groups = heads // kv_heads
    q = q.contiguous()
    out = torch.empty_like(q)
    if tiles.shape[0]:
        _paged_prefill_kernel[(tiles.shape[0], kv_heads)](
            q, k_pool, v_pool, block_tables, tiles, out, dim ** -0.5, block_tables.stride(0), kv_heads,
            GROUPS=groups, GROUPS_PAD=triton.next_power_of_2(groups), HEAD_DIM=dim, BLOCK=block, BLOCK_M=block_m,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=8, **LAUNCH)  # pyright: ignore[reportCallIssue]
    return out
