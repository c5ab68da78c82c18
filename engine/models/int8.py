"""Weight-only int8: every slow- and fast-AR projection stored as int8 with one float32 scale per output
channel (symmetric, absmax / 127), quantized from the bf16 checkpoint.

The embeddings (also the slow AR's tied head), the norms and the codec stay as they are. The module path
multiplies by the dequantized weight (`Int8Linear.forward`), which makes it the reference the int8
kernels (kernels/linear.py) are tested against: those read the int8 rows and apply the scale after the
sum over K, in registers.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)
WEIGHTS = ("bf16", "int8")  # what --weights accepts; bf16 keeps the checkpoint's own projections
INT8_MAX = 127


@dataclass(frozen=True)
class Int8Weight:
    """A projection's weight as the kernels read it: q int8 [N, K], scale float32 [N]."""

    q: Tensor
    scale: Tensor

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def dequantize(self, dtype: torch.dtype) -> Tensor:
        return dequantize(self.q, self.scale, dtype)


def quantize(w: Tensor) -> tuple[Tensor, Tensor]:
    """w [N, K] -> (q int8 [N, K], scale float32 [N]) with w ≈ q * scale[:, None]; an all-zero row gets
    scale 1 (q 0)."""
    wf = w.detach().float()
    amax = wf.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = torch.round(wf / scale[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    return (q.float() * scale[:, None]).to(dtype)


class Int8Linear(nn.Module):
    """nn.Linear without bias whose `weight` is int8 [out, in] and `scale` float32 [out]. Same state-dict
    key for the weight as the bf16 layer, plus `<name>.scale`."""

    def __init__(self, in_features: int, out_features: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.scale = nn.Parameter(torch.ones(out_features, dtype=torch.float32, device=device),
                                  requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, device="meta")
        q, scale = quantize(linear.weight)
        layer.weight = nn.Parameter(q, requires_grad=False)
        layer.scale = nn.Parameter(scale, requires_grad=False)
        return layer

    def int8_weight(self) -> Int8Weight:
        return Int8Weight(self.weight.data, self.scale.data)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, dequantize(self.weight, self.scale, x.dtype))


def projection_names(model: nn.Module) -> list[str]:
    """The Dual-AR's projections that int8 covers: every Linear of the slow and fast blocks and the
    fast AR's output head (by module name)."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, Int8Linear))]


def _replace_linears(model: M, make: Callable[[nn.Linear], Int8Linear]) -> M:
    for name in projection_names(model):
        linear = model.get_submodule(name)
        if isinstance(linear, nn.Linear):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, make(linear))
    return model


def quantize_model(model: M) -> M:
    """Replace every projection by its Int8Linear (quantized on the device its weight lives on), in place."""
    with torch.no_grad():
        return _replace_linears(model, Int8Linear.from_linear)


def int8_skeleton(model: M) -> M:
    """Replace every projection by an empty Int8Linear on the meta device (to load a saved int8 state)."""
    return _replace_linears(model, lambda linear: Int8Linear(linear.in_features, linear.out_features, device="meta"))


def projection_weight(module: nn.Module) -> Tensor | Int8Weight:
    """What the projection kernels read for a Linear or an Int8Linear."""
    if isinstance(module, Int8Linear):
        return module.int8_weight()
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight.data


def is_int8(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
