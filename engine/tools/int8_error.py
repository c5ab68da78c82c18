"""How far int8 weights move the logits: the same prompt through the bf16 model and its int8 copy.

    python -m engine.tools.int8_error [--preset s2-pro|tiny] [--tokens 470] [--device auto]

Random weights at the chosen shape (as engine.bench builds them), one prompt of a reference and a
sentence through the slow AR (module path, dense cache), then the fast AR's first codebook step. Prints
the relative error ||int8 - bf16|| / ||bf16|| of the slow logits (the restricted head) and the fast
logits, and how often the top token agrees.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.config import s2_pro_config, tiny_config
from engine.loader import pick_device
from engine.models.dual_ar import DualAR
from engine.models.int8 import quantize_model
from engine.reference import DenseKVCache
from engine.tools.tiny_checkpoint import random_init


@dataclass(frozen=True)
class LogitError:
    slow_relative: float  # ||int8 - bf16|| / ||bf16|| over every prompt position's restricted logits
    fast_relative: float  # the same for the fast AR's logits at codebook position 1 (same input hidden and code)
    slow_top_agree: float  # share of positions whose most likely token is the same
    fast_top_agree: float


def logits(model: DualAR, prompt: Tensor, fast_rows: int = 64, fast_input: tuple[Tensor, Tensor] | None = None
           ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """(slow restricted logits [N, 4097], fast logits at codebook position 1 for `fast_rows` positions
    spread over the prompt [fast_rows, 4096], and the fast AR's input: those positions' hidden and code)
    in float32. With `fast_input` the fast AR takes that hidden and code instead of its own, so its
    error is its own and not the slow AR's carried on."""
    t, a = model.cfg.text, model.cfg.audio
    dev, dtype = prompt.device, model.text_model.model.embeddings.weight.dtype
    n = prompt.shape[1]
    cache = DenseKVCache.empty(t.n_layer, n, t.n_local_heads, t.head_dim, dtype, dev)
    hidden = model.slow_forward(model.embed(prompt), torch.arange(n, device=dev), cache.attend)
    slow = model.slow_logits(hidden)
    fast_cache = DenseKVCache.empty(a.n_layer, 2, a.n_local_heads, a.head_dim, dtype, dev)
    rows = torch.arange(0, n, max(1, n // fast_rows), device=dev)
    inputs = fast_input or (hidden[rows], slow[rows, :-1].argmax(-1))
    fast = []
    for h, code in zip(*inputs):  # per position: its hidden, then its top code's embedding
        fast_cache.length = 0
        out = model.fast_forward(torch.stack([h, model.fast_embed(code)]), torch.arange(2, device=dev),
                                 fast_cache.attend)
        fast.append(model.fast_logits(out[1:]))
    return slow, torch.cat(fast), inputs


def measure(model: DualAR, prompt: Tensor) -> LogitError:
    """The int8 copy of `model` against `model` on `prompt` [11, N]."""
    with torch.no_grad():
        slow, fast, inputs = logits(model, prompt)
        q_slow, q_fast, _ = logits(quantize_model(copy.deepcopy(model)), prompt, fast_input=inputs)

    def rel(a: Tensor, b: Tensor) -> float:
        return float((a - b).norm() / b.norm())

    def agree(a: Tensor, b: Tensor) -> float:
        return float((a.argmax(-1) == b.argmax(-1)).float().mean())
    return LogitError(rel(q_slow, slow), rel(q_fast, fast), agree(q_slow, slow), agree(q_fast, fast))


def random_model(preset: str, device: torch.device) -> DualAR:
    """Random weights at the preset's shape, as engine.bench draws them (bf16 on CUDA, float32 on CPU)."""
    cfg = s2_pro_config() if preset == "s2-pro" else tiny_config()
    torch.manual_seed(0)
    with torch.device(device):
        model = DualAR(cfg).to(torch.bfloat16 if device.type == "cuda" else torch.float32)
    random_init(model)
    model.init_rope()
    return model.eval()


def random_prompt(model: DualAR, tokens: int, device: torch.device) -> Tensor:
    """[11, tokens]: a reference's semantic frames, then text tokens (the bench's prompt shape)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(1)
    audio = tokens * 9 // 10
    grid = torch.zeros(11, tokens, dtype=torch.long)
    grid[1, :audio] = torch.randint(0, cfg.codebook_size, (audio,), generator=g)
    grid[2:, :audio] = torch.randint(0, 1024, (9, audio), generator=g)
    grid[0, :audio] = grid[1, :audio] + cfg.semantic_start_token_id
    grid[0, audio:] = torch.randint(0, 150000, (tokens - audio,), generator=g)
    return grid.to(device)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["s2-pro", "tiny"], default="s2-pro")
    p.add_argument("--tokens", type=int, default=470)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    model = random_model(args.preset, device)
    err = measure(model, random_prompt(model, args.tokens, device))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"int8 vs {model.text_model.model.embeddings.weight.dtype} logits · preset {args.preset} · {name} · "
          f"{args.tokens} tokens: slow relative error {err.slow_relative:.4f} (top token agrees "
          f"{err.slow_top_agree:.1%}), fast relative error {err.fast_relative:.4f} (agrees {err.fast_top_agree:.1%})")


if __name__ == "__main__":
    main()
