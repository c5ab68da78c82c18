"""Benchmark of the serving engine (see PERFORMANCE.md).

    python -m engine.bench [--preset s2-pro|tiny] [--frames 100] [--concurrency 1,2,4,8,16,32] [--json OUT]

Random weights at the chosen shape, end-of-speech suppressed so every request makes the same number of
frames, prompts of a ~20 s reference (430 frames) plus a sentence. For each concurrency it reports
frames/s per request, aggregate frames/s, RTF, TTFT and TTFB (p50/p95, streaming vocoder included),
the mean engine step while all requests decode, and the per-request frame time (decode time ÷ frames)
÷ floor, the floor being the bytes one frame must read (weights + KV) ÷ the device copy bandwidth
measured in the same run. A prefix-cache-hit run (same voice for every request) follows.
With --capacity it measures real-time capacity instead (engine/capacity.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine import capacity
from engine.bench_profile import breakdown, kernel_profile, memory_table
from engine.bench_workload import REFERENCE_FRAMES, TEXT_TOKENS, build, gpu_memory, make_prompt, run_round
from engine.config import ModelConfig
from engine.loader import pick_device
from engine.models.int8 import WEIGHTS
from engine.serving.async_engine import AsyncEngine
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig


@dataclass
class Row:
    concurrency: int
    prefix_hit: bool
    frames_per_s_per_request: float
    aggregate_frames_per_s: float
    rtf: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    ttfb_p50_ms: float
    ttfb_p95_ms: float
    step_ms: float  # mean engine step while every request of the round decodes
    frame_ms: float  # per request: decode time ÷ frames (1 / frames_per_s_per_request)
    floor_ms: float
    over_floor: float


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    if device.type != "cuda":
        return float("nan")
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * 10 / (time.perf_counter() - start)


def frame_bytes(cfg: ModelConfig, batch: int, context: int, elem: int, int8: bool = False) -> int:
    """Weight bytes one frame reads (slow layers once, restricted head, fast layers and fast head x10) + KV
    reads. With `int8` each projection reads one byte an entry plus a float32 scale per output channel."""
    def projection(n: int, k: int) -> int:
        return n * k + 4 * n if int8 else n * k * elem

    def layer(t) -> int:
        return (projection(t.q_size + 2 * t.kv_size, t.dim) + projection(t.dim, t.q_size)
                + projection(2 * t.intermediate_size, t.dim) + projection(t.dim, t.intermediate_size))
    t, a = cfg.text, cfg.audio
    fast = a.n_layer * layer(a) + projection(cfg.codebook_size, a.dim)
    weights = t.n_layer * layer(t) + (cfg.codebook_size + 1) * t.dim * elem + 10 * fast
    kv = batch * context * t.n_layer * 2 * t.kv_size * elem
    return weights + kv


def pct(values: list[float | None], q: float) -> float:
    present = sorted(v for v in values if v is not None)
    if not present:
        return float("nan")
    return present[min(len(present) - 1, round(q * (len(present) - 1)))]


def bench(args: argparse.Namespace) -> list[Row]:
    device = pick_device(args.device)
    tmp = Path(tempfile.mkdtemp())
    loaded = build(args.preset, device, tmp, args.weights)
    elem = torch.empty((), dtype=loaded.dtype).element_size()
    bandwidth = copy_bandwidth(device)
    sweep = [int(c) for c in args.concurrency.split(",")]
    engine = Engine(loaded, EngineConfig(max_batch=max(sweep), num_blocks=args.num_blocks,
                                         gpu_memory_bytes=gpu_memory(args),
                                         cuda_graphs=not args.eager, compile=args.compile,
                                         fused_kernels=False if args.unfused or args.compile else None,
                                         prefill_graph_tokens=args.prefill_graph_tokens,
                                         graph_batch_sizes=tuple(sweep),
                                         overlap_vocoder=not args.no_overlap,
                                         burst_hold_tokens=args.burst_hold_tokens))
    engine.runner.set_ignore_eos(True)
    # First prefill/frames of the process pay one-time setup (per graph bucket, too), and the GPU's
    # clocks ramp up under load.
    for c in sweep if device.type == "cuda" else sweep[:1]:
        run_round(engine, c, 16 if device.type == "cuda" else 4, False, 0)
    if args.kernel_profile and device.type == "cuda":
        for c in sweep:
            print(kernel_profile(engine, c), flush=True)
    rows = []
    for i, (c, hit) in enumerate([(c, False) for c in sweep] + [(c, True) for c in args.hit_concurrency]):
        if hit:  # warm the prefix cache with the shared voice
            run_round(engine, 1, 2, True, 999)
        if args.profile and i == 0:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.runcall(run_round, engine, c, args.frames, hit, 100, not args.no_vocoder)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        times, wall, step_s = run_round(engine, c, args.frames, hit, i + 1, not args.no_vocoder)
        context = REFERENCE_FRAMES + TEXT_TOKENS + args.frames // 2
        floor_s = frame_bytes(loaded.config, c, context, elem, args.weights == "int8") / bandwidth
        audio = sum(t.audio_seconds for t in times)
        per_request = statistics.mean(t.frames_per_second for t in times)
        rows.append(Row(c, hit, per_request, sum(t.frames for t in times) / wall, wall / (audio / c),
                        pct([t.ttft_ms for t in times], 0.5), pct([t.ttft_ms for t in times], 0.95),
                        pct([t.ttfb_ms for t in times], 0.5), pct([t.ttfb_ms for t in times], 0.95),
                        step_s * 1e3, 1e3 / per_request, floor_s * 1e3, 1 / per_request / floor_s))
        if args.breakdown and device.type == "cuda":
            print(breakdown(engine, c, args.frames, hit), flush=True)
    return rows


def capacity_bench(args: argparse.Namespace) -> tuple[list[capacity.CapacityRow], str]:
    """Real-time capacity rounds on one engine (max_batch from --max-batch)."""
    device = pick_device(args.device)
    loaded = build(args.preset, device, Path(tempfile.mkdtemp()), args.weights)
    cfg = EngineConfig(max_batch=args.max_batch or EngineConfig.max_batch, num_blocks=args.num_blocks,
                       max_waiting=args.max_waiting, cuda_graphs=not args.eager, gpu_memory_bytes=gpu_memory(args))
    engine = Engine(loaded, cfg)
    engine.runner.set_ignore_eos(True)
    for c in cfg.graph_buckets() if device.type == "cuda" else [1]:  # one-time setup of every graph bucket
        run_round(engine, c, 8 if device.type == "cuda" else 2, False, 0)
    aengine = AsyncEngine(engine)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    cap = '' if args.gpu_memory is None else f'--gpu-memory {args.gpu_memory:g} GiB · '
    header = (f"capacity · preset {args.preset} · {gpu} · torch {torch.__version__} · weights {args.weights} · "
              f"{cap}max_batch {cfg.max_batch} · "
              f"{engine.blocks.num_blocks} KV blocks · waiting limit {cfg.waiting_limit} · {args.frames} frames "
              f"({capacity.stream_seconds(args.frames):.1f} s) a stream · starts over {args.spread} s · "
              "no prefix hit")
    print(header + "\n" + capacity.HEADER, flush=True)
    try:
        rows = capacity.capacity(aengine, lambda i: make_prompt(loaded.config, i, i),
                                 [int(c) for c in args.capacity.split(",")], args.frames, args.spread)
    finally:
        aengine.shutdown()
    print(f"largest real-time round: {capacity.largest_real_time(rows)} clients"
          + (f"; peak reserved {torch.cuda.max_memory_reserved() / 2**30:.1f} GiB" if device.type == "cuda" else ""))
    return rows, header


def print_table(rows: list[Row], header: str) -> None:
    print(header)
    print("| conc | prefix hit | frames/s/req | aggregate frames/s | RTF | TTFT p50/p95 ms | TTFB p50/p95 ms "
          "| step ms | frame ms | floor ms | ÷ floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.concurrency} | {'yes' if r.prefix_hit else 'no'} | {r.frames_per_s_per_request:.1f} | "
              f"{r.aggregate_frames_per_s:.0f} | {r.rtf:.3f} | {r.ttft_p50_ms:.0f} / {r.ttft_p95_ms:.0f} | "
              f"{r.ttfb_p50_ms:.0f} / {r.ttfb_p95_ms:.0f} | {r.step_ms:.2f} | {r.frame_ms:.2f} | {r.floor_ms:.2f} | "
              f"{r.over_floor:.2f} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["s2-pro", "tiny"], default="s2-pro")
    p.add_argument("--device", default="auto")
    p.add_argument("--weights", choices=WEIGHTS, default="bf16",
                   help="int8: the projections quantized (models/int8.py)")
    p.add_argument("--gpu-memory", type=float, default=None,
                   help="GiB the process may use (EngineConfig.gpu_memory_bytes)")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--concurrency", default="1,2,4,8,16,32")
    p.add_argument("--hit-concurrency", default="1", type=lambda s: [int(c) for c in s.split(",") if c])
    p.add_argument("--num-blocks", type=int, default=None)
    p.add_argument("--eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the module-path frame before capture (implies --unfused)")
    p.add_argument("--unfused", action="store_true", help="the module path instead of the fused kernels")
    p.add_argument("--prefill-graph-tokens", type=int, default=EngineConfig.prefill_graph_tokens,
                   help="prefills up to this many tokens replay a CUDA graph (0: always eager)")
    p.add_argument("--no-vocoder", action="store_true", help="codes only: the AR frame without audio")
    p.add_argument("--burst-hold-tokens", type=int, default=EngineConfig.burst_hold_tokens,
                   help="a burst whose remaining prompts fit in this many tokens starts decoding together")
    p.add_argument("--breakdown", action="store_true", help="also time prefill/frame/vocoder per round")
    p.add_argument("--no-overlap", action="store_true", help="vocoder on the main stream, after the frame")
    p.add_argument("--profile", action="store_true", help="print a cProfile of the first round")
    p.add_argument("--kernel-profile", action="store_true", help="print the GPU kernels of a frame per concurrency")
    p.add_argument("--capacity", default=None, help="client counts: measure real-time capacity instead")
    p.add_argument("--max-batch", type=int, default=None, help="--capacity, --memory: the engine's max_batch")
    p.add_argument("--max-waiting", type=int, default=None, help="--capacity: the engine's waiting limit")
    p.add_argument("--spread", type=float, default=2.0, help="--capacity: clients start over this many seconds")
    p.add_argument("--memory", action="store_true", help="print where the device memory goes (GPU)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.memory:
        print(memory_table(args), flush=True)
        return
    if args.capacity:
        cap_rows, header = capacity_bench(args)
        if args.json:
            args.json.write_text(json.dumps({"header": header, "rows": [asdict(r) for r in cap_rows],
                                             "largest_real_time": capacity.largest_real_time(cap_rows)}, indent=2))
        return
    rows = bench(args)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    header = (f"preset {args.preset} · {gpu} · torch {torch.__version__} · weights {args.weights} · "
              f"{args.frames} frames/request · "
              f"graphs {'off' if args.eager else 'on'}{' + compile' if args.compile else ''} · "
              f"kernels {'module path' if args.unfused or args.compile else 'fused'} · "
              f"vocoder {'off' if args.no_vocoder else 'streaming'}"
              f"{'' if args.no_vocoder or args.no_overlap else ', overlapped'}")
    print_table(rows, header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
