"""Numerics shared by the scale-and-quantize compressors (QSGD, TernGrad, DIANA's Quant_p).

Three decisions live here so that every quantizer makes them the same way:

1. Compute precision. float64 inputs are quantized in float64, everything else in float32
   (float16 is upcast: its own arithmetic would round the probabilities to 11 bits).
2. Wire scales. Norms and scales travel as float32 and are rounded *up* to float32
   (`wire_scale`). A Bernoulli probability |x_j|/scale then never exceeds 1, so the
   reconstruction scale·ξ_j has mean exactly |x_j| for the scale the receiver sees: rounding
   the scale costs no bias. Rounding to nearest could push a probability above 1 and clip it.
3. Randomness. One uniform u_j per coordinate from the worker's own stream; the Bernoulli(p_j)
   decision is ξ_j = [u_j < p_j] for x_j >= 0 and [u_j >= 1 − p_j] for x_j < 0 (one ceiling
   of r − u decides both signs, see `stochastic_levels`). All three compressors run this one
   kernel, so QSGD(s=1) and Quant_2 (and TernGrad without clipping and Quant_∞) give identical
   outputs from identical streams (docs/theory.md §1, "Special cases"); the tests check that
   equality exactly.
"""

from __future__ import annotations

import math

import torch

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


def split_blocks(t: torch.Tensor, B: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Views of [w, d] as its full blocks [w, d // B, B] and the shorter last block [w, d % B]
    (None where empty). Views, not a padded copy: on a large vector every copy costs as much
    as the whole quantization step."""
    w, d = t.shape
    full = d // B * B
    main = t[:, :full].unflatten(1, (d // B, B)) if full else None
    tail = t[:, full:] if full < d else None
    return main, tail


def _lp(t: torch.Tensor, p: float, dim: int) -> torch.Tensor:
    if p == math.inf:  # max |x| from two reductions, without a |x| temporary
        return torch.maximum(t.amax(dim=dim), t.amin(dim=dim).neg())
    return torch.linalg.vector_norm(t, ord=p, dim=dim)


def block_norms(x: torch.Tensor, B: int, p: float) -> torch.Tensor:
    """‖x_l‖_p per block of length B (the last may be shorter), [w, m]; p = inf: max |x_j|."""
    main, tail = split_blocks(x, B)
    parts = [] if main is None else [_lp(main, p, 2)]
    if tail is not None:
        parts.append(_lp(tail, p, 1).unsqueeze(1))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _positive(scale: torch.Tensor) -> torch.Tensor:
    # A zero scale means an all-zero block: divide by 1 instead, so 0/0 never makes a NaN.
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _per_block(op, x: torch.Tensor, scales: torch.Tensor, B: int, out: torch.Tensor) -> None:
    """out = op(x, scale of x's block), block by block, into `out` (contiguous, like x)."""
    xm, xt = split_blocks(x, B)
    om, ot = split_blocks(out, B)
    if xm is not None:
        op(xm, scales[:, : xm.shape[1]].unsqueeze(2), out=om)
    if xt is not None:
        op(xt, scales[:, -1:], out=ot)


def stochastic_levels(
    x: torch.Tensor, scales: torch.Tensor, B: int, u: torch.Tensor, s: int, int_dtype
) -> torch.Tensor:
    """Signed levels sign(x_j)·ζ_j with ζ_j = ⌊|r_j|⌋ + ξ_j, ξ_j ~ Bern(p_j), r_j = s·x_j/scale_l
    and p_j = |r_j| − ⌊|r_j|⌋, from one uniform u_j per coordinate.

    x, u: [w, d] in the compute dtype; scales: [w, m], one per block of length B, the float32
    wire scales converted to the compute dtype (>= the block's norm, so |r_j| <= s up to the
    last-ulp rounding of a computed p-norm, which the clamp absorbs). `u` is overwritten: it is
    this call's scratch space, which spares a temporary as large as x (on a large vector each
    fresh temporary costs about as much as copying x).

    The decision is one ceiling: sign(x_j)·ζ_j = trunc(r_j) + ⌈f_j − u_j⌉, where
    f_j = r_j − trunc(r_j) is the signed fractional part (exact in floating point). For x_j >= 0,
    ⌈f − u⌉ = 1 exactly when u < f: ξ_j = [u_j < p_j], decided by the sign of f − u, which
    floating point gets exactly. For x_j < 0 it is −1 exactly when f − u <= −1:
    ξ_j = [u_j >= 1 − p_j], where rounding f − u near −1 moves the probability by at most
    half an ulp of 1, the resolution of u itself. For s = 1, trunc(r) is 0 (or ±1 at |r| = 1,
    where f = 0) and the step fuses into ⌈r − u⌉ computed in u's buffer.
    """
    if s == 1:
        # ⌈r − u⌉ = −⌊u − r⌋, with u − r = u − x/scale made in u's buffer by addcdiv (IEEE
        # subtraction is sign-symmetric, so this is bit for bit the ⌈r − u⌉ of the docstring)
        xm, xt = split_blocks(x, B)
        um, ut = split_blocks(u, B)
        safe = _positive(scales)
        if xm is not None:
            um.addcdiv_(xm, safe[:, : xm.shape[1]].unsqueeze(2), value=-1)
        if xt is not None:
            ut.addcdiv_(xt, safe[:, -1:], value=-1)
        return u.floor_().to(int_dtype).neg_().clamp_(-1, 1)
    r = torch.empty_like(x, memory_format=torch.contiguous_format)
    _per_block(torch.div, x, _positive(scales) / s, B, r)  # r = x / (scale/s) = s·x/scale
    r.clamp_(-s, s)
    level = r.to(int_dtype)  # truncation toward zero: sign·⌊|r|⌋
    torch.sub(r.frac_(), u, out=u)  # f − u
    return level.add_(u.ceil_().to(int_dtype))


def ternary(x: torch.Tensor, scales: torch.Tensor, B: int, u: torch.Tensor) -> torch.Tensor:
    """sign(x_j)·ξ_j with ξ_j ~ Bern(|x_j|/scale_l), as int8 in {-1, 0, 1}: the s = 1 case of
    `stochastic_levels`. Sharing the kernel is what makes QSGD(s=1) ≡ Quant_2 and
    TernGrad ≡ Quant_∞ exact."""
    return stochastic_levels(x, scales, B, u, 1, torch.int8)


def scale_blocks(values: torch.Tensor, scales: torch.Tensor, B: int) -> torch.Tensor:
    """values [w, d] (integers) times their block's scale ([w, m]), in the dtype of `scales`."""
    v = values.to(scales.dtype, memory_format=torch.contiguous_format)
    _per_block(torch.mul, v, scales, B, v)
    return v


def int_dtype_for(max_abs: int) -> torch.dtype:
    for dt in (torch.int8, torch.int16, torch.int32):
        if max_abs <= torch.iinfo(dt).max:
            return dt
    return torch.int64
