"""Slot-batched streaming codec decode: one call decodes the next frames of any subset of streams.

With continuous batching, streams join and leave at different times and sit at different positions,
so lockstep batching (`StreamingDecoder` with B rows) does not apply. `RowVocoder` keeps the carried
decoder state of up to `max_rows` streams in fixed tensors indexed by row: `state [max_rows, S]`
packs, per row, the post-quantizer transformer's keys/values of its last `window - 1` positions per
layer (first, in ring order: position p in entry p mod (window-1)), every conv's left context and
every transposed conv's previous input frames; `positions [max_rows]` counts the frames each row's
stream has decoded. `push` gathers the listed rows' conv contexts, decodes them in one batched pass
(the layer walk of `engine/vocoder.py`) and scatters the contexts back; the transformer's keys are
gathered and scattered the same way on the module path, and read and advanced where they lie by
`engine/window_attention.py` on the fused one. Other rows are untouched. Shapes depend only on
(B, n) and nothing syncs with the host, so `push` can be captured in a CUDA graph per (B, n) with
static `rows` / `codes` buffers.

On CUDA (float32) the decoder part runs through the fused kernels of `engine/fused_decoder.py` (float16
products, float32 activations), whose convolutions keep their context in the same slices as [L, C_in]
rows (channels-last); the transformer (its attention in `engine/window_attention.py`) and the
upsampling blocks before it take the layer walk either way.

Exact per row: upstream numbers transformer positions from 0 within each stream and its RoPE tables
are bf16-rounded, so each row's RoPE is computed at its own positions; each row's attention mask hides
keys before its own stream start, which covers both the zero padding of a fresh stream and any keys a
previous stream left in the row.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.kernels.fused_stack import fuse_gate_up
from engine.kernels.transformer import add_rmsnorm, silu_mul
from engine.kernels.window_attention import window_attention
from engine.models.codec import Codec
from engine.models.codec_layers import (
    CausalConv1d,
    CausalConvTranspose1d,
    TransformerLayer,
    WindowedTransformer,
    rope_cos_sin,
    window_mask,
)
from engine.vocoder.fused_decoder import FusedDecoder
from engine.vocoder.stream_decode import STATEFUL, context_shape, decode_modules, stream_decode, stream_through


@dataclass(frozen=True)
class StateSlice:
    """Where one layer's per-row state sits in a row of the packed state."""

    start: int
    shape: tuple[int, ...]  # per row

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def view(self, rows: Tensor, base: int = 0) -> Tensor:
        """rows [B, S - base] (the state from column `base` on) -> this layer's state [B, *shape], a
        view (writes land in `rows`)."""
        start = self.start - base
        return rows[:, start:start + self.numel].view(rows.shape[0], *self.shape)


def _row_state_shape(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, WindowedTransformer):
        n_head = cast(TransformerLayer, module.layers[0]).attention.n_head
        return (len(module.layers), 2, n_head, module.window - 1, module.head_dim)  # (layer, k|v, …)
    return context_shape(cast("CausalConv1d | CausalConvTranspose1d", module))


def state_layout(codec: Codec) -> dict[nn.Module, StateSlice]:
    """One slice per stateful decode layer (empty ones too, so every layer takes the same path); the
    windowed transformer's come first (`RowVocoder` gathers only what follows them)."""
    modules = [m for top in decode_modules(codec) for m in top.modules() if isinstance(m, STATEFUL)]
    modules.sort(key=lambda m: not isinstance(m, WindowedTransformer))  # stable
    layout, start = {}, 0
    for module in modules:
        layout[module] = StateSlice(start, _row_state_shape(module))
        start += layout[module].numel
    return layout


def _row_rope(module: WindowedTransformer, pos: Tensor, num_new: int) -> Tensor:
    """[B, n, D/2, 2]: each row's RoPE at its own positions pos[b] .. pos[b]+n-1."""
    positions = pos[:, None] + torch.arange(num_new, device=pos.device)  # [B, n]
    return rope_cos_sin(positions.flatten(), module.head_dim, module.rope_base).unflatten(0, positions.shape)


