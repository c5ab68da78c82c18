"""The projection kernels of decode batch sizes (engine/projections.py) against F.linear, and the fused
w1|w3 layout they read. Same devices and dtypes as tests/test_kernels.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kernels import linear as projections
from engine.kernels import transformer as kernels
from tests.test_kernels import DEV, DTYPES, tol


def _tol(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) of the projections: tighter than tests/test_kernels.py's in float32, the same in bfloat16."""
    if dtype == torch.float32:
        return 1e-4, 1e-4
    t = tol(dtype)
    return t["atol"], t["rtol"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(300, 1024), (37, 4096), (70, 1536)])
def test_gemv_matches_linear(dtype, n, k) -> None:
    """The one-row projection kernel (each tile shape) against F.linear."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(1, k, generator=g).to(DEV, dtype)
    w = (torch.randn(n, k, generator=g) * 0.05).to(DEV, dtype)
    assert projections.gemv_tiles(n, k) is not None
    atol, rtol = _tol(dtype)
    torch.testing.assert_close(projections.linear(x, w).float(), F.linear(x, w).float(),
                               atol=atol, rtol=rtol)
    assert projections.gemv_tiles(n, 1000) is None  # K that does not tile goes to F.linear
    x2 = torch.randn(1, 1000, generator=g).to(DEV, dtype)
    w2 = torch.randn(n, 1000, generator=g).to(DEV, dtype)
    assert torch.equal(projections.linear(x2, w2), F.linear(x2, w2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 8, 32, 40, 72])
@pytest.mark.parametrize("n,k", [(300, 1024), (10050, 512)])
def test_swiglu_epilogue_equals_gate_after_product(dtype, rows, n, k) -> None:
    """The projection with the SwiGLU gate in its epilogue (one row, few rows, and the cuBLAS fallback
    beyond 64) equals the plain product followed by silu_mul, bit for bit, and the module's
    silu(w1 x) * w3 x on the interleaved weight's halves."""
    g = torch.Generator().manual_seed(rows + n)
    x = torch.randn(rows, k, generator=g).to(DEV, dtype)
    w = (torch.randn(n, k, generator=g) * 0.05).to(DEV, dtype)
    got = projections.linear(x, w, swiglu=True)
    assert got.shape == (rows, n // 2)
    product = projections.linear(x, w)
    assert torch.equal(got, kernels.silu_mul(product))
    # The module's gate on the interleaved halves. In bfloat16 it takes the same rounded product: a
    # product summed in another order may round a gate one unit apart, which silu(g) * u magnifies.
    gate, up = (F.linear(x, w[0::2]), F.linear(x, w[1::2])) if dtype == torch.float32 else (product[:, 0::2],
                                                                                              product[:, 1::2])
    atol, rtol = _tol(dtype)
    torch.testing.assert_close(got.float(), (F.silu(gate) * up).float(),
                               atol=atol, rtol=rtol)


def test_fuse_gate_up_interleaves_rows_in_place() -> None:
    """w1/w3 become views into one matrix of alternating rows; fusing again returns the same matrix."""
    from engine.kernels.fused_stack import fuse_gate_up
    from engine.models.layers import FeedForward
    block = torch.nn.Module()
    block.feed_forward = FeedForward(16, 24)
    w1, w3 = block.feed_forward.w1.weight.detach().clone(), block.feed_forward.w3.weight.detach().clone()
    w13 = fuse_gate_up(block)
    assert w13.shape == (48, 16) and w13.is_contiguous()
    assert torch.equal(w13[0::2], w1) and torch.equal(w13[1::2], w3)
    assert block.feed_forward.w1.weight.data_ptr() == w13.data_ptr()
    again = fuse_gate_up(block)
    assert again.data_ptr() == w13.data_ptr() and torch.equal(again, w13)
    x = torch.randn(3, 16)
    torch.testing.assert_close(block.feed_forward(x), F.linear(F.silu(x @ w1.T) * (x @ w3.T),
                                                               block.feed_forward.w2.weight))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n,k", [(2, 70, 256), (8, 6100, 256), (16, 33, 256), (24, 70, 256),
                                      (4, 10050, 384), (32, 10050, 256), (48, 70, 512), (64, 6100, 256)])
def test_gemm_rows_matches_linear(dtype, rows, n, k) -> None:
    """The few-row projection kernel (all tile shapes; two weight tiles loaded ahead from 10,000
    outputs) against F.linear."""
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, k, generator=g).to(DEV, dtype)
    w = (torch.randn(n, k, generator=g) * 0.05).to(DEV, dtype)
    got = projections.gemm_rows(x, w)
    assert got is not None
    atol, rtol = _tol(dtype)
    torch.testing.assert_close(got.float(), F.linear(x, w).float(),
                               atol=atol, rtol=rtol)
    assert projections.gemm_rows(x[:, :200].contiguous(), w[:, :200].contiguous()) is None  # K does not tile
