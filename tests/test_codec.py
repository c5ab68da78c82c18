"""Codec tests: config, the real checkpoint's key layout, encode/decode shapes, causality, the windowed
transformer and RoPE numerics, and strict loading of `codec.pth` in both weight-norm key styles.
All on CPU in float32 with the tiny config and seeded random weights."""
from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import pytest
import torch
import torch.nn.functional as F

from engine.models.codec import Codec, CodecConfig, weight_norm_param_names
from engine.models.codec_layers import WindowedTransformer, apply_rope_cos_sin, rope_cos_sin
from engine.models.codec_state import (
    fold_weight_norm,
    load_codec,
    normalize_codec_state_dict,
    to_weight_norm_state_dict,
)

HOP = 2048


def make_codec(seed: int = 0) -> Codec:
    """Tiny codec with seeded weights; layer scales raised so transformers and ConvNeXt blocks matter."""
    torch.manual_seed(seed)
    codec = Codec(CodecConfig.tiny()).eval()
    with torch.no_grad():
        for name, p in codec.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.3, 0.7)
    return codec


def random_codes(batch: int, frames: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    semantic = torch.randint(0, 4096, (batch, 1, frames), generator=g)
    residual = torch.randint(0, 1024, (batch, 9, frames), generator=g)
    return torch.cat([semantic, residual], dim=1)


# --- config -------------------------------------------------------------------------------------

def test_real_config_dimensions() -> None:
    cfg = CodecConfig()
    assert cfg.hop_length == 2048 and cfg.num_codebooks == 10
    assert cfg.codebook_sizes == (4096,) + (1024,) * 9
    assert CodecConfig.from_dict(cfg.to_dict()) == cfg


def test_tiny_config_keeps_frame_and_codebooks() -> None:
    tiny = CodecConfig.tiny()
    assert tiny.hop_length == HOP and tiny.num_codebooks == 10 and tiny.codebook_dim == 8
    assert tiny.codebook_sizes == CodecConfig().codebook_sizes
    assert CodecConfig.from_dict(tiny.to_dict()) == tiny


def test_from_dict_rejects_unknown_keys_by_name() -> None:
    data = CodecConfig.tiny().to_dict() | {"hop": 512, "bogus_field": 1}
    with pytest.raises(ValueError, match="bogus_field") as err:
        CodecConfig.from_dict(data)
    assert "hop" in str(err.value)


@pytest.mark.parametrize("change, word", [
    ({"decoder_rates": (8, 8, 4)}, "same product"),
    ({"encoder_transformer_layers": (0, 4)}, "one entry per encoder rate"),
    ({"head_dim": 63}, "even"),
    ({"codebook_size": 0}, "codebook_size"),
    ({"decoder_dim": 100}, "halve"),
])
def test_invalid_config_is_rejected(change: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        CodecConfig(**change)


# --- the real layout ------------------------------------------------------------------------------

REAL_SHAPES = {
    "encoder.block.0.conv.weight": (64, 1, 7),
    "encoder.block.1.block.0.block.0.alpha": (1, 64, 1),
    "encoder.block.4.block.4.conv.weight": (1024, 512, 16),
    "encoder.block.4.block.5.layers.3.attention.wqkv.weight": (3072, 1024),
    "encoder.block.4.block.5.layers.3.attention_layer_scale.gamma": (1024,),
    "encoder.block.6.conv.weight": (1024, 1024, 3),
    "quantizer.downsample.1.0.conv.weight": (1024, 1024, 2),
    "quantizer.downsample.1.1.dwconv.conv.weight": (1024, 1, 7),
    "quantizer.downsample.1.1.pwconv1.weight": (4096, 1024),
    "quantizer.pre_module.layers.7.feed_forward.w2.weight": (1024, 3072),
    "quantizer.semantic_quantizer.quantizers.0.codebook.weight": (4096, 8),
    "quantizer.semantic_quantizer.quantizers.0.in_proj.weight": (8, 1024, 1),
    "quantizer.quantizer.quantizers.8.codebook.weight": (1024, 8),
    "quantizer.quantizer.quantizers.8.out_proj.weight": (1024, 8, 1),
    "quantizer.post_module.norm.weight": (1024,),
    "quantizer.upsample.0.0.conv.weight": (1024, 1024, 2),
    "decoder.model.0.conv.weight": (1536, 1024, 7),
    "decoder.model.1.block.1.conv.weight": (1536, 768, 16),
    "decoder.model.4.block.4.block.1.conv.weight": (96, 96, 7),
    "decoder.model.5.alpha": (1, 96, 1),
    "decoder.model.6.conv.weight": (1, 96, 7),
}


def test_real_codec_layout_on_meta() -> None:
    with torch.device("meta"):
        codec = Codec(CodecConfig())
    state = codec.state_dict()
    for key, shape in REAL_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    groups = {p: sum(k.startswith(p + ".") for k in state) for p in ("encoder", "quantizer", "decoder")}
    # the published file has 128/244/89 tensors; it adds freqs_cis + causal_mask to 3 transformers
    assert groups == {"encoder": 126, "quantizer": 240, "decoder": 89}
    assert not list(codec.buffers())
    num_params = sum(p.numel() for p in codec.parameters())
    print(f"real codec parameters: {num_params:,} ({num_params * 4 / 1e9:.3f} GB in fp32)")
    assert num_params == 391_398_385
    names = weight_norm_param_names(codec)
    assert len(names) == 80 and len(set(names)) == 80 and set(names) <= set(state)
    assert sum(n.endswith(".conv.weight") for n in names) == 60  # causal convs; 20 VQ projections
    assert names[0] == "encoder.block.0.conv.weight"


# --- encode / decode ------------------------------------------------------------------------------

def test_encode_decode_shapes() -> None:
    codec = make_codec()
    codes = codec.encode(torch.randn(2, 1, 5000) * 0.1)
    assert codes.shape == (2, 10, 3) and codes.dtype == torch.long
    assert codes[:, 0].max() < 4096 and codes[:, 1:].max() < 1024 and codes.min() >= 0
    audio = codec.decode(codes)
    assert audio.shape == (2, 1, 3 * HOP) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1
    assert codec.decode(codes[..., :0]).shape == (2, 1, 0)
    assert codec.encode(torch.zeros(1, 1, 0)).shape == (1, 10, 0)


def test_encode_right_pads_to_whole_frames() -> None:
    codec = make_codec()
    audio = torch.randn(1, 1, HOP + 1) * 0.1
    padded = F.pad(audio, (0, HOP - 1))
    assert torch.equal(codec.encode(audio), codec.encode(padded))


def test_decode_is_causal() -> None:
    codec = make_codec()
    codes = random_codes(2, 12)
    full = codec.decode(codes)
    assert 0.01 < full.std() < 0.9  # not silent, not saturated: the comparison means something
    for n in (1, 3, 5, 11):
        torch.testing.assert_close(codec.decode(codes[..., :n]), full[..., : n * HOP],
                                   atol=1e-5, rtol=0)


def test_encoder_is_causal() -> None:
    codec = make_codec()
    audio = torch.randn(1, 1, 6 * HOP) * 0.1
    assert torch.equal(codec.encode(audio[..., : 2 * HOP]), codec.encode(audio)[..., :2])


def test_decode_clamps_out_of_range_codes() -> None:
    codec = make_codec()
    codes = random_codes(1, 4)
    wild = codes.clone()
    wild[:, 0, 1], wild[:, 3, 2] = 9000, 5000
    clamped = codes.clone()
    clamped[:, 0, 1], clamped[:, 3, 2] = 4095, 1023
    torch.testing.assert_close(codec.decode(wild), codec.decode(clamped), atol=0, rtol=0)


def test_decode_rejects_bad_code_shapes() -> None:
    codec = make_codec()
    with pytest.raises(ValueError, match="integer codes"):
        codec.decode(torch.zeros(1, 9, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer codes"):
        codec.decode(torch.zeros(1, 10, 4))


def test_encode_of_decoded_signal_returns_codes() -> None:
    codec = make_codec()
    audio = codec.decode(random_codes(2, 5))
    codes = codec.encode(audio)
    assert codes.shape == (2, 10, 5)
    assert codes[:, 0].max() < 4096 and codes[:, 1:].max() < 1024 and codes.min() >= 0


# --- windowed transformer and RoPE ----------------------------------------------------------------

def _dense_reference(module: WindowedTransformer, x: torch.Tensor) -> torch.Tensor:
    """The transformer over the whole sequence at once: one [T, T] window mask, positions 0..T-1."""
    h = x.transpose(1, 2)
    t = h.shape[1]
    i = torch.arange(t)
    mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - module.window)
    rope = rope_cos_sin(i, module.head_dim, module.rope_base)
    for layer in module.layers:
        h, _, _ = layer(h, rope, mask, None, None)
    return module.norm(h).transpose(1, 2)


@pytest.mark.parametrize("chunk", [1, 3, 7, 256])
def test_windowed_transformer_matches_dense_reference(chunk: int) -> None:
    codec = make_codec()
    modules = (codec.quantizer.post_module, codec.encoder.get_submodule("block.4.block.5"))
    for module in cast("tuple[WindowedTransformer, ...]", modules):
        x = torch.randn(2, module.norm.weight.shape[0], 21)
        module.chunk_size = chunk
        with torch.no_grad():
            torch.testing.assert_close(module(x), _dense_reference(module, x), atol=1e-5, rtol=0)


def test_attention_sees_only_the_window() -> None:
    module = make_codec().quantizer.post_module  # one layer, window 4
    x = torch.randn(1, 32, 12)
    y = x.clone()
    y[..., 0] += 5.0
    with torch.no_grad():
        a, b = module(x), module(y)
    assert not torch.allclose(a[..., :4], b[..., :4])
    torch.testing.assert_close(a[..., 4:], b[..., 4:], atol=1e-6, rtol=0)


def test_rope_tables_are_bf16_rounded_upstream_values() -> None:
    positions = torch.tensor([0, 1, 7, 511, 4095, 327_679])
    head_dim, base = 64, 10000.0
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(positions.float(), inv_freq)
    table = torch.polar(torch.ones_like(angles), angles)
    expected = torch.stack([table.real, table.imag], dim=-1).to(torch.bfloat16).float()
    got = rope_cos_sin(positions, head_dim, base)
    assert got.shape == (6, 32, 2)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_rope_rotates_interleaved_pairs() -> None:
    rope = rope_cos_sin(torch.tensor([3]), 4, 10000.0)  # [1, 2, 2]
    x = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 4)
    out = apply_rope_cos_sin(x, rope).flatten()
    cos, sin = rope[0, :, 0], rope[0, :, 1]
    expected = torch.stack([cos[0], sin[0], -sin[1], cos[1]])
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=0)


# --- checkpoint loading ---------------------------------------------------------------------------

def test_fold_weight_norm_normalizes_over_all_dims_but_0() -> None:
    v = torch.randn(6, 4, 3)
    g = torch.rand(6, 1, 1) + 0.5
    w = fold_weight_norm(g, v)
    norms = w.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, g.flatten(), atol=1e-6, rtol=1e-6)
    expected = v * (g / v.pow(2).sum(dim=(1, 2), keepdim=True).sqrt())
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=1e-6)


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.mark.parametrize("style", ["parametrizations", "weight_g", "mixed"])
def test_weight_norm_styles_load_to_the_same_weights(style: str, tmp_path: Path) -> None:
    codec = make_codec()
    cfg = codec.config
    disk = to_weight_norm_state_dict(codec.state_dict(), weight_norm_param_names(codec), style)
    assert not any(k.endswith("decoder.model.0.conv.weight") for k in disk)
    loaded = load_codec(_save(disk, tmp_path / "codec.pth"), cfg, "cpu", torch.float32)
    reference = load_codec(_save(to_weight_norm_state_dict(
        codec.state_dict(), weight_norm_param_names(codec), "parametrizations"),
        tmp_path / "ref.pth"), cfg, "cpu", torch.float32)
    for (name, a), b in zip(loaded.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
        torch.testing.assert_close(a, codec.state_dict()[name], atol=1e-6, rtol=1e-5)
    codes = random_codes(1, 3)
    torch.testing.assert_close(loaded.decode(codes), codec.decode(codes), atol=1e-5, rtol=0)


def test_legacy_torch_save_format_loads(tmp_path: Path) -> None:
    codec = make_codec()
    path = tmp_path / "codec.pth"
    torch.save(_disk_state(codec), path, _use_new_zipfile_serialization=False)  # cannot be mmapped
    loaded = load_codec(path, codec.config, "cpu", torch.float32)
    codes = random_codes(1, 2)
    torch.testing.assert_close(loaded.decode(codes), codec.decode(codes), atol=1e-5, rtol=0)


def test_disk_styles_use_the_expected_keys() -> None:
    codec = make_codec()
    names = weight_norm_param_names(codec)
    mixed = to_weight_norm_state_dict(codec.state_dict(), names, "mixed")
    assert "encoder.block.0.conv.parametrizations.weight.original0" in mixed
    assert mixed["encoder.block.0.conv.parametrizations.weight.original0"].shape == (2, 1, 1)
    assert "quantizer.quantizer.quantizers.0.in_proj.weight_v" in mixed
    # a transposed conv's magnitude runs over its input channels (dim 0)
    assert mixed["decoder.model.1.block.1.conv.parametrizations.weight.original0"].shape == (32, 1, 1)
    with pytest.raises(ValueError, match="style"):
        to_weight_norm_state_dict(codec.state_dict(), names, "old")


def test_generator_prefix_and_legacy_buffers_are_accepted(tmp_path: Path) -> None:
    codec = make_codec()
    disk = to_weight_norm_state_dict(codec.state_dict(), weight_norm_param_names(codec), "mixed")
    for prefix, size in (("quantizer.pre_module", 64), ("encoder.block.4.block.5", 256)):
        disk[f"{prefix}.freqs_cis"] = torch.zeros(size, 8, 2, dtype=torch.bfloat16)
        disk[f"{prefix}.causal_mask"] = torch.ones(size, size, dtype=torch.bool).tril()
    disk = {"generator." + k: v for k, v in disk.items()}
    loaded = load_codec(_save(disk, tmp_path / "codec.pth"), codec.config, "cpu", torch.float32)
    codes = random_codes(1, 2)
    torch.testing.assert_close(loaded.decode(codes), codec.decode(codes), atol=1e-5, rtol=0)


def _disk_state(codec: Codec) -> dict[str, torch.Tensor]:
    return to_weight_norm_state_dict(codec.state_dict(), weight_norm_param_names(codec), "mixed")


def test_missing_key_is_named(tmp_path: Path) -> None:
    codec = make_codec()
    disk = _disk_state(codec)
    del disk["decoder.model.5.alpha"]
    with pytest.raises(ValueError, match=r"missing keys: decoder\.model\.5\.alpha"):
        load_codec(_save(disk, tmp_path / "c.pth"), codec.config, "cpu", torch.float32)


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    codec = make_codec()
    disk = _disk_state(codec) | {"decoder.model.9.alpha": torch.ones(1, 2, 1)}
    with pytest.raises(ValueError, match=r"unexpected keys: decoder\.model\.9\.alpha"):
        load_codec(_save(disk, tmp_path / "c.pth"), codec.config, "cpu", torch.float32)


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    codec = make_codec()
    disk = _disk_state(codec)
    disk["quantizer.quantizer.quantizers.2.codebook.weight"] = torch.zeros(512, 8)
    with pytest.raises(ValueError, match=r"quantizers\.2\.codebook\.weight \(expected \(1024, 8\), "
                                         r"got \(512, 8\)\)"):
        load_codec(_save(disk, tmp_path / "c.pth"), codec.config, "cpu", torch.float32)


def test_half_a_weight_norm_pair_is_an_error() -> None:
    state = {"x.weight_g": torch.ones(2, 1, 1)}
    with pytest.raises(ValueError, match=r"x\.weight_v"):
        normalize_codec_state_dict(state)
    state = {"x.parametrizations.weight.original1": torch.ones(2, 1, 1)}
    with pytest.raises(ValueError, match="without magnitudes"):
        normalize_codec_state_dict(state)


def test_load_casts_to_the_requested_dtype(tmp_path: Path) -> None:
    codec = make_codec()
    loaded = load_codec(_save(_disk_state(codec), tmp_path / "c.pth"), codec.config, "cpu",
                        torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    audio = loaded.decode(random_codes(1, 2))
    assert audio.dtype == torch.bfloat16 and audio.shape == (1, 1, 2 * HOP)
    assert math.isfinite(audio.float().abs().max().item())


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_codec(tmp_path / "absent.pth", CodecConfig.tiny(), "cpu", torch.float32)
