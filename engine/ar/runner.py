"""The bridge to the device: KV pool, per-sequence state buffers, prefill and the batched decode frame.

A decode frame for a batch: restricted slow head -> slow token (RAS) -> fast AR over the 10 codebook
positions batched across rows -> codes -> next input column -> one slow AR step with paged attention.
All per-sequence state (last hidden, RAS window, sampling params) lives in device buffers indexed by
slot, so a frame is a pure tensor program over static inputs: that is what CUDA graphs capture
(`cuda_graphs.py`). The host reads one [B, 11] tensor per frame.

Two implementations of the same computation: the module path (models/*, sampler.py: CPU, the oracle)
and on CUDA the fused path (fused_stack.py, kernels.py, projections.py: ~10 kernels per layer, one per
draw), which also serves prefill. Tests compare them (tests/test_kernels.py, tests/test_cuda.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.ar.attention import PrefillSegment, dense_attention, paged_decode_reference, prefill_attention, write_kv
from engine.ar.sampler import (
    DRAW_FAST,
    DRAW_SLOW,
    DRAW_SLOW_RAS,
    RAS_WINDOW,
    BatchParams,
    index_hash,
    push_recent,
    sample_fast,
    sample_slow,
)
from engine.ar.seq import SeqLike
from engine.backend import Backend
from engine.models.dual_ar import DualAR
from engine.params import SamplingParams

FAST_CACHE = 16  # fast-AR cache rows per sequence (10 codebook positions, padded for the kernel)


@dataclass(frozen=True)
class RunnerConfig:
    num_blocks: int
    block_size: int = 64
    max_batch: int = 32
    max_model_len: int = 32768

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.block_size < 1 or self.max_batch < 1:
            raise ValueError("num_blocks, block_size and max_batch must be positive")

    @property
    def max_blocks_per_seq(self) -> int:
        return -(-self.max_model_len // self.block_size)


@dataclass
class FrameInputs:
    """Static per-frame inputs (one row per sequence in the batch, padded rows use the scratch slot)."""

    slots: Tensor  # [B] int64
    positions: Tensor  # [B] int64, position of the column fed to the slow AR
    slot_mapping: Tensor  # [B] int64 flat pool index for that column's KV
    block_tables: Tensor  # [B, max_blocks_per_seq] int64
    context_lens: Tensor  # [B] int64 = positions + 1
    frames: Tensor  # [B] int64 global frame index (sampling counter)


@dataclass
class PrefillInputs:
    """Static inputs of a fused prefill: packed prompt tokens of several sequences, whose attention runs
    through the paged prefill kernel in query tiles (triton_attention.prefill_tiles). With fixed
    sizes (padding tokens, runs and tiles) it is graph-capturable."""

    grid: Tensor  # [11, N] prompt columns (padding: token 0)
    positions: Tensor  # [N]
    slot_mapping: Tensor  # [N] flat pool slot of each token's KV (padding: the scratch block)
    block_tables: Tensor  # [R, max_blocks_per_seq] the table of each run (padding: the scratch block)
    tiles: Tensor  # [T, 4] (run, first row, rows, first position); unused tiles have 0 rows


class ModelRunner:
    def __init__(self, model: DualAR, cfg: RunnerConfig, backend: Backend) -> None:
        """backend: which frame program and decode attention run (engine/backend.py)."""
        self.model = model
        self.cfg = cfg
        mc = model.cfg
        weight = model.text_model.model.embeddings.weight
        self.device, self.dtype = weight.device, weight.dtype
        t, a = mc.text, mc.audio
        # One extra scratch block and one extra scratch slot absorb the writes of padded rows.
        self.scratch_block = cfg.num_blocks
        # One tensor per layer: in-place writes then hit a whole buffer, never a view of a shared one,
        # which torch.compile would otherwise functionalize into copies of the pool.
        pool = (cfg.num_blocks + 1, cfg.block_size, t.n_local_heads, t.head_dim)
        self.k_pools = [torch.zeros(pool, dtype=self.dtype, device=self.device) for _ in range(t.n_layer)]
        self.v_pools = [torch.zeros(pool, dtype=self.dtype, device=self.device) for _ in range(t.n_layer)]
        rows = cfg.max_batch + 1
        self.scratch_slot = cfg.max_batch
        self.hidden = torch.zeros(rows, t.dim, dtype=self.dtype, device=self.device)
        self.recent = torch.full((rows, RAS_WINDOW), -1, dtype=torch.long, device=self.device)
        self.params = BatchParams.build([SamplingParams()] * rows, self.device)
        for vocab in (mc.codebook_size, mc.codebook_size + 1):  # before any capture or compile
            index_hash(vocab, self.device)
        # benchmarks: every sequence runs to its frame budget (a device flag, so captured graphs see it)
        self._ignore_eos = torch.zeros(1, dtype=torch.int32, device=self.device)
        self.decode_attention = paged_decode_reference
        if backend.decode_attention == "triton":
            from engine.kernels.attention import paged_decode_triton
            self.decode_attention = paged_decode_triton
        self.fused = backend.fused_ar
        self.prefill_graphs = None  # prefill_graphs.PrefillGraphs, attached by the engine on CUDA
        if self.fused:
            self._init_fused()
        else:  # the module path's dense fast-AR cache
            fast = (a.n_layer, cfg.max_batch, mc.num_codebooks, a.n_local_heads, a.head_dim)
            self.k_fast = torch.zeros(fast, dtype=self.dtype, device=self.device)
            self.v_fast = torch.zeros(fast, dtype=self.dtype, device=self.device)

    def set_ignore_eos(self, value: bool) -> None:
        """Benchmarks: every sequence runs to its frame budget."""
        self._ignore_eos.fill_(int(value))

    def _init_fused(self) -> None:
        from engine.kernels.attention import paged_decode_triton, prefill_block_m
        from engine.kernels.fused_stack import FusedStack
        self._paged = paged_decode_triton
        model, mc, dev = self.model, self.model.cfg, self.device
        t, a = mc.text, mc.audio
        self.prefill_block_m = prefill_block_m(t.n_head // t.n_local_heads)  # tokens per prefill query tile
        self.slow_stack = FusedStack(model.text_model.model.layers, model.text_model.model.norm, t,
                                     model.slow_rope)
        self.fast_stack = FusedStack(model.audio_decoder.layers, model.audio_decoder.norm, a, model.fast_rope)
        emb = model.text_model.model.embeddings.weight
        # The restricted head as one matrix: rows of <|semantic:0..4095|> then <|im_end|> (21 MB).
        self.slow_head = torch.cat([emb[mc.semantic_start_token_id:mc.semantic_end_token_id + 1],
                                    emb[mc.eos_token_id:mc.eos_token_id + 1]]).contiguous()
        # Fast-AR cache: per layer [max_batch, FAST_CACHE, KVH, D], row b of the batch owns block b.
        fast = (self.cfg.max_batch, FAST_CACHE, a.n_local_heads, a.head_dim)
        self.k_fast_pools = [torch.zeros(fast, dtype=self.dtype, device=dev) for _ in range(a.n_layer)]
        self.v_fast_pools = [torch.zeros(fast, dtype=self.dtype, device=dev) for _ in range(a.n_layer)]
        rows = torch.arange(self.cfg.max_batch, device=dev)
        pos = torch.arange(mc.num_codebooks, device=dev)[:, None].expand(-1, self.cfg.max_batch)
        self.fast_positions = pos.contiguous()  # [10, max_batch]
        self.fast_slots = (rows[None, :] * FAST_CACHE + pos).contiguous()
        lens, tables = pos + 1, rows[:, None]
        # Positions 0 (the slow hidden) and 1 (c0's embedding) both exist once c0 is drawn, so they run
        # as one pass of 2B rows (all position-0 rows, then all position-1 rows), each row attending to
        # its own causal prefix: the fast layers are read 9 times a frame instead of 10.
        self.fast_pair = {b: (*(torch.cat([t[0, :b], t[1, :b]]).contiguous()
                                for t in (self.fast_positions, self.fast_slots, lens)),
                              tables[:b].repeat(2, 1)) for b in range(1, self.cfg.max_batch + 1)}

    # -- per-sequence state ---------------------------------------------------------------
    def start_sequence(self, slot: int, params: SamplingParams) -> None:
        """Load a sequence's sampling params into its slot and empty its RAS window (each text chunk
        starts a fresh window, as each upstream generate call does)."""
        one = BatchParams.build([params], self.device)
        for name in ("temperature", "top_p", "top_k", "ras", "seed"):
            getattr(self.params, name)[slot] = getattr(one, name)[0]
        self.recent[slot] = -1

    def block_table_tensor(self, tables: list[list[int]], width: int, device: torch.device | None = None
                           ) -> Tensor:
        out = torch.full((len(tables), width), self.scratch_block, dtype=torch.long)
        for i, table in enumerate(tables):
            out[i, :len(table)] = torch.tensor(table, dtype=torch.long)
        return out.to(device or self.device)

    def slot_of(self, table: list[int], position: int) -> int:
        bs = self.cfg.block_size
        return table[position // bs] * bs + position % bs

    # -- prefill ----------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, items: list[tuple[SeqLike, int, int]]) -> None:
        """Compute KV for prompt ranges; sequences that finish their prompt get their last hidden."""
        total = sum(n for _, _, n in items)
        if self.prefill_graphs is not None and total <= self.prefill_graphs.max_tokens:
            hidden = self.prefill_graphs.run(items)
        else:
            hidden = self._prefill_eager(items)
        end = 0
        for seq, start, n in items:
            end += n
            if start + n == seq.prompt_len:
                self.hidden[seq.slot] = hidden[end - 1]

    def _prompt_rows(self, items: list[tuple[SeqLike, int, int]]) -> tuple[list, list[int], list[int]]:
        """The prompt columns, positions and flat KV slots of the token ranges in `items`, packed."""
        cols, positions, slots = [], [], []
        for seq, start, n in items:
            cols.extend(seq.prompt[start:start + n])
            positions.extend(range(start, start + n))
            slots.extend(self.slot_of(seq.alloc.block_table, p) for p in range(start, start + n))
        return cols, positions, slots

    def _prefill_eager(self, items: list[tuple[SeqLike, int, int]]) -> Tensor:
        if self.fused:  # one paged-attention launch per layer for all sequences
            return self.prefill_paged(self.prefill_inputs(items, sum(n for _, _, n in items)))
        cols, positions, slots = self._prompt_rows(items)
        grid = torch.tensor(cols, dtype=torch.long, device=self.device).T  # [11, N]
        slot_mapping = torch.tensor(slots, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        segments = [PrefillSegment(start, n, torch.tensor(seq.alloc.block_table, dtype=torch.long,
                                                          device=self.device)) for seq, start, n in items]

        def attend(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            write_kv(self.k_pools[layer], self.v_pools[layer], slot_mapping, k, v)
            return prefill_attention(q, self.k_pools[layer], self.v_pools[layer], segments)

        return self.model.slow_forward(self.model.embed(grid), pos, attend)

    def prefill_inputs(self, items: list[tuple[SeqLike, int, int]], pad_to: int, device: torch.device | None = None,
                       fixed: bool = False) -> PrefillInputs:
        """Host-built PrefillInputs for `items`, padded to `pad_to` tokens with scratch rows. Padding
        tokens form one more run over the scratch block, each tile at positions from 0 (finite rows
        that only ever read and write the scratch block). `fixed`: block tables and tiles padded to
        the most any `pad_to`-token step can need (graph capture and replay)."""
        from engine.kernels.attention import prefill_tiles
        cols, positions, slots = self._prompt_rows(items)
        pad = pad_to - len(cols)
        cols.extend([(0,) * (self.model.cfg.num_codebooks + 1)] * pad)
        block_m = self.prefill_block_m
        tiles = prefill_tiles([(start, n) for _, start, n in items], block_m)
        for j in range(0, pad, block_m):
            tiles.append((len(items), len(slots) + j, min(block_m, pad - j), 0))
        tables = [seq.alloc.block_table for seq, _, _ in items] + [[]]
        if fixed:
            num_runs = self.cfg.max_batch + 1
            tiles += [(0, 0, 0, 0)] * (-(-pad_to // block_m) + num_runs - len(tiles))
            tables += [[]] * (num_runs - len(tables))
        scratch = self.scratch_block * self.cfg.block_size
        device = device or self.device
        return PrefillInputs(torch.tensor(cols, dtype=torch.long).T.contiguous().to(device),
                             torch.tensor(positions + [0] * pad, dtype=torch.long).to(device),
                             torch.tensor(slots + [scratch] * pad, dtype=torch.long).to(device),
                             self.block_table_tensor(tables, self.cfg.max_blocks_per_seq, device),
                             torch.tensor(tiles, dtype=torch.long).reshape(-1, 4).to(device))

    @torch.no_grad()
    def prefill_paged(self, inp: PrefillInputs) -> Tensor:
        """The fused prefill: hidden [N, dim] after the final norm."""
        from engine.kernels.attention import paged_prefill_triton
        return self.slow_stack.forward(
            self.model.embed(inp.grid), inp.positions, inp.slot_mapping, self.k_pools, self.v_pools,
            lambda layer, q: paged_prefill_triton(q, self.k_pools[layer], self.v_pools[layer], inp.block_tables,
                                                  inp.tiles, self.prefill_block_m))

    # -- decode -----------------------------------------------------------------------------
    def frame_inputs(self, seqs: list[SeqLike], frame_offsets: list[int], pad_to: int,
                     full_width: bool = False, device: torch.device | None = None) -> FrameInputs:
        """Inputs for one frame. Eager runs size block tables to the longest context in the batch;
        CUDA graphs need the fixed full width (`full_width`)."""
        n = len(seqs)
        positions = [s.next_position for s in seqs]
        slot_mapping = [self.slot_of(s.alloc.block_table, p) for s, p in zip(seqs, positions)]
        pad = pad_to - n
        scratch = self.scratch_block * self.cfg.block_size
        width = self.cfg.max_blocks_per_seq if full_width else -(-(max(positions) + 1) // self.cfg.block_size)
        device = device or self.device
        def t(values: list[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)
        return FrameInputs(
            slots=t([s.slot for s in seqs] + [self.scratch_slot] * pad),
            positions=t(positions + [0] * pad),
            slot_mapping=t(slot_mapping + [scratch] * pad),
            block_tables=self.block_table_tensor([s.alloc.block_table[:-(-(p + 1) // self.cfg.block_size)]
                                                  for s, p in zip(seqs, positions)] + [[]] * pad, width, device),
            context_lens=t([p + 1 for p in positions] + [1] * pad),
            frames=t(frame_offsets + [0] * pad))

    @torch.no_grad()  # not inference_mode: torch.compile cannot trace frames that run under it
    def decode_frame(self, inp: FrameInputs) -> Tensor:
        """One frame for every row: returns [B, 11] = (restricted slow column, c0..c9)."""
        if self.fused:
            return self._decode_frame_fused(inp)
        model, mc = self.model, self.model.cfg
        h = self.hidden[inp.slots]
        p = BatchParams(*(getattr(self.params, f)[inp.slots]
                          for f in ("temperature", "top_p", "top_k", "ras", "seed")))
        logits = model.slow_logits(h)
        logits[:, -1] = torch.where(self._ignore_eos.bool(), float("-inf"), logits[:, -1])
        col = sample_slow(logits, p, inp.frames, self.recent[inp.slots])
        codes = self.fast_codes(h, col.clamp(max=mc.codebook_size - 1), p, inp.frames)  # [B, 10]
        grid = torch.cat([model.restricted_to_token(col)[None], codes.T])  # [11, B]

        def attend(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return self.paged_attend(layer, q, k, v, inp)

        new_h = model.slow_forward(model.embed(grid), inp.positions, attend)
        self.hidden.index_copy_(0, inp.slots, new_h)
        self.recent.index_copy_(0, inp.slots, push_recent(self.recent[inp.slots], col))
        return torch.cat([col[:, None], codes], dim=1)

    def paged_attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, inp: FrameInputs) -> Tensor:
        """Write this frame's k/v into the layer's pool and attend over each row's blocks."""
        write_kv(self.k_pools[layer], self.v_pools[layer], inp.slot_mapping, k, v)
        return self.decode_attention(q, self.k_pools[layer], self.v_pools[layer], inp.block_tables,
                                     inp.context_lens)

    def fast_codes(self, h: Tensor, c0: Tensor, p: BatchParams, frames: Tensor) -> Tensor:
        """The fast AR over codebook positions 0..9 for a batch: h [B, dim], c0 [B] -> codes [B, 10]."""
        model = self.model
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

    def _decode_frame_fused(self, inp: FrameInputs) -> Tensor:
        """decode_frame with the fused kernels: same draws, same outputs."""
        from engine.kernels import linear, transformer
        from engine.kernels.sampling import sample_into
        model, mc = self.model, self.model.cfg
        batch = inp.slots.shape[0]
        h = self.hidden[inp.slots]
        out = torch.empty((batch, mc.num_codebooks + 1), dtype=torch.long, device=self.device)
        assert DRAW_SLOW_RAS == DRAW_SLOW + 1
        sample_into(linear.linear(h, self.slow_head), inp.slots, inp.frames, self.params, out, 0, DRAW_SLOW,
                    recent=self.recent, ignore_last=self._ignore_eos)  # column 0 and c0
        k_fast, v_fast, emb = self.k_fast_pools, self.v_fast_pools, model.audio_decoder.embeddings.weight
        x = torch.cat([h, transformer.embed_rows(out[:, 1], emb)])  # positions 0 and 1 together
        positions, slots, lens, tables = self.fast_pair[batch]
        for pos in range(1, mc.num_codebooks):
            if pos == 1:  # 2B rows: the position-1 rows attend to the position-0 rows stored beside them
                hidden = self.fast_stack.forward(
                    x, positions, slots, k_fast, v_fast,
                    lambda layer, q: self._paged(q, k_fast[layer], v_fast[layer], tables, lens, num_splits=1))
            else:  # one row per sequence: the attention runs in the kernel that stores its k/v
                hidden = self.fast_stack.forward(x, self.fast_positions[pos, :batch], self.fast_slots[pos, :batch],
                                                 k_fast, v_fast, None, window=FAST_CACHE)
            sample_into(linear.linear(hidden[-batch:], model.audio_decoder.output.weight), inp.slots,
                        inp.frames, self.params, out, pos + 1, DRAW_FAST + pos)  # position 0's output unused
            if pos < mc.num_codebooks - 1:
                x = transformer.embed_rows(out[:, pos + 1], emb)
        x = transformer.frame_embed(out, model.text_model.model.embeddings.weight,
                                model.audio_decoder.codebook_embeddings.weight, mc.semantic_start_token_id,
                                mc.codebook_size, mc.eos_token_id)
        new_h = self.slow_stack.forward(
            x, inp.positions, inp.slot_mapping, self.k_pools, self.v_pools,
            lambda layer, q: self._paged(q, self.k_pools[layer], self.v_pools[layer], inp.block_tables,
                                         inp.context_lens))
        self.hidden.index_copy_(0, inp.slots, new_h)
        return out
