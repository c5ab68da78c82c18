"""Does every Triton kernel the engine can launch fit a given GPU? Checked without that GPU.

    python -m engine.tools.gpu_targets --cc 86 [--json out.json]

Records every kernel launch configuration (constexpr values, argument types, warps, stages) that the
decode frame (batch 1..max_batch), the prefill steps (every graph bucket) and the streaming vocoder
(every push shape) issue at the real S2 Pro shapes, on the `meta` device: shapes and tile choices
flow exactly as on a GPU, no data is computed and no kernel runs. Then compiles each one for the
target with Triton's own compiler (the Triton package bundles ptxas; no GPU needed) and compares
the shared memory it needs with the target's per-block limit. Run with TRITON_INTERPRET unset: the
interpreter picks other tiles. tests/test_gpu_targets.py runs it for every supported architecture.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# Opt-in shared memory per block, by compute capability (CUDA programming guide, "Technical
# Specifications per Compute Capability").
SHARED_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 120: 99 * 1024}
PDL_MIN_CC = 90
_DTYPES = {torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float16: "*fp16", torch.int64: "*i64",
           torch.int32: "*i32", torch.int8: "*i8", torch.uint8: "*u8", torch.bool: "*i1"}
_COMPILE_OPTIONS = ("num_warps", "num_stages", "maxnreg")

Launch = tuple[str, tuple[tuple[str, str, Any], ...], tuple[tuple[str, Any], ...]]


@contextlib.contextmanager
def recording() -> Iterator[dict[Launch, Any]]:
    """Every JIT kernel launch inside records (name, (param, type, constexpr value or "D"), options)
    instead of compiling or running; yields {launch: the kernel's JITFunction}. "D" marks an argument
    the JIT specializes as divisible by 16 (every pointer: torch's allocations are aligned, and every
    row stride here is a multiple of 16 bytes; an integer that is): without it Triton cannot pipeline
    the loads, and the shared memory it reports is a fraction of what the GPU then needs."""
    from triton.runtime.jit import JITFunction
    launches: dict[Launch, Any] = {}
    original = JITFunction.run

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        bound = dict(zip(self.arg_names, args)) | {k: v for k, v in kwargs.items() if k in self.arg_names}
        params = []
        for i, name in enumerate(self.arg_names):
            value = bound.get(name)
            if i in self.constexprs or value is None:  # Triton makes a None argument a constexpr
                params.append((name, "constexpr", value))
            elif isinstance(value, torch.Tensor):
                params.append((name, _DTYPES[value.dtype], "D"))
            elif isinstance(value, bool):
                params.append((name, "i1", None))
            elif isinstance(value, float):
                params.append((name, "fp32", None))
            else:
                aligned = int(value) % 16 == 0 and i not in self.do_not_specialize
                params.append((name, "i64" if abs(int(value)) >= 2**31 else "i32", "D" if aligned else None))
        options = tuple(sorted((k, v) for k, v in kwargs.items() if k in _COMPILE_OPTIONS))
        launches[(f"{self.fn.__module__}.{self.fn.__name__}", tuple(params), options)] = self

    JITFunction.run = run  # pyright: ignore[reportAttributeAccessIssue]
    try:
        yield launches
    finally:
        JITFunction.run = original


def engine_launches(cc: int, max_batch: int = 128) -> dict[Launch, Any]:
    """The launches of the decode frame and the prefill steps (bf16 and int8 weights) and the vocoder at the
    real shapes, as the backend decision sets them up for compute capability cc (its shared memory; PDL
    from sm_90)."""
    from engine.ar.runner import FrameInputs, ModelRunner, PrefillInputs, RunnerConfig
    from engine.backend import Backend
    from engine.config import s2_pro_config
    from engine.kernels.launch import enable_pdl, set_shared_memory
    from engine.models.codec import Codec, CodecConfig
    from engine.models.dual_ar import DualAR
    from engine.models.int8 import WEIGHTS, quantize_model
    from engine.vocoder.rows import RowVocoder
    from engine.vocoder.streams import AudioStreams

    set_shared_memory(SHARED_PER_BLOCK[cc])
    if cc >= PDL_MIN_CC:
        enable_pdl()
    meta = torch.device("meta")

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.long, device=meta)

    with meta:
        codec = Codec(CodecConfig()).eval().requires_grad_(False)
    with recording() as launches, torch.no_grad():
        for weights in WEIGHTS:
            with meta:
                model = DualAR(s2_pro_config()).to(torch.bfloat16)
            if weights == "int8":
                quantize_model(model)
            model.init_rope()
            runner = ModelRunner(model, RunnerConfig(num_blocks=64, max_batch=max_batch),
                                 Backend("fused", "triton", "fused", True, True))
            width, runs = runner.cfg.max_blocks_per_seq, max_batch + 1
            for batch in range(1, max_batch + 1):  # eager frames take any batch size; graphs a few of them
                runner.decode_frame(FrameInputs(zeros(batch), zeros(batch), zeros(batch), zeros(batch, width),
                                                zeros(batch), zeros(batch)))
            for tokens in (16, 32, 64, 128, 256, 512, 1024, 2048):
                tiles = -(-tokens // runner.prefill_block_m) + runs
                runner.prefill_paged(PrefillInputs(zeros(11, tokens), zeros(tokens), zeros(tokens),
                                                   zeros(runs, width), zeros(tiles, 4)))
        push_rows = 64  # EngineConfig.vocoder_push_rows
        vocoder = RowVocoder(codec, push_rows + 1, fused=True)
        for rows in AudioStreams(codec, push_rows, 8).buckets:
            for frames in range(1, 9):  # EngineConfig.vocoder_group_frames
                vocoder.push(zeros(rows), zeros(rows, 10, frames))
    return launches


def shared_bytes(launch: Launch, kernel: Any, cc: int) -> int:
    """Shared memory one launch configuration needs, compiled by Triton for compute capability cc."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    _, params, options = launch
    signature = {name: kind for name, kind, _ in params}
    constexprs = {name: value for name, kind, value in params if kind == "constexpr"}
    attrs = {(i,): [["tt.divisibility", 16]] for i, (_, kind, value) in enumerate(params)
             if kind != "constexpr" and value == "D"}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", cc, 32), options=dict(options))
    return int(compiled.metadata.shared)


def check(cc: int) -> dict[str, Any]:
    """Every launch compiled for cc: the largest shared memory per kernel, and what does not fit."""
    limit = SHARED_PER_BLOCK[cc]
    launches = engine_launches(cc)
    worst: dict[str, int] = {}
    over = []
    for launch, kernel in launches.items():
        need = shared_bytes(launch, kernel, cc)
        worst[launch[0]] = max(worst.get(launch[0], 0), need)
        if need > limit:
            over.append({"kernel": launch[0], "shared": need, "options": dict(launch[2]),
                         "constexprs": {n: v for n, k, v in launch[1] if k == "constexpr"}})
    int8 = sum(1 for _, params, _ in launches if ("SCALED", "constexpr", True) in params)  # int8 projections
    return {"cc": cc, "limit": limit, "launches": len(launches), "int8_launches": int8, "kernels": worst, "over": over}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cc", type=int, required=True, choices=sorted(SHARED_PER_BLOCK))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter picks other tiles than a GPU")
    report = check(args.cc)
    if args.json:
        args.json.write_text(json.dumps(report, default=str))
    print(f"sm_{args.cc}: {report['launches']} launch configurations, limit {report['limit']} bytes a block")
    for name, need in sorted(report["kernels"].items(), key=lambda kv: -kv[1]):
        print(f"  {need:>7} {name}")
    for item in report["over"]:
        print(f"  OVER: {item}")
    sys.exit(1 if report["over"] else 0)


if __name__ == "__main__":
    main()
