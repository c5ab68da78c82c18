"""CUDA paths against the plain ones (run on the GPU machine; CI has no GPU, so these skip there)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.ar.attention import paged_decode_reference
from engine.loader import load_model_dir
from engine.params import SamplingParams
from engine.reference import generate
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig
from tests.test_engine import random_prompt, run_engine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="CUDA paths need a GPU; they run on the GPU machine (docs/BENCHMARKS.md)")


@pytest.fixture(scope="module")
def cuda_model(tiny_dir):
    return load_model_dir(tiny_dir, torch.device("cuda"), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("groups,head_dim", [(4, 128), (2, 16)])
def test_triton_paged_decode_matches_reference(dtype, groups, head_dim) -> None:
    from engine.kernels.attention import paged_decode_triton
    torch.manual_seed(0)
    kv_heads, block, num_blocks, batch = 8 if head_dim == 128 else 2, 64, 80, 5
    k_pool = torch.randn(num_blocks, block, kv_heads, head_dim, device="cuda", dtype=dtype)
    v_pool = torch.randn_like(k_pool)
    q = torch.randn(batch, kv_heads * groups, head_dim, device="cuda", dtype=dtype)
    lens = torch.tensor([1, 63, 64, 700, 1500], device="cuda")
    tables = torch.stack([torch.randperm(num_blocks - 1, device="cuda")[:32] for _ in range(batch)])
    got = paged_decode_triton(q, k_pool, v_pool, tables, lens)
    want = paged_decode_reference(q.float(), k_pool.float(), v_pool.float(), tables, lens)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_cuda_graph_frames_equal_eager_frames(cuda_model, batch: int) -> None:
    arrivals = [(0, random_prompt(cuda_model, 300 + i, 20, 30 + 7 * i), SamplingParams(seed=i), 16)
                for i in range(batch)]
    results = []
    for graphs in (False, True):
        engine = Engine(cuda_model, EngineConfig(num_blocks=256, block_size=16, max_batch=8,
                                                 cuda_graphs=graphs))
        assert (engine.graphs is not None) == graphs
        results.append(run_engine(engine, arrivals))
    for i in range(batch):
        assert np.array_equal(results[0][i], results[1][i]), f"row {i}"


def test_cuda_engine_equals_reference_loop(cuda_model) -> None:
    arrivals = [(i, random_prompt(cuda_model, 400 + i, 16, 20), SamplingParams(seed=10 + i), 12)
                for i in range(3)]
    engine = Engine(cuda_model, EngineConfig(num_blocks=256, block_size=16, max_batch=4))
    got = run_engine(engine, arrivals)
    assert engine.runner.prefill_graphs is not None
    assert engine.runner.prefill_graphs.replays > 0  # the prompts went through the prefill graphs
    for i, (_, prompt, params, frames) in enumerate(arrivals):
        want = generate(cuda_model.model, prompt, params, frames).numpy()
        assert np.array_equal(got[i], want), f"request {i}"


def test_graph_captured_vocoder_stream_equals_one_shot_decode(cuda_model) -> None:
    engine = Engine(cuda_model, EngineConfig(num_blocks=256, block_size=16, max_batch=4))
    assert engine.streams.graphs, "vocoder graphs were not captured"
    ids = [engine.add_prompt(random_prompt(cuda_model, 500 + i, 12, 5), SamplingParams(seed=i), 19,
                             stream_pcm=True) for i in range(3)]
    pcm: dict[int, list] = {i: [] for i in ids}
    codes: dict[int, list] = {i: [] for i in ids}
    while engine.has_work():
        for ev in engine.step():
            if ev.pcm is not None:
                pcm[ev.request_id].append(ev.pcm)
            if ev.codes is not None:
                codes[ev.request_id].append(ev.codes)
    for rid in ids:
        all_codes = torch.from_numpy(np.concatenate(codes[rid], axis=1))[None].cuda()
        whole = cuda_model.codec.decode(all_codes)[0, 0].float().cpu().numpy()
        np.testing.assert_allclose(np.concatenate(pcm[rid]), whole, atol=2e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_prefill_attention_equals_masked_reference(dtype) -> None:
    """The CUDA prefill path (causal bias aligned to the last key) against an explicit mask."""
    from engine.ar.attention import PrefillSegment, prefill_attention
    from engine.models.layers import sdpa_gqa
    torch.manual_seed(3)
    k_pool = torch.randn(40, 16, 2, 64, device="cuda", dtype=dtype)
    v_pool = torch.randn_like(k_pool)
    table = torch.randperm(40, device="cuda")
    segments = [PrefillSegment(0, 37, table[:3]), PrefillSegment(100, 45, table[3:13])]
    q = torch.randn(37 + 45, 8, 64, device="cuda", dtype=dtype)
    got = prefill_attention(q, k_pool, v_pool, segments)
    want, offset = [], 0
    for seg in segments:
        total = seg.start + seg.num_tokens
        k = k_pool[seg.block_table].flatten(0, 1)[:total].float()
        v = v_pool[seg.block_table].flatten(0, 1)[:total].float()
        mask = torch.arange(total, device="cuda")[None, :] <= torch.arange(seg.start, total, device="cuda")[:, None]
        want.append(sdpa_gqa(q[offset:offset + seg.num_tokens].float(), k, v, mask))
        offset += seg.num_tokens
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(got.float(), torch.cat(want), atol=tol, rtol=tol)


def test_fused_codec_decoder_equals_module_path_at_real_shapes() -> None:
    """Real codec shapes (random weights): pushes of the fused decoder (split over programs for few
    rows, tiled for many; float16 operands) against the module path's TF32 convolutions."""
    from engine.models.codec import Codec, CodecConfig
    from engine.vocoder.rows import RowVocoder
    torch.manual_seed(0)
    with torch.device("cuda"):
        codec = Codec(CodecConfig()).eval().requires_grad_(False)
    fused, plain = RowVocoder(codec, 4, fused=True), RowVocoder(codec, 4, fused=False)
    for slots, n in [([0], 1), ([0, 1, 2], 2), ([2, 0], 8), ([1], 1)]:
        codes = torch.randint(0, 1024, (len(slots), 10, n), device="cuda")
        index = torch.tensor(slots, device="cuda")
        got, want = fused.push(index, codes), plain.push(index, codes)
        assert got.shape == (len(slots), n * 2048)
        torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
