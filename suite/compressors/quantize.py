"""Numerics shared by the scale-and-quantize compressors (QSGD, TernGrad, DIANA's Quant_p).

Three decisions live here so that every quantizer makes them the same way:

1. Compute precision. float64 inputs are quantized in float64, everything else in float32
   (float16 is upcast: its own arithmetic would round the probabilities to 11 bits).
2. Wire scales. Norms and scales travel as float32 and are rounded *up* to float32
   (`wire_scale`). A Bernoulli probability |x_j|/scale then never exceeds 1, so the
   reconstruction scale·ξ_j has mean exactly |x_j| for the scale the receiver sees: rounding
   the scale costs no bias. Rounding to nearest could push a probability above 1 and clip it.
3. Randomness. One grid uniform u_j per coordinate from the worker's own stream, and an exact
   Bernoulli(p_j) decision ξ_j = [u_j < p_j] for either sign of x_j, refined with further
   draws in the rare cell where u_j's 24 (or 53) bits cannot decide (`bernoulli.py`,
   docs/theory.md §1a): so ξ_j fires with probability exactly p_j, not ⌈p_j·2^24⌉/2^24.
   All three compressors run this one kernel, so QSGD(s=1) and Quant_2 (and TernGrad without
   clipping and Quant_∞) give identical outputs from identical streams (docs/theory.md §1,
   "Special cases"); the tests check that equality exactly.
"""

from __future__ import annotations

import math

import torch

from suite.rng import grid_bits

