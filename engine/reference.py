"""The plain reference generation loop: one request, eager, a dense KV cache, no cleverness.

Every optimized path (batched decode, paged attention, CUDA graphs) is tested against this loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.ar.sampler import RAS_WINDOW, BatchParams, push_recent, sample_fast, sample_slow
from engine.models.dual_ar import DualAR
from engine.models.layers import sdpa_gqa
from engine.params import SamplingParams


@dataclass
class DenseKVCache:
    """Per-layer contiguous K/V for one sequence; `length` tokens are filled."""

    k: list[Tensor] = field(default_factory=list)
    v: list[Tensor] = field(default_factory=list)
    length: int = 0

    @classmethod
    def empty(cls, n_layer: int, max_len: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
              device: torch.device) -> DenseKVCache:
        shape = (max_len, kv_heads, head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)])

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Write the new k/v after `length` and attend causally over everything so far."""
        n = q.shape[0]
        start = self.length
        self.k[layer][start:start + n] = k
        self.v[layer][start:start + n] = v
        total = start + n
        q_pos = torch.arange(start, total, device=q.device)[:, None]
        mask = torch.arange(total, device=q.device)[None, :] <= q_pos
        out = sdpa_gqa(q, self.k[layer][:total], self.v[layer][:total], mask)
        if layer == len(self.k) - 1:
            self.length = total
        return out


def decode_codebooks(model: DualAR, hidden: Tensor, c0: Tensor, params: BatchParams, frame: Tensor
                     ) -> Tensor:
    """Fast AR for one frame of a batch: hidden [B, dim], c0 [B] -> codes [B, 10]."""
    cfg = model.cfg
    batch = hidden.shape[0]
    caches = [DenseKVCache.empty(cfg.audio.n_layer, cfg.num_codebooks, cfg.audio.n_local_heads,
                                 cfg.audio.head_dim, hidden.dtype, hidden.device) for _ in range(batch)]
    codes = [c0]
    x = hidden
    for pos in range(cfg.num_codebooks):
        positions = torch.full((1,), pos, device=hidden.device, dtype=torch.long)
        outs = [model.fast_forward(x[b:b + 1], positions, caches[b].attend) for b in range(batch)]
        if pos == 0:  # position 0 (the slow hidden) only fills the fast cache
            x = model.fast_embed(c0)
            continue
        logits = model.fast_logits(torch.cat(outs))
        code = sample_fast(logits, params, frame, pos)
        codes.append(code)
        x = model.fast_embed(code)
    return torch.stack(codes, dim=1)


@torch.inference_mode()
def generate(model: DualAR, prompt: Tensor, params: SamplingParams, max_frames: int, frame_offset: int = 0
             ) -> Tensor:
    """Generate codes [10, N] for one prompt grid [11, T]; stops at <|im_end|> (dropped) or max_frames.

    `frame_offset` numbers the frames of a later text chunk after the earlier ones (sampling counters)."""
    cfg = model.cfg
    device = model.text_model.model.embeddings.weight.device
    dtype = model.text_model.model.embeddings.weight.dtype
    prompt = prompt.to(device)
    t = cfg.text
    cache = DenseKVCache.empty(t.n_layer, prompt.shape[1] + max_frames, t.n_local_heads, t.head_dim,
                               dtype, device)
    bp = BatchParams.build([params], device)
    recent = torch.full((1, RAS_WINDOW), -1, dtype=torch.long, device=device)
    hidden = model.slow_forward(model.embed(prompt), torch.arange(prompt.shape[1], device=device),
                                cache.attend)[-1:]
    frames: list[Tensor] = []
    for i in range(max_frames):
        frame = torch.full((1,), frame_offset + i, dtype=torch.long, device=device)
        col = sample_slow(model.slow_logits(hidden), bp, frame, recent)
        if int(col) == cfg.codebook_size:  # <|im_end|>: end of speech, frame dropped
            break
        recent = push_recent(recent, col)
        codes = decode_codebooks(model, hidden, col.clamp(0, cfg.codebook_size - 1), bp, frame)
        frames.append(codes[0])
        token = model.restricted_to_token(col)
        grid = torch.cat([token, codes[0]])[:, None]  # [11, 1]
        pos = torch.full((1,), cache.length, dtype=torch.long, device=device)
        hidden = model.slow_forward(model.embed(grid), pos, cache.attend)
    if not frames:
        return torch.zeros((cfg.num_codebooks, 0), dtype=torch.long)
    return torch.stack(frames, dim=1).cpu()
