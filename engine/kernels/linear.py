"""Projection kernels for decode batch sizes on CUDA: at 1-32 rows every projection streams its weight
once, so what counts is how close each kernel comes to the device's copy bandwidth.

    gemv       one row on CUDA cores, each program owning a few weight rows for all of K
    gemm_rows  2-64 rows on tensor cores, each weight tile loaded once for all rows
    linear     F.linear without bias through whichever fits, with the SwiGLU gate of a (w1, w3)
               row-paired weight in the epilogue

Each reads a bf16 (or float32) weight, or an int8 one (models/int8.py) converted in registers with its
per-row scale applied after the sum over K.

Tested against F.linear (tests/test_kernels.py; on CPU through TRITON_INTERPRET=1).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from engine.kernels.launch import LAUNCH, SHARED_MEMORY, after_previous
from engine.kernels.transformer import silu_mul, silu_times
from engine.models.int8 import Int8Weight

Weight = Tensor | Int8Weight  # a projection's weight: the checkpoint's own, or int8 with per-row scales


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SWIGLU: tl.constexpr, SCALED: tl.constexpr, PDL: tl.constexpr):
    """SCALED: w is int8 and row n of the product is multiplied by s[n] (float32) after the sum."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    k = tl.arange(0, BLOCK_K)
    rows = w_ptr + n.to(tl.int64)[:, None] * K
    w = tl.load(rows + k[None, :], mask=n_mask[:, None], other=0.0)  # weights need not wait
    after_previous(PDL)
    acc = w.to(tl.float32) * tl.load(x_ptr + k).to(tl.float32)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        w = tl.load(rows + (k0 + k)[None, :], mask=n_mask[:, None], other=0.0)
        x = tl.load(x_ptr + k0 + k)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if SCALED:
        y = y * tl.load(s_ptr + n, mask=n_mask, other=0.0)
    if SWIGLU:  # rows are (w1, w3) pairs: store silu(w1 x) * w3 x, one output per pair
        g, u = tl.split(tl.reshape(y, (BLOCK_N // 2, 2)))
        o = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(y_ptr + o, silu_times(g, u, y_ptr.dtype.element_ty), mask=o < N // 2)
    else:
        tl.store(y_ptr + n, y.to(y_ptr.dtype.element_ty), mask=n_mask)


def gemv_tiles(n: int, k: int, w_elem: int = 2) -> tuple[int, int, int, int] | None:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for an [n, k] weight of `w_elem`-byte entries, None when
    K does not tile. The fastest measured for the S2 Pro shapes, each faster than cuBLAS at one row
    (docs/BENCHMARKS.md)."""
    if k % 512:
        return None
    if w_elem == 1:  # int8: the fastest measured for wqkv on an H200 (docs/BENCHMARKS.md), kept for all
        return (8, 512, 4, 4)
    if k % 1024 == 0 and k >= 4096:
        return (4, 1024, 8, 3)  # wo
    if n >= 6000 and n < 10000:
        return (8, 512, 4, 3)  # wqkv
    return (4, 512, 4, 3) if n >= 4096 else (2, 512, 4, 3)


def _operands(w: Weight) -> tuple[Tensor, Tensor | None]:
    """(the weight tensor the kernel reads, its per-row float32 scale or None)."""
    return (w.q, w.scale) if isinstance(w, Int8Weight) else (w, None)


def gemv(x: Tensor, w: Weight, tiles: tuple[int, int, int, int] | None = None, swiglu: bool = False) -> Tensor:
    """x [1, K] @ w[N, K].T -> [1, N] (K a multiple of BLOCK_K); with `swiglu` the gated [1, N/2]."""
    wt, scale = _operands(w)
    n, k = wt.shape
    tiles = tiles or gemv_tiles(n, k, wt.element_size())
    assert tiles is not None, "K must be a multiple of 512"
    block_n, block_k, warps, stages = tiles
    y = torch.empty((1, n // 2 if swiglu else n), dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](x, wt, wt if scale is None else scale, y, n, k, BLOCK_N=block_n,
                                             BLOCK_K=block_k, SWIGLU=swiglu, SCALED=scale is not None,
                                             num_warps=warps, num_stages=stages,  # pyright: ignore[reportCallIssue]
                                             **LAUNCH)  # launch options (num_warps, ...): not in Triton's stub
    return y


@triton.jit
def _gemm_rows_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, PEEL: tl.constexpr, SWIGLU: tl.constexpr,
                      SCALED: tl.constexpr, PDL: tl.constexpr):
    """A few rows (M <= BLOCK_M, padded) on tensor cores, each weight tile loaded once for all rows.
    PEEL: the first two weight tiles are loaded before waiting for the previous kernel (K >= 2 tiles).
    SCALED: w is int8, converted to x's type in registers (exact: |q| <= 127), and column n of the
    product is multiplied by s[n] (float32) after the sum."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    m = tl.arange(0, BLOCK_M)
    m_mask = m < M
    k = tl.arange(0, BLOCK_K)
    rows = w_ptr + n.to(tl.int64)[:, None] * K
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    start = 0
    if PEEL:
        w0 = tl.load(rows + k[None, :], mask=n_mask[:, None], other=0.0)
        w1 = tl.load(rows + (BLOCK_K + k)[None, :], mask=n_mask[:, None], other=0.0)
        after_previous(PDL)
        x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=m_mask[:, None], other=0.0)
        acc = tl.dot(x, tl.trans(w0.to(x.dtype)), acc, input_precision=PRECISION)
        x = tl.load(x_ptr + m[:, None] * K + (BLOCK_K + k)[None, :], mask=m_mask[:, None], other=0.0)
        acc = tl.dot(x, tl.trans(w1.to(x.dtype)), acc, input_precision=PRECISION)
        start = 2 * BLOCK_K
    else:
        after_previous(PDL)
    for k0 in range(start, K, BLOCK_K):  # pyright: ignore[reportArgumentType]  # tl.constexpr bounds
        w = tl.load(rows + (k0 + k)[None, :], mask=n_mask[:, None], other=0.0)
        x = tl.load(x_ptr + m[:, None] * K + (k0 + k)[None, :], mask=m_mask[:, None], other=0.0)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc, input_precision=PRECISION)
    if SCALED:
        acc = acc * tl.load(s_ptr + n, mask=n_mask, other=0.0)[None, :]
    if SWIGLU:  # rows are (w1, w3) pairs: store silu(w1 x) * w3 x, one output per pair
        g, u = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
        o = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(y_ptr + m[:, None] * (N // 2) + o[None, :], silu_times(g, u, y_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & (o < N // 2)[None, :])
    else:
        tl.store(y_ptr + m[:, None] * N + n[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & n_mask[None, :])


GEMM_ROWS = 64  # 2..64 rows take _gemm_rows_kernel (faster than cuBLAS there: docs/BENCHMARKS.md)


def gemm_rows(x: Tensor, w: Weight, swiglu: bool = False) -> Tensor | None:
    """x [M, K] @ w[N, K].T for 2 <= M <= GEMM_ROWS (padded to 16, 32 or 64); None when K does not tile.
    With `swiglu` the gated [M, N/2] (rows of w are (w1, w3) pairs)."""
    wt, scale = _operands(w)
    rows, k = x.shape
    n = wt.shape[0]
    block_n, block_k, peel, stages = gemm_rows_tiles(rows, n, k, x.element_size(), wt.element_size())
    if k % block_k:
        return None
    y = torch.empty((rows, n // 2 if swiglu else n), dtype=x.dtype, device=x.device)
    _gemm_rows_kernel[(triton.cdiv(n, block_n),)](
        x, wt, wt if scale is None else scale, y, rows, n, k, BLOCK_M=block_m(rows), BLOCK_N=block_n,
        BLOCK_K=block_k, PRECISION="ieee" if x.dtype == torch.float32 else "tf32", PEEL=peel and k >= 2 * block_k,
        SWIGLU=swiglu, SCALED=scale is not None,
        num_warps=4, num_stages=stages, **LAUNCH)  # pyright: ignore[reportCallIssue]  # launch options: not in the stub
    return y


def block_m(rows: int) -> int:
    return 16 if rows <= 16 else 32 if rows <= 32 else 64


def gemm_rows_tiles(rows: int, n: int, k: int, elem: int, w_elem: int = 2) -> tuple[int, int, bool, int]:
    """(BLOCK_N, BLOCK_K, PEEL, num_stages) of the few-row kernel for an [n, k] weight of `w_elem`-byte
    entries (x of `elem`-byte ones): the tiles measured fastest on Hopper, in as many stages as the
    device's shared memory per block holds (each stage buffers an x tile and a weight tile: the 99 KB of
    sm_86, sm_89 and sm_120 cards take two or three where Hopper's 227 KB take five or six)."""
    block_n, block_k, peel, stages = _gemm_rows_tiles(rows, n, k, elem, w_elem)
    per_stage = (block_m(rows) * elem + block_n * w_elem) * block_k
    return block_n, block_k, peel, max(2, min(stages, SHARED_MEMORY["per_block"] // per_stage))


def _gemm_rows_tiles(rows: int, n: int, k: int, elem: int, w_elem: int = 2) -> tuple[int, int, bool, int]:
    """The Hopper tiles of gemm_rows_tiles, before its shared-memory cap."""
    if w_elem == 1:  # int8: at 8 rows narrower tiles with twice the K measured faster (H200, wqkv); at 64
        # rows twice the K in five stages needs 256 KB of shared memory: the bf16 tiles there and at 32
        if block_m(rows) == 16 and elem == 2:
            return 32, 256, False, 3
        return _gemm_rows_tiles(rows, n, k, elem)
    # No split of K over programs: faster alone, not in the engine (docs/BENCHMARKS.md).
    if block_m(rows) == 64:  # weights beyond L2: wider tiles (docs/BENCHMARKS.md)
        return (64, 128, False, 2 if elem == 4 else 5) if n >= 6000 else (32, 128, False, 2 if elem == 4 else 6)
    if block_m(rows) == 16 and n >= 10000:  # w1|w3 at 8 rows (gated after): narrower tiles measured faster
        return 32, 128, False, 2 if elem == 4 else 6
    block_n, block_k = (64, 128) if n >= 6000 else (32, 256)
    # The widest projection (w1|w3) streams best with two tiles in flight before the wait and 4 stages;
    # the others did not gain (docs/BENCHMARKS.md).
    peel = n >= 10000
    stages = 2 if elem == 4 else 4 if peel else 5  # float32 tiles: shared memory
    return block_n, block_k, peel, stages


def linear(x: Tensor, w: Weight, swiglu: bool = False) -> Tensor:
    """F.linear without bias; one row takes the matrix-vector kernel, up to GEMM_ROWS the few-row one.
    With `swiglu`, w holds (w1, w3) row pairs and the result is silu(x w1.T) * x w3.T, gated in the
    kernels' epilogue (same rounding as silu_mul after the plain product). An int8 weight is read as
    int8 by both kernels; beyond them (prefill) it is dequantized for cuBLAS."""
    wt, _ = _operands(w)
    if x.is_contiguous() and wt.is_contiguous():
        if x.shape[0] == 1 and gemv_tiles(wt.shape[0], wt.shape[1], wt.element_size()) is not None:
            return gemv(x, w, swiglu=swiglu)
        if 2 <= x.shape[0] <= GEMM_ROWS:
            # Gated in the epilogue at 17-32 rows only: at BLOCK_M 16 that kernel streamed slower
            # (docs/BENCHMARKS.md), and at BLOCK_M 64 it rounds its products differently on the GPU.
            gate_after = swiglu and block_m(x.shape[0]) != 32
            y = gemm_rows(x, w, swiglu and not gate_after)
            if y is not None:
                return silu_mul(y) if gate_after else y
    y = torch.nn.functional.linear(x, w.dequantize(x.dtype) if isinstance(w, Int8Weight) else w)
    return silu_mul(y) if swiglu else y
