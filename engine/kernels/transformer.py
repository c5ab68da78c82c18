"""Fused Triton kernels for the transformer hot path on CUDA.

Each kernel computes what a chain of plain torch ops in `models/layers.py` computes, with the same
rounding points (bf16 after each op that rounds in the reference), so a layer needs ~10 kernels
instead of ~45: at decode batch sizes the time goes to kernel count, not arithmetic.

    add_rmsnorm    h = x + delta [* layer scale] (stored), out = RMSNorm(h) * weight
    qk_rope_write  q/k RMSNorm (slow AR), interleaved RoPE, q out, k/v stored at pool slots
    rope_write_attend  the same without norms, and the attention over the row's own cache window (fast AR)
    silu_mul       SwiGLU gate on the fused w1|w3 projection (rows interleaved in pairs)
    frame_embed    the slow AR's input for a decode frame from (slow column, 10 codes)
    embed_rows     the fast AR's input embedding of the code just drawn

The projections of decode batch sizes live in linear.py, the sampling kernel in sampling.py.

Tested against the torch modules (tests/test_kernels.py; on CPU through TRITON_INTERPRET=1).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from engine.kernels.launch import INTERPRET, LAUNCH, after_previous

# a product then a sum, each rounded as torch rounds them (no fused multiply-add); Triton's
# interpreter takes no compile options
NO_FMA = {} if INTERPRET else {"enable_fp_fusion": False}


@triton.jit
def _add_rmsnorm_kernel(x_ptr, d_ptr, s_ptr, h_ptr, out_ptr, w_ptr, dim, eps, HAS_DELTA: tl.constexpr,
                        HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    after_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    x = tl.load(x_ptr + row * dim + cols, mask=mask, other=0.0)
    if HAS_DELTA:
        d = tl.load(d_ptr + row * dim + cols, mask=mask, other=0.0)
        if HAS_SCALE:  # a layer scale, rounded as the module's delta * gamma
            d = (d.to(tl.float32) * tl.load(s_ptr + cols, mask=mask, other=0.0).to(tl.float32)).to(d.dtype)
        x = (x.to(tl.float32) + d.to(tl.float32)).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + row * dim + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / dim + eps)
    normed = (xf * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * dim + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm(x: Tensor, delta: Tensor | None, weight: Tensor, eps: float,
                scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(h, RMSNorm(h) * weight) with h = x + delta, or x + delta * scale [dim] (a layer scale); h is x
    when delta is None. x/delta [N, dim]."""
    n, dim = x.shape
    out = torch.empty_like(x)
    h = x if delta is None else torch.empty_like(x)
    if n:
        _add_rmsnorm_kernel[(n,)](x, x if delta is None else delta, weight if scale is None else scale, h, out,
                                  weight, dim, eps, HAS_DELTA=delta is not None, HAS_SCALE=scale is not None,
                                  BLOCK=triton.next_power_of_2(dim), **(NO_FMA if scale is not None else {}),
                                  num_warps=8 if dim >= 2048 else 4,  # pyright: ignore[reportCallIssue]
                                  **LAUNCH)
    return h, out


@triton.jit
def _rotate(even, odd, cos, sin, dt: tl.constexpr):
    """Interleaved RoPE on the (even, odd) halves of a head, in float32, each result rounded to dt."""
    return (even * cos - odd * sin).to(dt), (even * sin + odd * cos).to(dt)


