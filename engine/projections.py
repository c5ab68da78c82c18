"""Projection kernels for decode batch sizes on CUDA: at 1-32 rows every projection streams its weight
once, so what counts is how close each kernel comes to the device's copy bandwidth.

    gemv       one row on CUDA cores, each program owning a few weight rows for all of K
    gemm_rows  2-32 rows on tensor cores, each weight tile loaded once for all rows; a weight with
               few output tiles splits K over several programs per tile, the last of which sums the
               partial products in a fixed order (so the result does not depend on timing)
    linear     F.linear without bias through whichever fits, with the SwiGLU gate of a (w1, w3)
               row-paired weight in the epilogue

Tested against F.linear (tests/test_kernels.py; on CPU through TRITON_INTERPRET=1).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from engine.kernels import LAUNCH, _after_previous, _silu_times, silu_mul


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SWIGLU: tl.constexpr,
                 PDL: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    k = tl.arange(0, BLOCK_K)
    rows = w_ptr + n.to(tl.int64)[:, None] * K
    w = tl.load(rows + k[None, :], mask=n_mask[:, None], other=0.0)  # weights need not wait
    _after_previous(PDL)
    acc = w.to(tl.float32) * tl.load(x_ptr + k).to(tl.float32)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        w = tl.load(rows + (k0 + k)[None, :], mask=n_mask[:, None], other=0.0)
        x = tl.load(x_ptr + k0 + k)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if SWIGLU:  # rows are (w1, w3) pairs: store silu(w1 x) * w3 x, one output per pair
        g, u = tl.split(tl.reshape(y, (BLOCK_N // 2, 2)))
        o = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(y_ptr + o, _silu_times(g, u, y_ptr.dtype.element_ty), mask=o < N // 2)
    else:
        tl.store(y_ptr + n, y.to(y_ptr.dtype.element_ty), mask=n_mask)


def gemv_tiles(n: int, k: int) -> tuple[int, int, int, int] | None:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for an [n, k] weight, None when K does not tile.
    Measured on H100/H200 for the S2 Pro shapes (each 5–40 % faster than cuBLAS at one row)."""
    if k % 512:
        return None
    if k % 1024 == 0 and k >= 4096:
        return (4, 1024, 8, 3)  # wo
    if n >= 6000 and n < 10000:
        return (8, 512, 4, 3)  # wqkv
    return (4, 512, 4, 3) if n >= 4096 else (2, 512, 4, 3)


