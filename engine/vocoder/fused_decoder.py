"""The codec decoder streamed over many rows in fused kernels (CUDA; the reference is codec_layers.py):
`FusedDecoder` runs each conv through `kernels/codec.py`'s `_conv_kernel` and each residual unit of up to
192 channels through the one kernel here (pushes of many rows; few rows take the two convs).

A residual unit is Snake → k7 conv (dilation d) → Snake → k1 conv, added to its input. As two convs
the k7 conv's snaked output makes a round trip through memory, and each program of the k7 conv owns
only some of its output channels. Here one program owns BLOCK_R rows and all C channels: it runs the
k7 conv over the unit's snaked input, applies the second Snake to the tile, rounds it to the operand
type (as the two-kernel path stores it) and multiplies it by the k1 weight in registers, then adds
the bias and the residual. C is split into two power-of-two parts (96 = 64 + 32, 192 = 128 + 64), so
no channel is computed for padding.

Its epilogue also writes the next layer's input: Snake of the unit's output, in the operand type,
after the next k7 conv's context rows in that conv's input buffer, so the pass that writes
[context; Snake(input)] runs only for the first unit of a block. The decoder's last unit writes the
last conv's input the same way and nothing else: its output has no other reader.

Tested against the two-kernel path and the module path (tests/test_codec_kernels.py; on CPU through
TRITON_INTERPRET=1).
"""
from __future__ import annotations

import functools
from typing import cast

import torch
import triton
import triton.language as tl
from torch import Tensor, nn

from engine.kernels.codec import (
    ConvPlan,
    counters,
    launch_conv,
    plan_conv,
    roll_context,
    snake_after_context,
    snake_channels,
)
from engine.kernels.launch import INTERPRET
from engine.models.codec import Decoder, DecoderBlock, ResidualUnit
from engine.models.codec_layers import Snake1d


@triton.jit
def _dot_part(a, w_ptr, ci, ci_mask, co, co_mask, C, acc, PRECISION: tl.constexpr):
    """acc + a @ w[co, ci].T for one (input part, output part) of a [C_out, C_in] weight (C_in
    contiguous; a tap of the k7 weight [taps, C_out, C_in] is w_ptr + j·C·C), a in the weight's type."""
    w = tl.load(w_ptr + co[None, :] * C + ci[:, None], mask=ci_mask[:, None] & co_mask[None, :], other=0.0)
    return tl.dot(a.to(w.dtype), w, acc, input_precision=PRECISION)


