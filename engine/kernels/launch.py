"""How every Triton kernel of the engine is launched: programmatic dependent launch (PDL) or not.

Programmatic dependent launch (Hopper and later): a kernel is launched while the one before it is still
finishing, loads what does not depend on it (weights), then waits for it (gdc_wait). This hides the
launch gap and the ramp-up of each of the ~750 small kernels of a frame, also inside CUDA graphs.
Off until `enable_pdl()` is called by the backend decision (engine/backend.py), which alone looks at
the device.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

# Triton runs the kernels in its numpy interpreter (the tests on CPU): read once, here, for every
# kernel module (tiling and compile options differ) and for the backend decision.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Keyword arguments of every kernel launch; updated in place by enable_pdl(), so importers see it.
LAUNCH: dict[str, bool] = {"PDL": False}


# The device's shared memory per block (opt-in maximum), for kernels whose tiles differ by architecture:
# 227 KB on Hopper, 163 KB on the A100 (sm_80), 99 KB on sm_86/sm_89/sm_120 cards (A10G, L4, L40S, RTX).
# Set by the backend decision from the device; tests set it per target (tests/test_gpu_targets.py).
SHARED_MEMORY: dict[str, int] = {"per_block": 227 * 1024}


def set_shared_memory(per_block: int) -> None:
    SHARED_MEMORY["per_block"] = per_block


def enable_pdl() -> bool:
    """Launch with PDL from now on, when this Triton has it; True when enabled."""
    try:
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    except ImportError:
        return False
    globals().update(gdc_wait=gdc_wait, gdc_launch_dependents=gdc_launch_dependents)
    LAUNCH.update(launch_pdl=True, PDL=True)
    return True


@triton.jit
def after_previous(PDL: tl.constexpr):
    """Wait for the previous kernel's writes; let the next kernel start launching."""
    if PDL:
        gdc_wait()  # noqa: F821  # pyright: ignore[reportUndefinedVariable] (bound by enable_pdl)
        gdc_launch_dependents()  # noqa: F821  # pyright: ignore[reportUndefinedVariable]
