"""The codec decoder's fused kernels (engine/kernels/codec.py) against the module path, on the same
inputs: whole streamed pushes of the tiny codec, and single convolutions (context, Snake on load,
residual, tanh, transposed, split over programs), with float32 and float16 operands. On CPU they run
in Triton's interpreter, where float32 operands must agree to float rounding and float16 ones to
their rounding; tests/test_cuda.py repeats the push comparison at the real shapes on the GPU."""
from __future__ import annotations

from typing import cast

import pytest
import torch

from engine.kernels.codec import launch_conv, plan_conv, snake_after_context
from engine.models.codec import Codec, ResidualUnit
from engine.models.codec_layers import CausalConv1d, CausalConvTranspose1d, Snake1d
from engine.vocoder.fused_decoder import FusedDecoder, launch_unit
from engine.vocoder.rows import RowVocoder
from tests.test_vocoder import HOP, make_codec, random_codes

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: the interpreter
# On the GPU the module path's cuDNN convolutions take TF32 operands, which bounds the agreement for
# either type. In the interpreter float32 operands are IEEE products and float16 ones are rounded
# (measured: 5e-4 on a push, 1e-3 on one conv).
CUDA = DEVICE.type == "cuda"
PUSH_ATOL = {torch.float32: 5e-3 if CUDA else 2e-6, torch.float16: 5e-3 if CUDA else 2e-3}
CONV_ATOL = {torch.float32: 1e-2 if CUDA else 2e-5, torch.float16: 1e-2 if CUDA else 4e-3}
OPERANDS = pytest.mark.parametrize("operands", [torch.float32, torch.float16], ids=["f32", "f16"])


@pytest.fixture(scope="module")
def codec() -> Codec:
    return make_codec().to(DEVICE)


@OPERANDS
def test_fused_pushes_equal_module_pushes(codec: Codec, operands: torch.dtype) -> None:
    fused, plain = RowVocoder(codec, 3, fused=True), RowVocoder(codec, 3, fused=False)
    assert fused.fused is not None and plain.fused is None
    assert fused.fused.first.weight.dtype == torch.float16  # the default
    fused.fused = FusedDecoder(codec.decoder, operands)
    codes0, pcm0 = [], []  # slot 0's stream
    # slot 1 restarts mid-way; pushes of 1-4 frames; rows in any order
    for i, (slots, n) in enumerate([([0], 1), ([0, 1], 2), ([1, 2, 0], 1), ("reset 1", 0), ([2, 1], 3),
                                    ([0, 1], 4)]):
        if isinstance(slots, str):  # "reset 1"
            fused.reset(1)
            plain.reset(1)
            continue
        codes, index = random_codes(len(slots), n, seed=i).to(DEVICE), torch.tensor(slots, device=DEVICE)
        got, want = fused.push(index, codes), plain.push(index, codes)
        assert got.shape == (len(slots), n * HOP)
        torch.testing.assert_close(got, want, atol=PUSH_ATOL[operands], rtol=0)
        if 0 in slots:
            codes0.append(codes[slots.index(0)])
            pcm0.append(got[slots.index(0)])
    assert torch.equal(fused.positions, plain.positions)
    # slot 0's stream, pushed in four parts, also equals one decode of all its 8 frames
    whole = codec.decode(torch.cat(codes0, dim=-1)[None])[0, 0]
    assert whole.shape == (8 * HOP,)
    torch.testing.assert_close(torch.cat(pcm0), whole, atol=max(PUSH_ATOL[operands], 1e-5), rtol=0)


def _snaked(snake: Snake1d | None, x: torch.Tensor) -> torch.Tensor:
    return x if snake is None else snake(x)


@OPERANDS
@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("kind", ["dilated", "pointwise", "transposed", "last", "dilated+snake",
                                  "pointwise+snake", "dilated/buffer", "pointwise/buffer", "dilated/buffer64"])
def test_conv_kernel_equals_torch(kind: str, split: int, operands: torch.dtype) -> None:
    """One conv (Snake on its input while loading; '+snake': the next layer's Snake applied to its
    output before storing; '/buffer': input and context in one buffer, read with one load, '64' with
    channel counts that fill whole blocks) against the torch module."""
    torch.manual_seed(0)
    kind, _, then = kind.partition("+")
    kind, _, layout = kind.partition("/")
    cin, cout, batch, length = (64, 32, 3, 11) if layout.endswith("64") else (40, 24, 3, 11)
    module = {"dilated": CausalConv1d(cin, cout, 7, dilation=3), "pointwise": CausalConv1d(cin, cout, 1),
              "transposed": CausalConvTranspose1d(cin, 20, 8, 4), "last": CausalConv1d(cin, 1, 7)}[kind].to(DEVICE)
    snake, out_snake = Snake1d(cin).to(DEVICE), Snake1d(cout).to(DEVICE)
    with torch.no_grad():
        snake.alpha.uniform_(0.5, 2.0)
        out_snake.alpha.uniform_(0.5, 2.0)
        module.conv.bias.normal_()
    plan = plan_conv(module, snake, out_snake=out_snake if then else None, tanh=kind == "last", operands=operands)
    context = plan.context
    x = torch.randn(batch, length, cin, device=DEVICE)
    ctx = torch.randn(batch, max(context, 1) * cin, device=DEVICE)  # pre-Snake inputs before x, [L, C] per row
    residual = torch.randn(batch, length, plan.weight.shape[1], device=DEVICE) if kind == "pointwise" else None
    y = torch.empty(batch, length, plan.weight.shape[1], device=DEVICE)
    if layout:  # [context; x] as one buffer per row, x its last rows
        buffer = torch.cat([ctx.view(batch, -1, cin)[:, :context], x], 1)
        launch_conv(plan, buffer[:, context:], buffer, plan.alpha, residual, y, split=split, one_source=True)
    else:
        launch_conv(plan, x, ctx, plan.alpha, residual, y, split=split)
    # reference: the module on Snake of [context; x], channels first
    full = _snaked(snake, torch.cat([ctx.view(batch, -1, cin)[:, :context], x], 1).transpose(1, 2))
    with torch.no_grad():
        if kind == "transposed":
            want, _ = module.step(full[..., context:], full[..., :context])
        else:
            want = module.conv(full)
    want = want.transpose(1, 2)
    if residual is not None:
        want = want + residual
    if kind == "last":
        want = torch.tanh(want)
    if then:
        want = _snaked(out_snake, want.transpose(1, 2)).transpose(1, 2)
    got = y.view(batch, length * plan.upsample, -1)
    torch.testing.assert_close(got, want, atol=CONV_ATOL[operands], rtol=1e-5)


