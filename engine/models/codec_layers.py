"""Layers of the causal codec: Snake, causal (transposed) convolutions, the ConvNeXt block and the
window-limited causal transformer.

Parameter names mirror the published `codec.pth` (after weight-norm folding): a causal convolution
wraps its `nn.Conv1d` as `.conv`, Snake holds `.alpha [1, C, 1]`, a transformer has `layers.i.*` and
`norm`. Each layer exposes what the streaming decoder (`engine/vocoder.py`) needs to carry its state:
the left context of a convolution, the trimmed overlap of a transposed convolution, and the windowed
KV cache of a transformer (`WindowCache`), which the one-shot path uses too, so both paths run the
same arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from engine.models.layers import FeedForward, RMSNorm  # same SwiGLU and float32 RMSNorm as the ARs


class Snake1d(nn.Module):
    """x + sin²(αx) / (α + 1e-9), α per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class CausalConv1d(nn.Module):
    """Conv1d padded on the left only, so output t sees inputs ≤ t·stride; the right is padded just
    enough to complete the last stride. `weight_norm` marks convs the checkpoint stores weight-normed."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, weight_norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride,
                              dilation=dilation, groups=groups)
        self.stride = stride
        self.left_pad = (kernel_size - 1) * dilation + 1 - stride
        self.weight_norm = weight_norm
        assert self.left_pad >= 0, "a causal conv needs kernel span ≥ stride"

    def forward(self, x: Tensor) -> Tensor:
        right_pad = (-x.shape[-1]) % self.stride
        return self.conv(F.pad(x, (self.left_pad, right_pad)))

    def step(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Stride-1 streaming: `context` [B, C_in, left_pad] holds the previous inputs (zeros at
        the start, like the one-shot padding). Returns (output, next context)."""
        assert self.stride == 1, "only stride-1 convs are streamed (the decoder has no others)"
        if self.left_pad == 0:
            return self.conv(x), context
        full = torch.cat([context, x], dim=-1)
        return self.conv(full), full[..., full.shape[-1] - self.left_pad:]


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d whose `kernel - stride` trailing samples are trimmed: the output of input
    frame t lands on samples t·s .. t·s+k-1, so the trimmed tail belongs to the next frame."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 weight_norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride)
        self.stride = stride
        self.trim = kernel_size - stride
        self.weight_norm = weight_norm
        assert self.trim >= 0, "a causal transposed conv needs kernel ≥ stride"
        # previous input frames whose kernel tail reaches the current frame's samples
        self.context_frames = -(-self.trim // stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y[..., : y.shape[-1] - self.trim]

    def step(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Streaming: `context` [B, C_in, context_frames] holds the previous input frames (zeros at the
        start: a zero frame adds nothing, the bias is added once per output sample either way)."""
        if self.context_frames == 0:
            return self.conv(x), context
        full = torch.cat([context, x], dim=-1)
        y = self.conv(full)  # [B, C_out, (P+n-1)·s + k]
        start = self.context_frames * self.stride
        out = y[..., start: start + x.shape[-1] * self.stride]
        return out, full[..., full.shape[-1] - self.context_frames:]


class ConvNeXtBlock(nn.Module):
    """Causal depthwise conv k7 → LayerNorm → Linear C→4C → exact GELU → Linear 4C→C → ×gamma,
    added to the input."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, kernel_size, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def pointwise(self, y: Tensor) -> Tensor:
        """Everything after the depthwise conv, per time step. y [B, C, T] -> [B, C, T]."""
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y.transpose(1, 2)))))
        return (self.gamma * y).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pointwise(self.dwconv(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-2) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def rope_cos_sin(positions: Tensor, head_dim: int, base: float) -> Tensor:
    """[T, head_dim/2, 2] (cos, sin) for absolute positions, rounded to bfloat16 as upstream's tables
    are, returned as float32 because the rotation itself is done in float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    return torch.stack([angles.cos(), angles.sin()], dim=-1).to(torch.bfloat16).float()


def apply_rope_cos_sin(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]). x [B, T, H, D]; rope [T, D/2, 2] shared by the
    rows, or [B, T, D/2, 2] per row (streams at different positions, `engine/batched_vocoder.py`)."""
    xf = x.float().unflatten(-1, (-1, 2))  # [B, T, H, D/2, 2]
    rope = rope if rope.ndim == 4 else rope[None]
    cos, sin = rope[:, :, None, :, 0], rope[:, :, None, :, 1]
    x0, x1 = xf[..., 0], xf[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2).type_as(x)


def window_mask(pos: int | Tensor, num_new: int, window: int, device: torch.device) -> Tensor:
    """[num_new, window-1+num_new] bool over (past keys, new keys), the past holding the window-1
    positions before `pos` (zeros where they would fall before 0). Query j at pos+j sees positions
    pos+j-window+1 .. pos+j that exist. Per-row positions `pos` [B, 1, 1] give [B, num_new, …]."""
    past = window - 1
    q = torch.arange(num_new, device=device)[:, None] + pos
    k = torch.arange(past + num_new, device=device)[None, :] + (pos - past)
    return (k >= 0) & (k <= q) & (k > q - window)


# cuDNN attention builds a graph per new shape (milliseconds of host time each); the other kernels
# take the boolean window mask directly
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class WindowCache:
    """Per-layer keys/values [B, H, window-1, D] of the positions before `pos` (zeros before 0),
    fixed in size so every step has the same shapes."""

    pos: int = 0
    keys: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)


