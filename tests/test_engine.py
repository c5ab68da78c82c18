"""The batched paged engine against the plain reference loop (float32, CPU, tiny checkpoint)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from engine.loader import LoadedModel
from engine.params import SamplingParams
from engine.reference import generate
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig


def random_prompt(model: LoadedModel, seed: int, text_len: int, audio_len: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    text = torch.zeros(11, text_len, dtype=torch.long)
    text[0] = torch.randint(0, 151000, (text_len,), generator=g)
    audio = torch.zeros(11, audio_len, dtype=torch.long)
    audio[1] = torch.randint(0, 4096, (audio_len,), generator=g)
    audio[2:] = torch.randint(0, 1024, (9, audio_len), generator=g)
    audio[0] = audio[1] + cfg.semantic_start_token_id
    tail = torch.zeros(11, 3, dtype=torch.long)
    tail[0] = torch.tensor([151644, 77, 151673])
    return torch.cat([text[:, :text_len // 2], audio, text[:, text_len // 2:], tail], dim=1)


def run_engine(engine: Engine, arrivals: list[tuple[int, torch.Tensor, SamplingParams, int]]
               ) -> dict[int, np.ndarray]:
    """arrivals: (step at which it arrives, prompt, params, max_frames) -> codes [10, N] per arrival."""
    ids: dict[int, int] = {}
    codes: dict[int, list[np.ndarray]] = {}
    step = 0
    while len(ids) < len(arrivals) or engine.has_work():
        for i, (at, prompt, params, max_frames) in enumerate(arrivals):
            if at == step:
                ids[engine.add_prompt(prompt, params, max_frames)] = i
        for ev in engine.step():
            if ev.codes is not None:
                codes.setdefault(ids[ev.request_id], []).append(ev.codes)
        step += 1
        assert step < 10_000
    return {i: np.concatenate(codes.get(i, [np.zeros((10, 0), np.int64)]), axis=1)
            for i in range(len(arrivals))}


@pytest.mark.parametrize("concurrency,run_ahead", [(1, False), (3, False), (8, False), (3, True), (8, True)])
def test_batched_engine_equals_reference(tiny_model: LoadedModel, concurrency: int, run_ahead: bool) -> None:
    """run_ahead: each step queues the next frame before reading the last (the CUDA default)."""
    rng = random.Random(concurrency)
    arrivals = []
    for i in range(concurrency):
        params = SamplingParams(temperature=rng.choice([0.5, 0.8, 1.0]), top_p=rng.choice([0.7, 0.9, 1.0]),
                                top_k=rng.choice([5, 30, 200]), ras=rng.random() < 0.7, seed=rng.randrange(1000))
        prompt = random_prompt(tiny_model, 100 + i, rng.randrange(8, 40), rng.randrange(0, 50))
        arrivals.append((rng.randrange(0, 6) if i else 0, prompt, params, rng.randrange(5, 25)))
    engine = Engine(tiny_model, EngineConfig(num_blocks=256, block_size=16, max_batch=8, prefill_budget=48,
                                             run_ahead=run_ahead))
    assert engine.run_ahead == run_ahead
    got = run_engine(engine, arrivals)
    for i, (_, prompt, params, max_frames) in enumerate(arrivals):
        want = generate(tiny_model.model, prompt, params, max_frames).numpy()
        assert got[i].shape == want.shape and np.array_equal(got[i], want), f"request {i} differs"
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_prefix_reuse_computes_only_new_tokens(tiny_model: LoadedModel) -> None:
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16, max_batch=4))
    voice = random_prompt(tiny_model, 7, 20, 60)
    second = torch.cat([voice, random_prompt(tiny_model, 8, 10, 0)], dim=1)
    params = SamplingParams(seed=5)
    run_engine(engine, [(0, voice, params, 6)])
    seq_tokens: list[int] = []
    orig = engine.runner.prefill

    def counting(items):
        seq_tokens.extend(n for _, _, n in items)
        return orig(items)

    engine.runner.prefill = counting
    got = run_engine(engine, [(0, second, params, 8)])[0]
    cached = (voice.shape[1] // 16) * 16
    assert sum(seq_tokens) == second.shape[1] - cached
    assert np.array_equal(got, generate(tiny_model.model, second, params, 8).numpy())
    assert engine.blocks.hit_rate() > 0