@triton.jit
def _qk_rope_write_kernel(qkv_ptr, qw_ptr, kw_ptr, rope_ptr, pos_ptr, slot_ptr, q_ptr, k_pool, v_pool,
                          eps, n_head, n_kv,
                          QK_NORM: tl.constexpr, HALF: tl.constexpr, PDL: tl.constexpr):
    after_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    dim: tl.constexpr = 2 * HALF
    i = tl.arange(0, HALF)
    stride = (n_head + 2 * n_kv) * dim
    is_q = head < n_head
    # q heads then k heads are contiguous in the fused projection: head j starts at j * dim.
    src = qkv_ptr + row * stride + head * dim
    even = tl.load(src + 2 * i).to(tl.float32)
    odd = tl.load(src + 2 * i + 1).to(tl.float32)
    dt = q_ptr.dtype.element_ty
    if QK_NORM:
        rstd = 1.0 / tl.sqrt((tl.sum(even * even, axis=0) + tl.sum(odd * odd, axis=0)) / dim + eps)
        w_even = tl.where(is_q, tl.load(qw_ptr + 2 * i), tl.load(kw_ptr + 2 * i)).to(tl.float32)
        w_odd = tl.where(is_q, tl.load(qw_ptr + 2 * i + 1), tl.load(kw_ptr + 2 * i + 1)).to(tl.float32)
        even = ((even * rstd).to(dt).to(tl.float32) * w_even).to(dt).to(tl.float32)
        odd = ((odd * rstd).to(dt).to(tl.float32) * w_odd).to(dt).to(tl.float32)
    pos = tl.load(pos_ptr + row)
    cos = tl.load(rope_ptr + pos * dim + 2 * i)
    sin = tl.load(rope_ptr + pos * dim + 2 * i + 1)
    re, im = _rotate(even, odd, cos, sin, dt)
    if head < n_head:
        q_dst = q_ptr + (row * n_head + head) * dim
        tl.store(q_dst + 2 * i, re)
        tl.store(q_dst + 2 * i + 1, im)
    else:
        kvh = head - n_head
        slot = tl.load(slot_ptr + row)
        k_dst = k_pool + (slot * n_kv + kvh) * dim
        tl.store(k_dst + 2 * i, re)
        tl.store(k_dst + 2 * i + 1, im)
        d = tl.arange(0, dim)
        v = tl.load(qkv_ptr + row * stride + (n_head + n_kv + kvh) * dim + d)
        tl.store(v_pool + (slot * n_kv + kvh) * dim + d, v)


def qk_rope_write(qkv: Tensor, q_norm: Tensor | None, k_norm: Tensor | None, eps: float, rope: Tensor,
                  positions: Tensor, slots: Tensor, k_pool: Tensor, v_pool: Tensor, n_head: int,
                  n_kv: int) -> Tensor:
    """Split the fused projection qkv [N, (H + 2 KVH) D]: q/k RMSNorm (when weights are given), RoPE
    at `positions` [N] (rope: [P, D/2, 2] float32 cos/sin), k/v stored at flat pool `slots` [N]
    (pools viewed as [slots, KVH, D]). Returns q [N, H, D]."""
    n = qkv.shape[0]
    dim = qkv.shape[1] // (n_head + 2 * n_kv)
    q = torch.empty((n, n_head, dim), dtype=qkv.dtype, device=qkv.device)
    if n:
        norm = q_norm is not None
        _qk_rope_write_kernel[(n, n_head + n_kv)](
            qkv, q_norm if norm else qkv, k_norm if norm else qkv, rope, positions, slots, q, k_pool, v_pool,
            eps, n_head, n_kv, QK_NORM=norm, HALF=dim // 2,
            num_warps=1 if dim <= 64 else 2, **LAUNCH)  # pyright: ignore[reportCallIssue]  # launch option
    return q


