"""The codec decoder's streaming path in fused Triton kernels (CUDA; the reference is codec_layers.py).

In torch the decoder is launch- and traffic-bound when streamed: every residual unit is Snake, a
context concatenation, a conv (with cuDNN's layout transposes around it), Snake, a conv and an add,
each a pass over the largest activations. Here the decoder runs channels-last ([B, T, C]) and each
convolution is one implicit-GEMM kernel on tensor cores that

- reads its left context straight from the carried state and the new input from the previous layer
  (no concatenation),
- gets its input already snaked: a k7 conv from a pass that writes [context; snake(input)] once (or
  from the residual unit before it, engine/fused_decoder.py), a k1 or transposed conv from the
  epilogue of the conv before it (the Snake can also be applied while loading),
- adds the bias, the residual, the next layer's Snake (before a k1 or transposed conv) and the final
  tanh before storing.

A transposed conv with kernel 2s and stride s is a two-tap conv over input frames t-1 and t whose
s·C_out outputs per frame are the s output samples: `conv_weights` rearranges its weight once.
Float32 in and out, float32 accumulation, float16 operands by default: TF32's mantissa (cuDNN's
default), rounded to nearest where TF32 operands are truncated (a smaller PCM error than TF32's:
docs/BENCHMARKS.md), at twice the tensor-core rate; `operands=torch.float32` runs them in
TF32 (IEEE under the interpreter). A snaked input that only a conv reads is stored in the operand
type, to which the conv would round it anyway. The rearranged weights are a second copy next to the
module's (~110 MB in float16 for the S2 Pro codec), which the one-shot decode and the encoder use.
Tested against the module path (tests/test_codec_kernels.py; on CPU through TRITON_INTERPRET=1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, cast

import torch
import triton
import triton.language as tl
from torch import Tensor, nn

from engine.kernels.launch import INTERPRET, SHARED_MEMORY
from engine.models.codec_layers import CausalConv1d, CausalConvTranspose1d, Snake1d


@triton.jit
def snake_value(x, alpha):
    """x + sin²(αx) / (α + 1e-9) in float32 (applied on load or in an epilogue below).

    sin² has period π: αx is reduced to [-π/2, π/2] by k·π in three parts (the first two with few
    bits, so their products are exact for |k| < 2**12), and the sine there is its Taylor polynomial
    to degree 13 (truncation < 1e-9). Within 3e-7 of sin² over |αx| <= 200, branch-free: libdevice's
    sine, with its slow path for huge arguments, made each conv kernel that applies it slower."""
    y = alpha * x
    k = tl.floor(y * 0.3183098861837907 + 0.5)
    r = ((y - k * 3.140625) - k * 0.0009677410125732422) - k * -8.742277657347586e-08
    r2 = r * r
    poly = 1.6059043836821613e-10 * r2 - 2.505210838544172e-08
    poly = poly * r2 + 2.7557319223985893e-06
    poly = poly * r2 - 1.984126984126984e-04
    poly = poly * r2 + 8.333333333333333e-03
    poly = poly * r2 - 1.6666666666666666e-01
    sine = r + r * r2 * poly
    return x + (1.0 / (alpha + 1e-9)) * (sine * sine)


@triton.jit
def snake_channels(v, alpha_ptr, ch, ch_mask):
    return snake_value(v, tl.load(alpha_ptr + ch, mask=ch_mask, other=1.0)[None, :])


@triton.jit(do_not_specialize=["split"])  # one kernel for every split count
def _conv_kernel(x_ptr, ctx_ptr, w_ptr, bias_ptr, alpha_ptr, out_alpha_ptr, res_ptr, y_ptr, part_ptr, count_ptr,
                 rows, T, L, CIN, COUT, x_bstride, ctx_bstride, dilation, split, TAPS: tl.constexpr,
                 SPLIT_K: tl.constexpr,
                 SNAKE: tl.constexpr, RESIDUAL: tl.constexpr, OUT_SNAKE: tl.constexpr, TANH: tl.constexpr,
                 ONE_SOURCE: tl.constexpr, EVEN_CI: tl.constexpr, EVEN_CO: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, PRECISION: tl.constexpr):
    """y[b, t] = out_snake?(bias + Σ_j snake?(in[b, t - (TAPS-1-j)·dilation]) @ w[j].T (+ res)) (tanh?),
    where in[b, s] is x[b, s] for s >= 0 and ctx[b, L + s] before it; w [TAPS, COUT, CIN].
    ONE_SOURCE: x continues its context in one buffer (ctx [B, L + T, CIN], x its last T rows), read
    with one load per tile. EVEN_CI / EVEN_CO: CIN / COUT are multiples of their blocks (no masks).
    SPLIT_K: the (tap, input block) steps are split over `split` > 1 programs (few rows, large weights):
    each stores its partial sums, and the last to finish a tile adds them in a fixed order. The count
    is an argument, not a constant, so every split of a shape shares one compiled kernel (they were a
    third of the vocoder's compiles at a cold start)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # flat (batch, time) output rows
    r_mask = r < rows
    b = (r // T).to(tl.int64)
    t = r % T
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_mask = co < COUT
    ci_blocks = tl.cdiv(CIN, BLOCK_CI)
    steps = TAPS * ci_blocks
    per_split = tl.cdiv(steps, split)
    first = tl.program_id(2) * per_split
    acc = tl.zeros((BLOCK_R, BLOCK_CO), tl.float32)
    for step in range(first, tl.minimum(first + per_split, steps)):
        j = step // ci_blocks
        ci = (step % ci_blocks) * BLOCK_CI + tl.arange(0, BLOCK_CI)
        ci_mask = ci < CIN
        src = t - (TAPS - 1 - j) * dilation
        ctx_rows = b * ctx_bstride + (L + src) * CIN
        if ONE_SOURCE:
            if EVEN_CI:
                in_rows = r_mask[:, None]
            else:
                in_rows = r_mask[:, None] & ci_mask[None, :]
            v = tl.load(ctx_ptr + ctx_rows[:, None] + ci[None, :], mask=in_rows, other=0.0)
        else:
            in_x = (r_mask & (src >= 0))[:, None] & ci_mask[None, :]
            in_ctx = (r_mask & (src < 0))[:, None] & ci_mask[None, :]
            v = tl.load(x_ptr + (b * x_bstride + src * CIN)[:, None] + ci[None, :], mask=in_x, other=0.0)
            v = v.to(tl.float32) + tl.load(ctx_ptr + ctx_rows[:, None] + ci[None, :], mask=in_ctx, other=0.0)
        if SNAKE:
            v = snake_channels(v, alpha_ptr, ci, ci_mask)
        w_at = w_ptr + (j * COUT + co)[None, :] * CIN + ci[:, None]  # [BLOCK_CI, BLOCK_CO], CIN-major
        if EVEN_CI and EVEN_CO:
            w = tl.load(w_at)
        else:
            w = tl.load(w_at, mask=ci_mask[:, None] & co_mask[None, :], other=0.0)
        acc = tl.dot(v.to(w.dtype), w, acc, input_precision=PRECISION)
    out = r.to(tl.int64)[:, None] * COUT + co[None, :]
    mask = r_mask[:, None] & co_mask[None, :]
    if SPLIT_K:
        tl.store(part_ptr + tl.program_id(2) * rows * COUT + out, acc, mask=mask)
        tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        arrived = tl.atomic_add(count_ptr + tile, 1)  # acq_rel: the partials are visible
        last = arrived == split - 1
        # only the last arrival reads the partials and stores (the others are done)
        mask = mask & ((arrived + tl.zeros((BLOCK_R, BLOCK_CO), tl.int32)) == split - 1)
        acc = tl.zeros((BLOCK_R, BLOCK_CO), tl.float32)
        for i in range(split):
            acc += tl.load(part_ptr + i * rows * COUT + out, mask=mask, other=0.0, cache_modifier=".cg")
        tl.atomic_xchg(count_ptr + tile, 0, mask=last)  # ready for the next call
    acc += tl.load(bias_ptr + co, mask=co_mask, other=0.0)[None, :]
    if RESIDUAL:
        acc += tl.load(res_ptr + out, mask=mask, other=0.0)
    if OUT_SNAKE:  # the next layer's Snake, once per output (stride-1 convs: channel = co)
        acc = snake_channels(acc, out_alpha_ptr, co, co_mask)
    if TANH:
        acc = 1.0 - 2.0 / (tl.exp(2.0 * acc) + 1.0)
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _snake_after_context_kernel(x_ptr, ctx_ptr, alpha_ptr, out_ptr, T, L, C, ctx_bstride,
                                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[b] = [ctx[b] (already snaked); snake(x[b])] as [L + T, C] in out's type."""
    b = tl.program_id(2).to(tl.int64)
    i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    from_ctx = (i < L)[:, None] & c_mask[None, :]
    from_x = ((i >= L) & (i < L + T))[:, None] & c_mask[None, :]
    v = tl.load(x_ptr + (b * T + i - L)[:, None] * C + c[None, :], mask=from_x, other=0.0)
    v = snake_channels(v, alpha_ptr, c, c_mask)
    v = tl.where(from_ctx, tl.load(ctx_ptr + b * ctx_bstride + i[:, None] * C + c[None, :], mask=from_ctx,
                                   other=0.0), v)
    tl.store(out_ptr + (b * (L + T) + i)[:, None] * C + c[None, :], v.to(out_ptr.dtype.element_ty),
             mask=from_ctx | from_x)


@triton.jit
def _roll_kernel(x_ptr, ctx_ptr, T, L, C, x_bstride, ctx_bstride, BLOCK_L: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    """ctx[b] <- the last L rows of [ctx[b]; x[b]] in place. One program holds all L rows of its
    columns and loads them all before storing, so it may read rows it then overwrites."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    i = tl.arange(0, BLOCK_L)
    src = i + T  # row in [ctx; x]
    keep = (i < L)[:, None] & (c < C)[None, :]
    in_x = keep & (src >= L)[:, None]
    v = tl.load(x_ptr + b * x_bstride + (src - L)[:, None] * C + c[None, :], mask=in_x, other=0.0)
    v = v.to(tl.float32) + tl.load(ctx_ptr + b * ctx_bstride + src[:, None] * C + c[None, :],
                                   mask=keep & ~in_x, other=0.0)
    tl.debug_barrier()
    tl.store(ctx_ptr + b * ctx_bstride + i[:, None] * C + c[None, :], v, mask=keep)


@dataclass
class ConvPlan:
    """One decoder conv as an implicit GEMM: weight [taps, C_out', C_in] where C_out' = C_out · upsample."""

    module: nn.Module  # whose state slice holds the context
    weight: Tensor
    bias: Tensor
    dilation: int
    context: int  # L: input rows carried between pushes
    upsample: int  # output samples per input row (a transposed conv's stride; 1 for a conv)
    alpha: Tensor | None = None  # Snake applied to the input while loading
    snake_first: bool = False  # snake + context written once before a k7 conv (instead of per tile)
    out_alpha: Tensor | None = None  # the next layer's Snake, applied to the output before storing
    tanh: bool = False

    @property
    def taps(self) -> int:
        return self.weight.shape[0]


def conv_weights(module: CausalConv1d | CausalConvTranspose1d) -> tuple[Tensor, Tensor]:
    """(weight [taps, C_out·s, C_in], bias [C_out·s]) of a causal conv or a k = 2s transposed conv
    (C_in contiguous: tensor cores take float32 operands only K-major)."""
    conv = module.conv
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=conv.weight.device)
    if isinstance(module, CausalConv1d):
        assert module.stride == 1 and conv.groups == 1, "the decoder's convs are stride 1, dense"
        return conv.weight.detach().permute(2, 0, 1).contiguous(), bias.detach().clone()
    s = module.stride
    assert conv.kernel_size[0] == 2 * s and module.context_frames == 1, "decoder transposed convs have k = 2s"
    w = conv.weight.detach()  # [C_in, C_out, 2s]: frame t's samples get taps 0..s-1 of x[t], s..2s-1 of x[t-1]
    taps = torch.stack([w[:, :, s:], w[:, :, :s]])  # [2 (x[t-1], x[t]), C_in, C_out, s]
    return taps.permute(0, 3, 2, 1).flatten(1, 2).contiguous(), bias.detach().repeat(s)


def _alpha(snake: Snake1d | None) -> Tensor | None:
    return None if snake is None else snake.alpha.detach().flatten().contiguous()


def plan_conv(module: nn.Module, snake: Snake1d | None, snake_first: bool = False, out_snake: Snake1d | None = None,
          tanh: bool = False, operands: torch.dtype = torch.float16) -> ConvPlan:
    weight, bias = conv_weights(cast("CausalConv1d | CausalConvTranspose1d", module))
    is_conv = isinstance(module, CausalConv1d)
    assert out_snake is None or is_conv, "an output Snake needs one output channel per column"
    return ConvPlan(module, weight.to(operands), bias, module.conv.dilation[0] if is_conv else 1,
                    module.left_pad if is_conv else 1, 1 if is_conv else cast(CausalConvTranspose1d, module).stride,
                    _alpha(snake), snake_first, _alpha(out_snake), tanh)


_COUNTERS: dict[torch.device, Tensor] = {}  # per-tile arrival counts of split convs, left at zero
_MIN_PROGRAMS = 264  # two per SM of an H100 (132 SMs): fewer leave the weight stream short of bandwidth


def counters(device: torch.device) -> Tensor:
    """The device's split-conv counters. Created before any capture (FusedDecoder does): every launch
    passes them, so the kernel's signature never changes and nothing compiles inside a CUDA graph."""
    if device not in _COUNTERS:
        _COUNTERS[device] = torch.zeros(4 * _MIN_PROGRAMS, dtype=torch.int32, device=device)
    return _COUNTERS[device]


class ConvTiles(NamedTuple):
    block_r: int  # output rows per program
    block_ci: int  # inputs per step
    block_co: int  # outputs per program
    split: int  # programs sharing one output tile's steps
    warps: int
    stages: int


def conv_tiles(rows: int, cin: int, cout: int, taps: int, operand_bytes: int) -> ConvTiles:
    """Tiles chosen by measurement at the S2 Pro codec's shapes (docs/BENCHMARKS.md): steps of 128 bytes
    of inputs, or half that where it divides C_in (96 inputs: three unmasked steps of 32); outputs in
    whole tiles; 128 rows per program for the large k7 convs and 128 rows × 256 outputs for the large
    transposed ones (faster there, slower elsewhere); split over programs when the tiles are few."""
    block_co = min(128, max(16, triton.next_power_of_2(cout)))
    if INTERPRET:  # numpy runs a program's block at once: few large programs are fastest
        return ConvTiles(min(4096, max(16, triton.next_power_of_2(rows))), 32, block_co, 1, 4, 1)
    step = 128 // operand_bytes
    block_ci = next((c for c in (step, step // 2) if cin % c == 0), 16)
    if cout > 128 and cout % 128:
        block_co = 64 if cout % 64 == 0 else 128
    block_r, warps = 64, 4
    if taps == 2 and rows >= 8192:  # the decoder's transposed convs (a two-tap conv, see above)
        block_r, block_co, warps = 128, min(256, triton.next_power_of_2(cout)), 8
    elif taps > 2 and rows >= 65536 and cin >= 192:
        block_r = 128
    tiles = triton.cdiv(rows, block_r) * triton.cdiv(cout, block_co)
    steps = taps * triton.cdiv(cin, block_ci)
    split = max(1, min(steps // 4, triton.cdiv(_MIN_PROGRAMS, tiles), 64)) if tiles < _MIN_PROGRAMS else 1
    # 128 x 256 tiles in three stages take 112 KB of shared memory: two where a block gets less
    # (sm_86, sm_89, sm_120 cards: 99 KB)
    stages = 2 if block_r * block_co >= 128 * 256 and SHARED_MEMORY["per_block"] < 128 * 1024 else 3
    return ConvTiles(block_r, block_ci, block_co, split, warps, stages)


def launch_conv(plan: ConvPlan, x: Tensor, ctx: Tensor, alpha: Tensor | None, residual: Tensor | None,
                 y: Tensor, split: int | None = None, one_source: bool = False) -> None:
    """one_source: ctx is [B, L + T, C_in] with x as its last T rows (one buffer, one load per tile)."""
    batch, length, cin = x.shape
    cout, rows = y.shape[-1], batch * length
    tiles = conv_tiles(rows, cin, cout, plan.taps, plan.weight.element_size())
    split = split or tiles.split
    grid = (triton.cdiv(rows, tiles.block_r), triton.cdiv(cout, tiles.block_co), split)
    part = torch.empty(split, rows, cout, dtype=torch.float32, device=y.device) if split > 1 else y
    out_alpha = plan.out_alpha
    _conv_kernel[grid](
        x, ctx, plan.weight, plan.bias, alpha if alpha is not None else plan.bias,
        out_alpha if out_alpha is not None else plan.bias, residual if residual is not None else y, y, part,
        counters(y.device), rows, length, plan.context, cin, cout, x.stride(0), ctx.stride(0), plan.dilation,
        split, TAPS=plan.taps, SPLIT_K=split > 1, SNAKE=alpha is not None, RESIDUAL=residual is not None,
        OUT_SNAKE=out_alpha is not None, TANH=plan.tanh, ONE_SOURCE=one_source,
        EVEN_CI=cin % tiles.block_ci == 0, EVEN_CO=cout % tiles.block_co == 0, BLOCK_R=tiles.block_r,
        BLOCK_CI=tiles.block_ci, BLOCK_CO=tiles.block_co, PRECISION="ieee" if INTERPRET else "tf32",
        num_warps=tiles.warps, num_stages=tiles.stages)  # pyright: ignore[reportCallIssue]  # launch options: not in Triton's stub


def snake_after_context(x: Tensor, ctx: Tensor, alpha: Tensor, context: int, dtype: torch.dtype) -> Tensor:
    """[B, L + T, C] in dtype: ctx [B, L·C] (a state slice, already snaked) then snake(x [B, T, C])."""
    batch, length, channels = x.shape
    out = torch.empty(batch, context + length, channels, dtype=dtype, device=x.device)
    block_r = min(4096, triton.next_power_of_2(context + length)) if INTERPRET else 32
    block_c = min(128, triton.next_power_of_2(channels))
    grid = (triton.cdiv(context + length, block_r), triton.cdiv(channels, block_c), batch)
    _snake_after_context_kernel[grid](x, ctx, alpha, out, length, context, channels, ctx.stride(0),
                                      BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)  # pyright: ignore[reportCallIssue]  # launch options: not in Triton's stub
    return out


def roll_context(x: Tensor, ctx: Tensor, context: int) -> None:
    """ctx [B, L·C] <- the last L rows of [ctx; x [B, T, C]] per row, in place."""
    batch, length, channels = x.shape
    block_c = min(128, triton.next_power_of_2(channels))
    _roll_kernel[(batch, triton.cdiv(channels, block_c))](
        x, ctx, length, context, channels, x.stride(0), ctx.stride(0),
        BLOCK_L=max(16, triton.next_power_of_2(context)), BLOCK_C=block_c, num_warps=4)  # pyright: ignore[reportCallIssue]  # launch options: not in Triton's stub
