"""The codec's quantizer: ×4 causal downsampling, the pre/post window transformers, the semantic
codebook (c0, 4096 entries) and the 9 residual codebooks (c1..c9, 1024 entries), all factorized VQ in
8 dimensions, then ×4 causal upsampling back to the encoder rate.

Names follow the published `codec.pth`: `quantizer.{downsample,upsample}.i.{0,1}`,
`quantizer.{pre,post}_module`, `quantizer.semantic_quantizer.quantizers.0.{in_proj,out_proj,codebook}`
and `quantizer.quantizer.quantizers.j.*`. The VQ projections are the weight-normed 1×1 convs of the
descript-audio-codec VQ, held here folded as plain `nn.Conv1d`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.codec_layers import CausalConv1d, CausalConvTranspose1d, ConvNeXtBlock, WindowedTransformer


class VectorQuantizer(nn.Module):
    """Project to `codebook_dim`, pick the nearest codebook row by cosine, project back."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.in_proj = nn.Conv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj = nn.Conv1d(codebook_dim, input_dim, kernel_size=1)
        # uniform rather than Embedding's normal init: normal_ costs seconds of one-time tracing on
        # the meta device that load_codec builds on, and the loaded weights replace it anyway
        self.codebook = nn.Embedding(codebook_size, codebook_dim,
                                     _weight=torch.empty(codebook_size, codebook_dim).uniform_(-1, 1))

    def encode(self, z: Tensor) -> Tensor:
        """z [B, input_dim, T] -> codes [B, T]."""
        latents = F.normalize(self.in_proj(z).transpose(1, 2).flatten(0, 1))  # [B·T, d]
        rows = F.normalize(self.codebook.weight)
        # the squared distance of unit vectors, written out as upstream does so near-ties break alike
        dist = (latents.pow(2).sum(1, keepdim=True) - 2 * latents @ rows.t()
                + rows.pow(2).sum(1, keepdim=True).t())
        return dist.argmin(dim=1).view(z.shape[0], z.shape[2])

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, T] -> [B, input_dim, T] from the raw (unnormalized) codebook rows."""
        return self.out_proj(self.codebook(codes).transpose(1, 2))


class ResidualQuantizer(nn.Module):
    """Stages quantize what the previous stages' projected-back outputs left over."""

    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.quantizers = nn.ModuleList(
            VectorQuantizer(input_dim, codebook_size, codebook_dim) for _ in range(n_codebooks))

    def encode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, D, T] -> (codes [B, n, T], quantized sum [B, D, T])."""
        residual, total, codes = z, torch.zeros_like(z), []
        for vq in cast("Iterable[VectorQuantizer]", self.quantizers):
            c = vq.encode(residual)
            out = vq.decode(c)
            total, residual = total + out, residual - out
            codes.append(c)
        return torch.stack(codes, dim=1), total

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, n, T] -> [B, D, T], clamped into the codebook as upstream does."""
        codes = codes.clamp(0, self.codebook_size - 1)
        total: Tensor | None = None
        for i, vq in enumerate(cast("Iterable[VectorQuantizer]", self.quantizers)):
            out = vq.decode(codes[:, i])
            total = out if total is None else total + out
        assert total is not None  # at least one codebook
        return total


class DownsampleQuantizer(nn.Module):
    """quantizer.*: downsample → pre_module → semantic + residual VQ; post_module → upsample."""

    def __init__(self, dim: int, factors: tuple[int, ...], n_residual: int, codebook_size: int,
                 semantic_codebook_size: int, codebook_dim: int,
                 make_transformer: Callable[[], WindowedTransformer]) -> None:
        super().__init__()
        self.semantic_quantizer = ResidualQuantizer(dim, 1, semantic_codebook_size, codebook_dim)
        self.quantizer = ResidualQuantizer(dim, n_residual, codebook_size, codebook_dim)
        self.downsample = nn.Sequential(*(
            nn.Sequential(CausalConv1d(dim, dim, f, stride=f), ConvNeXtBlock(dim)) for f in factors))
        self.upsample = nn.Sequential(*(
            nn.Sequential(CausalConvTranspose1d(dim, dim, f, stride=f), ConvNeXtBlock(dim))
            for f in reversed(factors)))
        self.pre_module = make_transformer()
        self.post_module = make_transformer()

    def encode(self, z: Tensor) -> Tensor:
        """Encoder latent [B, D, T·4] -> codes [B, 1 + n_residual, T]."""
        z = self.pre_module(self.downsample(z))
        semantic_codes, semantic_z = self.semantic_quantizer.encode(z)
        residual_codes, _ = self.quantizer.encode(z - semantic_z)
        return torch.cat([semantic_codes, residual_codes], dim=1)

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        """codes [B, 1 + n_residual, T] -> summed codebook outputs [B, D, T]; per frame, stateless."""
        return self.semantic_quantizer.decode(codes[:, :1]) + self.quantizer.decode(codes[:, 1:])

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, 1 + n_residual, T] -> decoder input [B, D, T·4]."""
        return self.upsample(self.post_module(self.codes_to_latent(codes)))