def window_step(module: WindowedTransformer, x: Tensor, kv: Tensor, pos: Tensor) -> Tensor:
    """x [B, C, n] of streams at positions pos[b] .. pos[b]+n-1 -> [B, C, n]. `kv` [B, layers, 2, H,
    window-1, D] holds each row's keys/values of the window-1 positions before pos[b] in ring order
    (whatever lies before its stream start is masked) and is advanced in place."""
    h = x.transpose(1, 2)  # [B, n, C]
    num_new, ring = h.shape[1], module.window - 1
    rope = _row_rope(module, pos, num_new)
    mask = window_mask(pos[:, None, None], num_new, module.window, pos.device)[:, None]  # [B, 1, n, W-1+n]
    # entry of each position in time order: before the push pos-ring .. pos-1, after it pos+n-ring ..
    shape = (-1, 1, 1, ring, 1)
    before = ((pos[:, None] + torch.arange(ring, device=pos.device)) % ring).view(shape).expand_as(kv[:, 0])
    after = (before + num_new) % ring
    for i, layer in enumerate(module.layers):
        past = kv[:, i].gather(3, before)  # [B, 2, H, ring, D] in time order
        h, k, v = layer(h, rope, mask, past[:, 0], past[:, 1])  # k, v [B, H, ring+n, D]
        kv[:, i].scatter_(3, after, torch.stack([k[:, :, num_new:], v[:, :, num_new:]], 1))
    return module.norm(h).transpose(1, 2)


def fused_window_step(module: WindowedTransformer, x: Tensor, state: Tensor, where: StateSlice, rows: Tensor,
                      pos: Tensor, gate_up: list[Tensor]) -> Tensor:
    """`window_step` in nine kernels a layer: each residual add (with its layer scale) and the norm after
    it in one, the matmuls, the attention of `engine/window_attention.py` (which reads each row's keys
    and values in its row of `state`, the slice `where`, and advances them there) and the SwiGLU
    gate on the layer's `gate_up` matrix (`fused_stack.fuse_gate_up`). Same arithmetic as
    TransformerLayer.forward."""
    batch, _, num_new = x.shape
    h = x.transpose(1, 2).reshape(batch * num_new, -1)  # [B·n, C], the residual stream
    rope = _row_rope(module, pos, num_new)
    heads, dim = cast(TransformerLayer, module.layers[0]).attention.n_head, module.head_dim
    per_layer = where.numel // len(module.layers)  # the layout's (layer, k|v, H, window-1, D)
    delta = scale = None
    for i, (layer, w13) in enumerate(zip(module.layers, gate_up)):
        layer = cast(TransformerLayer, layer)
        attention, norm = layer.attention, layer.attention_norm
        h, n = add_rmsnorm(h, delta, norm.weight, norm.eps, scale)
        qkv = F.linear(n, attention.wqkv.weight).view(batch, num_new, 3, heads, dim)
        a = window_attention(qkv, rope, state, rows, pos, where.start + i * per_layer, module.window)
        delta, scale = F.linear(a.view(batch * num_new, -1), attention.wo.weight), layer.attention_layer_scale.gamma
        h, n = add_rmsnorm(h, delta, layer.ffn_norm.weight, layer.ffn_norm.eps, scale)
        delta = F.linear(silu_mul(F.linear(n, w13)), layer.feed_forward.w2.weight)
        scale = layer.ffn_layer_scale.gamma
    _, out = add_rmsnorm(h, delta, module.norm.weight, module.norm.eps, scale)
    return out.view(batch, num_new, -1).transpose(1, 2)


@contextlib.contextmanager
def _tf32_matmuls() -> Iterator[None]:
    """TF32 for the float32 matmuls of the codec's transformer and ConvNeXt blocks, whose products then
    round their operands like the fused convs (without it they run on CUDA cores, a large share of a
    push: docs/BENCHMARKS.md). The flag is
    process-wide and restored on exit: a float32 matmul of another thread during a push would get
    TF32 too."""
    matmul = torch.backends.cuda.matmul
    # torch >= 2.9 names the setting fp32_precision; allow_tf32 is the older name of the same flag
    name, value = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    before = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, before)