from . import bernoulli
from .base import MessageRangeError


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_range(s32: torch.Tensor, src: torch.Tensor, out_dtype, what: str) -> None:
    if not torch.isfinite(s32).all():
        raise MessageRangeError(
            f"{what}={src.abs().max().item():.6g} exceeds float32's range; the wire format "
            "stores it as float32"
        )
    limit = torch.finfo(out_dtype).max
    if limit < torch.finfo(torch.float32).max and (s32 > limit).any():
        raise MessageRangeError(
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
    if B == d:  # one block: the common case, without unflatten's Python overhead
        return t.unsqueeze(1), None
    full = d // B * B
    main = t[:, :full].unflatten(1, (d // B, B)) if full else None
    tail = t[:, full:] if full < d else None
    return main, tail


def _lp(t: torch.Tensor, p: float, dim: int) -> torch.Tensor:
    if p == math.inf:  # max |x| from two reductions, without a |x| temporary
        return torch.maximum(t.amax(dim=dim), t.amin(dim=dim).neg())
    return torch.linalg.vector_norm(t, ord=p, dim=dim)


def block_norms(x: torch.Tensor, B: int, p: float) -> torch.Tensor:
    """‖x_l‖_p per block of length B (the last may be shorter), [w, m]; p = inf: max |x_j|.

    x must be finite. One reduction in the compute dtype, as long as it is exact enough: a
    sum of |x_j|^p can overflow although the norm does not (float32 [3e19, 4e19]: Σ x² =
    2.5e39 > 3.4e38, ‖x‖ = 5e19), and squares below the smallest normal number are flushed
    (float32 [1e-30, 1e-30] has ‖x‖ = 0 that way). Where the result is not finite, or an l2
    norm is below `_small(dtype)` in a block that is not zero, the blocks are computed again
    with scaling (`_scaled_norms`) and the result is float64, holding the true norm: a norm
    beyond float32 is then refused with its real value.
    """
    norms = _norms_by_block(x, B, p)
    if p == math.inf:
        return norms
    # the usual case: one reduction over x, and one more over the [w, m] norms
    if p == 2.0:
        low = _small(x.dtype)
        lo, hi = torch.aminmax(norms)
        if low <= float(lo) and float(hi) < math.inf:
            return norms
    else:
        low = 0.0
        if math.isfinite(float(norms.sum())):  # a sum of non-negative norms: all finite
            return norms
    suspect = ~torch.isfinite(norms) | (norms < low)
    top = _norms_by_block(x, B, math.inf)
    bad = suspect & (top > 0)
    if not bool(bad.any()):
        return norms
    return torch.where(bad, _scaled_norms(x, B, p, top), norms.to(torch.float64))


def _norms_by_block(x: torch.Tensor, B: int, p: float) -> torch.Tensor:
    main, tail = split_blocks(x, B)
    parts = [] if main is None else [_lp(main, p, 2)]
    if tail is not None:
        parts.append(_lp(tail, p, 1).unsqueeze(1))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _small(dtype: torch.dtype) -> float:
    # Above 2^13·√(smallest normal), squares too small to be normal (each under it² · 2^-26)
    # move the sum by at most d·2^-50 relatively (float32: subnormal squares are ≤ 2^-126,
    # the sum ≥ 2^-100), far below the rounding of the sum itself.
    return math.sqrt(torch.finfo(dtype).tiny) * 2.0**13


def _scaled_norms(x: torch.Tensor, B: int, p: float, top: torch.Tensor) -> torch.Tensor:
    """‖x_l‖_p = 2^e_l·‖x_l/2^e_l‖_p in float64, 2^e_l the power of two at block l's max |x_j|
    (`top`, [w, m]): x_l/2^e_l is exact, its entries are below 1 and its p-th powers sum to
    at most the block length, so nothing overflows, and no square that matters underflows."""
    _, e = torch.frexp(top.to(torch.float64))
    e = torch.where(top > 0, e, torch.zeros_like(e))
    scaled = x.to(torch.float64, copy=True)
    _per_block(torch.ldexp, scaled, e.neg().to(torch.float64), B, scaled)
    return torch.ldexp(_norms_by_block(scaled, B, p), e.to(torch.float64))


def _positive(scale: torch.Tensor) -> torch.Tensor:
    # A zero scale means an all-zero block: divide by 1 instead, so 0/0 never makes a NaN.
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _per_block(op, x: torch.Tensor, scales: torch.Tensor, B: int, out: torch.Tensor) -> None:
    """out = op(x, scale of x's block), block by block, into `out` (contiguous, like x)."""
    if B == x.shape[1]:  # one block: its scale broadcasts over the row
        op(x, scales[:, :1], out=out)
        return
    xm, xt = split_blocks(x, B)
    om, ot = split_blocks(out, B)
    if xm is not None:
        op(xm, scales[:, : xm.shape[1]].unsqueeze(2), out=om)
    if xt is not None:
        op(xt, scales[:, -1:], out=ot)


def stochastic_levels(
    x: torch.Tensor, scales: torch.Tensor, B: int, streams, s: int, int_dtype
) -> torch.Tensor:
    """Signed levels sign(x_j)·ζ_j with ζ_j = ⌊r_j⌋ + ξ_j, ξ_j ~ Bern(r_j − ⌊r_j⌋) exactly, and
    r_j = s·|x_j|/scale_l, drawing one grid uniform per coordinate from the worker's stream.

    x: [w, d] in the compute dtype; scales: [w, m], one per block of length B, the float32
    wire scales converted to the compute dtype (>= the block's norm, so r_j <= s up to the
    last-ulp rounding of a computed norm, which a clamp absorbs).

    Per chunk (`bernoulli.column_chunks`), in buffers reused from chunk to chunk: p ← |x|/
    (scale/s) (for s > 1 the level ⌊p⌋ is split off and p keeps the fraction, exact in
    floating point); z = u − p; q = clamp(z·2^G, −1, 0), which is −1 where ξ = 1 for sure, 0
    where ξ = 0 and strictly between in the undecided cells of `bernoulli.py` (there −q is
    the fraction the refined draw needs); ξ = −⌊q⌋; the sign goes back on with copysign, so
    ±x_j are treated alike (copysign keeps only the magnitude of −ξ = ⌊q⌋). Cells are found by
    one reduction and refined after the last chunk.
    """
    w, d = x.shape
    G = grid_bits(x.dtype)
    out = torch.empty((w, d), dtype=int_dtype, device=x.device)
    step = _positive(scales) / s if s > 1 else _positive(scales)  # r = |x| / step
    chunks = bernoulli.column_chunks(d, B, w, x.device)
    width = max(c.c1 - c.c0 for c in chunks)
    a = torch.empty((w, width), dtype=x.dtype, device=x.device)
    u = torch.empty_like(a)
    level = torch.empty_like(a) if s > 1 else None
    cell_rows, cell_cols, cell_f = [], [], []
    for c in chunks:
        n = c.c1 - c.c0
        xc, ac, q = (x, a, u) if n == width == d else (x[:, c.c0:c.c1], a[:, :n], u[:, :n])
        streams.fill_grid(q)
        torch.abs(xc, out=ac)
        if level is None:  # s = 1: z = u − |x|/scale in one pass
            _per_block(_sub_quotient, q, step[:, c.b0:c.b1], c.block, ac)
        else:
            _per_block(torch.div, ac, step[:, c.b0:c.b1], c.block, ac)
            lc = torch.floor(ac.clamp_(max=s), out=level[:, :n])
            q.sub_(ac.sub_(lc))  # u − (r − ⌊r⌋): the fraction is exact
        q.mul_(2.0**G).clamp_(-1.0, 0.0)
        if bernoulli.has_cells(q, scratch=ac):
            rows, cols = bernoulli.cells_of(q).nonzero(as_tuple=True)
            cell_rows.append(rows)
            cell_cols.append(cols + c.c0)
            cell_f.append(q[rows, cols].neg())
        # ⌊q⌋ = −ξ; copysign takes its magnitude: ξ·sign(x) (s = 1), (⌊r⌋ + ξ)·sign(x)
        mag = q.floor_() if level is None else lc.sub_(q.floor_())
        out[:, c.c0:c.c1].copy_(torch.copysign(mag, xc, out=mag))
    if cell_rows:
        rows, cols = torch.cat(cell_rows), torch.cat(cell_cols)
        order = torch.argsort(rows * d + cols)  # each worker's cells in column order
        rows, cols, f = rows[order], cols[order], torch.cat(cell_f)[order]
        fired = bernoulli.resolve(f, rows, streams)
        # the cells counted ξ = 1 above; where the refined draw did not fire, take it back
        rows, cols = rows[~fired], cols[~fired]
        out[rows, cols] -= torch.sign(x[rows, cols]).to(int_dtype)
    return out


def _sub_quotient(z: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> None:
    """z ← z − out/scale, for `_per_block` (whose `out` holds |x| here, and z is updated)."""
    z.addcdiv_(out, scale, value=-1)


def ternary(x: torch.Tensor, scales: torch.Tensor, B: int, streams) -> torch.Tensor:
    """sign(x_j)·ξ_j with ξ_j ~ Bern(|x_j|/scale_l), as int8 in {-1, 0, 1}: the s = 1 case of
    `stochastic_levels`. Sharing the kernel is what makes QSGD(s=1) ≡ Quant_2 and
    TernGrad ≡ Quant_∞ exact."""
    return stochastic_levels(x, scales, B, streams, 1, torch.int8)


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