def gemv(x: Tensor, w: Tensor, tiles: tuple[int, int, int, int] | None = None, swiglu: bool = False) -> Tensor:
    """x [1, K] @ w[N, K].T -> [1, N] (K a multiple of BLOCK_K); with `swiglu` the gated [1, N/2]."""
    n, k = w.shape
    block_n, block_k, warps, stages = tiles or gemv_tiles(n, k)
    y = torch.empty((1, n // 2 if swiglu else n), dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](x, w, y, n, k, BLOCK_N=block_n, BLOCK_K=block_k, SWIGLU=swiglu,
                                             num_warps=warps, num_stages=stages, **LAUNCH)
    return y


@triton.jit
def _store_rows(y_ptr, acc, tile, m, m_mask, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                SWIGLU: tl.constexpr):
    if SWIGLU:  # rows are (w1, w3) pairs: store silu(w1 x) * w3 x, one output per pair
        g, u = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
        o = tile * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(y_ptr + m[:, None] * (N // 2) + o[None, :], _silu_times(g, u, y_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & (o < N // 2)[None, :])
    else:
        n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(y_ptr + m[:, None] * N + n[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & (n < N)[None, :])


@triton.jit
def _gemm_rows_kernel(x_ptr, w_ptr, y_ptr, part_ptr, count_ptr, M, N, K, K_SPLIT, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
                      PEEL: tl.constexpr, SWIGLU: tl.constexpr, PDL: tl.constexpr):
    """A few rows (M <= BLOCK_M, padded) on tensor cores, each weight tile loaded once for all rows.
    Program (tile, s) takes K_SPLIT inputs from s * K_SPLIT. PEEL: the first two weight tiles are
    loaded before waiting for the previous kernel (K_SPLIT >= 2 tiles)."""
    tile, s = tl.program_id(0), tl.program_id(1)
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    m = tl.arange(0, BLOCK_M)
    m_mask = m < M
    k = tl.arange(0, BLOCK_K)
    rows = w_ptr + n.to(tl.int64)[:, None] * K + s * K_SPLIT
    xs = x_ptr + m[:, None] * K + s * K_SPLIT
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    start = 0
    if PEEL:
        w0 = tl.load(rows + k[None, :], mask=n_mask[:, None], other=0.0)
        w1 = tl.load(rows + (BLOCK_K + k)[None, :], mask=n_mask[:, None], other=0.0)
        _after_previous(PDL)
        acc = tl.dot(tl.load(xs + k[None, :], mask=m_mask[:, None], other=0.0), tl.trans(w0), acc,
                     input_precision=PRECISION)
        acc = tl.dot(tl.load(xs + (BLOCK_K + k)[None, :], mask=m_mask[:, None], other=0.0), tl.trans(w1), acc,
                     input_precision=PRECISION)
        start = 2 * BLOCK_K
    else:
        _after_previous(PDL)
    for k0 in range(start, K_SPLIT, BLOCK_K):
        w = tl.load(rows + (k0 + k)[None, :], mask=n_mask[:, None], other=0.0)
        x = tl.load(xs + (k0 + k)[None, :], mask=m_mask[:, None], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    if SPLIT == 1:
        _store_rows(y_ptr, acc, tile, m, m_mask, N, BLOCK_M, BLOCK_N, SWIGLU)
    else:
        part = part_ptr + m[:, None] * N + n[None, :]  # [SPLIT, M, N] float32
        mask = m_mask[:, None] & n_mask[None, :]
        tl.store(part + s * M * N, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before the count says so
        if tl.atomic_add(count_ptr + tile, 1) == SPLIT - 1:  # acquire-release: the others' partials are visible
            acc = tl.load(part, mask=mask, other=0.0, cache_modifier=".cg")
            for i in tl.static_range(1, SPLIT):
                acc += tl.load(part + i * M * N, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(count_ptr + tile, 0)  # ready for the next call (which starts after this grid ends)
            _store_rows(y_ptr, acc, tile, m, m_mask, N, BLOCK_M, BLOCK_N, SWIGLU)


GEMM_ROWS = 32  # batches of 2..32 rows take _gemm_rows_kernel (H100: 4-18 % faster than cuBLAS at 8 and 32)
# One counter per output tile of a split call, zero between calls. The calls of a device must come
# from one stream (the engine's), so that no two split calls run at once.
_COUNTS: dict[torch.device, Tensor] = {}
_MAX_TILES = 1024


class RowTiles(NamedTuple):
    block_n: int
    block_k: int
    peel: bool  # two weight tiles loaded before the dependency wait
    stages: int
    split: int  # programs per output tile, each over K / split inputs


def gemm_rows_tiles(rows: int, n: int, k: int, elem: int) -> RowTiles:
    """Tiles of the few-row kernel for an [n, k] weight."""
    if rows <= 16 and n <= 4096 and k >= 4096:
        # Few output tiles over a long K (wo, w2): 40-80 programs would leave SMs idle, so K is split.
        # H200, 8 rows: wo 9.7 -> 8.0 µs, w2 20.0 -> 16.2; frame graph 6.32 -> 6.06 ms at 8 rows,
        # 6.50 -> 6.37 at 16. At 32 rows a split w2 measured 20.0 -> 18.9 µs alone but made the frame
        # slower (7.18 -> 7.47 ms), and wo did not gain: no split there.
        split = 8
        while split > 1 and k % (split * 128):
            split //= 2
        if split > 1:
            return RowTiles(64, 128, True, 2 if elem == 4 else 4, split)
    block_n, block_k = (64, 128) if n >= 6000 else (32, 256)
    # The widest projection (w1|w3) streams best with two tiles in flight before the wait and 4 stages
    # (H100, 32 rows: 44.3 -> 39.5 µs; 8 rows: 39.7 -> 38.1 µs); the others did not gain.
    peel = n >= 10000
    stages = 2 if elem == 4 else 4 if peel else 5  # float32 tiles: shared memory
    return RowTiles(block_n, block_k, peel, stages, 1)


def gemm_rows(x: Tensor, w: Tensor, swiglu: bool = False) -> Tensor | None:
    """x [M, K] @ w[N, K].T for 2 <= M <= GEMM_ROWS (padded to 16 or 32); None when K does not tile.
    With `swiglu` the gated [M, N/2] (rows of w are (w1, w3) pairs)."""
    rows, k = x.shape
    n = w.shape[0]
    t = gemm_rows_tiles(rows, n, k, x.element_size())
    if k % (t.block_k * t.split):
        return None
    y = torch.empty((rows, n // 2 if swiglu else n), dtype=x.dtype, device=x.device)
    tiles = triton.cdiv(n, t.block_n)
    part, counts = y, y  # unused unless split
    if t.split > 1:
        part = torch.empty((t.split, rows, n), dtype=torch.float32, device=x.device)
        if x.device not in _COUNTS:
            _COUNTS[x.device] = torch.zeros(_MAX_TILES, dtype=torch.int32, device=x.device)
        counts = _COUNTS[x.device]
        assert tiles <= _MAX_TILES
    k_split = k // t.split
    _gemm_rows_kernel[(tiles, t.split)](
        x, w, y, part, counts, rows, n, k, k_split, BLOCK_M=16 if rows <= 16 else 32, BLOCK_N=t.block_n,
        BLOCK_K=t.block_k, SPLIT=t.split, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        PEEL=t.peel and k_split >= 2 * t.block_k, SWIGLU=swiglu, num_warps=4, num_stages=t.stages, **LAUNCH)
    return y


def linear(x: Tensor, w: Tensor, swiglu: bool = False) -> Tensor:
    """F.linear without bias; one row takes the matrix-vector kernel, up to GEMM_ROWS the few-row one.
    With `swiglu`, w holds (w1, w3) row pairs and the result is silu(x w1.T) * x w3.T, gated in the
    kernels' epilogue (same rounding as silu_mul after the plain product)."""
    if x.is_contiguous() and w.is_contiguous():
        if x.shape[0] == 1 and gemv_tiles(*w.shape) is not None:
            return gemv(x, w, swiglu=swiglu)
        if 2 <= x.shape[0] <= GEMM_ROWS:
            # Gated in the epilogue from 17 rows (H100 frame at 32 rows 8.48 -> 8.37 ms); up to 16 rows
            # (BLOCK_M 16) that kernel streamed slower (8 rows 7.38 -> 7.73 ms), so the gate runs after.
            gate_after = swiglu and x.shape[0] <= 16
            y = gemm_rows(x, w, swiglu and not gate_after)
            if y is not None:
                return silu_mul(y) if gate_after else y
    y = torch.nn.functional.linear(x, w)
    return silu_mul(y) if swiglu else y
