"""The S2 Pro Dual-AR transformer: a slow AR along time and a fast AR along the 10 codebooks.

Parameter names equal the real checkpoint's keys (`text_model.model.*`, `audio_decoder.*`), so a state
dict loads strictly. Inputs are packed rows ([N, ...]); the caller supplies positions and an `Attend`
that owns the KV cache.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from engine.config import ModelConfig, TransformerConfig
from engine.models.layers import Attend, Block, RMSNorm, rope_table, run_layers


class SlowStack(nn.Module):
    """`text_model.model`: token embeddings (also the tied output head), blocks, final norm."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class TextModel(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.model = SlowStack(cfg)


class AudioDecoder(nn.Module):
    """`audio_decoder`: the fast AR plus the codebook embeddings that feed the slow AR."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        a = cfg.audio
        self.codebook_embeddings = nn.Embedding(cfg.num_codebooks * cfg.codebook_size, cfg.text.dim)
        self.embeddings = nn.Embedding(cfg.codebook_size, a.dim)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.n_layer))
        self.norm = RMSNorm(a.dim, a.norm_eps)
        self.output = nn.Linear(a.dim, cfg.codebook_size, bias=False)


class DualAR(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_model = TextModel(cfg.text)
        self.audio_decoder = AudioDecoder(cfg)
        # Not persistent: the real checkpoint holds no RoPE tables. Built by init_rope() once the
        # module lives on its device (a meta-device model has none).
        self.slow_rope: Tensor | None = None
        self.fast_rope: Tensor | None = None

    def init_rope(self) -> None:
        dev = self.text_model.model.embeddings.weight.device
        t, a = self.cfg.text, self.cfg.audio
        self.slow_rope = rope_table(t.max_seq_len, t.head_dim, t.rope_base, dev)
        self.fast_rope = rope_table(a.max_seq_len, a.head_dim, a.rope_base, dev)

    # -- slow AR ------------------------------------------------------------------------------
    def embed(self, grid: Tensor) -> Tensor:
        """grid [11, N] (token row + 10 code rows) -> input embeddings [N, dim].

        At audio positions the token embedding and all 10 codebook embeddings (stride 4096 each,
        codebook 0 included) are summed and divided by sqrt(11); elsewhere it is the token embedding.
        """
        cfg = self.cfg
        tokens, codes = grid[0], grid[1:]
        x = self.text_model.model.embeddings(tokens)
        is_audio = (tokens >= cfg.semantic_start_token_id) & (tokens <= cfg.semantic_end_token_id)
        offsets = torch.arange(cfg.num_codebooks, device=grid.device)[:, None] * cfg.codebook_size
        cb = self.audio_decoder.codebook_embeddings(codes + offsets).sum(0)  # [N, dim]
        audio_x = (x + cb) / math.sqrt(cfg.num_codebooks + 1)
        return torch.where(is_audio[:, None], audio_x, x)

    def slow_forward(self, x: Tensor, positions: Tensor, attend: Attend) -> Tensor:
        """x [N, dim] at `positions` [N] -> post-final-norm hidden [N, dim]."""
        m = self.text_model.model
        assert self.slow_rope is not None, "set up the rope tables first"
        return run_layers(m.layers, m.norm, x, self.slow_rope[positions], attend)

    def slow_logits(self, hidden: Tensor) -> Tensor:
        """Restricted tied head: [N, dim] -> [N, codebook_size + 1] float32 logits.

        Column k < 4096 is `<|semantic:k|>`; the last column is `<|im_end|>`. Other tokens can never
        be sampled, so their 150k rows of the head are never computed.
        """
        cfg = self.cfg
        emb = self.text_model.model.embeddings.weight
        sem = hidden @ emb[cfg.semantic_start_token_id:cfg.semantic_end_token_id + 1].T
        eos = hidden @ emb[cfg.eos_token_id:cfg.eos_token_id + 1].T
        return torch.cat([sem, eos], dim=-1).float()

    def restricted_to_token(self, index: Tensor) -> Tensor:
        """Map a restricted-head column to its token id."""
        cfg = self.cfg
        return torch.where(index == cfg.codebook_size, torch.full_like(index, cfg.eos_token_id),
                           index + cfg.semantic_start_token_id)

    # -- fast AR ------------------------------------------------------------------------------
    def fast_embed(self, codes: Tensor) -> Tensor:
        return self.audio_decoder.embeddings(codes)

    def fast_forward(self, x: Tensor, positions: Tensor, attend: Attend) -> Tensor:
        """x [N, dim] at codebook `positions` [N] (0..9) -> post-norm hidden [N, dim]."""
        d = self.audio_decoder
        assert self.fast_rope is not None, "set up the rope tables first"
        return run_layers(d.layers, d.norm, x, self.fast_rope[positions], attend)

    def fast_logits(self, hidden: Tensor) -> Tensor:
        return self.audio_decoder.output(hidden).float()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
