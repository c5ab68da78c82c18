"""The S2 Pro audio codec: a causal modified DAC at 44.1 kHz, one frame = 2048 samples = 10 codes.

`Codec` holds `encoder.block.*`, `quantizer.*` and `decoder.model.*` with exactly the parameter names and
shapes of the published `codec.pth` once weight norm is folded (see `engine/models/codec_state.py`).
Everything is causal, so decoding a prefix of codes gives a prefix of the audio; `engine/vocoder.py`
streams the decoder frame by frame on top of this module.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

import torch
from torch import Tensor, nn

from engine.models.codec_layers import CausalConv1d, CausalConvTranspose1d, Snake1d, WindowedTransformer
from engine.models.codec_quantizer import DownsampleQuantizer, VectorQuantizer

_TUPLE_FIELDS = ("encoder_rates", "encoder_transformer_layers", "decoder_rates", "downsample_factor")


def _valid_number(name: str, value: Any, annotation: str) -> bool:
    """Positive ints (floats where annotated); tuple fields need ≥ 1 entry; layer counts may be 0."""
    if isinstance(value, tuple) != annotation.startswith("tuple"):
        return False
    values = value if isinstance(value, tuple) else (value,)
    kind = (int, float) if annotation == "float" else int
    zero_ok = name == "encoder_transformer_layers"
    return bool(values) and all(isinstance(v, kind) and not isinstance(v, bool)
                                and (v >= 0 if zero_ok else v > 0) for v in values)


@dataclass(frozen=True)
class CodecConfig:
    """Codec dimensions; the defaults are the real `fishaudio/s2-pro` codec. Not stored in the
    checkpoint (upstream hard-codes them), so a tiny checkpoint writes its own."""

    sample_rate: int = 44100
    encoder_dim: int = 64  # doubled by each encoder block: 128, 256, 512, 1024
    encoder_rates: tuple[int, ...] = (2, 4, 8, 8)
    encoder_transformer_layers: tuple[int, ...] = (0, 0, 0, 4)  # per encoder block
    encoder_window: int = 512
    latent_dim: int = 1024
    decoder_dim: int = 1536  # halved by each decoder block: 768, 384, 192, 96
    decoder_rates: tuple[int, ...] = (8, 8, 4, 2)
    downsample_factor: tuple[int, ...] = (2, 2)
    quantizer_layers: int = 8  # pre_module and post_module each
    quantizer_heads: int = 16
    quantizer_ffn_dim: int = 3072
    quantizer_window: int = 128
    head_dim: int = 64  # every codec transformer; encoder heads = block dim // head_dim
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    semantic_codebook_size: int = 4096
    codebook_size: int = 1024
    n_residual_codebooks: int = 9
    codebook_dim: int = 8

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:  # JSON gives lists
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        bad = [f.name for f in fields(self) if not _valid_number(f.name, getattr(self, f.name), cast(str, f.type))]
        if bad:
            raise ValueError(f"codec config: invalid {', '.join(bad)}: fields are positive integers "
                             "(tuples of them for rates and layer counts, which may be 0; "
                             "rope_base and norm_eps may be floats)")
        self._check_shapes()

    def _check_shapes(self) -> None:
        if len(self.encoder_transformer_layers) != len(self.encoder_rates):
            raise ValueError("codec config: encoder_transformer_layers needs one entry per encoder rate")
        if math.prod(self.encoder_rates) != math.prod(self.decoder_rates):
            raise ValueError(f"codec config: encoder rates {self.encoder_rates} and decoder rates "
                             f"{self.decoder_rates} must have the same product")
        if self.decoder_dim % 2 ** len(self.decoder_rates):
            raise ValueError(f"codec config: decoder_dim {self.decoder_dim} must halve "
                             f"{len(self.decoder_rates)} times")
        if self.head_dim % 2:
            raise ValueError(f"codec config: head_dim {self.head_dim} must be even for RoPE")
        for i, n_layer in enumerate(self.encoder_transformer_layers):
            if n_layer and (self.encoder_dim << (i + 1)) % self.head_dim:
                raise ValueError(f"codec config: encoder block {i} width {self.encoder_dim << (i + 1)} "
                                 f"is not a multiple of head_dim {self.head_dim}")

    @property
    def hop_length(self) -> int:
        """Audio samples per code frame (2048 for the real codec)."""
        return math.prod(self.encoder_rates) * math.prod(self.downsample_factor)

    @property
    def num_codebooks(self) -> int:
        return 1 + self.n_residual_codebooks

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (self.semantic_codebook_size,) + (self.codebook_size,) * self.n_residual_codebooks

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecConfig:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"codec config: unknown fields {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def tiny(cls) -> CodecConfig:
        """A few-thousand-parameter codec for CPU tests: same 2048-sample frame, 10 codebooks of
        4096 / 1024 entries in 8 dimensions, small windows so tests cross them."""
        return cls(encoder_dim=2, encoder_transformer_layers=(0, 0, 0, 1), encoder_window=16,
                   latent_dim=32, decoder_dim=32, quantizer_layers=1, quantizer_heads=2,
                   quantizer_ffn_dim=64, quantizer_window=4, head_dim=16)


class ResidualUnit(nn.Module):
    """Snake → WN conv k7 dilation d → Snake → WN conv k1, added to the input."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim), CausalConv1d(dim, dim, 7, dilation=dilation, weight_norm=True),
            Snake1d(dim), CausalConv1d(dim, dim, 1, weight_norm=True))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _residual_units(dim: int) -> list[nn.Module]:
    return [ResidualUnit(dim, d) for d in (1, 3, 9)]


