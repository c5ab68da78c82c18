"""A transformer stack run with the fused kernels of kernels.py and projections.py (CUDA; the CPU path
is layers.py).

Per layer: add+norm, qkv matmul, q/k-norm+RoPE+KV store, attention, wo matmul, add+norm, [w1; w3]
matmul, SwiGLU, w2 matmul: ~10 kernels where the module-by-module path launches ~45. The residual add
of each sublayer is folded into the next norm. Weights are the model's own tensors: w1 and w3 are
re-pointed into one matrix with their rows interleaved (views, no extra memory), so the checkpoint layout
is unchanged.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from engine.config import TransformerConfig
from engine.kernels import linear, transformer
from engine.kernels.linear import Weight
from engine.models.int8 import Int8Linear, Int8Weight, projection_weight
from engine.models.layers import Block, FeedForward, RMSNorm


@dataclass
class _Layer:
    attn_norm: Tensor
    wqkv: Weight
    q_norm: Tensor | None
    k_norm: Tensor | None
    wo: Weight
    ffn_norm: Tensor
    w13: Weight
    w2: Weight


def _interleave(first: Tensor, second: Tensor) -> Tensor:
    """Re-point two parameters of the same shape [F, ...] into one [2F, ...] tensor whose rows alternate
    them, and return it; they become strided views of it (no extra memory). Already so: returned as is."""
    a, b = first.data, second.data
    rows, inner = a.shape[0], a[0].numel()
    same = a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    if same and a.stride(0) == 2 * inner and b.storage_offset() == a.storage_offset() + inner:
        return a.as_strided((2 * rows, *a.shape[1:]), (inner, *a.stride()[1:]))  # already fused
    both = torch.stack([a, b], dim=1).reshape(2 * rows, *a.shape[1:])
    first.data, second.data = both[0::2], both[1::2]
    return both


def fuse_gate_up(block: nn.Module) -> Tensor:
    """Re-point w1/w3 of a FeedForward into one [2F, dim] tensor whose rows alternate w1, w3 (row 2i is
    w1's row i, row 2i+1 is w3's) and return it: each tile of it holds matching gate and up rows, so
    the projection's epilogue applies the SwiGLU gate. w1/w3 become strided views (no extra memory)."""
    ff = cast(FeedForward, block.feed_forward)  # the ARs' and the codec's SwiGLU
    return _interleave(cast(nn.Parameter, ff.w1.weight), cast(nn.Parameter, ff.w3.weight))


def fuse_gate_up_weight(block: nn.Module) -> Weight:
    """fuse_gate_up for bf16 or int8 projections: int8 ones have their scales interleaved the same way."""
    ff = cast(FeedForward, block.feed_forward)
    if isinstance(ff.w1, Int8Linear) and isinstance(ff.w3, Int8Linear):
        return Int8Weight(_interleave(ff.w1.weight, ff.w3.weight), _interleave(ff.w1.scale, ff.w3.scale))
    return fuse_gate_up(block)


class FusedStack:
    """Runs `layers` + final `norm` on packed rows; the caller's `attend(layer, q)` reads the KV the
    stack has just stored (k_pools[layer] / v_pools[layer] at `slots`)."""

    def __init__(self, layers: nn.ModuleList, norm: RMSNorm, cfg: TransformerConfig, rope: Tensor) -> None:
        self.cfg = cfg
        self.final_norm = norm.weight
        self.rope = torch.view_as_real(rope).contiguous()  # [P, D/2, 2] float32 cos/sin
        self.layers: list[_Layer] = []
        for block in cast(Iterable[Block], layers):
            att = block.attention
            self.layers.append(_Layer(
                block.attention_norm.weight, projection_weight(att.wqkv),
                att.q_norm.weight if cfg.qk_norm else None, att.k_norm.weight if cfg.qk_norm else None,
                projection_weight(att.wo), block.ffn_norm.weight, fuse_gate_up_weight(block),
                projection_weight(block.feed_forward.w2)))

    def forward(self, x: Tensor, positions: Tensor, slots: Tensor, k_pools: list[Tensor], v_pools: list[Tensor],
                attend: Callable[[int, Tensor], Tensor] | None, window: int = 0) -> Tensor:
        """x [N, dim] at `positions` [N]; k/v go to flat `slots` [N] of each layer's pool.
        With `window` (no q/k norm), `attend` is not called: each row owns `window` consecutive slots
        holding its positions 0.., and its attention over them runs in the kernel that stores its k/v.
        Returns the post-final-norm hidden [N, dim]."""
        c = self.cfg
        eps = c.norm_eps
        h, delta = x, None
        for i, layer in enumerate(self.layers):
            h, n = transformer.add_rmsnorm(h, delta, layer.attn_norm, eps)
            qkv = linear.linear(n, layer.wqkv)
            if window:
                a = transformer.rope_write_attend(qkv, self.rope, positions, slots, k_pools[i], v_pools[i], c.n_head,
                                              c.n_local_heads, window)
            else:
                q = transformer.qk_rope_write(qkv, layer.q_norm, layer.k_norm, eps, self.rope, positions, slots,
                                              k_pools[i], v_pools[i], c.n_head, c.n_local_heads)
                assert attend is not None, "attend is required without a window"
                a = attend(i, q)
            delta = linear.linear(a.flatten(1), layer.wo)
            h, n = transformer.add_rmsnorm(h, delta, layer.ffn_norm, eps)
            delta = linear.linear(linear.linear(n, layer.w13, swiglu=True), layer.w2)
        return transformer.add_rmsnorm(h, delta, self.final_norm, eps)[1]
