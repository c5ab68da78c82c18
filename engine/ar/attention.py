"""Attention over the paged KV pool: writes, prefill (varlen, gathered) and batched decode.

Pool layout per layer: [num_blocks, block_size, kv_heads, head_dim]. A sequence's token at position p
lives at block_table[p // block_size], offset p % block_size. The torch paths here are the plain
reference; on CUDA the decode path is served by the Triton kernel in `triton_attention.py`, which is
tested against `paged_decode_reference`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.bias import causal_lower_right


def write_kv(k_pool: Tensor, v_pool: Tensor, slot_mapping: Tensor, k: Tensor, v: Tensor) -> None:
    """Store k/v [N, KVH, D] at flat pool slots [N] (block * block_size + offset).

    A direct index_put_ on the pool tensor, the form torch.compile keeps in place."""
    block_size = k_pool.shape[1]
    blocks, offsets = slot_mapping // block_size, slot_mapping % block_size
    k_pool[blocks, offsets] = k
    v_pool[blocks, offsets] = v


def gather_seq(pool: Tensor, block_table: Tensor, length: int) -> Tensor:
    """The first `length` tokens of one sequence: [length, KVH, D]."""
    blocks = pool[block_table[: -(-length // pool.shape[1])]]
    return blocks.flatten(0, 1)[:length]


@dataclass
class PrefillSegment:
    start: int  # position of the segment's first token in its sequence
    num_tokens: int
    block_table: Tensor  # [num_blocks] int64 on device


def prefill_attention(q: Tensor, k_pool: Tensor, v_pool: Tensor, segments: list[PrefillSegment]
                      ) -> Tensor:
    """Packed q [N, H, D] of several sequences' new tokens -> outputs [N, H, D].

    Each segment attends causally to its cached prefix plus its own tokens (already written).
    """
    outs, offset = [], 0
    for seg in segments:
        outs.append(_segment_attention(q[offset:offset + seg.num_tokens], k_pool, v_pool, seg))
        offset += seg.num_tokens
    return torch.cat(outs)


def _segment_attention(q: Tensor, k_pool: Tensor, v_pool: Tensor, seg: PrefillSegment) -> Tensor:
    total = seg.start + seg.num_tokens
    k = gather_seq(k_pool, seg.block_table, total)
    v = gather_seq(v_pool, seg.block_table, total)
    # Causal with the queries aligned to the last keys, as a bias rather than a mask tensor: SDPA then
    # picks its fused kernels on a GPU (a boolean mask sent the CUDA prefill to fp32 math kernels), and
    # on the CPU it gives the masked result bit for bit.
    groups = q.shape[1] // k.shape[1]
    q4, k4, v4 = (t.transpose(0, 1)[None] for t in (q, k.repeat_interleave(groups, dim=1),
                                                     v.repeat_interleave(groups, dim=1)))
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=causal_lower_right(seg.num_tokens, total))
    return out[0].transpose(0, 1)


def paged_decode_reference(q: Tensor, k_pool: Tensor, v_pool: Tensor, block_tables: Tensor,
                           context_lens: Tensor) -> Tensor:
    """One query token per sequence. q [B, H, D], block_tables [B, M], context_lens [B] -> [B, H, D]."""
    _batch, heads, _dim = q.shape
    kv_heads = k_pool.shape[2]
    k = k_pool[block_tables].flatten(1, 2)  # [B, M*bs, KVH, D]
    v = v_pool[block_tables].flatten(1, 2)
    mask = torch.arange(k.shape[1], device=q.device)[None, :] < context_lens[:, None]  # [B, L]
    groups = heads // kv_heads
    k = k.repeat_interleave(groups, dim=2).transpose(1, 2)  # [B, H, L, D]
    v = v.repeat_interleave(groups, dim=2).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask[:, None, None])
    return out[:, :, 0]


def dense_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """One query per row over all of that row's keys: q [B, H, D], k/v [B, L, KVH, D] -> [B, H, D]."""
    groups = q.shape[1] // k.shape[2]
    k = k.repeat_interleave(groups, dim=2).transpose(1, 2)  # [B, H, L, D]
    v = v.repeat_interleave(groups, dim=2).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k, v)
    return out[:, :, 0]
