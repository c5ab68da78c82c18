"""The fused Triton kernels against the module path they replace (same inputs, same seeds).

On a machine without a GPU they run through Triton's interpreter on CPU tensors in float32 (conftest
sets TRITON_INTERPRET); on the GPU machine the same tests run on CUDA, also in bfloat16.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.ar.attention import PrefillSegment, paged_decode_reference, prefill_attention
from engine.ar.sampler import BatchParams, push_recent, sample_fast, sample_slow
from engine.backend import resolve_backend
from engine.kernels import transformer as kernels
from engine.kernels.attention import paged_decode_triton, paged_prefill_triton, prefill_block_m, prefill_tiles
from engine.kernels.sampling import sample_into
from engine.models.codec_layers import LayerScale
from engine.models.layers import Block, RMSNorm, apply_rope_complex, rope_table
from engine.params import SamplingParams
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig
from tests.test_engine import random_prompt, run_engine

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# The interpreter cannot hold bfloat16 (numpy has none): bf16 runs where the kernels really compile.
DTYPES = [torch.float32] + ([torch.bfloat16] if DEV.type == "cuda" else [])


@pytest.fixture(scope="module")
def dev_model(tiny_model, tiny_dir):
    """The tiny checkpoint in float32 on the device the kernels run on."""
    if DEV.type == "cpu":
        return tiny_model
    from engine.loader import load_model_dir
    return load_model_dir(tiny_dir, DEV, torch.float32)


def tol(dtype: torch.dtype) -> dict:
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_delta,with_scale", [(False, False), (True, False), (True, True)])
def test_add_rmsnorm_matches_module(dtype, with_delta, with_scale) -> None:
    """h = x + delta (times a layer scale, as the codec's transformer adds its sublayers) is exact;
    the norm matches RMSNorm."""
    g = torch.Generator().manual_seed(1)
    x, d = (torch.randn(5, 96, generator=g).to(DEV, dtype) for _ in range(2))
    norm = RMSNorm(96, 1e-6).to(DEV, dtype)
    norm.weight.data = torch.randn(96, generator=g).to(DEV, dtype)
    scale = LayerScale(96).to(DEV, dtype)
    scale.gamma.data = torch.randn(96, generator=g).to(DEV, dtype)
    h, out = kernels.add_rmsnorm(x, d if with_delta else None, norm.weight, 1e-6,
                                 scale.gamma if with_scale else None)
    want_h = x + scale(d) if with_scale else x + d if with_delta else x
    assert torch.equal(h, want_h)
    torch.testing.assert_close(out, norm(want_h), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_rope_write_matches_attention_path(dtype, qk_norm) -> None:
    g = torch.Generator().manual_seed(2)
    heads, kv_heads, dim, n = 4, 2, 16, 3
    qkv = torch.randn(n, (heads + 2 * kv_heads) * dim, generator=g).to(DEV, dtype)
    q_norm, k_norm = RMSNorm(dim, 1e-6).to(DEV, dtype), RMSNorm(dim, 1e-6).to(DEV, dtype)
    q_norm.weight.data = torch.randn(dim, generator=g).to(DEV, dtype)
    k_norm.weight.data = torch.randn(dim, generator=g).to(DEV, dtype)
    rope = rope_table(100, dim, 1e6, DEV)
    positions = torch.tensor([0, 5, 77], device=DEV)
    slots = torch.tensor([13, 2, 7], device=DEV)
    k_pool = torch.zeros(4, 4, kv_heads, dim, device=DEV, dtype=dtype)
    v_pool = torch.zeros_like(k_pool)
    q = kernels.qk_rope_write(qkv, q_norm.weight if qk_norm else None, k_norm.weight if qk_norm else None,
                              1e-6, torch.view_as_real(rope).contiguous(), positions, slots, k_pool, v_pool,
                              heads, kv_heads)
    wq, wk, wv = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    wq, wk, wv = wq.unflatten(-1, (heads, dim)), wk.unflatten(-1, (kv_heads, dim)), wv.unflatten(-1, (kv_heads, dim))
    if qk_norm:
        wq, wk = q_norm(wq), k_norm(wk)
    torch.testing.assert_close(q, apply_rope_complex(wq, rope[positions]), **tol(dtype))
    torch.testing.assert_close(k_pool.flatten(0, 1)[slots], apply_rope_complex(wk, rope[positions]), **tol(dtype))
    assert torch.equal(v_pool.flatten(0, 1)[slots], wv)
    untouched = torch.ones(16, dtype=torch.bool, device=DEV)
    untouched[slots] = False
    assert not k_pool.flatten(0, 1)[untouched].any() and not v_pool.flatten(0, 1)[untouched].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (8, 2)])
def test_rope_write_attend_equals_write_then_attention(dtype, heads, kv_heads) -> None:
    """The fast AR's fused kernel against qk_rope_write followed by the paged attention reference on the
    same cache: rows at several positions of their own 16-slot windows (position 0 attends to itself
    alone, 9 to all ten), earlier entries already stored; the same k/v stored (k within the rounding
    of a fused multiply-add the compiler may place differently in the two kernels)."""
    g = torch.Generator().manual_seed(heads)
    dim, window, n = 16, 16, 4
    positions = torch.tensor([0, 3, 9, 15], device=DEV)
    slots = torch.tensor([2, 0, 3, 1], device=DEV) * window + positions
    qkv = torch.randn(n, (heads + 2 * kv_heads) * dim, generator=g).to(DEV, dtype)
    rope = torch.view_as_real(rope_table(16, dim, 1e6, DEV)).contiguous()
    pools = [torch.randn(4, window, kv_heads, dim, generator=g).to(DEV, dtype) for _ in range(2)]
    fused = [p.clone() for p in pools]
    got = kernels.rope_write_attend(qkv, rope, positions, slots, fused[0], fused[1], heads, kv_heads, window)
    q = kernels.qk_rope_write(qkv, None, None, 1e-6, rope, positions, slots, pools[0], pools[1], heads, kv_heads)
    torch.testing.assert_close(fused[0], pools[0], atol=1e-6, rtol=1e-6 if dtype == torch.float32 else 1e-2)
    assert torch.equal(fused[1], pools[1])
    tables = (slots // window)[:, None]
    want = paged_decode_reference(q.float(), pools[0].float(), pools[1].float(), tables, positions + 1)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_feed_forward_gate(dtype) -> None:
    """The gate on (w1 x, w3 x) column pairs, the fused w1|w3 layout."""
    gu = torch.randn(3, 2 * 1500, generator=torch.Generator().manual_seed(3)).to(DEV, dtype)
    want = F.silu(gu[:, 0::2]) * gu[:, 1::2]
    torch.testing.assert_close(kernels.silu_mul(gu), want, **tol(dtype))


def test_fused_stack_matches_blocks(tiny_model) -> None:
    """A whole stack (norms, attention through the caller, SwiGLU, final norm) equals run_layers."""
    from engine.kernels.fused_stack import FusedStack
    from engine.models.layers import run_layers, sdpa_gqa
    model = tiny_model.model
    cfg = model.cfg.text
    layers = torch.nn.ModuleList(Block(cfg) for _ in range(2)).to(DEV)
    norm = RMSNorm(cfg.dim, cfg.norm_eps).to(DEV)
    with torch.no_grad():
        for p in list(layers.parameters()) + list(norm.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.2)
    rope = rope_table(64, cfg.head_dim, cfg.rope_base, DEV)
    n = 7
    x = torch.randn(n, cfg.dim, generator=torch.Generator().manual_seed(4)).to(DEV)
    positions = torch.arange(n, device=DEV)
    mask = torch.ones(n, n, dtype=torch.bool, device=DEV).tril()
    cache: dict[int, tuple] = {}

    def attend(layer, q, k, v):
        cache[layer] = (k, v)
        return sdpa_gqa(q, k, v, mask)

    with torch.no_grad():
        want = run_layers(layers, norm, x, rope[positions], attend)
        stack = FusedStack(layers, norm, cfg, rope)
        pools = [torch.zeros(n, cfg.n_local_heads, cfg.head_dim, device=DEV) for _ in range(4)]
        got = stack.forward(x, positions, positions, pools[:2], pools[2:],
                            lambda layer, q: sdpa_gqa(q, pools[layer], pools[2 + layer], mask))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for layer in range(2):
        torch.testing.assert_close(pools[layer], cache[layer][0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the gate/up re-pointing keeps the modules' own forward intact
        torch.testing.assert_close(run_layers(layers, norm, x, rope[positions], attend), want)


def test_frame_embed_matches_dual_ar_embed(dev_model) -> None:
    model = dev_model.model
    mc = model.cfg
    g = torch.Generator().manual_seed(5)
    frame = torch.randint(0, 4096, (4, 11), generator=g)
    frame[2, 0] = mc.codebook_size  # end of speech
    frame[:, 1] = frame[:, 0].clamp(max=mc.codebook_size - 1)
    frame = frame.to(DEV)
    grid = torch.cat([model.restricted_to_token(frame[:, 0])[None], frame[:, 1:].T])
    got = kernels.frame_embed(frame, model.text_model.model.embeddings.weight,
                              model.audio_decoder.codebook_embeddings.weight, mc.semantic_start_token_id,
                              mc.codebook_size, mc.eos_token_id)
    with torch.no_grad():
        torch.testing.assert_close(got, model.embed(grid), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("num_splits", [1, 2, 8, None])
def test_paged_decode_kernel_matches_reference(num_splits) -> None:
    """Each split count, and the default for the batch (decode_splits: 16 for 3 rows of 2 kv heads)."""
    g = torch.Generator().manual_seed(6)
    kv_heads, heads, dim, block = 2, 4, 16, 16
    k_pool = torch.randn(20, block, kv_heads, dim, generator=g).to(DEV)
    v_pool = torch.randn(20, block, kv_heads, dim, generator=g).to(DEV)
    q = torch.randn(3, heads, dim, generator=g).to(DEV)
    lens = torch.tensor([1, 17, 150], device=DEV)
    tables = torch.stack([torch.randperm(19, generator=g)[:10] for _ in range(3)]).to(DEV)
    got = paged_decode_triton(q, k_pool, v_pool, tables, lens, num_splits)
    torch.testing.assert_close(got, paged_decode_reference(q, k_pool, v_pool, tables, lens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads,heads", [(2, 8), (1, 3)])
def test_paged_prefill_kernel_matches_reference(dtype, kv_heads, heads) -> None:
    """Runs of new tokens of three sequences packed together (one from position 0, one after a cached
    prefix of 37 tokens, one longer than a query tile), each over its own shuffled block table, against
    the per-sequence causal attention of the plain path; 3 query heads per kv head pad to 4."""
    g = torch.Generator().manual_seed(8)
    dim, block = 16, 16
    k_pool = torch.randn(40, block, kv_heads, dim, generator=g).to(DEV, dtype)
    v_pool = torch.randn(40, block, kv_heads, dim, generator=g).to(DEV, dtype)
    runs = [(0, 5), (37, 20), (3, 150)]
    tables = [torch.randperm(39, generator=g)[:12] for _ in runs]
    q = torch.randn(sum(n for _, n in runs), heads, dim, generator=g).to(DEV, dtype)
    block_m = prefill_block_m(heads // kv_heads)
    tiles = prefill_tiles(runs, block_m)
    assert block_m * 4 == 128 and len(tiles) == 1 + 1 + -(-150 // block_m)
    got = paged_prefill_triton(q, k_pool, v_pool, torch.stack(tables).to(DEV),
                               torch.tensor(tiles, dtype=torch.long, device=DEV), block_m)
    want = prefill_attention(q.float(), k_pool.float(), v_pool.float(),
                             [PrefillSegment(start, n, table.to(DEV)) for (start, n), table in zip(runs, tables)])
    torch.testing.assert_close(got.float(), want, **tol(dtype))


PARAMS = [SamplingParams(temperature=0.8, top_p=0.8, top_k=30, seed=1),
          SamplingParams(temperature=1.0, top_p=1.0, top_k=4096, seed=2**40 + 3),
          SamplingParams(temperature=0.3, top_p=0.5, top_k=5, seed=7, ras=False),
          SamplingParams(temperature=0.0, top_p=0.9, top_k=100, seed=9),
          SamplingParams(temperature=1.5, top_p=0.99, top_k=1, seed=11),
          SamplingParams(temperature=0.7, top_p=0.95, top_k=2000, seed=13)]


@pytest.mark.parametrize("kind", ["wide", "peaked", "ties", "bf16"])
def test_sampling_kernel_equals_reference_sampler(kind) -> None:
    """Slow draw (RAS, end-of-speech suppression) and fast draw: the same tokens as sampler.py."""
    g = torch.Generator().manual_seed({"wide": 1, "peaked": 2, "ties": 3, "bf16": 4}[kind])
    batch = len(PARAMS)
    logits = torch.randn(batch, 4097, generator=g) * (4.0 if kind == "peaked" else 1.0)
    if kind == "ties":
        logits = (logits * 4).round() / 4  # many equal values: the order among them is by index
    if kind == "bf16":
        logits = logits.bfloat16()
    logits = logits.to(DEV)
    params = BatchParams.build(PARAMS, DEV)
    slots = torch.arange(batch, device=DEV)
    frames = torch.tensor([0, 5, 17, 100, 3, 9], device=DEV)
    for ignore in (0, 1):
        recent = torch.randint(0, 4096, (batch, 10), generator=g).to(DEV)
        recent[:, 0] = -1
        # make RAS fire: put each row's normal draw into its window
        normal = sample_slow(logits.float(), BatchParams(params.temperature, params.top_p, params.top_k,
                                                         torch.zeros_like(params.ras), params.seed),
                             frames, recent)
        recent[::2, 4] = normal[::2]
        want_logits = logits.float().clone()
        if ignore:
            want_logits[:, -1] = float("-inf")
        want = sample_slow(want_logits, params, frames, recent)
        out = torch.zeros(batch, 11, dtype=torch.long, device=DEV)
        window = recent.clone()
        sample_into(logits, slots, frames, params, out, 0, 0, recent=window,
                            ignore_last=torch.tensor([ignore], dtype=torch.int32, device=DEV))
        assert torch.equal(out[:, 0], want), (out[:, 0], want)
        assert torch.equal(out[:, 1], want.clamp(max=4095))
        assert torch.equal(window, push_recent(recent, want))
    fast = logits[:, :4096].contiguous()
    out = torch.zeros(batch, 11, dtype=torch.long, device=DEV)
    sample_into(fast, slots, frames, params, out, 5, 2 + 4)
    assert torch.equal(out[:, 5], sample_fast(fast.float(), params, frames, 4))


def test_fused_engine_equals_module_engine(dev_model) -> None:
    """The whole fused path (prefill, frames, fast AR, sampling) against the module path, float32."""
    model = dev_model
    arrivals = [(0, random_prompt(model, 700, 20, 30), SamplingParams(seed=1), 3),
                (1, random_prompt(model, 701, 12, 9), SamplingParams(seed=2, top_k=4096, top_p=1.0,
                                                                      temperature=1.2), 2)]
    results = []
    for fused in (False, True):
        engine = Engine(model, EngineConfig(num_blocks=32, block_size=16, max_batch=2, cuda_graphs=False,
                                            fused_kernels=fused))
        assert engine.runner.fused == fused
        results.append(run_engine(engine, arrivals))
    for i in range(len(arrivals)):
        assert results[1][i].shape == (10, arrivals[i][3])
        assert np.array_equal(results[0][i], results[1][i]), f"request {i}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_embed_rows_equals_embedding(dtype) -> None:
    """The gather of a strided column of codes (as the frame's output holds them) equals F.embedding."""
    g = torch.Generator().manual_seed(12)
    weight = torch.randn(50, 1500, generator=g).to(DEV, dtype)
    frame = torch.randint(0, 50, (5, 11), generator=g).to(DEV)
    got = kernels.embed_rows(frame[:, 3], weight)
    assert torch.equal(got, F.embedding(frame[:, 3], weight))


def test_paged_prefill_equals_module_prefill(dev_model) -> None:
    """The fused prefill (paged prefill kernel over query tiles), exact and padded to a graph bucket's
    fixed sizes, against the module path's prefill with per-sequence causal attention: same hidden
    states and KV, also for a sequence whose first block was computed in an earlier step."""
    from engine.ar.runner import ModelRunner, RunnerConfig
    from engine.serving.kv_cache import BlockManager
    from engine.serving.request import Sequence
    model = dev_model.model
    runs = []
    for mode in ("module", "exact", "padded"):
        backend = resolve_backend(model.text_model.model.embeddings.weight.device, fused_kernels=mode != "module")
        runner = ModelRunner(model, RunnerConfig(num_blocks=16, block_size=16, max_batch=4), backend)
        blocks = BlockManager(16, 16)
        seqs = []
        for i, (length, start) in enumerate([(20, 0), (30, 16)]):
            prompt = [tuple(c) for c in random_prompt(dev_model, 900 + i, 10, length - 13).T.tolist()]
            seq = Sequence(i, prompt, 4, 0)
            seq.alloc, seq.slot = blocks.allocate(prompt, len(prompt) + 4), i
            seqs.append((seq, start))
        # the second sequence's first block is computed first (as a cached prefix would be)
        first = [(seqs[1][0], 0, 16)]
        rest = [(seqs[0][0], 0, seqs[0][0].prompt_len), (seqs[1][0], 16, seqs[1][0].prompt_len - 16)]
        for items in (first, rest):
            n = sum(k for _, _, k in items)
            if mode == "padded":  # padded rows (beyond the tokens) write only to the scratch block
                inp = runner.prefill_inputs(items, n + 40, fixed=True)
                assert inp.tiles.shape[0] == -(-(n + 40) // runner.prefill_block_m) + 5
                hidden = runner.prefill_paged(inp)
                assert torch.isfinite(hidden).all()
            else:
                hidden = runner._prefill_eager(items)
        runs.append((hidden[:n].clone(), [p.clone() for p in runner.k_pools], [p.clone() for p in runner.v_pools]))
    for got in runs[1:]:
        torch.testing.assert_close(got[0], runs[0][0], atol=1e-4, rtol=1e-4)
        for a, b in zip(got[1] + got[2], runs[0][1] + runs[0][2]):
            torch.testing.assert_close(a[:16], b[:16], atol=1e-4, rtol=1e-4)  # every block but the scratch one


def test_fused_kernels_on_cpu_need_the_interpreter(tiny_model, monkeypatch) -> None:
    """tiny_model lives on the CPU on every machine: asking it for fused kernels is refused."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="need a CUDA GPU"):
        Engine(tiny_model, EngineConfig(num_blocks=8, block_size=16, max_batch=1, fused_kernels=True))
