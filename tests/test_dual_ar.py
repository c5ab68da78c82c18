import math

import torch

from engine.config import s2_pro_config, tiny_config
from engine.models.dual_ar import DualAR, count_parameters
from engine.models.layers import apply_rope_complex, rope_table
from engine.reference import DenseKVCache


def random_model(seed: int = 0) -> DualAR:
    torch.manual_seed(seed)
    model = DualAR(tiny_config())
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    model.init_rope()
    return model.eval()


def expected_real_layout() -> dict[str, tuple[int, ...]]:
    """The spec's key tables for the real checkpoint."""
    shapes: dict[str, tuple[int, ...]] = {"text_model.model.embeddings.weight": (155776, 2560),
                                          "text_model.model.norm.weight": (2560,)}
    layer = {"attention.wqkv.weight": (6144, 2560), "attention.wo.weight": (2560, 4096),
             "attention_norm.weight": (2560,), "ffn_norm.weight": (2560,),
             "feed_forward.w1.weight": (9728, 2560), "feed_forward.w3.weight": (9728, 2560),
             "feed_forward.w2.weight": (2560, 9728)}
    for i in range(36):
        for k, s in layer.items():
            shapes[f"text_model.model.layers.{i}.{k}"] = s
        shapes[f"text_model.model.layers.{i}.attention.q_norm.weight"] = (128,)
        shapes[f"text_model.model.layers.{i}.attention.k_norm.weight"] = (128,)
    for j in range(4):
        for k, s in layer.items():
            shapes[f"audio_decoder.layers.{j}.{k}"] = s
    shapes.update({"audio_decoder.codebook_embeddings.weight": (40960, 2560),
                   "audio_decoder.embeddings.weight": (4096, 2560),
                   "audio_decoder.norm.weight": (2560,), "audio_decoder.output.weight": (4096, 2560)})
    return shapes


def test_real_shape_on_meta_device_matches_published_checkpoint() -> None:
    with torch.device("meta"):
        model = DualAR(s2_pro_config())
    assert count_parameters(model) == 4_561_852_416
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_real_layout()


def test_rope_is_interleaved_pairs_with_bf16_tables() -> None:
    table = rope_table(64, 16, 1e6)
    assert table.dtype == torch.complex64 and table.shape == (64, 8)
    x = torch.randn(5, 3, 16)
    pos = torch.tensor([0, 1, 7, 33, 63])
    out = apply_rope_complex(x, table[pos])
    # Reference written out by hand: pair (x[2i], x[2i+1]) rotated by the bf16-rounded angle table.
    inv = 1.0 / (1e6 ** (torch.arange(0, 16, 2).float() / 16))
    ang = torch.outer(pos.float(), inv)
    cos, sin = ang.cos().bfloat16().float(), ang.sin().bfloat16().float()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    want = torch.empty_like(x)
    want[..., 0::2] = x0 * cos[:, None] - x1 * sin[:, None]
    want[..., 1::2] = x1 * cos[:, None] + x0 * sin[:, None]
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    # The tables really are bf16-rounded (fp32 tables differ from them).
    assert not torch.equal(table.real[pos], ang.cos())
    # Rotate-half (the other common convention) gives a different result.
    half = torch.cat([x[..., :8] * cos[:, None] - x[..., 8:] * sin[:, None],
                      x[..., 8:] * cos[:, None] + x[..., :8] * sin[:, None]], dim=-1)
    assert not torch.allclose(out, half, atol=1e-3)


def test_rms_norm_is_float32_then_cast_then_weighted() -> None:
    from engine.models.layers import RMSNorm
    norm = RMSNorm(8, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = (torch.randn(3, 8) * 5).bfloat16()
    xf = x.float()
    want = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16() * norm.weight
    torch.testing.assert_close(norm(x), want)


def test_embedding_scales_audio_positions_by_sqrt_11() -> None:
    model = random_model()
    cfg = model.cfg
    grid = torch.zeros(11, 3, dtype=torch.long)
    grid[0] = torch.tensor([100, cfg.semantic_start_token_id + 7, cfg.eos_token_id])
    grid[1:, 1] = torch.tensor([7, 1, 2, 3, 4, 5, 6, 7, 8, 1023])
    x = model.embed(grid)
    emb = model.text_model.model.embeddings.weight
    cb = model.audio_decoder.codebook_embeddings.weight
    torch.testing.assert_close(x[0], emb[100])
    torch.testing.assert_close(x[2], emb[cfg.eos_token_id])
    rows = [i * 4096 + int(c) for i, c in enumerate(grid[1:, 1])]
    want = (emb[grid[0, 1]] + cb[rows].sum(0)) / math.sqrt(11)
    torch.testing.assert_close(x[1], want)


def test_restricted_head_equals_tied_full_head_columns() -> None:
    model = random_model()
    cfg = model.cfg
    h = torch.randn(4, cfg.text.dim)
    full = h @ model.text_model.model.embeddings.weight.T
    got = model.slow_logits(h)
    assert got.shape == (4, 4097)
    torch.testing.assert_close(got[:, :4096], full[:, cfg.semantic_start_token_id:cfg.semantic_end_token_id + 1])
    torch.testing.assert_close(got[:, 4096], full[:, cfg.eos_token_id])
    idx = torch.tensor([0, 4095, 4096])
    assert model.restricted_to_token(idx).tolist() == [151678, 155773, 151645]


def test_incremental_decoding_equals_full_forward() -> None:
    model = random_model()
    cfg = model.cfg
    n = 12
    grid = torch.zeros(11, n, dtype=torch.long)
    grid[0] = torch.randint(0, 151000, (n,))
    grid[0, 6:] = cfg.semantic_start_token_id + torch.randint(0, 4096, (6,))
    grid[1, 6:] = grid[0, 6:] - cfg.semantic_start_token_id
    grid[2:, 6:] = torch.randint(0, 1024, (9, 6))
    t = cfg.text
    full_cache = DenseKVCache.empty(t.n_layer, n, t.n_local_heads, t.head_dim, torch.float32, torch.device("cpu"))
    full = model.slow_forward(model.embed(grid), torch.arange(n), full_cache.attend)
    inc_cache = DenseKVCache.empty(t.n_layer, n, t.n_local_heads, t.head_dim, torch.float32, torch.device("cpu"))
    parts = [model.slow_forward(model.embed(grid[:, :5]), torch.arange(5), inc_cache.attend)]
    for i in range(5, n):
        parts.append(model.slow_forward(model.embed(grid[:, i:i + 1]), torch.tensor([i]), inc_cache.attend))
    torch.testing.assert_close(torch.cat(parts), full, rtol=1e-5, atol=1e-5)
    assert inc_cache.length == n


def test_gqa_maps_query_head_to_kv_head_h_div_groups() -> None:
    from engine.models.layers import sdpa_gqa
    q = torch.randn(1, 4, 8)
    k = torch.randn(3, 2, 8)
    v = torch.randn(3, 2, 8)
    out = sdpa_gqa(q, k, v, torch.ones(1, 3, dtype=torch.bool))
    for h in range(4):
        w = torch.softmax(q[0, h] @ k[:, h // 2].T / math.sqrt(8), dim=-1)
        torch.testing.assert_close(out[0, h], w @ v[:, h // 2])
