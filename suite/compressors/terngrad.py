"""TernGrad: ternary gradients scaled by the max-norm (Wen et al. 2017, NeurIPS).

Definition, with s ≥ max_j |g_j| the scale and one uniform per coordinate:

    Q(g)_j = s · sign(g_j) · ξ_j,   ξ_j ~ Bern(|g_j| / s).

The scale s is shared across workers as in the paper: the backend takes the max over all
workers of `local_scale(g)` (each worker's float32 max |g_j|, rounded up) and passes it to
`compress(g, streams, scale)`. Called as `compress(g, streams)`, each worker uses its own
max-norm, and then Q is DIANA's Quant_∞ with one block: same streams, identical output.

Clipping (`clip`: null, or c > 0; the paper uses 2.5): before quantizing, g is clipped to
[−c·σ, c·σ] with σ the population standard deviation of the worker's vector around its mean, as
in the authors' code (`clip_gradients_by_stddev`). A vector with σ = 0 (constant, or d = 1) is
left unclipped: clipping it at 0 would erase the message. With clipping the compressor is
unbiased for clip(g), not for g: E Q(g) = clip(g) ≠ g as soon as one entry is clipped, so it
declares itself `biased` (its ω then describes the variance around clip(g) only), and
algorithms whose analysis needs E Q(g) = g (DIANA's shift update, Local SGD, ...) refuse it.

Constant (no clipping): unbiased, ω(d) = (√d − 1)/2 for the per-worker scale: the variance is
exactly ‖g‖₁‖g‖_∞ − ‖g‖² ≤ ((1+√d)/2 − 1)‖g‖² (docs/theory.md §1, ψ_∞). With a shared scale s
above this worker's max the variance is s‖g‖₁ − ‖g‖², which can exceed ω‖g‖²
(`data_dependent`).

Bits: 32 + 2d (float32 scale, 2-bit packed trits); entropy_bits 32 + ⌈d·log₂3⌉ (ternary.py).
"""

from __future__ import annotations

import math

import torch

from .base import Compressor, CompressorError, check_finite
from .params import optional_positive_float, require_dim
from .quantize import block_norms, compute_dtype, ternary, wire_scale
from .ternary import TernaryPayload, make_wire


def clip_bound(g: torch.Tensor, clip: float | None) -> torch.Tensor:
    """clip·σ per worker, [w], σ the population std of the row; inf where clipping is off or
    σ = 0. g: [w, d] in the compute dtype."""
    if clip is None:
        return torch.full((g.shape[0],), math.inf, dtype=g.dtype, device=g.device)
    # σ² = E[g²] − E[g]² from two fast reductions (torch.std over the rows of a [w, d] batch
    # takes a slow path, ~20x a plain reduction). Where E[g]² dominates, the subtraction
    # would lose the digits of σ², so those rows take the two-pass variance.
    d = g.shape[1]
    mean = g.sum(dim=1).double() / d
    second = block_norms(g, d, 2.0).squeeze(1).double().square() / d  # scaled if Σ g² overflows
    var = second - mean.square()
    lossy = var < 1e-3 * second
    if bool(lossy.any()):
        var = torch.where(lossy, g.var(dim=1, correction=0).double(), var)
    sigma = var.clamp(min=0).sqrt().to(g.dtype)
    return torch.where(sigma > 0, clip * sigma, torch.full_like(sigma, math.inf))


def terngrad_clip(g: torch.Tensor, clip: float | None) -> torch.Tensor:
    """g clipped per worker to [−clip·σ, clip·σ]; rows with σ = 0 untouched."""
    if clip is None:
        return g
    bound = clip_bound(g, clip).unsqueeze(1)
    return torch.clamp(g, min=-bound, max=bound)


def max_abs(g: torch.Tensor) -> torch.Tensor:
    """max_j |g_j| per worker, [w], as DIANA's Quant_∞ computes it (so the two agree exactly)."""
    return block_norms(g, g.shape[1], math.inf).squeeze(1)


