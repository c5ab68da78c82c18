"""Many more streams than max_batch on the GPU (skipped without CUDA). On the tiny checkpoint, streams
that reuse vocoder rows (reset on the vocoder's stream while the last owner's pushes may still be
queued) stream exactly the one-shot decode of their codes. At the real S2 Pro shapes (random weights),
256 clients starting at random over two seconds, each streaming PCM through AsyncEngine, against
max_batch 32 and 128: every stream ends with all its frames and the engine gives everything back."""
from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest
import torch

from engine.bench_workload import build, make_prompt
from engine.capacity import capacity_round
from engine.loader import LoadedModel, load_model_dir
from engine.params import SamplingParams
from engine.serving.async_engine import AsyncEngine
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig
from tests.test_engine import random_prompt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="real shapes need a GPU; this runs on the GPU machine (docs/BENCHMARKS.md)")

CLIENTS, FRAMES = 256, 100


def test_reused_vocoder_rows_stream_the_one_shot_decode(tiny_dir) -> None:
    model = load_model_dir(tiny_dir, torch.device("cuda"), torch.float32)
    engine = Engine(model, EngineConfig(num_blocks=256, block_size=16, max_batch=2, max_waiting=8))
    engine.runner.set_ignore_eos(True)
    prompts = {i: random_prompt(model, 600 + i, 10, 4) for i in range(8)}
    ids, pcm, codes, step = {}, {}, {}, 0
    while len(ids) < len(prompts) or engine.has_work():
        if step < len(prompts):  # one new stream a step: rows are taken back as soon as they free
            ids[engine.add_prompt(prompts[step], SamplingParams(seed=step), 6 + step, stream_pcm=True)] = step
        for ev in engine.step():
            pcm.setdefault(ev.request_id, []).extend([ev.pcm] if ev.pcm is not None else [])
            codes.setdefault(ev.request_id, []).extend([ev.codes] if ev.codes is not None else [])
        step += 1
    for rid, i in ids.items():
        all_codes = np.concatenate(codes[rid], axis=1)
        assert all_codes.shape[1] == 6 + i
        whole = model.codec.decode(torch.from_numpy(all_codes)[None].cuda())[0, 0].float().cpu().numpy()
        # the codec's TF32 kernels round differently per push split (tests/test_codec_kernels.py
        # PUSH_ATOL); a row that kept its last owner's state would be off by the signal itself
        np.testing.assert_allclose(np.concatenate(pcm[rid]), whole, atol=5e-3, rtol=0)
    assert engine.streams.rows_free() == 2 and not engine.streams.streams


@pytest.fixture(scope="module")
def s2_pro(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return build("s2-pro", torch.device("cuda"), tmp_path_factory.mktemp("s2-pro-tokenizer"))


@pytest.mark.parametrize("max_batch", [32, 128])
def test_256_staggered_streams_all_finish(s2_pro: LoadedModel, max_batch: int) -> None:
    engine = Engine(s2_pro, EngineConfig(max_batch=max_batch, num_blocks=2400, max_waiting=CLIENTS))
    engine.runner.set_ignore_eos(True)
    aengine = AsyncEngine(engine, on_hang=lambda hang: None)  # a hang fails the clients: counted below
    prompts = [make_prompt(s2_pro.config, 7000 + i, 7000 + i) for i in range(CLIENTS)]
    try:
        row = asyncio.run(capacity_round(aengine, prompts, FRAMES, 2.0, seed=max_batch))
        health = aengine.health()
    finally:
        aengine.shutdown()
    print(f"max_batch {max_batch}: {row}")
    assert health["healthy"], health["reason"]
    assert (row.served, row.refused, row.failed) == (CLIENTS, 0, 0)
    assert not engine.jobs and not engine.streams.streams and engine.streams.rows_free() == max_batch
    assert engine.blocks.num_free == engine.blocks.num_blocks
    assert sorted(engine.scheduler.free_slots) == list(range(max_batch))
    del engine, aengine
    gc.collect()
    torch.cuda.empty_cache()
