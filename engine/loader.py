"""Load everything a checkpoint directory holds: Dual-AR, codec, tokenizer; and pick device/dtype."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.checkpoint import CODEC_CONFIG_FILE, CODEC_FILE, DEMO_MARKER, CheckpointError, load_dual_ar
from engine.config import ModelConfig
from engine.models.codec import Codec, CodecConfig
from engine.models.codec_state import load_codec
from engine.models.dual_ar import DualAR
from engine.tokenizer import TextTokenizer

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# float32 everywhere: it is how the codec was shipped, and bf16 made streaming decode no faster (it is
# launch- and state-traffic-bound), only less exact (docs/BENCHMARKS.md).
CODEC_DTYPE = torch.float32


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """bf16 on GPU as trained; float32 on CPU, where bf16 matmuls are slow and tests compare exactly."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


@dataclass
class LoadedModel:
    path: Path
    config: ModelConfig
    model: DualAR
    codec: Codec
    tokenizer: TextTokenizer
    device: torch.device
    dtype: torch.dtype
    demo: bool = False  # a random tiny checkpoint: output is noise
    weights: str = "bf16"  # the projections' storage: the checkpoint's own, or int8 (models/int8.py)

    @property
    def sample_rate(self) -> int:
        return self.codec.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.codec.config.hop_length


def load_model_dir(path: Path, device: torch.device, dtype: torch.dtype, weights: str = "bf16",
                   cache_dir: Path | None = None) -> LoadedModel:
    """Load a resolved checkpoint directory. The ARs run in `dtype` (with `weights` "int8" their projections
    are int8, cached under `cache_dir`); the codec in `CODEC_DTYPE`."""
    demo = (path / DEMO_MARKER).is_file()
    tokenizer = TextTokenizer(path)
    config = ModelConfig.from_file(path / "config.json")
    tokenizer.special.check_against({
        "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
        "audio_pad_token_id": config.audio_pad_token_id,
        "semantic_start_token_id": config.semantic_start_token_id,
        "semantic_end_token_id": config.semantic_end_token_id})
    codec_cfg = CodecConfig()
    if (path / CODEC_CONFIG_FILE).is_file():
        codec_cfg = CodecConfig.from_dict(json.loads((path / CODEC_CONFIG_FILE).read_text()))
    if codec_cfg.num_codebooks != config.num_codebooks:
        raise CheckpointError(f"codec has {codec_cfg.num_codebooks} codebooks, the model {config.num_codebooks}")
    model = load_dual_ar(path, device, dtype, weights, cache_dir)
    codec = load_codec(path / CODEC_FILE, codec_cfg, device, CODEC_DTYPE)
    log.info("loaded %s on %s (%s, %s projections)%s", path, device, dtype, weights,
             " [demo checkpoint]" if demo else "")
    return LoadedModel(path, config, model, codec, tokenizer, device, dtype, demo, weights)
