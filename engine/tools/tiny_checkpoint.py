"""Write a random checkpoint in the exact on-disk format of the published S2 Pro checkpoint.

    python -m engine.tools.tiny_checkpoint OUT_DIR [--seed N] [--full-codec]

Small transformer dims and layers, but the real vocabulary size, special and semantic token ids,
10 codebooks of 4096/1024 entries and the 2048-sample codec frame. Files: config.json, two
safetensors shards + model.safetensors.index.json, codec.pth (weight-normed convs stored as
parametrizations, VQ projections as weight_g/weight_v), the tokenizer files, and codec_config.json
(the small codec's dimensions; omitted with --full-codec, which writes a codec of the real size).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from engine.checkpoint import CODEC_CONFIG_FILE, CODEC_FILE, DEMO_MARKER, INDEX_FILE, dual_ar_state_for_disk
from engine.config import ModelConfig, tiny_config
from engine.models.codec import Codec, CodecConfig, weight_norm_param_names
from engine.models.codec_state import to_weight_norm_state_dict
from engine.models.dual_ar import DualAR
from engine.tools.tiny_tokenizer import write_tiny_tokenizer


def random_init(model: DualAR) -> None:
    """The benchmarks' random weights (engine.bench, engine.tools.int8_error): N(0, 0.02) everywhere but
    the norms (ones)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.02)


def write_dual_ar(out_dir: Path, cfg: ModelConfig, seed: int) -> None:
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    model = DualAR(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.5 if "embeddings" in name else cfg.text.dim ** -0.5)
    state = dual_ar_state_for_disk(model)
    names = sorted(state)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k] for k in shard}, str(out_dir / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))


def write_codec(out_dir: Path, cfg: CodecConfig, seed: int, write_config: bool) -> None:
    torch.manual_seed(seed + 1)
    codec = Codec(cfg)
    state = to_weight_norm_state_dict(codec.state_dict(), weight_norm_param_names(codec), "mixed")
    torch.save(state, out_dir / CODEC_FILE)
    if write_config:
        (out_dir / CODEC_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0, full_codec: bool = False) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_dual_ar(out, tiny_config(), seed)
    write_codec(out, CodecConfig() if full_codec else CodecConfig.tiny(), seed, not full_codec)
    write_tiny_tokenizer(out)
    (out / DEMO_MARKER).write_text("random weights written by engine.tools.tiny_checkpoint: output is noise\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-codec", action="store_true", help="random codec at the real dimensions")
    args = parser.parse_args()
    write_tiny_checkpoint(args.out_dir, args.seed, args.full_codec)
    print(f"wrote a random S2 Pro-format checkpoint to {args.out_dir}")


if __name__ == "__main__":
    main()