@triton.jit
def _rope_write_attend_kernel(qkv_ptr, rope_ptr, pos_ptr, slot_ptr, k_pool, v_pool, out_ptr, scale, n_head, n_kv,
                              GROUPS: tl.constexpr, HALF: tl.constexpr, WINDOW: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    dim: tl.constexpr = 2 * HALF
    i = tl.arange(0, HALF)
    d = tl.arange(0, dim)
    t = tl.arange(0, WINDOW)
    pos = tl.load(pos_ptr + row)
    slot = tl.load(slot_ptr + row)
    # The window's earlier entries were stored kernels ago: loaded before waiting for the projection.
    at = ((slot - pos + t) * n_kv + kvh)[:, None] * dim
    old = (t < pos)[:, None]
    k_even = tl.load(k_pool + at + 2 * i[None, :], mask=old, other=0.0).to(tl.float32)
    k_odd = tl.load(k_pool + at + 2 * i[None, :] + 1, mask=old, other=0.0).to(tl.float32)
    v = tl.load(v_pool + at + d[None, :], mask=old, other=0.0).to(tl.float32)
    cos = tl.load(rope_ptr + pos * dim + 2 * i)
    sin = tl.load(rope_ptr + pos * dim + 2 * i + 1)
    after_previous(PDL)
    src = qkv_ptr + row * (n_head + 2 * n_kv) * dim
    dt = out_ptr.dtype.element_ty
    even = tl.load(src + (n_head + kvh) * dim + 2 * i).to(tl.float32)
    odd = tl.load(src + (n_head + kvh) * dim + 2 * i + 1).to(tl.float32)
    k_re, k_im = _rotate(even, odd, cos, sin, dt)
    new_v = tl.load(src + (n_head + n_kv + kvh) * dim + d)
    dst = (slot * n_kv + kvh) * dim
    tl.store(k_pool + dst + 2 * i, k_re)
    tl.store(k_pool + dst + 2 * i + 1, k_im)
    tl.store(v_pool + dst + d, new_v)
    heads = kvh * GROUPS + tl.arange(0, GROUPS)
    even = tl.load(src + heads[:, None] * dim + 2 * i[None, :]).to(tl.float32)
    odd = tl.load(src + heads[:, None] * dim + 2 * i[None, :] + 1).to(tl.float32)
    q_re, q_im = _rotate(even, odd, cos[None, :], sin[None, :], dt)
    q_re, q_im = q_re.to(tl.float32), q_im.to(tl.float32)
    now = (t == pos)[:, None]
    k_even = tl.where(now, k_re.to(tl.float32)[None, :], k_even)
    k_odd = tl.where(now, k_im.to(tl.float32)[None, :], k_odd)
    v = tl.where(now, new_v.to(tl.float32)[None, :], v)
    logits = (tl.sum(q_re[:, None, :] * k_even[None, :, :], axis=2)
              + tl.sum(q_im[:, None, :] * k_odd[None, :, :], axis=2))
    logits = tl.where((t <= pos)[None, :], logits * scale, float("-inf"))  # [GROUPS, WINDOW]
    # Triton's stubs type tl.max and tl.sum results as non-tensors
    p = tl.exp(logits - tl.max(logits, axis=1)[:, None])  # pyright: ignore[reportCallIssue, reportArgumentType]
    out = (tl.sum(p[:, :, None] * v[None, :, :], axis=1)
           / tl.sum(p, axis=1)[:, None])  # pyright: ignore[reportArgumentType]
    tl.store(out_ptr + (row * n_head + heads)[:, None] * dim + d[None, :], out.to(dt))


def rope_write_attend(qkv: Tensor, rope: Tensor, positions: Tensor, slots: Tensor, k_pool: Tensor, v_pool: Tensor,
                      n_head: int, n_kv: int, window: int) -> Tensor:
    """qk_rope_write (without q/k norm) and the attention after it in one kernel, for caches where each
    row owns a window of `window` consecutive slots holding its positions 0.. (the fast AR): the row
    stores its k/v at `slots` and attends to its window's first positions[row] + 1 entries. One
    program per (row, kv head) does the group's query heads; scores and weights in float32.
    Returns the attention output [N, H, D]."""
    n = qkv.shape[0]
    dim = qkv.shape[1] // (n_head + 2 * n_kv)
    out = torch.empty((n, n_head, dim), dtype=qkv.dtype, device=qkv.device)
    if n:
        _rope_write_attend_kernel[(n, n_kv)](qkv, rope, positions, slots, k_pool, v_pool, out, dim ** -0.5,
                                             n_head, n_kv, GROUPS=n_head // n_kv, HALF=dim // 2, WINDOW=window,
                                             num_warps=4, **LAUNCH)  # pyright: ignore[reportCallIssue]  # launch option
    return out


@triton.jit
def silu_times(g, u, dt: tl.constexpr):
    """silu(g) * u with the module path's rounding: g and u in dt, silu rounded to dt, product in dt."""
    g = g.to(dt).to(tl.float32)
    gate = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
    return (gate * u.to(dt).to(tl.float32)).to(dt)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, hidden, BLOCK: tl.constexpr, PDL: tl.constexpr):
    after_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    two = tl.arange(0, 2)
    gu = tl.load(gu_ptr + row * 2 * hidden + (2 * cols)[:, None] + two[None, :], mask=mask[:, None], other=0.0)
    g, u = tl.split(gu)  # one contiguous [BLOCK, 2] load: faster than two strided ones
    tl.store(out_ptr + row * hidden + cols, silu_times(g, u, out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gu: Tensor) -> Tensor:
    """gu [N, 2F] with (w1 x, w3 x) interleaved per column pair (fused_stack.fuse_gate_up) ->
    silu(w1 x) * w3 x [N, F]."""
    n, two_f = gu.shape
    hidden = two_f // 2
    out = torch.empty((n, hidden), dtype=gu.dtype, device=gu.device)
    block = min(1024, triton.next_power_of_2(hidden))
    if n:
        _silu_mul_kernel[(n, triton.cdiv(hidden, block))](
            gu, out, hidden, BLOCK=block, num_warps=4, **LAUNCH)  # pyright: ignore[reportCallIssue]  # launch option
    return out


@triton.jit
def _frame_embed_kernel(grid_ptr, grid_stride, tok_emb, cb_emb, out_ptr, dim, scale,
                        sem_start, codebook_size, eos_id,
                        NUM_CODEBOOKS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    after_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < dim
    col = tl.load(grid_ptr + row * grid_stride)
    is_audio = col < codebook_size
    token = tl.where(is_audio, col + sem_start, eos_id)
    x = tl.load(tok_emb + token * dim + cols, mask=mask, other=0.0)
    acc = tl.zeros((BLOCK,), tl.float32)
    for k in tl.static_range(NUM_CODEBOOKS):  # pyright: ignore[reportGeneralTypeIssues]  # static_range stub
        code = tl.load(grid_ptr + row * grid_stride + 1 + k)
        acc += tl.load(cb_emb + (k * codebook_size + code) * dim + cols, mask=mask,
                       other=0.0).to(tl.float32)
    dt = out_ptr.dtype.element_ty
    audio = ((x.to(tl.float32) + acc.to(dt).to(tl.float32)).to(dt).to(tl.float32) / scale).to(dt)
    tl.store(out_ptr + row * dim + cols, tl.where(is_audio, audio, x), mask=mask)


def frame_embed(frame: Tensor, tok_emb: Tensor, cb_emb: Tensor, sem_start: int, codebook_size: int,
                eos_id: int) -> Tensor:
    """frame [B, 11] (restricted slow column: k < codebook_size is a semantic token, codebook_size is
    end of speech; then the 10 codes) -> the slow AR's input embeddings [B, dim], as DualAR.embed."""
    batch, cols = frame.shape
    dim = tok_emb.shape[1]
    out = torch.empty((batch, dim), dtype=tok_emb.dtype, device=tok_emb.device)
    block = min(1024, triton.next_power_of_2(dim))
    _frame_embed_kernel[(batch, triton.cdiv(dim, block))](
        frame, frame.stride(0), tok_emb, cb_emb, out, dim, math.sqrt(cols), sem_start, codebook_size, eos_id,
        NUM_CODEBOOKS=cols - 1, BLOCK=block, num_warps=4, **LAUNCH)  # pyright: ignore[reportCallIssue]  # launch option
    return out


@triton.jit
def _embed_rows_kernel(ids_ptr, ids_stride, w_ptr, out_ptr, dim, BLOCK: tl.constexpr, PDL: tl.constexpr):
    after_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < dim
    token = tl.load(ids_ptr + row * ids_stride)
    tl.store(out_ptr + row * dim + cols, tl.load(w_ptr + token * dim + cols, mask=mask), mask=mask)


def embed_rows(ids: Tensor, weight: Tensor) -> Tensor:
    """F.embedding of ids [B] (any stride, e.g. a column of the frame's output) -> [B, dim]; in the
    frame's chain of dependent launches (the torch gather was slower, 9 calls a frame)."""
    batch, dim = ids.shape[0], weight.shape[1]
    out = torch.empty((batch, dim), dtype=weight.dtype, device=weight.device)
    block = min(1024, triton.next_power_of_2(dim))
    if batch:
        _embed_rows_kernel[(batch, triton.cdiv(dim, block))](
            ids, ids.stride(0), weight, out, dim, BLOCK=block,
            num_warps=4, **LAUNCH)  # pyright: ignore[reportCallIssue]  # launch option
    return out
