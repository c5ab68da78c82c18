"""Streaming codec decode: codes arrive a few frames at a time, PCM leaves immediately.

The codec decoder is causal end to end, so a `StreamingDecoder` carries, per layer, exactly what the
next frames still need: the left context of every convolution, the previous input frame of every
transposed convolution (its trimmed kernel tail overlaps the next frame) and the windowed KV cache of
the post-quantizer transformer, whose positions keep counting across pushes. Concatenating the PCM of
any split of the codes equals `Codec.decode` of all of them. Work per push is proportional to the new
frames and the state has a fixed size (the KV cache always holds `window - 1` positions).

Equality is to float rounding: the convolutions see identical inputs, only matmul blocking differs
(~1e-7 in float32). On CUDA in float32, cuDNN's default TF32 convolutions choose algorithms by shape,
which widens that to ~1e-4 unless `torch.backends.cudnn.allow_tf32` is off (measured on an H200).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.models.codec import Codec, Decoder, DecoderBlock, ResidualUnit
from engine.models.codec_layers import (CausalConv1d, CausalConvTranspose1d, ConvNeXtBlock, Snake1d,
                                        WindowCache, WindowedTransformer)

_STATELESS = (Snake1d, nn.Tanh, nn.Identity)


class StreamingDecoder:
    """Incremental `Codec.decode` for one stream, or for B streams advancing in lockstep."""

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
        quantizer = self.codec.quantizer
        z = quantizer.codes_to_latent(codes3.long())  # [B, latent, n], no state: one frame each
        z = self._run(quantizer.post_module, z)
        z = self._run(quantizer.upsample, z)
        audio = self._run(self.codec.decoder, z)[:, 0]  # [B, n·2048]
        self.num_frames += codes3.shape[-1]
        return audio if batched else audio[0]

    def _run(self, module: nn.Module, x: Tensor) -> Tensor:
        """Apply `module` to the next stretch of time, reading and updating its carried state."""
        if isinstance(module, _STATELESS):
            return module(x)
        if isinstance(module, (nn.Sequential, Decoder, DecoderBlock)):
            for child in module.children():
                x = self._run(child, x)
            return x
        if isinstance(module, ResidualUnit):
            return x + self._run(module.block, x)
        if isinstance(module, ConvNeXtBlock):
            return x + module.pointwise(self._run(module.dwconv, x))
        if isinstance(module, CausalConv1d):
            y, self._contexts[module] = module.step(x, self._context(module, x, module.left_pad))
            return y
        if isinstance(module, CausalConvTranspose1d):
            y, self._contexts[module] = module.step(x, self._context(module, x, module.context_frames))
            return y
        if isinstance(module, WindowedTransformer):
            cache = self._caches.setdefault(module, module.new_cache())
            return module.step(x, cache)
        raise TypeError(f"no streaming rule for {type(module).__name__}")

    def _context(self, module: nn.Module, x: Tensor, length: int) -> Tensor:
        """The carried inputs of `module`: zeros at the start, exactly like the one-shot left padding."""
        context = self._contexts.get(module)
        if context is None:
            context = x.new_zeros(x.shape[0], x.shape[1], length)
        return context

    def state_size(self) -> int:
        """Number of carried tensor elements (bounded: it stops growing once the window is full)."""
        total = sum(t.numel() for t in self._contexts.values())
        for cache in self._caches.values():
            total += sum(t.numel() for t in cache.keys + cache.values if t is not None)
        return total
