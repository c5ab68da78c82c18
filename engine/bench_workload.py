"""The benchmark's workload: a model of random weights at a preset's shape, prompts of a ~20 s reference
plus a sentence, and rounds of concurrent requests through an engine (engine/bench.py, bench_profile.py,
engine/tools/int8_error.py and the GPU many-streams test use it)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from engine.config import ModelConfig, s2_pro_config, tiny_config
from engine.loader import CODEC_DTYPE, LoadedModel
from engine.models.codec import Codec, CodecConfig
from engine.models.dual_ar import DualAR
from engine.models.int8 import quantize_model
from engine.params import SamplingParams
from engine.serving.engine import Engine
from engine.tokenizer import TextTokenizer
from engine.tools.tiny_checkpoint import random_init
from engine.tools.tiny_tokenizer import write_tiny_tokenizer

REFERENCE_FRAMES = 430
TEXT_TOKENS = 40


def gpu_memory(args: argparse.Namespace) -> int | None:
    return None if args.gpu_memory is None else int(args.gpu_memory * 2**30)


def build(preset: str, device: torch.device, tmp: Path, weights: str = "bf16") -> LoadedModel:
    cfg = s2_pro_config() if preset == "s2-pro" else tiny_config()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = DualAR(cfg).to(dtype)
        codec = Codec(CodecConfig() if preset == "s2-pro" else CodecConfig.tiny()).to(CODEC_DTYPE)
    codec = codec.eval().requires_grad_(False)
    random_init(model)
    if weights == "int8":
        quantize_model(model)
    model.init_rope()
    write_tiny_tokenizer(tmp)
    return LoadedModel(tmp, cfg, model.eval(), codec, TextTokenizer(tmp), device, dtype, weights=weights)


def make_prompt(cfg: ModelConfig, seed: int, voice_seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(voice_seed)
    audio = torch.zeros(11, REFERENCE_FRAMES, dtype=torch.long)
    audio[1] = torch.randint(0, 4096, (REFERENCE_FRAMES,), generator=g)
    audio[2:] = torch.randint(0, 1024, (9, REFERENCE_FRAMES), generator=g)
    audio[0] = audio[1] + cfg.semantic_start_token_id
    text = torch.zeros(11, TEXT_TOKENS, dtype=torch.long)
    text[0] = torch.randint(0, 150000, (TEXT_TOKENS,), generator=torch.Generator().manual_seed(seed))
    return torch.cat([audio, text], dim=1)


def run_round(engine: Engine, concurrency: int, frames: int, prefix_hit: bool, round_seed: int,
              vocoder: bool = True) -> tuple:
    cfg = engine.loaded.config
    ids = [engine.add_prompt(make_prompt(cfg, round_seed * 1000 + i,
                                         0 if prefix_hit else round_seed * 1000 + i),
                             SamplingParams(seed=i), frames, stream_pcm=vocoder) for i in range(concurrency)]
    jobs = {rid: engine.jobs[rid] for rid in ids}
    start = time.perf_counter()
    decode_steps, decode_time = 0, 0.0
    while engine.has_work():
        t0 = time.perf_counter()
        running_before = sum(1 for s in engine.scheduler.running if not s.in_prefill)
        engine.step()  # no device sync here: it would stop the next frame from overlapping host work
        if running_before == concurrency:
            decode_steps += 1
            decode_time += time.perf_counter() - t0
    wall = time.perf_counter() - start
    times = [j.times for j in jobs.values()]
    return times, wall, decode_time / max(decode_steps, 1)
