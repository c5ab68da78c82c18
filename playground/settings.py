"""Server settings: CLI flags and S2PRO_* environment variables map onto one frozen dataclass here."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from engine import DEFAULT_MODEL_ID, MAX_UPLOAD_BYTES, WEIGHTS


@dataclass(frozen=True)
class Settings:
    model_path: str = DEFAULT_MODEL_ID
    device: str = "auto"
    dtype: str = "auto"
    weights: str = "bf16"  # the AR projections: bf16 as published, or int8 (half the memory; see README)
    host: str = "127.0.0.1"
    port: int = 7860
    data_dir: Path = Path("data")
    api_key: str | None = None  # bearer key for /v1 routes; None = open
    max_batch: int = 32
    num_blocks: int | None = None
    cuda_graphs: bool = True
    compile: bool = False
    demo_fallback: bool = True  # start on a random tiny checkpoint when no real weights are found
    max_upload_mb: int = MAX_UPLOAD_BYTES >> 20  # the decoder reads no more than this anyway
    shared_library: bool = False  # one voice library and history for every visitor and the API
    max_voices: int = 50  # saved voices per visitor (and for the API)
    max_history: int = 200  # takes kept per visitor; the oldest go first
    max_disk_mb: int = 2048  # voices, takes and downloads together; the oldest takes go first
    max_connections: int = 512  # open HTTP connections; beyond it new requests get 503
    max_waiting: int | None = None  # requests waiting for a decode slot (None: the engine's default)
    step_timeout_s: float | None = None  # watchdog: a step longer than this ends the process (None: default)
    gpu_memory_gb: float | None = None  # device memory the process may use, weights included (None: all)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.max_batch < 1:
            raise ValueError("max_batch must be positive")
        for name in ("max_upload_mb", "max_voices", "max_history", "max_disk_mb", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        if self.gpu_memory_gb is not None and self.gpu_memory_gb < 1:
            raise ValueError(f"gpu_memory_gb must be at least 1, got {self.gpu_memory_gb}")
        if self.max_upload_mb > MAX_UPLOAD_BYTES >> 20:
            raise ValueError(f"max_upload_mb can be at most {MAX_UPLOAD_BYTES >> 20} (the decoder's limit)")


def parse_settings(argv: list[str] | None = None) -> Settings:
    env = os.environ
    p = argparse.ArgumentParser(description="S2 Pro Playground: playground + OpenAI-compatible speech API")
    p.add_argument("--model-path", default=env.get("S2PRO_MODEL_PATH", DEFAULT_MODEL_ID),
                   help="checkpoint directory or hub id (default: %(default)s)")
    p.add_argument("--device", default=env.get("S2PRO_DEVICE", "auto"), help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=env.get("S2PRO_DTYPE", "auto"), help="auto, bfloat16, float32")
    p.add_argument("--weights", default=env.get("S2PRO_WEIGHTS", "bf16"), choices=WEIGHTS,
                   help="bf16 (as published) or int8: every AR projection quantized per output channel at the "
                        "first start and cached under the data directory; half the weight memory, for 16-24 GB "
                        "cards (default: %(default)s)")
    p.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env.get("PORT", env.get("GRADIO_SERVER_PORT", "7860"))))
    p.add_argument("--data-dir", type=Path, default=Path(env.get("S2PRO_DATA_DIR", "data")),
                   help="voices, history and the demo checkpoint live here")
    p.add_argument("--api-key", default=env.get("S2PRO_API_KEY"), help="require this bearer key on /v1")
    p.add_argument("--max-batch", type=int, default=int(env.get("S2PRO_MAX_BATCH", "32")))
    p.add_argument("--num-blocks", type=int, default=None, help="KV blocks (default: from free memory)")
    p.add_argument("--eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the module-path decode frame instead of the fused kernels (CUDA)")
    p.add_argument("--no-demo", action="store_true", help="fail instead of starting in demo mode")
    p.add_argument("--shared-library", action="store_true", default=_flag(env, "S2PRO_SHARED_LIBRARY"),
                   help="one voice library and history for every visitor and the API (default: each "
                        "browser has its own, the API its own)")
    _int_flags(p, env)
    p.add_argument("--max-waiting", type=int, default=_opt(env, "S2PRO_MAX_WAITING", int),
                   help="requests that may wait for a decode slot; beyond it 503 with Retry-After "
                        "(default: twice --max-batch)")
    p.add_argument("--step-timeout", type=float, default=_opt(env, "S2PRO_STEP_TIMEOUT", float),
                   help="seconds one engine step may take before the server reports itself unhealthy and "
                        "exits for its supervisor to restart it (default: 30 on a GPU, 600 on the CPU; 0: off)")
    p.add_argument("--gpu-memory", type=float, default=_opt(env, "S2PRO_GPU_MEMORY", float),
                   help="GiB of GPU memory the server may use, weights included: the KV cache is sized from it "
                        "and the process held to it (reproduces a 16 or 24 GB card on a bigger one)")
    a = p.parse_args(argv)
    return Settings(model_path=a.model_path, device=a.device, dtype=a.dtype, weights=a.weights, host=a.host,
                    port=a.port, data_dir=a.data_dir, api_key=a.api_key or None, max_batch=a.max_batch,
                    num_blocks=a.num_blocks, cuda_graphs=not a.eager, compile=a.compile,
                    demo_fallback=not a.no_demo, shared_library=a.shared_library, max_waiting=a.max_waiting,
                    step_timeout_s=a.step_timeout, gpu_memory_gb=a.gpu_memory,
                    **{name: getattr(a, name) for name, _ in INT_FLAGS})


# Limits with a flag and an S2PRO_* variable each; their defaults are Settings' own.
INT_FLAGS = (("max_upload_mb", "largest upload or /v1 request body, MB"),
             ("max_voices", "saved voices per visitor (and for the API)"),
             ("max_history", "takes kept per visitor (the oldest go first)"),
             ("max_disk_mb", "disk for voices, takes and downloads (the oldest takes go first)"),
             ("max_connections", "open HTTP connections (503 beyond)"))


def _int_flags(p: argparse.ArgumentParser, env: os._Environ[str] | dict[str, str]) -> None:
    defaults = Settings()
    for name, help_text in INT_FLAGS:
        default = int(env.get(f"S2PRO_{name.upper()}") or getattr(defaults, name))
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default,
                       help=f"{help_text} (default: %(default)s)")


def _opt(env: os._Environ[str] | dict[str, str], name: str, kind: type) -> int | float | None:
    return kind(env[name]) if env.get(name) else None


def _flag(env: os._Environ[str] | dict[str, str], name: str) -> bool:
    return env.get(name, "").lower() in ("1", "true", "yes", "on")


