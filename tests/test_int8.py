"""int8 weights (`--weights int8`): the quantization, the int8 projection kernels against F.linear with the
dequantized weight, the int8 engine against the reference loop on the dequantized weights, and the
quantized weights cached under the data directory. Same devices and dtypes as tests/test_kernels.py."""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.checkpoint import int8_cache_file
from engine.config import tiny_config
from engine.kernels import linear as projections
from engine.kernels import transformer as kernels
from engine.loader import LoadedModel, load_model_dir
from engine.models.dual_ar import DualAR
from engine.models.int8 import Int8Linear, Int8Weight, dequantize, is_int8, projection_names, quantize, quantize_model
from engine.params import SamplingParams
from engine.reference import generate
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig
from tests.test_engine import random_prompt, run_engine
from tests.test_kernels import DEV, DTYPES

# int8 kernel vs F.linear on the dequantized weight: float32 sums differ only in order (the scale is applied
# once after the sum instead of to every entry); bfloat16 rounds the dequantized weight, the kernel does not.
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 3e-2)}


def int8_weight(n: int, k: int, seed: int) -> tuple[Int8Weight, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05 * torch.rand(n, 1, generator=g)  # rows of different ranges
    q, scale = quantize(w)
    return Int8Weight(q.to(DEV), scale.to(DEV)), w


def test_quantize_is_symmetric_per_output_channel() -> None:
    w = torch.randn(40, 96, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 3, 40)[:, None]
    w[7] = 0.0
    q, scale = quantize(w.bfloat16())
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (40,)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    assert torch.equal(q[7], torch.zeros(96, dtype=torch.int8)) and scale[7] == 1.0
    wf = w.bfloat16().float()
    assert torch.equal(q.abs().amax(dim=1)[wf.abs().amax(dim=1) > 0], torch.full((39,), 127, dtype=torch.int8))
    err = (dequantize(q, scale, torch.float32) - wf).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())  # rounding to nearest: half a step at most


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 2, 8, 16, 32, 40, 64, 72])
@pytest.mark.parametrize("n,k", [(300, 1024), (70, 4096), (96, 1536)])
def test_int8_projection_equals_linear_on_the_dequantized_weight(dtype, rows, n, k) -> None:
    """One row (gemv), 2-64 rows (the few-row kernel) and beyond (dequantized for cuBLAS): x @ (q * s).T."""
    w, _ = int8_weight(n, k, rows + n)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)).to(DEV, dtype)
    if rows == 1:
        assert projections.gemv_tiles(n, k, 1) is not None
    elif rows <= projections.GEMM_ROWS:
        assert k % projections.gemm_rows_tiles(rows, n, k, x.element_size(), 1)[1] == 0  # the kernel, not a fallback
    got = projections.linear(x, w)
    assert got.shape == (rows, n) and got.dtype == dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.float(), F.linear(x.float(), w.dequantize(torch.float32)), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 8, 32, 64])
def test_int8_swiglu_epilogue_equals_gate_after_product(dtype, rows) -> None:
    """The gate in the int8 kernels' epilogue (scale first, then silu(g) * u) equals silu_mul of the
    int8 product, bit for bit."""
    w, _ = int8_weight(600, 512, rows)
    x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows)).to(DEV, dtype)
    got = projections.linear(x, w, swiglu=True)
    assert got.shape == (rows, 300)
    assert torch.equal(got, kernels.silu_mul(projections.linear(x, w)))


def test_int8_linear_module_multiplies_by_the_dequantized_weight() -> None:
    linear = torch.nn.Linear(64, 48, bias=False)
    layer = Int8Linear.from_linear(linear)
    q, scale = quantize(linear.weight)
    assert torch.equal(layer.weight, q) and torch.equal(layer.scale, scale)
    x = torch.randn(5, 64)
    assert torch.equal(layer(x), F.linear(x, dequantize(q, scale, torch.float32)))
    assert set(layer.state_dict()) == {"weight", "scale"}


def dequantized_copy(model: DualAR) -> DualAR:
    """A plain model (nn.Linear everywhere) whose projections hold the int8 model's dequantized weights."""
    plain = DualAR(model.cfg)
    state = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if leaf == "scale":
            continue
        if isinstance(model.get_submodule(module), Int8Linear) and leaf == "weight":
            value = dequantize(value, model.state_dict()[f"{module}.scale"], torch.float32)
        state[key] = value.float()
    plain.load_state_dict(state, strict=True)
    plain.init_rope()
    return plain.eval()


