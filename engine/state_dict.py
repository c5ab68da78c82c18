"""The one check of a loaded state dict against a model's: every missing key, unexpected key and shape
mismatch, named (the Dual-AR loader and the codec loader both use it)."""
from __future__ import annotations

from torch import Tensor


def state_dict_mismatches(expected: dict[str, Tensor], got: dict[str, Tensor]) -> list[str]:
    """Human-readable lines for every missing key, unexpected key and shape mismatch."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k} (expected {tuple(expected[k].shape)}, got {tuple(got[k].shape)})"
              for k in sorted(set(expected) & set(got)) if expected[k].shape != got[k].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", shapes)):
        if items:
            more = f" … and {len(items) - 20} more" if len(items) > 20 else ""
            problems.append(f"{label}: {', '.join(items[:20])}{more}")
    return problems