class RowVocoder:
    """Incremental `Codec.decode` of up to `max_rows` independent streams, any subset per call."""

    def __init__(self, codec: Codec, max_rows: int, fused: bool = False) -> None:
        """fused: run the decoder with the kernels of fused_decoder.py (float32 codec; the backend's
        codec_decoder decision, engine/backend.py)."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be ≥ 1, got {max_rows}")
        self.codec, self.max_rows = codec, max_rows
        self.layout = state_layout(codec)
        row_numel = sum(s.numel for s in self.layout.values())
        device = cast(CausalConv1d, codec.decoder.model[0]).conv.weight.device
        if fused and codec.dtype != torch.float32:
            raise ValueError("the fused codec decoder runs in float32")
        # Its convs keep their context as [L, C_in] (channels-last) in the same slices.
        self.fused = FusedDecoder(codec.decoder) if fused else None
        # where the state a push gathers begins: after the transformer's keys, which the fused path
        # reads where they lie
        windows = [s for m, s in self.layout.items() if isinstance(m, WindowedTransformer)]
        self.gathered_from = sum(s.numel for s in windows) if fused else 0
        # each fused transformer layer's w1/w3 as one row-paired matrix (the modules keep views of it)
        self.gate_up = {m: [fuse_gate_up(layer) for layer in m.layers]
                        for m in self.layout if fused and isinstance(m, WindowedTransformer)}
        self.state = torch.zeros(max_rows, row_numel, dtype=codec.dtype, device=device)
        self.positions = torch.zeros(max_rows, dtype=torch.long, device=device)  # frames decoded

    def reset(self, row: int) -> None:
        """Start a new stream in `row`: zero state (= the one-shot left padding), position 0."""
        if not 0 <= row < self.max_rows:
            raise ValueError(f"row {row} is outside 0..{self.max_rows - 1}")
        self.state[row].zero_()
        self.positions[row] = 0

    @torch.inference_mode()
    def push(self, rows: Tensor, codes: Tensor) -> Tensor:
        """codes [B, 10, n] -> PCM [B, n·2048]: the next n frames of the stream in each of `rows`
        [B] (distinct, in range; not checked, which would sync with the device)."""
        self._check(rows, codes)
        batch, num_frames = codes.shape[0], codes.shape[-1]
        if batch == 0 or num_frames == 0:
            return torch.zeros(batch, num_frames * self.codec.config.hop_length,
                               dtype=self.codec.dtype, device=self.state.device)
        gathered = self.state[:, self.gathered_from:]
        states = gathered.index_select(0, rows)  # [B, S'], advanced in place by the layers
        pos = self.positions.index_select(0, rows)  # [B]
        step = lambda module, x: self._step(module, x, states, rows, pos)
        if self.fused is None:
            audio = stream_decode(self.codec, codes, step)
        else:
            z = self.codec.quantizer.codes_to_latent(codes.long())  # [B, latent, n]
            with _tf32_matmuls():
                for module in decode_modules(self.codec)[:-1]:
                    z = stream_through(module, z, step)
            start = self.gathered_from
            contexts = {m: states[:, s.start - start:s.start - start + s.numel]
                        for m, s in self.layout.items() if s.start >= start}
            audio = self.fused.run(z.transpose(1, 2).contiguous(), contexts)
        gathered.index_copy_(0, rows, states)
        self.positions.index_copy_(0, rows, pos + num_frames)
        return audio

    def _step(self, module: nn.Module, x: Tensor, states: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
        where = self.layout[module]
        if isinstance(module, WindowedTransformer) and self.fused is not None:
            return fused_window_step(module, x, self.state, where, rows, pos, self.gate_up[module])
        state = where.view(states, self.gathered_from)
        if isinstance(module, WindowedTransformer):
            return window_step(module, x, state, pos)
        y, context = cast("CausalConv1d | CausalConvTranspose1d", module).step(x, state)
        state.copy_(context)
        return y

    def _check(self, rows: Tensor, codes: Tensor) -> None:
        self.codec.check_codes(codes)
        if rows.ndim != 1 or rows.dtype != torch.long or rows.shape[0] != codes.shape[0]:
            raise ValueError(f"rows must be int64 [B] with one row per codes row; got "
                             f"{tuple(rows.shape)} {rows.dtype} for codes {tuple(codes.shape)}")
