"""The codec transformer's in-place window attention (engine/window_attention.py) against the module
path's: the ring put in time order, the new keys appended, SDPA with the window mask. Output and the
advanced ring, for streams at their start, mid-ring and long past it, with fewer new positions than
ring entries and more. On CPU in Triton's interpreter (float32, IEEE products)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kernels.window_attention import window_attention
from engine.models.codec_layers import apply_rope_cos_sin, rope_cos_sin, window_mask

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reference(q, k, v, rings, pos, window):
    """rings [B, 2, H, R, D] (ring order) -> (out [B, n, H, D], advanced rings)."""
    ring, num_new = window - 1, q.shape[1]
    before = (pos[:, None] + torch.arange(ring, device=pos.device)) % ring  # entries in time order
    index = before.view(-1, 1, 1, ring, 1).expand_as(rings)
    past = rings.gather(3, index)
    keys = torch.cat([past[:, 0], k.transpose(1, 2)], 2)  # [B, H, R + n, D]
    values = torch.cat([past[:, 1], v.transpose(1, 2)], 2)
    mask = window_mask(pos[:, None, None], num_new, window, pos.device)[:, None]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask).transpose(1, 2)
    advanced = rings.clone().scatter_(3, (index + num_new) % ring, torch.stack([keys, values], 1)[..., num_new:, :])
    return out, advanced


@pytest.mark.parametrize("window,tiles", [(6, None), (70, (32, 2)), (70, (64, 4))])
@pytest.mark.parametrize("num_new", [1, 3, 8])
def test_window_attention_equals_module_path(num_new: int, window: int, tiles: tuple[int, int] | None) -> None:
    """A ring of 5 entries (one step of the online softmax), and of 69 in steps of 32 or 64 entries."""
    torch.manual_seed(num_new)
    heads, dim, rows_total, layers = 2, 16, 5, 2
    ring = window - 1
    # each row: [layers, 2, H, R, D] after a 7-float prefix of other state, as in the vocoder's rows
    per_layer = 2 * heads * ring * dim
    state = torch.randn(rows_total, 7 + layers * per_layer, device=DEVICE)
    rows = torch.tensor([3, 0, 4], device=DEVICE)
    pos = torch.tensor([0, 2, 17 * window], device=DEVICE)  # a fresh stream, one inside its first ring, one far on
    layer = 1
    start = 7 + layer * per_layer
    qkv = torch.randn(3, num_new, 3, heads, dim, device=DEVICE)
    positions = pos[:, None] + torch.arange(num_new, device=DEVICE)
    rope = rope_cos_sin(positions.flatten(), dim, 10000.0).unflatten(0, positions.shape)  # [B, n, D/2, 2]
    q, k, v = qkv.unbind(2)
    rings = state[rows, start:start + per_layer].view(3, 2, heads, ring, dim)
    want, advanced = reference(apply_rope_cos_sin(q, rope), apply_rope_cos_sin(k, rope), v, rings, pos, window)
    before = state.clone()
    got = window_attention(qkv, rope, state, rows, pos, start, window, tiles)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    expected = before.clone()
    expected[rows, start:start + per_layer] = advanced.flatten(1)
    # keys rotated here may differ from apply_rope_cos_sin's in the last bit; the rest of every row is untouched
    torch.testing.assert_close(state, expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(state[:, :start], before[:, :start]) and torch.equal(state[:, start + per_layer:],
                                                                            before[:, start + per_layer:])
    others = [s for s in range(rows_total) if s not in rows.tolist()]
    assert torch.equal(state[others], before[others])
