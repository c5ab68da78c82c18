"""Resolve a model directory and load the Dual-AR weights strictly from the real on-disk format.

Layout (the published `fishaudio/s2-pro`): config.json, model-0000N-of-0000M.safetensors plus
model.safetensors.index.json (or one model.safetensors), codec.pth, and the tokenizer files. An optional
`codec_config.json` (written only by tiny checkpoints) overrides the codec's fixed real dimensions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from engine.config import ModelConfig
from engine.models.dual_ar import DualAR
from engine.models.int8 import WEIGHTS, int8_skeleton, projection_names, quantize
from engine.state_dict import state_dict_mismatches

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "fishaudio/s2-pro"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CODEC_FILE = "codec.pth"
CODEC_CONFIG_FILE = "codec_config.json"
DEMO_MARKER = "RANDOM_WEIGHTS"  # written by tiny checkpoints only: the app shows its demo banner
REQUIRED_FILES = ("config.json", CODEC_FILE, "tokenizer.json")


class CheckpointError(ValueError):
    """The checkpoint is missing, incomplete or does not match the expected layout."""


def resolve_model_path(model_path: str | Path) -> Path:
    """A local directory as is; otherwise a hub id downloaded (with progress) when the hub is reachable."""
    local = Path(model_path).expanduser()
    if local.is_dir():
        return _check_files(local)
    if local.exists() or str(model_path).startswith((".", "/", "~")) or str(model_path).count("/") != 1:
        raise CheckpointError(f"model path {model_path} is not a directory holding an S2 Pro checkpoint")
    try:
        from huggingface_hub import snapshot_download
        path = snapshot_download(repo_id=str(model_path))
    except Exception as exc:  # network errors, gated repos, missing package: all end here
        raise CheckpointError(
            f"could not download {model_path} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Download it elsewhere (`hf download {model_path} --local-dir DIR`) "
            f"and pass --model-path DIR") from exc
    return _check_files(Path(path))


def _check_files(path: Path) -> Path:
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if not (path / INDEX_FILE).is_file() and not (path / SINGLE_FILE).is_file():
        missing.append(f"{INDEX_FILE} (or {SINGLE_FILE})")
    if missing:
        raise CheckpointError(f"{path} is not a complete S2 Pro checkpoint: missing {', '.join(missing)}")
    return path


def weight_files(path: Path) -> list[Path]:
    """The safetensors shards named by the index (or the single file)."""
    index = path / INDEX_FILE
    if not index.is_file():
        return [path / SINGLE_FILE]
    weight_map = json.loads(index.read_text()).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map")
    files = sorted(set(weight_map.values()))
    absent = [f for f in files if not (path / f).is_file()]
    if absent:
        raise CheckpointError(f"{index} names shards that are not there: {', '.join(absent)}")
    return [path / f for f in files]


def read_safetensors(files: list[Path], device: str = "cpu") -> dict[str, Tensor]:
    from safetensors import safe_open
    state: dict[str, Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device=device) as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                if key in state:
                    raise CheckpointError(f"key {key} appears in more than one shard")
                state[key] = f.get_tensor(key)
    return state


def check_state_dict(expected: dict[str, Tensor], got: dict[str, Tensor], what: str) -> None:
    """Raise naming every missing key, unexpected key and shape mismatch."""
    problems = state_dict_mismatches(expected, got)
    if problems:
        raise CheckpointError(f"{what} does not match the S2 Pro layout: " + " | ".join(problems))


def load_dual_ar(path: Path, device: torch.device | str, dtype: torch.dtype, weights: str = "bf16",
                 cache_dir: Path | None = None) -> DualAR:
    """Build the model from config.json and load its weights strictly. With `weights` "int8" every
    projection is quantized at load (models/int8.py), one tensor at a time on `device`, and the result is
    saved under `cache_dir` (when given) so the next start reads it directly."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    cfg = ModelConfig.from_file(path / "config.json")
    with torch.device("meta"):
        model = DualAR(cfg)
    if weights == "int8":
        _load_int8(model, path, torch.device(device), dtype, cache_dir)
    else:
        state = read_safetensors(weight_files(path))
        check_state_dict(model.state_dict(), state, f"weights in {path}")
        model.load_state_dict({k: v.to(dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
    model = model.to(device)
    model.init_rope()
    return model.eval()


INT8_FORMAT = "s2pro-int8-v1"  # bump when the quantization or the cache's layout changes


def int8_cache_file(path: Path, cache_dir: Path) -> Path:
    """Where the int8 weights of the checkpoint at `path` are cached: named by the checkpoint's weight
    files (names, sizes, modification times) and the format, so a changed checkpoint is quantized anew."""
    files = [path / "config.json", *weight_files(path)]
    ident = json.dumps([INT8_FORMAT, *[(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]])
    return cache_dir / "int8" / f"{hashlib.sha256(ident.encode()).hexdigest()[:20]}.safetensors"


def _load_int8(model: DualAR, path: Path, device: torch.device, dtype: torch.dtype, cache_dir: Path | None) -> None:
    cached = int8_cache_file(path, cache_dir) if cache_dir is not None else None
    projections = set(projection_names(model))
    int8_skeleton(model)
    if cached is not None and cached.is_file():
        try:
            state = read_safetensors([cached])
            check_state_dict(model.state_dict(), state, f"int8 weights cached in {cached}")
        except Exception as exc:  # a torn or foreign file: quantize again and overwrite it
            log.warning("ignoring the int8 cache %s (%s): quantizing again", cached, exc)
        else:
            model.load_state_dict({k: v.to(device) if k.rpartition(".")[0] in projections else v.to(device, dtype)
                                   for k, v in state.items()}, strict=True, assign=True)
            log.info("int8 weights read from %s", cached)
            return
    start = time.perf_counter()
    source = read_safetensors(weight_files(path))
    state: dict[str, Tensor] = {}
    for key in sorted(source):  # one tensor at a time: the device never holds the bf16 model
        tensor = source.pop(key)
        module = key.rpartition(".")[0]
        if module in projections and key.endswith(".weight"):
            state[key], state[f"{module}.scale"] = quantize(tensor.to(device))
        else:
            state[key] = tensor.to(device, dtype)
    check_state_dict(model.state_dict(), state, f"weights in {path}")
    model.load_state_dict(state, strict=True, assign=True)
    log.info("int8: quantized %d projections in %.1f s", len(projections), time.perf_counter() - start)
    if cached is not None:
        _save_atomically(state, cached)
        log.info("int8 weights cached in %s", cached)


def _save_atomically(state: dict[str, Tensor], file: Path) -> None:
    from safetensors.torch import save_file
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"format": INT8_FORMAT})
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)


def dual_ar_state_for_disk(model: nn.Module) -> dict[str, Tensor]:
    """The state dict as the real checkpoint stores it (bf16, contiguous, no RoPE tables)."""
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
