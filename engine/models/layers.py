"""Transformer building blocks shared by the slow and fast AR: RMSNorm, interleaved RoPE, SwiGLU, blocks.

Attention is split in two: a block computes q/k/v (norms and RoPE applied) and hands them to an
`Attend` callable that owns the KV cache and the attention kernel. The same weights thus serve the
plain reference loop (dense cache) and the serving engine (paged cache) without knowing either.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from engine.config import TransformerConfig

# Prompt lengths differ per request and cuDNN attention builds a new plan for every new shape (tens of
# milliseconds each): stay on the shape-agnostic kernels.
_SDPA_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]


class Attend(Protocol):
    """Stores k/v for `layer` and returns attention output [N, n_head, head_dim] for q."""

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the input dtype, then scaled by the weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # x * rsqrt(mean(x^2) + eps) in float32 (one fused kernel where the backend has it)
        xf = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return xf.type_as(x) * self.weight


def rope_table(max_positions: int, head_dim: int, base: float, device: torch.device | None = None
               ) -> Tensor:
    """Rotations [max_positions, head_dim/2] as complex64 whose cos/sin are rounded to bfloat16, as the
    model was trained (fp32 tables give garbled audio)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(max_positions, device=device).float(), inv_freq)
    cos, sin = angles.cos().bfloat16().float(), angles.sin().bfloat16().float()
    return torch.complex(cos, sin)


def apply_rope_complex(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) as complex numbers, in float32.

    x [N, H, D]; rope [N, D/2] complex (each row's position)."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # [N, H, D/2]
    return torch.view_as_real(xc * rope[:, None, :]).flatten(-2).type_as(x)


class Attention(nn.Module):
    """Fused-qkv GQA attention; q/k RMSNorm (slow AR only) is applied before RoPE."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wqkv = nn.Linear(cfg.dim, cfg.q_size + 2 * cfg.kv_size, bias=False)
        self.wo = nn.Linear(cfg.q_size, cfg.dim, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, attend: Attend, layer: int) -> Tensor:
        c = self.cfg
        q, k, v = self.wqkv(x).split([c.q_size, c.kv_size, c.kv_size], dim=-1)
        q = q.unflatten(-1, (c.n_head, c.head_dim))  # [N, H, D]
        k = k.unflatten(-1, (c.n_local_heads, c.head_dim))  # [N, KVH, D]
        v = v.unflatten(-1, (c.n_local_heads, c.head_dim))
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope_complex(q, rope), apply_rope_complex(k, rope)
        out = attend(layer, q, k, v)  # [N, H, D]
        return self.wo(out.flatten(-2))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg.dim, cfg.intermediate_size)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, attend: Attend, layer: int) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, attend, layer)
        return h + self.feed_forward(self.ffn_norm(h))


def run_layers(layers: nn.ModuleList, norm: RMSNorm, x: Tensor, rope: Tensor, attend: Attend) -> Tensor:
    """x [N, dim] through every block, then the final norm. rope [N, D/2, 2] holds each row's position."""
    for i, block in enumerate(layers):
        x = block(x, rope, attend, i)
    return norm(x)


def sdpa_gqa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Reference attention. q [Nq, H, D], k/v [Nk, KVH, D], mask [Nq, Nk] bool -> [Nq, H, D]."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # query head h reads kv head h // groups
    v = v.repeat_interleave(groups, dim=1)
    with sdpa_kernel(_SDPA_BACKENDS):
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                             attn_mask=mask)
    return out.transpose(0, 1)
