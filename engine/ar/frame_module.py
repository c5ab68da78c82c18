"""The module frame program: the decode frame and prefill through the plain torch modules of models/
and the sampler (every device; the oracle the fused program is tested against). The fast AR keeps a
dense per-row cache of its 10 positions.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from engine.ar.attention import PrefillSegment, dense_attention, prefill_attention, write_kv
from engine.ar.sampler import BatchParams, push_recent, sample_fast, sample_slow

if TYPE_CHECKING:
    from engine.ar.runner import FrameInputs, ModelRunner
    from engine.ar.seq import SeqLike


class ModuleFrame:
    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        mc = runner.model.cfg
        a = mc.audio
        fast = (a.n_layer, runner.cfg.max_batch, mc.num_codebooks, a.n_local_heads, a.head_dim)
        self.k_fast = torch.zeros(fast, dtype=runner.dtype, device=runner.device)
        self.v_fast = torch.zeros(fast, dtype=runner.dtype, device=runner.device)

    def prefill(self, items: Sequence[tuple[SeqLike, int, int]]) -> Tensor:
        """Prompt ranges through the modules, each sequence attending causally over its blocks."""
        r = self.runner
        cols, positions, slots = r.prompt_rows(items)
        grid = torch.tensor(cols, dtype=torch.long, device=r.device).T  # [11, N]
        slot_mapping = torch.tensor(slots, dtype=torch.long, device=r.device)
        pos = torch.tensor(positions, dtype=torch.long, device=r.device)
        segments = [PrefillSegment(start, n, torch.tensor(seq.alloc.block_table, dtype=torch.long,
                                                          device=r.device)) for seq, start, n in items]

        def attend(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            write_kv(r.k_pools[layer], r.v_pools[layer], slot_mapping, k, v)
            return prefill_attention(q, r.k_pools[layer], r.v_pools[layer], segments)

        return r.model.slow_forward(r.model.embed(grid), pos, attend)

    def decode(self, inp: FrameInputs) -> Tensor:
        """One frame for every row: returns [B, 11] = (restricted slow column, c0..c9)."""
        r = self.runner
        model, mc = r.model, r.model.cfg
        h = r.hidden[inp.slots]
        p = BatchParams(*(getattr(r.params, f)[inp.slots]
                          for f in ("temperature", "top_p", "top_k", "ras", "seed")))
        logits = model.slow_logits(h)
        logits[:, -1] = torch.where(r.ignore_eos.bool(), float("-inf"), logits[:, -1])
        col = sample_slow(logits, p, inp.frames, r.recent[inp.slots])
        codes = self.fast_codes(h, col.clamp(max=mc.codebook_size - 1), p, inp.frames)  # [B, 10]
        grid = torch.cat([model.restricted_to_token(col)[None], codes.T])  # [11, B]

        def attend(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return r.paged_attend(layer, q, k, v, inp)

        new_h = model.slow_forward(model.embed(grid), inp.positions, attend)
        r.hidden.index_copy_(0, inp.slots, new_h)
        r.recent.index_copy_(0, inp.slots, push_recent(r.recent[inp.slots], col))
        return torch.cat([col[:, None], codes], dim=1)

    def fast_codes(self, h: Tensor, c0: Tensor, p: BatchParams, frames: Tensor) -> Tensor:
        """The fast AR over codebook positions 0..9 for a batch: h [B, dim], c0 [B] -> codes [B, 10]."""
        model = self.runner.model
        batch = h.shape[0]
        kf, vf = self.k_fast[:, :batch], self.v_fast[:, :batch]
        codes, x = [c0], h
        for pos in range(model.cfg.num_codebooks):
            def attend(layer: int, q: Tensor, k: Tensor, v: Tensor, pos: int = pos) -> Tensor:
                kf[layer, :, pos] = k
                vf[layer, :, pos] = v
                return dense_attention(q, kf[layer, :, :pos + 1], vf[layer, :, :pos + 1])
            positions = torch.full((batch,), pos, dtype=torch.long, device=h.device)
            out = model.fast_forward(x, positions, attend)
            if pos > 0:  # position 0 (the slow hidden) only fills the fast cache
                codes.append(sample_fast(model.fast_logits(out), p, frames, pos))
            x = model.fast_embed(codes[-1])
        return torch.stack(codes, dim=1)
