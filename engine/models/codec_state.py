"""Reading and writing the codec's on-disk state dict (`codec.pth`, a torch pickle).

The published file stores the weight-normed convolutions as (g, v) pairs: the causal convs in the
`X.conv.parametrizations.weight.original0/original1` style of `torch.nn.utils.parametrizations`, the VQ
projections in the older `X.weight_g/X.weight_v` style. It also carries non-learned buffers of the
upstream transformers (`freqs_cis`, `causal_mask`) and, in training exports, a `generator.` prefix.
`normalize_codec_state_dict` turns any of these into our module's plain names; `to_weight_norm_state_dict`
writes the reverse (for tiny test checkpoints in the real format).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from engine.models.codec import Codec, CodecConfig
from engine.state_dict import state_dict_mismatches

GENERATOR_PREFIX = "generator."
# Buffers upstream's transformers register (RoPE table, dense causal mask); we compute both on the fly.
LEGACY_BUFFER_SUFFIXES = (".freqs_cis", ".causal_mask")
# (suffix of g, suffix of v) per on-disk weight-norm style; the folded weight is `<prefix>.weight`.
WEIGHT_NORM_STYLES = {
    "parametrizations": (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
    "weight_g": (".weight_g", ".weight_v"),
}


def fold_weight_norm(g: Tensor, v: Tensor) -> Tensor:
    """w = g · v / ‖v‖, the norm over every dim but 0, computed in float32, returned in v's dtype."""
    vf = v.float()
    norm = vf.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))
    return (g.float() * vf / norm).to(v.dtype)


def _fold_all(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = dict(state)
    for g_suffix, v_suffix in WEIGHT_NORM_STYLES.values():
        for key in [k for k in state if k.endswith(g_suffix)]:
            prefix = key[: -len(g_suffix)]
            if prefix + v_suffix not in state:
                raise ValueError(f"codec state: {key} has no matching {prefix + v_suffix}")
            out[prefix + ".weight"] = fold_weight_norm(out.pop(key), out.pop(prefix + v_suffix))
        orphans = [k for k in out if k.endswith(v_suffix)]
        if orphans:
            raise ValueError(f"codec state: weight-norm directions without magnitudes: {', '.join(orphans)}")
    return out


def normalize_codec_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip a `generator.` prefix, drop legacy buffers, fold weight norm (both key styles)."""
    state: dict[str, Tensor] = {}
    for key, value in sd.items():
        name = key[len(GENERATOR_PREFIX):] if key.startswith(GENERATOR_PREFIX) else key
        if name.endswith(LEGACY_BUFFER_SUFFIXES):
            continue
        if name in state:
            raise ValueError(f"codec state: {name} appears both with and without the generator. prefix")
        state[name] = value
    return _fold_all(state)


def to_weight_norm_state_dict(model_state: dict[str, Tensor], wn_names: list[str],
                              style: str) -> dict[str, Tensor]:
    """Write weights named in `wn_names` as (g = ‖w‖ over dims but 0, v = w) in `style`:
    "parametrizations", "weight_g", or "mixed" (as the published file: `.conv.weight` of the causal
    convs in the parametrizations style, the VQ projections as weight_g/weight_v)."""
    if style not in (*WEIGHT_NORM_STYLES, "mixed"):
        raise ValueError(f"weight-norm style must be parametrizations, weight_g or mixed, got {style!r}")
    out = dict(model_state)
    for name in wn_names:
        if not name.endswith(".weight") or name not in out:
            raise ValueError(f"{name} is not a weight of this state dict")
        w = out.pop(name)
        prefix = name[: -len(".weight")]
        key_style = style if style != "mixed" else (
            "parametrizations" if name.endswith(".conv.weight") else "weight_g")
        g_suffix, v_suffix = WEIGHT_NORM_STYLES[key_style]
        norm = w.float().flatten(1).norm(dim=1).view(-1, *([1] * (w.ndim - 1)))
        out[prefix + g_suffix] = norm.to(w.dtype)
        out[prefix + v_suffix] = w.clone()
    return out


def _read(path: Path) -> object:
    """torch.load restricted to tensors and containers. Memory-mapped where the file format allows,
    so the ~0.3 GB of legacy buffers in the published file are never read."""
    if not path.is_file():
        raise ValueError(f"codec weights not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # only the legacy (non-zip) format refuses mmap; others are real errors
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def load_codec(path: str | Path, config: CodecConfig, device: torch.device | str,
               dtype: torch.dtype) -> Codec:
    """Load `codec.pth` strictly into a `Codec` built from `config`; ValueError names every mismatch."""
    raw = _read(Path(path))
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]  # a training checkpoint wraps the weights
    if not isinstance(raw, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(raw).__name__})")
    state = normalize_codec_state_dict(raw)
    with torch.device("meta"):
        model = Codec(config)
    problems = state_dict_mismatches(model.state_dict(), state)
    if problems:
        raise ValueError(f"codec weights in {path} do not match the codec layout: " + " | ".join(problems))
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.to(device).requires_grad_(False).eval()
