"""AppState: what the API and the UI share (loaded model, async engine, store, settings)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import (
    AsyncEngine,
    CheckpointError,
    Engine,
    EngineConfig,
    LoadedModel,
    load_model_dir,
    pick_device,
    pick_dtype,
    resolve_model_path,
)
from playground.server.access import Access, load_secret
from playground.settings import Settings
from playground.store import Store, StoreLimits

log = logging.getLogger(__name__)

DEMO_HELP = ("Demo mode: no S2 Pro weights were found, so a tiny random checkpoint is loaded and the "
             "output is noise. To use the real model: `hf download fishaudio/s2-pro "
             "--local-dir checkpoints/s2-pro` and start with `./start.sh --model-path checkpoints/s2-pro`.")


@dataclass
class AppState:
    settings: Settings
    loaded: LoadedModel
    engine: AsyncEngine
    store: Store
    access: Access

    @property
    def demo(self) -> bool:
        return self.loaded.demo

    def describe(self) -> str:
        lm = self.loaded
        mode = "demo (random tiny checkpoint)" if lm.demo else str(lm.path)
        return (f"model: {mode} · device: {lm.device} · dtype: {str(lm.dtype).removeprefix('torch.')} · "
                f"weights: {lm.weights}")


def resolve_or_demo(settings: Settings) -> Path:
    try:
        return resolve_model_path(settings.model_path)
    except CheckpointError as exc:
        if not settings.demo_fallback:
            raise
        log.warning("%s", exc)
        log.warning("%s", DEMO_HELP)
        demo_dir = settings.data_dir / "demo-checkpoint"
        if not (demo_dir / "config.json").is_file():
            from engine import write_tiny_checkpoint
            write_tiny_checkpoint(demo_dir)
        return demo_dir


def use_compile_caches(data_dir: Path) -> dict[str, str]:
    """Triton's kernel cache and torch.compile's cache under the data directory (unless the environment
    names others), so a restarted container or Space with a persistent data disk starts warm: on a
    fresh H100, compiling and capturing took 107 s cold and 18 s warm. Returns the folders used."""
    caches = {"TRITON_CACHE_DIR": data_dir / "cache" / "triton",
              "TORCHINDUCTOR_CACHE_DIR": data_dir / "cache" / "inductor"}
    # Importing Triton already set torch's default (/tmp/torchinductor_<user>): that one is replaced too.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    for name, folder in caches.items():
        if os.environ.get(name) in (None, default_cache_dir()):
            os.environ[name] = str(folder.resolve())
        Path(os.environ[name]).mkdir(parents=True, exist_ok=True)
    log.info("compile caches: %s", ", ".join(f"{n}={os.environ[n]}" for n in caches))
    return {name: os.environ[name] for name in caches}


def create_state(settings: Settings) -> AppState:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    use_compile_caches(settings.data_dir)
    device = pick_device(settings.device)
    loaded = load_model_dir(resolve_or_demo(settings), device, pick_dtype(settings.dtype, device), settings.weights,
                            cache_dir=settings.data_dir / "cache")
    if device.type == "cpu" and loaded.demo:
        torch.set_num_threads(1)  # tiny ops: threads only add spin-wait on small machines
    cfg = EngineConfig(max_batch=settings.max_batch, num_blocks=settings.num_blocks,
                       cuda_graphs=settings.cuda_graphs, compile=settings.compile, max_waiting=settings.max_waiting,
                       step_timeout_s=settings.step_timeout_s,
                       gpu_memory_bytes=None if settings.gpu_memory_gb is None else int(settings.gpu_memory_gb * 2**30))
    engine = AsyncEngine(Engine(loaded, cfg))
    limits = StoreLimits(max_voices_per_owner=settings.max_voices, max_history_per_owner=settings.max_history,
                         max_disk_mb=settings.max_disk_mb)
    access = Access(load_secret(settings.data_dir), settings.api_key, settings.shared_library)
    return AppState(settings, loaded, engine, Store(settings.data_dir, limits), access)