def test_fused_codec_decoder_needs_float32(codec: Codec) -> None:
    half = make_codec().to(DEVICE, torch.bfloat16)
    with pytest.raises(ValueError, match="float32"):
        RowVocoder(half, 2, fused=True)
    with pytest.raises(ValueError, match="float16 or float32 operands"):
        FusedDecoder(codec.decoder, torch.bfloat16)


@OPERANDS
@pytest.mark.parametrize("channels", [24, 48])
@pytest.mark.parametrize("then", ["", "out_snake", "next"])
def test_residual_unit_kernel_equals_two_convs(channels: int, then: str, operands: torch.dtype) -> None:
    """One residual unit as one kernel (48 channels: parts of 32 + 16; 24: one part padded to 32)
    against its k7 conv (second Snake in its epilogue) and k1 conv (plus the residual) as two kernels;
    'out_snake': the output snaked for a transposed conv; 'next': Snake(output) also written after
    the context rows of the next k7 conv's input buffer."""
    torch.manual_seed(1)
    batch, length = 3, 21
    unit = ResidualUnit(channels, 3).to(DEVICE)
    after, following = Snake1d(channels).to(DEVICE), Snake1d(channels).to(DEVICE)
    with torch.no_grad():
        snake0, snake2 = cast(Snake1d, unit.block[0]), cast(Snake1d, unit.block[2])
        for snake in (snake0, snake2, after, following):
            snake.alpha.uniform_(0.5, 2.0)
    dilated = plan_conv(unit.block[1], snake0, snake_first=True, out_snake=snake2, operands=operands)
    pointwise = plan_conv(unit.block[3], None, out_snake=after if then == "out_snake" else None, operands=operands)
    h = torch.randn(batch, length, channels, device=DEVICE)
    ctx = torch.randn(batch, dilated.context * channels, device=DEVICE)
    assert dilated.alpha is not None  # planned with a snake first
    buf = snake_after_context(h, ctx, dilated.alpha, dilated.context, operands)
    # two kernels
    inner = torch.empty(batch, length, channels, dtype=operands, device=DEVICE)
    launch_conv(dilated, buf[:, dilated.context:], buf, None, None, inner, one_source=True)
    want = torch.empty(batch, length, channels, dtype=operands if then == "out_snake" else torch.float32,
                       device=DEVICE)
    launch_conv(pointwise, inner, inner, None, h, want, one_source=True)
    # one kernel
    got = torch.empty_like(want)
    nxt = torch.full((batch, 5 + length, channels), 7.0, dtype=operands, device=DEVICE) if then == "next" else None
    launch_unit(dilated, pointwise, buf, h, got, nxt, following.alpha.flatten() if nxt is not None else None, 5)
    tol = 2e-6 if operands == torch.float32 and not CUDA else 2e-3
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    if nxt is not None:
        assert torch.equal(nxt[:, :5], torch.full_like(nxt[:, :5], 7.0))  # the context rows are left alone
        snaked = following(got.transpose(1, 2)).transpose(1, 2).to(operands)
        torch.testing.assert_close(nxt[:, 5:].float(), snaked.float(), atol=tol, rtol=tol)


@OPERANDS
def test_fused_units_equal_two_kernel_units(codec: Codec, operands: torch.dtype) -> None:
    """The decoder with its residual units as one kernel each against the same decoder with each unit
    as two convs, over pushes that carry every conv's context from one to the next."""
    one, two = RowVocoder(codec, 2, fused=True), RowVocoder(codec, 2, fused=True)
    one.fused = FusedDecoder(codec.decoder, operands)
    two.fused = FusedDecoder(codec.decoder, operands, fused_units=False)
    # the same products in both; on the GPU TF32 tiles of other shapes may sum them in another order
    tol = 1e-5 if operands == torch.float32 and not CUDA else 1e-3
    for i, n in enumerate([1, 3, 2]):
        codes, index = random_codes(2, n, seed=10 + i).to(DEVICE), torch.tensor([1, 0], device=DEVICE)
        got, want = one.push(index, codes), two.push(index, codes)
        torch.testing.assert_close(got, want, atol=tol, rtol=0)
    torch.testing.assert_close(one.state, two.state, atol=tol, rtol=0)