def terngrad(*, clip: float | None = None) -> Compressor:
    c = optional_positive_float("clip", clip)

    def check_dim(d: int) -> None:
        require_dim(d)

    def own_max(g: torch.Tensor) -> torch.Tensor:
        # max |clip(g)_j| = min(max |g_j|, clip·σ): two reductions, no clipped copy of g
        return torch.minimum(max_abs(g), clip_bound(g, c))

    def local_scale(x: torch.Tensor) -> torch.Tensor:
        """This worker's float32 max |clip(g)_j|, rounded up: [w]."""
        check_finite(x, "terngrad")
        return wire_scale(own_max(x.to(compute_dtype(x.dtype))), x.dtype, "terngrad: max |g|")

    def compress(x: torch.Tensor, streams, scale: torch.Tensor | None = None) -> TernaryPayload:
        check_finite(x, "terngrad")
        w, d = x.shape
        check_dim(d)
        ct = compute_dtype(x.dtype)
        g = x.to(ct)
        own = own_max(g)
        if scale is None:
            s32 = wire_scale(own, x.dtype, "terngrad: max |g|")
            # Clipping comes for free here: with S = max |clip(g)| = clip·σ whenever anything is
            # clipped, a clipped entry has |g|/S >= 1, and the kernel sends ±1 for it with
            # probability 1, as it would for clip(g). (Up to the float32 rounding of S: for
            # float64 input, an entry within that rounding of S is sent with probability
            # |g|/S instead of clip·σ/S; both differ from 1 by less than 2^-23.)
        else:
            shared = torch.as_tensor(scale, device=x.device)
            if not torch.isfinite(shared).all():
                raise CompressorError(f"terngrad: shared scale {shared} is not finite")
            shared = shared.to(ct).reshape(-1).expand(w) if shared.numel() == 1 else shared
            if shared.shape != (w,):
                raise CompressorError(
                    f"terngrad: scale must be a scalar or [{w}] tensor, got {tuple(shared.shape)}"
                )
            s32 = wire_scale(shared.to(ct), x.dtype, "terngrad: shared scale")
            if bool((s32.to(ct) < own).any()):
                raise CompressorError(
                    "terngrad: the shared scale is below this worker's max |g|; pass the max "
                    "over all workers of local_scale(g)"
                )
            # A shared scale above clip·σ would let entries beyond the bound keep probabilities
            # above clip·σ/S: clip explicitly.
            g = terngrad_clip(g, c)
        trits = ternary(g, s32.to(ct).unsqueeze(1), d, streams)
        return TernaryPayload(s32.unsqueeze(1), trits, x.dtype)

    decompress, encode, decode, bits, entropy_bits = make_wire(None)

    shared_note = (
        "ω = (√d − 1)/2 holds for each worker's own max-norm scale. With the scale shared across "
        "workers (s = max over workers, the paper's practice) the variance is s‖g‖₁ − ‖g‖², "
        "which grows with the other workers' max-norms and can exceed ω‖g‖²."
    )
    if c is not None:
        shared_note += (
            f" With clip={c} the compressor quantizes clip(g) (at {c}·std(g)): it is unbiased "
            "for clip(g), not for g (hence kind=biased), and (√d − 1)/2 bounds the variance "
            "relative to ‖clip(g)‖² ≤ ‖g‖²."
        )

    return Compressor(
        name="terngrad",
        kind="unbiased" if c is None else "biased",
        # with clip: not U(ω) (biased), but still (√d − 1)/2 around its mean clip(g)
        omega=lambda d: (math.sqrt(d) - 1.0) / 2.0,
        delta=None,
        compress=compress,
        decompress=decompress,
        encode=encode,
        decode=decode,
        bits=bits,
        entropy_bits=entropy_bits,
        local_scale=local_scale,
        data_dependent=shared_note,
        check_dim=check_dim,
        hyperparams=(("clip", c),),
    )