@pytest.fixture(scope="module")
def int8_tiny(tiny_model: LoadedModel) -> LoadedModel:
    model = quantize_model(copy.deepcopy(tiny_model.model))
    return dataclasses.replace(tiny_model, model=model, weights="int8")


def test_int8_covers_every_projection_and_nothing_else(int8_tiny: LoadedModel, tiny_model: LoadedModel) -> None:
    names = projection_names(int8_tiny.model)
    cfg = int8_tiny.config
    assert len(names) == 5 * (cfg.text.n_layer + cfg.audio.n_layer) + 1  # wqkv, wo, w1, w2, w3; fast head
    assert all(isinstance(int8_tiny.model.get_submodule(n), Int8Linear) for n in names)
    int8_state, plain_state = int8_tiny.model.state_dict(), tiny_model.model.state_dict()
    kept = [k for k in plain_state if k.rpartition(".")[0] not in names]
    assert kept and all(torch.equal(int8_state[k], plain_state[k]) for k in kept)  # embeddings and norms as they were


@pytest.mark.parametrize("fused", [False, True])
def test_int8_engine_equals_reference_loop_on_dequantized_weights(int8_tiny: LoadedModel, fused: bool) -> None:
    """The engine on the int8 model (module path, and the fused kernels: Triton's interpreter on CPU)
    gives the reference loop's codes on a plain model holding the dequantized weights, token for token."""
    plain = dequantized_copy(int8_tiny.model)
    arrivals = [(0, random_prompt(int8_tiny, 900, 20, 30), SamplingParams(seed=3), 6),
                (1, random_prompt(int8_tiny, 901, 12, 9), SamplingParams(seed=4, top_k=4096, top_p=1.0,
                                                                       temperature=1.2), 3)]
    engine = Engine(int8_tiny, EngineConfig(num_blocks=32, block_size=16, max_batch=2, cuda_graphs=False,
                                            fused_kernels=fused))
    assert engine.runner.fused == fused and is_int8(engine.loaded.model)
    got = run_engine(engine, arrivals)
    for i, (_, prompt, params, frames) in enumerate(arrivals):
        want = generate(plain, prompt, params, frames).numpy()
        assert got[i].shape == (10, frames) and np.array_equal(got[i], want), f"request {i}"


def test_int8_weights_are_cached_and_read_back(tiny_dir: Path, tmp_path: Path, caplog) -> None:
    """The first load quantizes and writes the cache; the next reads it (same tensors); a torn cache file is
    replaced; a changed checkpoint gets a cache of its own."""
    caplog.set_level(logging.INFO, logger="engine.checkpoint")
    cache = tmp_path / "cache"
    first = load_model_dir(tiny_dir, torch.device("cpu"), torch.float32, "int8", cache)
    file = int8_cache_file(tiny_dir, cache)
    assert file.is_file() and file.parent == cache / "int8" and first.weights == "int8"
    assert [p.name for p in file.parent.iterdir()] == [file.name]  # no temporary file left
    assert "quantized" in caplog.text
    caplog.clear()
    second = load_model_dir(tiny_dir, torch.device("cpu"), torch.float32, "int8", cache)
    assert "read from" in caplog.text and "quantized" not in caplog.text
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    scale = "text_model.model.layers.0.attention.wqkv.scale"
    assert b[scale].dtype == torch.float32 and b[scale.replace("scale", "weight")].dtype == torch.int8
    file.write_bytes(file.read_bytes()[:1000])  # torn
    caplog.clear()
    third = load_model_dir(tiny_dir, torch.device("cpu"), torch.float32, "int8", cache)
    assert "ignoring the int8 cache" in caplog.text and file.stat().st_size > 1000
    assert all(torch.equal(a[k], third.model.state_dict()[k]) for k in a)


def test_int8_cache_follows_the_checkpoint(tiny_dir: Path, tmp_path: Path) -> None:
    import shutil
    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    assert int8_cache_file(other, tmp_path) == int8_cache_file(other, tmp_path)
    before = int8_cache_file(other, tmp_path)
    config = other / "config.json"
    config.write_text(config.read_text() + "\n")
    assert int8_cache_file(other, tmp_path) != before


