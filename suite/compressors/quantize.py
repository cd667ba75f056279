"""Numerics shared by the scale-and-quantize compressors (QSGD, TernGrad, DIANA's Quant_p).

Three decisions live here so that every quantizer makes them the same way:

1. Compute precision. float64 inputs are quantized in float64, everything else in float32
   (float16 is upcast: its own arithmetic would round the probabilities to 11 bits).
2. Wire scales. Norms and scales travel as float32 and are rounded *up* to float32
   (`wire_scale`). A Bernoulli probability |x_j|/scale then never exceeds 1, so the
   reconstruction scale·ξ_j has mean exactly |x_j| for the scale the receiver sees: rounding
   the scale costs no bias. Rounding to nearest could push a probability above 1 and clip it.
3. Randomness. One uniform per coordinate from the worker's own stream, and ξ_j = [u_j < p_j].
   With one draw per coordinate drawn the same way, QSGD(s=1) and Quant_2 (and TernGrad
   without clipping and Quant_∞) give identical outputs from identical streams (THEORY.md §1,
   "Special cases"); the tests check that equality exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import CompressorError


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_range(s32: torch.Tensor, src: torch.Tensor, out_dtype, what: str) -> None:
    if not torch.isfinite(s32).all():
        raise CompressorError(
            f"{what}={src.abs().max().item():.6g} exceeds float32's range; the wire format "
            "stores it as float32"
        )
    limit = torch.finfo(out_dtype).max
    if limit < torch.finfo(torch.float32).max and (s32 > limit).any():
        raise CompressorError(
            f"{what}={s32.max().item():.6g} exceeds the largest {out_dtype} ({limit:.6g}); "
            "the decompressed message could not be held in the input's dtype"
        )


def wire_scale(t: torch.Tensor, out_dtype: torch.dtype, what: str) -> torch.Tensor:
    """Non-negative scales rounded UP to float32 (see the module docstring), range-checked."""
    s32 = t.to(torch.float32)
    if t.dtype == torch.float64:
        below = s32.to(torch.float64) < t
        s32 = torch.where(below, torch.nextafter(s32, torch.full_like(s32, math.inf)), s32)
    _check_range(s32, t, out_dtype, what)
    return s32


def wire_nearest(t: torch.Tensor, out_dtype: torch.dtype, what: str) -> torch.Tensor:
    """Scales rounded to the NEAREST float32, for deterministic scalings (scaled sign), where
    the nearest value is the one with the smaller error and no probability depends on it."""
    s32 = t.to(torch.float32)
    _check_range(s32, t, out_dtype, what)
    return s32


def num_blocks(d: int, block: int | None) -> tuple[int, int]:
    """(number of blocks m, block length B); None means one block of length d."""
    B = d if block is None else min(block, d)
    return -(-d // B), B


def to_blocks(x: torch.Tensor, B: int) -> torch.Tensor:
    """[w, d] -> [w, m, B], zero-padding the last block (zeros change no norm and quantize to
    zero). A view when B divides d."""
    w, d = x.shape
    pad = -d % B
    if pad:
        x = F.pad(x, (0, pad))
    return x.view(w, -1, B)


def from_blocks(xb: torch.Tensor, d: int) -> torch.Tensor:
    w = xb.shape[0]
    return xb.reshape(w, -1)[:, :d]


def block_norms(xb: torch.Tensor, p: float) -> torch.Tensor:
    """‖x_l‖_p per block, [w, m]: p = inf is max |x_j|, p = 1 the sum of |x_j|."""
    if p == math.inf:
        return xb.abs().amax(dim=2)
    return torch.linalg.vector_norm(xb, ord=p, dim=2)


def _positive(scale: torch.Tensor) -> torch.Tensor:
    # A zero scale means an all-zero block: divide by 1 instead, so 0/0 never makes a NaN.
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def ternary(xb: torch.Tensor, scale: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """sign(x_j)·ξ_j with ξ_j = [u_j < |x_j|/scale_l], as int8 in {-1, 0, 1}.

    xb, u: [w, m, B] in the compute dtype; scale: [w, m], in the compute dtype, already the
    float32 wire value (>= max |x_j| of its block, so probabilities are <= 1; the clamp only
    absorbs last-ulp rounding of computed p-norms).
    """
    prob = xb.abs().div_(_positive(scale).unsqueeze(2)).clamp_(max=1.0)
    xi = (u < prob).to(torch.int8)
    return torch.where(xb < 0, -xi, xi)


def stochastic_levels(
    xb: torch.Tensor, scale: torch.Tensor, u: torch.Tensor, s: int, int_dtype: torch.dtype
) -> torch.Tensor:
    """QSGD's signed levels sign(x_j)·ζ_j, ζ_j = ⌊r_j⌋ + [u_j < r_j − ⌊r_j⌋], r_j = s|x_j|/‖x‖.

    Same inputs as `ternary`. For s = 1 this is exactly `ternary` with the same u: r_j ∈ [0, 1],
    and ⌊r⌋ + [u < r − ⌊r⌋] = [u < r] both when r < 1 and when r = 1 (u < 1 always).
    """
    r = xb.abs().div_(_positive(scale).unsqueeze(2))
    if s != 1:
        r.mul_(s)
    r.clamp_(max=float(s))
    level = r.floor()
    level += u < r.sub_(level)
    level = level.to(int_dtype)
    return torch.where(xb < 0, -level, level)


def scale_blocks(values: torch.Tensor, scales: torch.Tensor, B: int) -> torch.Tensor:
    """values [w, d] times their block's scale ([w, m]), in the dtype of `scales`."""
    w, d = values.shape
    v = values.to(scales.dtype)
    if scales.shape[1] == 1:
        return v * scales
    return from_blocks(to_blocks(v, B) * scales.unsqueeze(2), d)


def int_dtype_for(max_abs: int) -> torch.dtype:
    for dt in (torch.int8, torch.int16, torch.int32):
        if max_abs <= torch.iinfo(dt).max:
            return dt
    return torch.int64
