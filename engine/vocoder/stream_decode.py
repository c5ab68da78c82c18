"""Streaming codec decode: codes arrive a few frames at a time, PCM leaves immediately.

The codec decoder is causal end to end, so a `StreamingDecoder` carries, per layer, exactly what the
next frames still need: the left context of every convolution, the previous input frame of every
transposed convolution (its trimmed kernel tail overlaps the next frame) and the windowed KV cache of
the post-quantizer transformer, whose positions keep counting across pushes. Concatenating the PCM of
any split of the codes equals `Codec.decode` of all of them. Work per push is proportional to the new
frames and the state has a fixed size (the KV cache always holds `window - 1` positions).
The walk over the decoder's layers (`stream_decode`) is shared with `engine/batched_vocoder.py`,
which keeps the same state for many independent streams in row-indexed tensors.

Equality is to float rounding: the convolutions see identical inputs, only matmul blocking differs
(~1e-7 in float32). On CUDA in float32, cuDNN's default TF32 convolutions choose algorithms by shape,
which widens that to ~1e-4 unless `torch.backends.cudnn.allow_tf32` is off.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from engine.models.codec import Codec, Decoder, DecoderBlock, ResidualUnit
from engine.models.codec_layers import (
    CausalConv1d,
    CausalConvTranspose1d,
    ConvNeXtBlock,
    Snake1d,
    WindowCache,
    WindowedTransformer,
)

_STATELESS = (Snake1d, nn.Tanh, nn.Identity)
_CONTAINERS = (nn.Sequential, Decoder, DecoderBlock)
STATEFUL = (CausalConv1d, CausalConvTranspose1d, WindowedTransformer)
# runs one stateful layer (a STATEFUL instance) on the next stretch of time, reading and updating
# whatever state its owner carries for it
StatefulStep = Callable[[nn.Module, Tensor], Tensor]


def decode_modules(codec: Codec) -> list[nn.Module]:
    """The layers of `Codec.decode` that carry state across time, after the per-frame codebook lookup."""
    return [codec.quantizer.post_module, codec.quantizer.upsample, codec.decoder]


def context_shape(module: CausalConv1d | CausalConvTranspose1d) -> tuple[int, int]:
    """(channels, length) of the inputs a streamed conv keeps from earlier frames (length may be 0)."""
    length = module.left_pad if isinstance(module, CausalConv1d) else module.context_frames
    return module.conv.in_channels, length


def stream_decode(codec: Codec, codes: Tensor, step: StatefulStep) -> Tensor:
    """codes [B, 10, n] -> PCM [B, n·2048] continuing each row's stream; `step` runs every
    stateful layer on the state its caller carries."""
    z = codec.quantizer.codes_to_latent(codes.long())  # [B, latent, n], no state: one frame each
    for module in decode_modules(codec):
        z = stream_through(module, z, step)
    return z[:, 0]


def stream_through(module: nn.Module, x: Tensor, step: StatefulStep) -> Tensor:
    """Apply `module` to the next stretch of time: containers recurse, stateful layers go to `step`."""
    if isinstance(module, _STATELESS):
        return module(x)
    if isinstance(module, _CONTAINERS):
        for child in module.children():
            x = stream_through(child, x, step)
        return x
    if isinstance(module, ResidualUnit):
        return x + stream_through(module.block, x, step)
    if isinstance(module, ConvNeXtBlock):
        return x + module.pointwise(stream_through(module.dwconv, x, step))
    if isinstance(module, STATEFUL):
        return step(module, x)
    raise TypeError(f"no streaming rule for {type(module).__name__}")


class StreamingDecoder:
    """Incremental `Codec.decode` for one stream, or for B streams advancing in lockstep
    (streams that join and leave at different times: `engine/batched_vocoder.py`)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.num_frames = 0  # frames decoded so far
        self._batch: int | None = None
        self._contexts: dict[nn.Module, Tensor] = {}
        self._caches: dict[WindowedTransformer, WindowCache] = {}

    def reset(self) -> None:
        """Forget all carried state; the next push starts a new stream."""
        self.num_frames, self._batch = 0, None
        self._contexts.clear()
        self._caches.clear()

    @torch.inference_mode()
    def push(self, codes: Tensor) -> Tensor:
        """codes [10, n] -> PCM [n·2048] (or [B, 10, n] -> [B, n·2048]) continuing the stream."""
        batched = codes.ndim == 3
        codes3 = codes if batched else codes.unsqueeze(0)
        self.codec.check_codes(codes3)
        if self._batch is None:
            self._batch = codes3.shape[0]
        elif codes3.shape[0] != self._batch:
            raise ValueError(f"this stream decodes batches of {self._batch}, got {codes3.shape[0]}")
        if codes3.shape[-1] == 0:
            empty = torch.zeros(self._batch, 0, dtype=self.codec.dtype, device=codes.device)
            return empty if batched else empty[0]
        audio = stream_decode(self.codec, codes3, self._step)  # [B, n·2048]
        self.num_frames += codes3.shape[-1]
        return audio if batched else audio[0]

    def _step(self, module: nn.Module, x: Tensor) -> Tensor:
        if isinstance(module, WindowedTransformer):
            return module.step(x, self._caches.setdefault(module, module.new_cache()))
        conv = cast("CausalConv1d | CausalConvTranspose1d", module)
        context = self._contexts.get(conv)
        if context is None:  # zeros at the start, exactly like the one-shot left padding
            context = x.new_zeros(x.shape[0], *context_shape(conv))
        y, self._contexts[conv] = conv.step(x, context)
        return y

    def state_size(self) -> int:
        """Number of carried tensor elements (bounded: it stops growing once the window is full)."""
        total = sum(t.numel() for t in self._contexts.values())
        for cache in self._caches.values():
            total += sum(t.numel() for t in cache.keys + cache.values if t is not None)
        return total