def test_unknown_weights_are_refused(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="weights must be one of bf16, int8"):
        load_model_dir(tiny_dir, torch.device("cpu"), torch.float32, "int4")


def test_int8_stores_one_byte_an_entry() -> None:
    with torch.device("meta"):
        model = DualAR(tiny_config())
    before = {n: model.get_submodule(n).weight.nbytes for n in projection_names(model)}  # pyright: ignore[reportAttributeAccessIssue]
    quantize_model(model)
    for name, nbytes in before.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, Int8Linear)
        assert layer.weight.nbytes * 4 == nbytes and layer.scale.numel() == layer.out_features  # float32 before


@pytest.fixture(scope="module")
def int8_wide(tiny_model: LoadedModel) -> LoadedModel:
    """One slow and one fast layer of width 512 (K tiles the int8 kernels: the tiny checkpoint's 64 does
    not, so there the engine's projections fall back to F.linear), int8, on the kernels' device."""
    t, a = tiny_model.config.text, tiny_model.config.audio
    wide = {"dim": 512, "n_head": 4, "n_local_heads": 2, "head_dim": 128, "intermediate_size": 512, "n_layer": 1}
    cfg = dataclasses.replace(tiny_model.config, text=dataclasses.replace(t, **wide),
                              audio=dataclasses.replace(a, **wide))
    torch.manual_seed(0)
    model = DualAR(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.5 if "embeddings" in name else 512 ** -0.5)
    model = quantize_model(model).to(DEV)
    model.init_rope()
    codec = tiny_model.codec.to(DEV)
    return dataclasses.replace(tiny_model, model=model.eval(), config=cfg, codec=codec, device=DEV, weights="int8")


def test_int8_kernels_in_the_engine_equal_the_reference_loop(int8_wide: LoadedModel) -> None:
    """The fused engine at a width the int8 kernels take (one row: gemv; a prompt's rows: the few-row
    kernel) gives the reference loop's codes on the dequantized weights, token for token (float32)."""
    model = int8_wide.model
    assert projections.gemv_tiles(512, 512, 1) is not None
    arrivals = [(0, random_prompt(int8_wide, 910, 12, 20), SamplingParams(seed=5), 3 if DEV.type == "cuda" else 1)]
    if DEV.type == "cuda":  # Triton's interpreter takes ~20 s a frame at this width: one frame on the CPU
        arrivals.append((1, random_prompt(int8_wide, 911, 8, 6), SamplingParams(seed=6, top_k=4096, top_p=1.0), 2))
    engine = Engine(int8_wide, EngineConfig(num_blocks=16, block_size=16, max_batch=2, cuda_graphs=False,
                                            fused_kernels=True))
    calls = {"gemv": 0, "gemm_rows": 0}
    originals = projections.gemv, projections.gemm_rows

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += isinstance(args[1], Int8Weight)
            return fn(*args, **kwargs)
        return wrapper
    projections.gemv, projections.gemm_rows = counted("gemv", originals[0]), counted("gemm_rows", originals[1])
    try:
        got = run_engine(engine, arrivals)
    finally:
        projections.gemv, projections.gemm_rows = originals
    assert calls["gemv"] > 0 and calls["gemm_rows"] > 0  # both int8 kernels ran
    plain = dequantized_copy(model.cpu())
    model.to(DEV)
    for i, (_, prompt, params, n) in enumerate(arrivals):
        want = generate(plain, prompt, params, n).numpy()
        assert got[i].shape == (10, n) and np.array_equal(got[i], want), f"request {i}"


def test_int8_logit_error_tool_measures_the_int8_copy() -> None:
    """engine.tools.int8_error at the tiny shape: int8 moves the logits a little, and not at all for a
    model it is compared with itself."""
    from engine.tools.int8_error import logits, measure, random_model
    from engine.tools.int8_error import random_prompt as tool_prompt
    model = random_model("tiny", torch.device("cpu"))
    prompt = tool_prompt(model, 120, torch.device("cpu"))
    err = measure(model, prompt)
    assert 0 < err.slow_relative < 0.05 and 0 < err.fast_relative < 0.05
    assert err.slow_top_agree > 0.9 and err.fast_top_agree > 0.8
    slow, fast, _ = logits(model, prompt)
    assert slow.shape == (120, 4097) and fast.shape == (120, 4096)  # every position: fewer than 2 x 64
