"""The one place that decides which implementation runs each part of the engine on this device.

Resolved once, from the engine's settings and the device, and handed to the runner and the vocoder;
no module or model looks at the device (or at Triton's interpreter) to pick a path itself.

    ar_frame          fused: the Triton kernels of kernels/ (CUDA; on CPU only under Triton's interpreter)
                      module: the plain torch modules of models/ (every device; the oracle)
                      compiled: the module path through torch.compile (CUDA graphs capture it)
    decode_attention  triton: the paged decode kernel (CUDA); torch: gather + SDPA (everywhere else)
    codec_decoder     fused: the codec kernels of vocoder/fused_decoder.py (CUDA, float32 codec)
                      module: the plain torch codec modules, stepped stream by stream
    cuda_graphs       frames, prefill steps and vocoder pushes replayed from captured graphs
    device_streams    CUDA streams and events: the vocoder decodes on a second stream, outputs are copied
                      to pinned host memory and read when their event fires, the next frame is queued
                      before the last one is read (run-ahead); otherwise every call completes in order
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from engine.kernels.launch import enable_pdl, set_shared_memory

ArFrame = Literal["fused", "module", "compiled"]
PDL_MIN_CAPABILITY = 9  # programmatic dependent launch exists from Hopper on
MIN_CAPABILITY = (8, 0)  # bf16 tensor cores, and the kernels' shared memory (tests/test_gpu_targets.py)


class UnsupportedDevice(RuntimeError):
    """The GPU is older than the engine supports."""


def require_capability(name: str, capability: tuple[int, int]) -> None:
    """Refuse a GPU below compute capability 8.0, naming it and what is needed."""
    if capability < MIN_CAPABILITY:
        raise UnsupportedDevice(
            f"{name} (compute capability {capability[0]}.{capability[1]}) is not supported: the engine needs an "
            f"NVIDIA GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (A100, A10G, L4, "
            "L40S, RTX 30xx and later) for bf16 and its kernels; on this machine run with --device cpu")


@dataclass(frozen=True)
class Backend:
    ar_frame: ArFrame = "module"
    decode_attention: Literal["triton", "torch"] = "torch"
    codec_decoder: Literal["fused", "module"] = "module"
    cuda_graphs: bool = False
    device_streams: bool = False

    @property
    def fused_ar(self) -> bool:
        return self.ar_frame == "fused"

    @property
    def fused_codec(self) -> bool:
        return self.codec_decoder == "fused"


def resolve_backend(device: torch.device, fused_kernels: bool | None = None, compile: bool = False,
                    cuda_graphs: bool = True) -> Backend:
    """fused_kernels: None = on CUDA; True also runs on CPU under TRITON_INTERPRET=1 (the tests).
    compile: the module path compiled (excludes fused_kernels). Enables PDL launches on a GPU that has them."""
    cuda = device.type == "cuda"
    interpret = os.environ.get("TRITON_INTERPRET") == "1"  # read when deciding: tests switch it
    if fused_kernels and not cuda and not interpret:
        raise ValueError("the fused kernels need a CUDA GPU (on CPU only Triton's interpreter runs them, "
                         "for tests: TRITON_INTERPRET=1)")
    if compile:
        ar_frame: ArFrame = "compiled"
    elif cuda if fused_kernels is None else fused_kernels:
        ar_frame = "fused"
    else:
        ar_frame = "module"
    if cuda and not interpret:
        props = torch.cuda.get_device_properties(device)
        require_capability(props.name, (props.major, props.minor))
        set_shared_memory(props.shared_memory_per_block_optin)
        if props.major >= PDL_MIN_CAPABILITY:
            enable_pdl()
    return Backend(ar_frame, "triton" if cuda else "torch",
                   "fused" if cuda and fused_kernels is not False and not compile else "module",
                   cuda_graphs and cuda, cuda)
