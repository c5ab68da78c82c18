"""The bridge to the device: KV pool, per-sequence state buffers, prefill and the batched decode frame.

A decode frame for a batch: restricted slow head -> slow token (RAS) -> fast AR over the 10 codebook
positions batched across rows -> codes -> next input column -> one slow AR step with paged attention.
All per-sequence state (last hidden, RAS window, sampling params) lives in device buffers indexed by
slot, so a frame is a pure tensor program over static inputs: that is what CUDA graphs capture
(`frame_graphs.py`). The host reads one [B, 11] tensor per frame.

Two frame programs compute the same thing, picked by the backend (engine/backend.py): the module
program (`frame_module.py`: models/ and the sampler, every device, the oracle) and the fused program
(`frame_fused.py`: the Triton kernels, ~10 per layer, one per draw), which also serves prefill.
Tests compare them (tests/test_kernels.py, tests/test_cuda.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from engine.ar.attention import paged_decode_reference, write_kv
from engine.ar.frame_fused import FusedFrame
from engine.ar.frame_module import ModuleFrame
from engine.ar.sampler import (
    RAS_WINDOW,
    BatchParams,
    index_hash,
)
from engine.ar.seq import SeqLike
from engine.backend import Backend
from engine.models.dual_ar import DualAR
from engine.params import SamplingParams

if TYPE_CHECKING:
    from engine.ar.prefill_graphs import PrefillGraphs


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
        t = mc.text
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
        self.ignore_eos = torch.zeros(1, dtype=torch.int32, device=self.device)
        self.decode_attention = paged_decode_reference
        if backend.decode_attention == "triton":
            from engine.kernels.attention import paged_decode_triton
            self.decode_attention = paged_decode_triton
        self.fused = backend.fused_ar
        self.prefill_graphs: PrefillGraphs | None = None  # attached by the engine on CUDA
        # The frame program (the compiled path compiles the module program's frame: frame_graphs.py).
        self.program: FusedFrame | ModuleFrame = FusedFrame(self) if self.fused else ModuleFrame(self)
        self.prefill_block_m = self.program.prefill_block_m if isinstance(self.program, FusedFrame) else 0

    def set_ignore_eos(self, value: bool) -> None:
        """Benchmarks: every sequence runs to its frame budget."""
        self.ignore_eos.fill_(int(value))

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
    def prefill(self, items: Sequence[tuple[SeqLike, int, int]]) -> None:
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

    def prompt_rows(self, items: Sequence[tuple[SeqLike, int, int]]) -> tuple[list, list[int], list[int]]:
        """The prompt columns, positions and flat KV slots of the token ranges in `items`, packed."""
        cols, positions, slots = [], [], []
        for seq, start, n in items:
            cols.extend(seq.prompt[start:start + n])
            positions.extend(range(start, start + n))
            slots.extend(self.slot_of(seq.alloc.block_table, p) for p in range(start, start + n))
        return cols, positions, slots

    def _prefill_eager(self, items: Sequence[tuple[SeqLike, int, int]]) -> Tensor:
        if isinstance(self.program, FusedFrame):  # one paged-attention launch per layer for all sequences
            return self.program.prefill(self.prefill_inputs(items, sum(n for _, _, n in items)))
        return self.program.prefill(items)

    def prefill_inputs(self, items: Sequence[tuple[SeqLike, int, int]], pad_to: int, device: torch.device | None = None,
                       fixed: bool = False) -> PrefillInputs:
        """Host-built PrefillInputs for `items`, padded to `pad_to` tokens with scratch rows. Padding
        tokens form one more run over the scratch block, each tile at positions from 0 (finite rows
        that only ever read and write the scratch block). `fixed`: block tables and tiles padded to
        the most any `pad_to`-token step can need (graph capture and replay)."""
        from engine.kernels.attention import prefill_tiles
        cols, positions, slots = self.prompt_rows(items)
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

    # -- decode -----------------------------------------------------------------------------
    def frame_inputs(self, seqs: Sequence[SeqLike], frame_offsets: list[int], pad_to: int,
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
        return self.program.decode(inp)

    def prefill_paged(self, inp: PrefillInputs) -> Tensor:
        """The fused prefill of ready inputs (prefill graphs capture it): hidden [N, dim]."""
        assert isinstance(self.program, FusedFrame), "paged prefill runs on the fused program"
        return self.program.prefill(inp)

    def paged_attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, inp: FrameInputs) -> Tensor:
        """Write this frame's k/v into the layer's pool and attend over each row's blocks."""
        write_kv(self.k_pools[layer], self.v_pools[layer], inp.slot_mapping, k, v)
        return self.decode_attention(q, self.k_pools[layer], self.v_pools[layer], inp.block_tables,
                                     inp.context_lens)