class CodecAttention(nn.Module):
    def __init__(self, dim: int, n_head: int, head_dim: int) -> None:
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.wqkv = nn.Linear(dim, 3 * n_head * head_dim, bias=False)
        self.wo = nn.Linear(n_head * head_dim, dim, bias=False)

    def forward(self, x: Tensor, rope: Tensor, mask: Tensor, past_k: Tensor | None,
                past_v: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, dim]; past k/v [B, H, P, D] or None. Returns (output, all keys, all values)."""
        q, k, v = self.wqkv(x).unflatten(-1, (3, self.n_head, self.head_dim)).unbind(2)  # [B, T, H, D]
        q, k = apply_rope_cos_sin(q, rope), apply_rope_cos_sin(k, rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        if past_k is not None:
            assert past_v is not None  # keys and values are cached together
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        with sdpa_kernel(_SDPA_BACKENDS):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).flatten(-2)), k, v


class TransformerLayer(nn.Module):
    """h = x + γ_attn·attn(norm(x)); out = h + γ_ffn·swiglu(norm(h))."""

    def __init__(self, dim: int, n_head: int, head_dim: int, ffn_dim: int, eps: float) -> None:
        super().__init__()
        self.attention = CodecAttention(dim, n_head, head_dim)
        self.feed_forward = FeedForward(dim, ffn_dim)
        self.attention_norm = RMSNorm(dim, eps)
        self.ffn_norm = RMSNorm(dim, eps)
        self.attention_layer_scale = LayerScale(dim)
        self.ffn_layer_scale = LayerScale(dim)

    def forward(self, x: Tensor, rope: Tensor, mask: Tensor, past_k: Tensor | None,
                past_v: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        a, k, v = self.attention(self.attention_norm(x), rope, mask, past_k, past_v)
        h = x + self.attention_layer_scale(a)
        return h + self.ffn_layer_scale(self.feed_forward(self.ffn_norm(h))), k, v


class WindowedTransformer(nn.Module):
    """Causal transformer on channels-first input where query i attends to keys i-window+1 .. i.
    Positions count from 0 at each one-shot call (as upstream numbers them); a carried `WindowCache`
    keeps counting, so streaming reproduces the one-shot result."""

    def __init__(self, dim: int, n_layer: int, n_head: int, head_dim: int, ffn_dim: int,
                 window: int, rope_base: float, eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(dim, n_head, head_dim, ffn_dim, eps) for _ in range(n_layer))
        self.norm = RMSNorm(dim, eps)
        self.window, self.head_dim, self.rope_base = window, head_dim, rope_base
        # one-shot input is fed in chunks so attention memory stays O(T·window), not O(T²)
        self.chunk_size = max(window, 256)

    def new_cache(self) -> WindowCache:
        return WindowCache(0, [None] * len(self.layers), [None] * len(self.layers))

    def step(self, x: Tensor, cache: WindowCache) -> Tensor:
        """x [B, C, T] at positions cache.pos .. cache.pos+T-1 -> [B, C, T]; updates `cache`."""
        h = x.transpose(1, 2)  # [B, T, C]
        keep = self.window - 1  # keys the next position can still see
        if cache.keys[0] is None:
            n_head = cast(TransformerLayer, self.layers[0]).attention.n_head
            zeros = h.new_zeros(h.shape[0], n_head, keep, self.head_dim)
            cache.keys, cache.values = [zeros] * len(self.layers), [zeros] * len(self.layers)
        positions = torch.arange(cache.pos, cache.pos + h.shape[1], device=h.device)
        rope = rope_cos_sin(positions, self.head_dim, self.rope_base)
        mask = window_mask(cache.pos, h.shape[1], self.window, h.device)
        for i, layer in enumerate(self.layers):
            h, k, v = layer(h, rope, mask, cache.keys[i], cache.values[i])
            cache.keys[i], cache.values[i] = k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:]
        cache.pos += h.shape[1]
        return self.norm(h).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] == 0:
            return x
        cache = self.new_cache()
        chunks = x.split(self.chunk_size, dim=-1)
        return torch.cat([self.step(c, cache) for c in chunks], dim=-1)