class EncoderBlock(nn.Module):
    """3 residual units at dim/2, Snake, strided WN conv to dim, then an optional window transformer."""

    def __init__(self, dim: int, stride: int, transformer: WindowedTransformer | None) -> None:
        super().__init__()
        layers = [*_residual_units(dim // 2), Snake1d(dim // 2),
                  CausalConv1d(dim // 2, dim, 2 * stride, stride=stride, weight_norm=True)]
        self.block = nn.Sequential(*layers, *([transformer] if transformer is not None else []))

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Encoder(nn.Module):
    """Audio [B, 1, L] -> latent [B, latent_dim, L / prod(encoder_rates)]."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        dim = cfg.encoder_dim
        layers: list[nn.Module] = [CausalConv1d(1, dim, 7, weight_norm=True)]
        for stride, n_layer in zip(cfg.encoder_rates, cfg.encoder_transformer_layers):
            dim *= 2
            transformer = None if n_layer == 0 else WindowedTransformer(
                dim, n_layer, dim // cfg.head_dim, cfg.head_dim, 3 * dim, cfg.encoder_window,
                cfg.rope_base, cfg.norm_eps)
            layers.append(EncoderBlock(dim, stride, transformer))
        layers += [Snake1d(dim), CausalConv1d(dim, cfg.latent_dim, 3, weight_norm=True)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """Snake, WN transposed conv (k = 2·stride) halving the width, 3 residual units."""

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(in_dim), CausalConvTranspose1d(in_dim, out_dim, 2 * stride, stride, weight_norm=True),
            *_residual_units(out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Decoder(nn.Module):
    """Latent [B, latent_dim, T] -> audio [B, 1, T · prod(decoder_rates)] in [-1, 1]. The upstream
    config lists decoder transformer layers, but upstream never builds them into the decoder."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        dim = cfg.decoder_dim
        layers: list[nn.Module] = [CausalConv1d(cfg.latent_dim, dim, 7, weight_norm=True)]
        for stride in cfg.decoder_rates:
            layers.append(DecoderBlock(dim, dim // 2, stride))
            dim //= 2
        layers += [Snake1d(dim), CausalConv1d(dim, 1, 7, weight_norm=True), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class Codec(nn.Module):
    """encode: audio [B, 1, L] -> codes [B, 10, ceil(L/2048)]; decode: codes [B, 10, N] -> [B, 1, N·2048]."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = DownsampleQuantizer(
            cfg.latent_dim, cfg.downsample_factor, cfg.n_residual_codebooks, cfg.codebook_size,
            cfg.semantic_codebook_size, cfg.codebook_dim, self._quantizer_transformer)
        self.decoder = Decoder(cfg)

    def _quantizer_transformer(self) -> WindowedTransformer:
        c = self.config
        return WindowedTransformer(c.latent_dim, c.quantizer_layers, c.quantizer_heads, c.head_dim,
                                   c.quantizer_ffn_dim, c.quantizer_window, c.rope_base, c.norm_eps)

    @torch.inference_mode()
    def encode(self, audio: Tensor) -> Tensor:
        """Float audio [B, 1, L] at the codec sample rate, right-padded with zeros to whole frames."""
        if audio.ndim != 3 or audio.shape[1] != 1 or not audio.is_floating_point():
            raise ValueError(f"codec encode expects float audio [B, 1, L], got {tuple(audio.shape)} "
                             f"{audio.dtype}")
        hop = self.config.hop_length
        num_frames = -(-audio.shape[-1] // hop)
        if num_frames == 0:
            return torch.zeros(audio.shape[0], self.config.num_codebooks, 0, dtype=torch.long,
                               device=audio.device)
        audio = nn.functional.pad(audio, (0, num_frames * hop - audio.shape[-1]))
        return self.quantizer.encode(self.encoder(audio.to(self.dtype)))

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """Integer codes [B, 10, N] -> float audio [B, 1, N·2048]. Codes are clamped into each
        codebook (c0 ≤ 4095, c1..c9 ≤ 1023 for the real codec; negatives to 0)."""
        self.check_codes(codes)
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], 1, 0, dtype=self.dtype, device=codes.device)
        return self.decoder(self.quantizer.decode(codes.long()))

    def check_codes(self, codes: Tensor) -> None:
        if (codes.ndim != 3 or codes.shape[1] != self.config.num_codebooks
                or codes.is_floating_point() or codes.is_complex()):
            raise ValueError(f"codec decode expects integer codes [B, {self.config.num_codebooks}, N], "
                             f"got {tuple(codes.shape)} {codes.dtype}")

    @property
    def dtype(self) -> torch.dtype:
        return cast(CausalConv1d, self.decoder.model[0]).conv.weight.dtype


def weight_norm_param_names(model: Codec) -> list[str]:
    """Parameters the published file stores weight-normed (g, v): every WN causal (transposed) conv
    and the VQ in/out projections; e.g. `encoder.block.0.conv.weight`."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (CausalConv1d, CausalConvTranspose1d)) and module.weight_norm:
            names.append(f"{name}.conv.weight")
        elif isinstance(module, VectorQuantizer):
            names += [f"{name}.in_proj.weight", f"{name}.out_proj.weight"]
    return names
