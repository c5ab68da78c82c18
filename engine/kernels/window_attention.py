"""The codec transformer's sliding-window attention for streams in vocoder rows, read in place (Triton).

`engine/vocoder/rows.py` keeps each stream's keys and values of its last window-1 positions in the
stream's row of the packed state, in ring order: position p sits in entry p mod (window-1). Reading them
with a gathered copy of every pushed row, concatenating the new keys, attending and writing the
shifted window back moved each row's 8.3 MB of S2 Pro codec keys and values about six times a push.
Here one program per (row, head) takes its new queries, keys and values straight from the qkv
projection's output, applies RoPE to them (ten torch kernels a layer before), reads its row's ring
where it lies, attends the new queries to it and to the new keys (causal), then stores the new keys
and values over the entries of the positions that left the window. Float32 throughout, like the
module path (IEEE products). Tested against the module path's attention
(tests/test_window_attention.py; on CPU through TRITON_INTERPRET=1) and, through the fused pushes,
against the module path's decode (tests/test_codec_kernels.py).
"""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor


def window_tiles(rows: int) -> tuple[int, int]:
    """(ring entries per step of the online softmax, warps) for a push of `rows` = B·n new positions:
    the fastest of those measured at the S2 Pro codec's shapes (docs/BENCHMARKS.md)."""
    return (32, 2) if rows > 64 else (64, 4)


@triton.jit
def _softmax_step(scores, visible, v, m, s, acc):
    """Fold one block of scores [N, E] (where visible) and values [E, D] into the running (m, s, acc).
    Every row has seen at least one visible key before (its own), so m is finite."""
    scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, axis=1))
    p = tl.exp(scores - m_new[:, None])
    alpha = tl.exp(m - m_new)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    return m_new, s * alpha + tl.sum(p, axis=1), acc


@triton.jit
def _rotate(x, cos, sin, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """RoPE of interleaved pairs (x[2i], x[2i+1]) as codec_layers.apply_rope_cos_sin: x [N, D], cos/sin [N, D/2]."""
    even, odd = tl.split(tl.reshape(x, (BLOCK_N, D // 2, 2)))
    return tl.reshape(tl.join(even * cos - odd * sin, odd * cos + even * sin), (BLOCK_N, D))


@triton.jit
def _window_attention_kernel(qkv_ptr, rope_ptr, out_ptr, state_ptr, rows_ptr, pos_ptr, num_new, row_stride,
                             layer_start, scale, HEADS: tl.constexpr, RING: tl.constexpr, D: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr):
    """qkv [B, n, 3, HEADS, D] before RoPE; rope [B, n, D/2, 2]; out [B, n, HEADS, D]; the row's ring
    at state[row, layer_start:] as [2, HEADS, RING, D]."""
    b = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    row = tl.load(rows_ptr + b)
    p0 = tl.load(pos_ptr + b)  # position of the first new query
    j = tl.arange(0, BLOCK_N)
    d = tl.arange(0, D)
    new = j < num_new
    token = b * num_new + j
    at = (token * 3 * HEADS + head)[:, None] * D + d[None, :]  # q of (b, j, head); k and v follow
    half = (token * D)[:, None] + 2 * tl.arange(0, D // 2)[None, :]  # [N, D/2] (cos, sin) pairs
    cos = tl.load(rope_ptr + half, mask=new[:, None], other=1.0)
    sin = tl.load(rope_ptr + half + 1, mask=new[:, None], other=0.0)
    q = _rotate(tl.load(qkv_ptr + at, mask=new[:, None], other=0.0), cos, sin, BLOCK_N, D) * scale
    k_new = _rotate(tl.load(qkv_ptr + at + HEADS * D, mask=new[:, None], other=0.0), cos, sin, BLOCK_N, D)
    v_new = tl.load(qkv_ptr + at + 2 * HEADS * D, mask=new[:, None], other=0.0)
    # the new keys first: each query sees itself, so the running maximum is finite from here on
    scores = tl.dot(q, tl.trans(k_new), input_precision="ieee")  # [N, N]
    visible = (j[None, :] <= j[:, None]) & (j[None, :] >= j[:, None] - RING) & new[None, :]
    visible |= ~new[:, None]  # padding rows (never stored) see something too: no 0/0
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    m, s, acc = _softmax_step(scores, visible, v_new, m, tl.zeros((BLOCK_N,), tl.float32),
                              tl.zeros((BLOCK_N, D), tl.float32))
    ring_k = state_ptr + row * row_stride + layer_start + head * RING * D
    ring_v = ring_k + HEADS * RING * D
    oldest = p0 % RING  # the entry of position p0 - RING
    for e0 in range(0, RING, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        in_ring = e < RING
        k = tl.load(ring_k + e[:, None] * D + d[None, :], mask=in_ring[:, None], other=0.0)
        v = tl.load(ring_v + e[:, None] * D + d[None, :], mask=in_ring[:, None], other=0.0)
        k_pos = p0 - RING + (e - oldest + RING) % RING
        # keys before the stream's start (zeros, or an earlier stream's) and out of the window are hidden
        seen = (in_ring & (k_pos >= 0))[None, :] & (k_pos[None, :] >= (p0 + j)[:, None] - RING)
        m, s, acc = _softmax_step(tl.dot(q, tl.trans(k), input_precision="ieee"), seen, v, m, s, acc)
    tl.store(out_ptr + (token * HEADS + head)[:, None] * D + d[None, :], acc / s[:, None], mask=new[:, None])
    tl.debug_barrier()  # every read of the ring is done before the new keys overwrite it
    entry = ((p0 + j) % RING)[:, None] * D + d[None, :]
    kept = (new & (j >= num_new - RING))[:, None]  # more new positions than entries: the last RING
    tl.store(ring_k + entry, k_new, mask=kept)
    tl.store(ring_v + entry, v_new, mask=kept)


def window_attention(qkv: Tensor, rope: Tensor, state: Tensor, rows: Tensor, pos: Tensor, layer_start: int,
                     window: int, tiles: tuple[int, int] | None = None) -> Tensor:
    """qkv [B, n, 3, H, D] float32 (the projection's output, before RoPE) of the streams in `rows` [B]
    at positions pos[b] .. pos[b]+n-1, rope [B, n, D/2, 2] their (cos, sin) -> attention output
    [B, n, H, D]. RoPE is applied to q and k here. Query pos[b]+j sees the keys of positions
    pos[b]+j-window+1 .. pos[b]+j from 0 on: the earlier ones from the ring at
    state[rows[b], layer_start:] ([2, H, window-1, D], ring order), which then takes k and v.
    tiles: (BLOCK_E, warps), by default `window_tiles`."""
    batch, num_new, _, heads, dim = qkv.shape
    block_e, warps = tiles or window_tiles(batch * num_new)
    ring = window - 1
    out = qkv.new_empty(batch, num_new, heads, dim)
    _window_attention_kernel[(batch, heads)](
        qkv.contiguous(), rope.contiguous(), out, state, rows, pos, num_new, state.stride(0),
        layer_start, dim ** -0.5, HEADS=heads, RING=ring, D=dim, BLOCK_N=max(16, triton.next_power_of_2(num_new)),
        BLOCK_E=block_e, num_warps=warps)  # pyright: ignore[reportCallIssue]  # launch options: not in Triton's stub
    return out
