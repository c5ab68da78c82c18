"""The fused frame program: the decode frame and prefill through the Triton kernels of kernels/ (CUDA;
on CPU only under Triton's interpreter, for the tests): ~10 kernels per layer, one per draw.

Same computation as the module path (frame_module.py), tested against it (tests/test_kernels.py,
tests/test_cuda.py). It reads and writes the runner's state (KV pools, hidden, RAS window, params).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from engine.ar.sampler import DRAW_FAST, DRAW_SLOW, DRAW_SLOW_RAS
from engine.kernels import linear, transformer
from engine.kernels.attention import paged_decode_triton, paged_prefill_triton, prefill_block_m
from engine.kernels.fused_stack import FusedStack
from engine.kernels.sampling import sample_into
from engine.models.int8 import projection_weight

if TYPE_CHECKING:
    from engine.ar.runner import FrameInputs, ModelRunner, PrefillInputs

FAST_CACHE = 16  # fast-AR cache rows per sequence (10 codebook positions, padded for the kernel)


class FusedFrame:
    def __init__(self, runner: ModelRunner) -> None:
        self.runner = r = runner
        model, mc, dev = r.model, r.model.cfg, r.device
        t, a = mc.text, mc.audio
        self.prefill_block_m = prefill_block_m(t.n_head // t.n_local_heads)  # tokens per prefill query tile
        assert model.slow_rope is not None and model.fast_rope is not None  # DualAR.init_rope ran
        self.slow_stack = FusedStack(model.text_model.model.layers, model.text_model.model.norm, t,
                                     model.slow_rope)
        self.fast_stack = FusedStack(model.audio_decoder.layers, model.audio_decoder.norm, a, model.fast_rope)
        emb = model.text_model.model.embeddings.weight
        # The restricted head as one matrix: rows of <|semantic:0..4095|> then <|im_end|> (21 MB).
        self.slow_head = torch.cat([emb[mc.semantic_start_token_id:mc.semantic_end_token_id + 1],
                                    emb[mc.eos_token_id:mc.eos_token_id + 1]]).contiguous()
        self.fast_head = projection_weight(model.audio_decoder.output)
        # Fast-AR cache: per layer [max_batch, FAST_CACHE, KVH, D], row b of the batch owns block b.
        fast = (r.cfg.max_batch, FAST_CACHE, a.n_local_heads, a.head_dim)
        self.k_fast_pools = [torch.zeros(fast, dtype=r.dtype, device=dev) for _ in range(a.n_layer)]
        self.v_fast_pools = [torch.zeros(fast, dtype=r.dtype, device=dev) for _ in range(a.n_layer)]
        rows = torch.arange(r.cfg.max_batch, device=dev)
        pos = torch.arange(mc.num_codebooks, device=dev)[:, None].expand(-1, r.cfg.max_batch)
        self.fast_positions = pos.contiguous()  # [10, max_batch]
        self.fast_slots = (rows[None, :] * FAST_CACHE + pos).contiguous()
        lens, tables = pos + 1, rows[:, None]
        # Positions 0 (the slow hidden) and 1 (c0's embedding) both exist once c0 is drawn, so they run
        # as one pass of 2B rows (all position-0 rows, then all position-1 rows), each row attending to
        # its own causal prefix: the fast layers are read 9 times a frame instead of 10.
        self.fast_pair = {b: (*(torch.cat([t[0, :b], t[1, :b]]).contiguous()
                                for t in (self.fast_positions, self.fast_slots, lens)),
                              tables[:b].repeat(2, 1)) for b in range(1, r.cfg.max_batch + 1)}

    @torch.no_grad()
    def prefill(self, inp: PrefillInputs) -> Tensor:
        """The fused prefill: hidden [N, dim] after the final norm."""
        r = self.runner
        return self.slow_stack.forward(
            r.model.embed(inp.grid), inp.positions, inp.slot_mapping, r.k_pools, r.v_pools,
            lambda layer, q: paged_prefill_triton(q, r.k_pools[layer], r.v_pools[layer], inp.block_tables,
                                                  inp.tiles, self.prefill_block_m))

    def decode(self, inp: FrameInputs) -> Tensor:
        """One frame for every row with the fused kernels: the module path's draws and outputs."""
        r = self.runner
        model, mc = r.model, r.model.cfg
        batch = inp.slots.shape[0]
        h = r.hidden[inp.slots]
        out = torch.empty((batch, mc.num_codebooks + 1), dtype=torch.long, device=r.device)
        assert DRAW_SLOW_RAS == DRAW_SLOW + 1
        sample_into(linear.linear(h, self.slow_head), inp.slots, inp.frames, r.params, out, 0, DRAW_SLOW,
                    recent=r.recent, ignore_last=r.ignore_eos)  # column 0 and c0
        k_fast, v_fast, emb = self.k_fast_pools, self.v_fast_pools, model.audio_decoder.embeddings.weight
        x = torch.cat([h, transformer.embed_rows(out[:, 1], emb)])  # positions 0 and 1 together
        positions, slots, lens, tables = self.fast_pair[batch]
        for pos in range(1, mc.num_codebooks):
            if pos == 1:  # 2B rows: the position-1 rows attend to the position-0 rows stored beside them
                hidden = self.fast_stack.forward(
                    x, positions, slots, k_fast, v_fast,
                    lambda layer, q: paged_decode_triton(q, k_fast[layer], v_fast[layer], tables, lens, num_splits=1))
            else:  # one row per sequence: the attention runs in the kernel that stores its k/v
                hidden = self.fast_stack.forward(x, self.fast_positions[pos, :batch], self.fast_slots[pos, :batch],
                                                 k_fast, v_fast, None, window=FAST_CACHE)
            sample_into(linear.linear(hidden[-batch:], self.fast_head), inp.slots,
                        inp.frames, r.params, out, pos + 1, DRAW_FAST + pos)  # position 0's output unused
            if pos < mc.num_codebooks - 1:
                x = transformer.embed_rows(out[:, pos + 1], emb)
        x = transformer.frame_embed(out, model.text_model.model.embeddings.weight,
                                model.audio_decoder.codebook_embeddings.weight, mc.semantic_start_token_id,
                                mc.codebook_size, mc.eos_token_id)
        new_h = self.slow_stack.forward(
            x, inp.positions, inp.slot_mapping, r.k_pools, r.v_pools,
            lambda layer, q: paged_decode_triton(q, r.k_pools[layer], r.v_pools[layer], inp.block_tables,
                                         inp.context_lens))
        r.hidden.index_copy_(0, inp.slots, new_h)
        return out
