"""Where a frame's time and the device's memory go: the diagnostic modes of `python -m engine.bench`
(--breakdown, --kernel-profile, --memory), on the workload of engine/bench_workload.py (CUDA)."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.bench_workload import REFERENCE_FRAMES, TEXT_TOKENS, build, gpu_memory, make_prompt, run_round
from engine.loader import pick_device
from engine.params import SamplingParams
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig


def breakdown(engine: Engine, concurrency: int, frames: int, prefix_hit: bool) -> str:
    """One more round with each phase timed to completion (device synchronized around it)."""
    spent: dict[str, list[float]] = {}

    def timed(name: str, fn):
        def wrapper(*a, **kw):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            torch.cuda.synchronize()
            spent.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
            return out
        return wrapper

    originals = engine.runner.prefill, engine._launch_frame, engine.streams.decode
    engine.runner.prefill = timed("prefill", originals[0])
    engine._launch_frame = timed("frame", originals[1])
    engine.streams.decode = timed("vocoder", originals[2])
    try:
        run_round(engine, concurrency, frames, prefix_hit, 77)
    finally:
        engine.runner.prefill, engine._launch_frame, engine.streams.decode = originals
    parts = [f"{k} {statistics.mean(v):.2f} ms x{len(v)}" for k, v in spent.items()]
    return f"breakdown conc {concurrency}{' (prefix hit)' if prefix_hit else ''}: " + ", ".join(parts)


def _kernel_table(prof, steps: int, title: str, top: int = 25) -> list[str]:
    events = [e for e in prof.key_averages() if e.device_type == torch.profiler.DeviceType.CUDA]
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in events) / steps / 1e3
    count = sum(e.count for e in events) / steps
    lines = [f"{title}: {count:.0f} kernels, {total:.2f} ms of kernel time"]
    for e in events[:top]:
        lines.append(f"  {e.self_device_time_total / steps / 1e3:7.3f} ms  x{e.count / steps:5.0f}  {e.key[:110]}")
    return lines


def kernel_profile(engine: Engine, concurrency: int, steps: int = 10) -> str:
    """The GPU kernels of a cold prefill step and of `steps` decode frames at `concurrency`
    (torch.profiler), heaviest first."""
    from torch.profiler import ProfilerActivity, profile
    cfg = engine.loaded.config
    ids = [engine.add_prompt(make_prompt(cfg, 5000 + concurrency, 5000 + concurrency), SamplingParams(), steps + 50)]
    torch.cuda.synchronize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.step()  # the prompt's prefill (and its first frame)
        torch.cuda.synchronize()
    lines = _kernel_table(prof, 1, f"prefill step, one {REFERENCE_FRAMES + TEXT_TOKENS}-token prompt "
                                   f"({(time.perf_counter() - start) * 1e3:.1f} ms wall)", 12)
    ids += [engine.add_prompt(make_prompt(cfg, 5000 + i, 5000 + i), SamplingParams(seed=i), steps + 50)
            for i in range(1, concurrency)]
    while sum(1 for s in engine.scheduler.running if not s.in_prefill) < concurrency:
        engine.step()
    engine.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - start) * 1e3 / steps
    for rid in ids:
        engine.abort(rid)
    while engine.has_work():
        engine.step()
    lines += _kernel_table(prof, steps, f"decode frame at concurrency {concurrency} ({wall:.2f} ms wall per step, "
                                        f"profiler on)")
    return "\n".join(lines)


def memory_table(args: argparse.Namespace) -> str:
    """Where the device memory goes (GiB): at start, by part of the memory plan, then the peak of a round at
    each concurrency of --concurrency (prompts of a 20 s reference, --frames frames each, streaming)."""
    device = pick_device(args.device)
    assert device.type == "cuda", "--memory measures a GPU"
    torch.cuda.reset_peak_memory_stats()
    loaded = build(args.preset, device, Path(tempfile.mkdtemp()), args.weights)
    sweep = [int(c) for c in args.concurrency.split(",")]
    engine = Engine(loaded, EngineConfig(max_batch=args.max_batch or max(sweep), num_blocks=args.num_blocks,
                                         gpu_memory_bytes=gpu_memory(args)))
    engine.runner.set_ignore_eos(True)
    plan = engine.memory

    def gib(n: float) -> str:
        return f"{n / 2**30:.2f}"
    ar = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    codec = sum(p.numel() * p.element_size() for p in loaded.codec.parameters())
    free, total = torch.cuda.mem_get_info()
    start_reserved = torch.cuda.memory_reserved()
    cap = f" · --gpu-memory {args.gpu_memory:g} GiB" if args.gpu_memory else ""
    lines = [f"memory · preset {args.preset} · {torch.cuda.get_device_name()} · weights {args.weights} · "
             f"max_batch {engine.cfg.max_batch}{cap}",
             "| part | GiB |", "|---|---|",
             f"| Dual-AR weights ({args.weights} projections; embeddings, norms) | {gib(ar)} |",
             f"| codec weights (float32) | {gib(codec)} |",
             f"| vocoder: state rows, graph buffers, codec working memory | {gib(plan.vocoder_bytes)} |",
             f"| KV pool: {plan.num_blocks} blocks of {plan.block_size} tokens | {gib(plan.kv_bytes)} |",
             f"| AR frame and prefill graphs | {gib(plan.graphs_bytes)} |",
             f"| torch reserved at start | {gib(start_reserved)} |",
             f"| outside torch (CUDA context, cuBLAS/cuDNN, Triton modules) | {gib(total - free - start_reserved)} |"]
    allocated_start = torch.cuda.memory_allocated()
    for c in sweep:
        torch.cuda.reset_peak_memory_stats()
        run_round(engine, c, args.frames, False, 31 + c)
        peak_alloc, peak_res = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        above = peak_alloc - allocated_start
        lines += [f"| concurrency {c}: activations and buffers above start (peak) | {gib(above)} |",
                  f"| concurrency {c}: allocator slack (peak reserved - allocated) | {gib(peak_res - peak_alloc)} |",
                  f"| concurrency {c}: peak reserved | {gib(peak_res)} |"]
    return "\n".join(lines)
