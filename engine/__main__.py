"""Command line: `python -m engine synthesize --model-path DIR --text TEXT --out OUT.wav [...]`.

Writes a 44.1 kHz mono WAV of 2048 samples per generated frame, and optionally the codes [10, N].
By default the serving engine generates (the same path the server uses); `--reference-loop` uses
the plain one-request loop instead (one chunk).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import cast

import numpy as np
import torch

from engine.audio import load_audio
from engine.audio_out import encode_audio
from engine.checkpoint import resolve_model_path
from engine.loader import LoadedModel, load_model_dir, pick_device, pick_dtype
from engine.models.int8 import WEIGHTS
from engine.params import SamplingParams
from engine.prompt import Reference, build_prompt
from engine.reference import generate
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig
from engine.serving.request import ReferenceInput, SynthesisRequest


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synthesize", help="text (and optional voice references) to a WAV file")
    s.add_argument("--model-path", required=True, help="checkpoint directory or hub id")
    s.add_argument("--text", required=True)
    s.add_argument("--reference", action="append", default=[], type=Path, help="reference audio (repeatable)")
    s.add_argument("--reference-text", action="append", default=[], help="its transcript (one per --reference)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-p", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=30)
    s.add_argument("--no-ras", action="store_true", help="turn repetition-aware sampling off")
    s.add_argument("--max-frames", type=int, default=2048)
    s.add_argument("--chunk-length", type=int, default=300, help="characters per text chunk; 0 = no split")
    s.add_argument("--device", default="auto")
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    s.add_argument("--weights", default="bf16", choices=WEIGHTS,
                   help="the AR projections as published (bf16) or quantized to int8 at load")
    s.add_argument("--cache-dir", type=Path, default=None,
                   help="--weights int8: keep the quantized weights here and read them on the next run")
    s.add_argument("--reference-loop", action="store_true", help="use the plain reference loop")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--codes-out", type=Path, default=None, help="write the codes [10, N] as .npy")
    args = p.parse_args(argv)
    if len(args.reference) != len(args.reference_text):
        p.error("give one --reference-text per --reference")
    return args


def synthesize(loaded: LoadedModel, args: argparse.Namespace) -> np.ndarray:
    """Codes [10, N] for the request described by args."""
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            ras=not args.no_ras, seed=args.seed)
    engine = Engine(loaded, EngineConfig(max_batch=1, cuda_graphs=False))
    refs = [ReferenceInput(text, samples=load_audio(path))
            for path, text in zip(args.reference, args.reference_text)]
    if args.reference_loop:
        references = [Reference(r.text, engine.encode_audio(cast(np.ndarray, r.samples))) for r in refs]
        prompt = build_prompt(loaded.tokenizer, args.text, references)
        return generate(loaded.model, prompt, params, args.max_frames).numpy()
    request = SynthesisRequest(args.text, tuple(refs), params, args.max_frames, args.chunk_length,
                               stream_pcm=False)
    engine.add_request(request)
    frames: list[np.ndarray] = []
    while engine.has_work():
        for ev in engine.step():
            if ev.codes is not None:
                frames.append(ev.codes)
            if ev.error:
                raise RuntimeError(ev.error)
    return np.concatenate(frames, axis=1) if frames else np.zeros((10, 0), np.int64)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse(argv)
    try:
        device = pick_device(args.device)
        loaded = load_model_dir(resolve_model_path(args.model_path), device, pick_dtype(args.dtype, device),
                                args.weights, args.cache_dir)
        codes = synthesize(loaded, args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pcm = loaded.codec.decode(torch.from_numpy(codes)[None].to(device))[0, 0].float().cpu().numpy()
    args.out.write_bytes(encode_audio(pcm, "wav", loaded.sample_rate))
    if args.codes_out is not None:
        np.save(args.codes_out, codes)
    print(f"wrote {args.out}: {codes.shape[1]} frames, {len(pcm) / loaded.sample_rate:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