@triton.jit
def _unit_out(o, co, co_mask, r, r_mask, b, t, C, b1_ptr, res_ptr, y_ptr, out_alpha_ptr, next_ptr, next_alpha_ptr,
              next_L, next_bstride, STORE_Y: tl.constexpr, OUT_SNAKE: tl.constexpr, NEXT: tl.constexpr):
    """Bias, residual and stores of one output part o [BLOCK_R, part]."""
    mask = r_mask[:, None] & co_mask[None, :]
    o += tl.load(b1_ptr + co, mask=co_mask, other=0.0)[None, :]
    o += tl.load(res_ptr + r.to(tl.int64)[:, None] * C + co[None, :], mask=mask, other=0.0)
    if STORE_Y:
        y = snake_channels(o, out_alpha_ptr, co, co_mask) if OUT_SNAKE else o
        tl.store(y_ptr + r.to(tl.int64)[:, None] * C + co[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    if NEXT:
        at = (b * next_bstride + (next_L + t) * C)[:, None] + co[None, :]
        tl.store(next_ptr + at, snake_channels(o, next_alpha_ptr, co, co_mask).to(next_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _unit_kernel(buf_ptr, w7_ptr, b7_ptr, alpha_ptr, w1_ptr, b1_ptr, res_ptr, y_ptr, out_alpha_ptr, next_ptr,
                 next_alpha_ptr, rows, T, L, C, buf_bstride, dilation, next_L, next_bstride,
                 PART_A: tl.constexpr, PART_B: tl.constexpr, PART_B_PAD: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_CI: tl.constexpr, STORE_Y: tl.constexpr, OUT_SNAKE: tl.constexpr, NEXT: tl.constexpr,
                 PRECISION: tl.constexpr):
    """y = res + b1 + snake_alpha(b7 + Σ_j in[t - (6-j)·d] @ w7[j].T) @ w1.T over the channels [0, PART_A)
    and [PART_A, PART_A + PART_B) (PART_B may be 0), where in[b, s] = buf[b, L + s] (buf [B, L + T, C]:
    the k7 conv's context, then its snaked input). OUT_SNAKE: y stored snaked for the next block's
    transposed conv. NEXT: Snake(y) also stored at rows next_L.. of the next conv's input buffer."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = r < rows
    b = (r // T).to(tl.int64)
    t = r % T
    ca = tl.arange(0, PART_A)
    ca_mask = ca < C
    cb = PART_A + tl.arange(0, PART_B_PAD)
    cb_mask = cb < PART_A + PART_B
    acc_a = tl.zeros((BLOCK_R, PART_A), tl.float32)
    acc_b = tl.zeros((BLOCK_R, PART_B_PAD), tl.float32)
    ci_blocks = tl.cdiv(C, BLOCK_CI)
    for step in range(0, 7 * ci_blocks):
        j = step // ci_blocks
        ci = (step % ci_blocks) * BLOCK_CI + tl.arange(0, BLOCK_CI)
        ci_mask = ci < C
        src = b * buf_bstride + (L + t - (6 - j) * dilation) * C
        v = tl.load(buf_ptr + src[:, None] + ci[None, :], mask=r_mask[:, None] & ci_mask[None, :], other=0.0)
        acc_a = _dot_part(v, w7_ptr + j * C * C, ci, ci_mask, ca, ca_mask, C, acc_a, PRECISION)
        if PART_B > 0:
            acc_b = _dot_part(v, w7_ptr + j * C * C, ci, ci_mask, cb, cb_mask, C, acc_b, PRECISION)
    # the second Snake, rounded to the operand type as the two-kernel path stores it
    dtype = w1_ptr.dtype.element_ty
    h_a = snake_channels(acc_a + tl.load(b7_ptr + ca, mask=ca_mask, other=0.0)[None, :], alpha_ptr, ca,
                         ca_mask).to(dtype)
    o_a = _dot_part(h_a, w1_ptr, ca, ca_mask, ca, ca_mask, C, tl.zeros((BLOCK_R, PART_A), tl.float32), PRECISION)
    if PART_B > 0:
        h_b = snake_channels(acc_b + tl.load(b7_ptr + cb, mask=cb_mask, other=0.0)[None, :], alpha_ptr, cb, cb_mask)
        h_b = h_b.to(dtype)
        o_a = _dot_part(h_b, w1_ptr, cb, cb_mask, ca, ca_mask, C, o_a, PRECISION)
        o_b = _dot_part(h_a, w1_ptr, ca, ca_mask, cb, cb_mask, C, tl.zeros((BLOCK_R, PART_B_PAD), tl.float32),
                       PRECISION)
        o_b = _dot_part(h_b, w1_ptr, cb, cb_mask, cb, cb_mask, C, o_b, PRECISION)
        _unit_out(o_b, cb, cb_mask, r, r_mask, b, t, C, b1_ptr, res_ptr, y_ptr, out_alpha_ptr, next_ptr,
                  next_alpha_ptr, next_L, next_bstride, STORE_Y, OUT_SNAKE, NEXT)
    _unit_out(o_a, ca, ca_mask, r, r_mask, b, t, C, b1_ptr, res_ptr, y_ptr, out_alpha_ptr, next_ptr, next_alpha_ptr,
              next_L, next_bstride, STORE_Y, OUT_SNAKE, NEXT)


# Where one kernel per unit is faster (docs/BENCHMARKS.md): up to 192 channels, from 16,384 rows (256
# programs; smaller pushes were slower). The interpreter takes any size, so the tests run both paths
# on the tiny codec.
FUSED_UNIT_CHANNELS = 192
FUSED_UNIT_ROWS = 0 if INTERPRET else 16384


def unit_parts(channels: int) -> tuple[int, int]:
    """(PART_A, PART_B): a power of two and the rest where the rest is one too (96 = 64 + 32); else
    (C padded to a power of two, 0). At least 16 each (the tensor cores' smallest tile)."""
    whole = max(16, triton.next_power_of_2(channels))
    rest = channels - whole // 2
    if whole > channels and rest >= 16 and rest & (rest - 1) == 0:
        return whole // 2, rest
    return whole, 0


def unit_tiles(channels: int, operand_bytes: int) -> tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_CI, num_warps, num_stages): steps of 128 bytes of inputs, or half that where it
    divides C."""
    if INTERPRET:  # numpy runs a program's block at once: few large programs are fastest
        return 4096, 32, 4, 1
    step = 128 // operand_bytes
    block_ci = next((c for c in (step, step // 2) if channels % c == 0), 16)
    return (64, block_ci, 4, 4 if channels <= 96 else 3)  # 4 stages measured faster at 96 channels


def launch_unit(dilated: ConvPlan, pointwise: ConvPlan, buf: Tensor, residual: Tensor, y: Tensor | None,
                nxt: Tensor | None = None, next_alpha: Tensor | None = None, next_context: int = 0) -> None:
    """One residual unit: buf [B, L + T, C] holds the k7 conv's context and snaked input (L =
    dilated.context), residual [B, T, C] the unit's input; y [B, T, C] gets the output (None: not
    stored), nxt [B, next_context + T, C] Snake(output) with next_alpha after its context rows."""
    batch, length, channels = residual.shape
    rows = batch * length
    part_a, part_b = unit_parts(channels)
    block_r, block_ci, warps, stages = unit_tiles(channels, dilated.weight.element_size())
    out_alpha = pointwise.out_alpha
    _unit_kernel[(triton.cdiv(rows, block_r),)](
        buf, dilated.weight, dilated.bias, dilated.out_alpha, pointwise.weight, pointwise.bias, residual,
        y if y is not None else residual, out_alpha if out_alpha is not None else pointwise.bias,
        nxt if nxt is not None else residual, next_alpha if next_alpha is not None else pointwise.bias,
        rows, length, dilated.context, channels, buf.stride(0), dilated.dilation, next_context,
        nxt.stride(0) if nxt is not None else 0, PART_A=part_a, PART_B=part_b, PART_B_PAD=max(16, part_b),
        BLOCK_R=block_r, BLOCK_CI=block_ci, STORE_Y=y is not None, OUT_SNAKE=out_alpha is not None,
        NEXT=nxt is not None, PRECISION="ieee" if INTERPRET else "tf32",
        num_warps=warps, num_stages=stages)  # pyright: ignore[reportCallIssue]  # launch options: not in Triton's stub


class FusedDecoder:
    """`Decoder` streamed over many rows: `run` continues each row's stream from the contexts it
    finds in the packed state (the slices of `engine/batched_vocoder.py`, read as [L, C_in])."""

    def __init__(self, decoder: Decoder, operands: torch.dtype = torch.float16, fused_units: bool = True) -> None:
        """operands: the products' operand type (float16, or float32 for TF32). fused_units: residual
        units of up to FUSED_UNIT_CHANNELS channels and FUSED_UNIT_ROWS rows as one kernel (else two convs).

        The Snake before a block's transposed conv and the one before a unit's k1 conv run in the
        epilogue of the conv before them, whose output nothing else reads: it is stored in the operand
        type, to which the next conv would round it anyway (applied while loading, the Snake was
        recomputed for each of the next conv's output tiles). The one before a unit's k7 conv, whose
        input is also the residual, runs in the unit before it or in a pass that writes [context;
        input] once."""
        if operands not in (torch.float16, torch.float32):
            raise ValueError(f"the codec convs take float16 or float32 operands, not {operands}")
        plan = functools.partial(plan_conv, operands=operands)
        layers = list(decoder.model)
        blocks = [cast(DecoderBlock, block).block for block in layers[1:-3]]  # Snake, up conv, units
        self.first = plan(layers[0], None, out_snake=cast(Snake1d, blocks[0][0]))
        self.blocks: list[tuple[ConvPlan, list[tuple[ConvPlan, ConvPlan]]]] = []
        for i, (_, up, *units) in enumerate(blocks):
            plans = []
            for j, u in enumerate(cast("list[ResidualUnit]", units)):
                feeds_up = j == len(units) - 1 and i + 1 < len(blocks)
                snake, out_snake = cast(Snake1d, u.block[0]), cast(Snake1d, u.block[2])
                plans.append((plan(u.block[1], snake, snake_first=True, out_snake=out_snake),
                              plan(u.block[3], None, out_snake=cast(Snake1d, blocks[i + 1][0]) if feeds_up else None)))
            self.blocks.append((plan(up, None), plans))
        self.last = plan(layers[-2], cast(Snake1d, layers[-3]), snake_first=True, tanh=True)
        self.fused_units = fused_units
        counters(self.first.weight.device)

    def run(self, x: Tensor, contexts: dict[nn.Module, Tensor]) -> Tensor:
        """x [B, T, latent] -> PCM [B, T·hop]; contexts[module] is that conv's [B, L·C_in] slice of
        the packed state (advanced in place)."""
        h = self.conv(self.first, x, contexts)
        buf = None  # the next snake-first conv's input, written by the unit before it
        for i, (up, units) in enumerate(self.blocks):
            h = self.conv(up, h, contexts)
            rows, channels = h.shape[0] * h.shape[1], h.shape[-1]
            fused = self.fused_units and channels <= FUSED_UNIT_CHANNELS and rows >= FUSED_UNIT_ROWS
            after_units = self.last if i == len(self.blocks) - 1 else None  # the next snake-first conv
            for j, (dilated, pointwise) in enumerate(units):
                if not fused:
                    h = self.conv(pointwise, self.conv(dilated, h, contexts), contexts, residual=h)
                    continue
                following = units[j + 1][0] if j + 1 < len(units) else after_units
                assert h is not None  # None only after the decoder's last unit, which ends the loop
                h, buf = self.unit(dilated, pointwise, h, buf, contexts, following)
        return self.conv(self.last, h, contexts, buffer=buf)[..., 0]

    def unit(self, dilated: ConvPlan, pointwise: ConvPlan, h: Tensor, buf: Tensor | None,
             contexts: dict[nn.Module, Tensor], following: ConvPlan | None) -> tuple[Tensor | None, Tensor | None]:
        """One residual unit on h [B, T, C] (buf: its k7 conv's input, if the unit before wrote it);
        returns (output, the input buffer of `following`, a snake-first conv, or None)."""
        batch, length, channels = h.shape
        operands = dilated.weight.dtype
        if buf is None:
            assert dilated.alpha is not None  # a snake-first conv
            buf = snake_after_context(h, contexts[dilated.module], dilated.alpha, dilated.context, operands)
        else:
            self._fill_context(dilated, buf, contexts)
        nxt = None
        if following is not None:
            nxt = torch.empty(batch, following.context + length, channels, dtype=operands, device=h.device)
        y = None
        if following is not self.last:  # the last conv reads only the snaked copy
            snaked = pointwise.out_alpha is not None
            y = torch.empty_like(h, dtype=operands if snaked else torch.float32)
        launch_unit(dilated, pointwise, buf, h, y, nxt, following.alpha if following else None,
                    following.context if following else 0)
        self._keep_context(dilated, buf, contexts)
        return y, nxt

    @staticmethod
    def _fill_context(plan: ConvPlan, buf: Tensor, contexts: dict[nn.Module, Tensor]) -> None:
        """buf [B, L + T, C][:, :L] <- a snake-first conv's carried (snaked) context."""
        batch, _, channels = buf.shape
        buf[:, :plan.context].copy_(contexts[plan.module].view(batch, plan.context, channels))

    @staticmethod
    def _keep_context(plan: ConvPlan, buf: Tensor, contexts: dict[nn.Module, Tensor]) -> None:
        """A snake-first conv's carried context <- the last L rows of its input buffer [B, L + T, C]."""
        batch, total, channels = buf.shape
        contexts[plan.module].view(batch, plan.context, channels).copy_(buf[:, total - plan.context:])

    def conv(self, plan: ConvPlan, x: Tensor | None, contexts: dict[nn.Module, Tensor],
             residual: Tensor | None = None, buffer: Tensor | None = None) -> Tensor:
        """x [B, T, C_in] -> [B, T·s, C_out], carrying plan.context input rows in contexts[plan.module].
        A snake-first conv may get `buffer` [B, L + T, C_in] instead: its snaked input after L rows,
        which this fills with the context."""
        if buffer is not None:
            self._fill_context(plan, buffer, contexts)
        elif plan.snake_first:  # [context; snake(x)] once, read by the conv as one contiguous input
            assert x is not None and plan.alpha is not None  # x: no buffer; alpha: snake-first
            ctx = contexts.get(plan.module)
            buffer = snake_after_context(x, x if ctx is None else ctx, plan.alpha, plan.context, plan.weight.dtype)
        if buffer is not None:
            batch, length = buffer.shape[0], buffer.shape[1] - plan.context
            x, ctx, alpha, one_source = buffer[:, plan.context:], buffer, None, True
        else:
            assert x is not None  # only a conv given `buffer` may get None
            batch, length = x.shape[:2]
            ctx = contexts.get(plan.module)
            if ctx is None or plan.context == 0:
                ctx = x
            alpha, one_source = plan.alpha, ctx is x and plan.context == 0
        cout = plan.weight.shape[1]
        # snaked for the next conv, which reads it in its operand type; else float32
        dtype = plan.weight.dtype if plan.out_alpha is not None else torch.float32
        y = torch.empty(batch, length, cout, dtype=dtype, device=x.device)
        launch_conv(plan, x, ctx, alpha, residual, y, one_source=one_source)
        if plan.context:
            if buffer is not None:  # the context is the conv's (snaked) input
                self._keep_context(plan, buffer, contexts)
            else:
                roll_context(x, contexts[plan.module], plan.context)
        return y.view(batch, length * plan.upsample, cout // plan.upsample)
