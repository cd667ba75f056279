"""DIANA's p-norm block quantization Quant_p (Mishchenko, Gorbunov, Takáč, Richtárik 2019).

Definition: split Δ into blocks Δ_l of length block_size (null: one block; the last block may be
shorter), and per block, with one uniform per coordinate,

    Quant_p(Δ_l)_j = ‖Δ_l‖_p · sign(Δ_j) · ξ_j,   ξ_j ~ Bern(|Δ_j| / ‖Δ_l‖_p),   p ∈ {1, 2, ∞}

where ‖Δ_l‖_p is the float32 wire norm, rounded up so that every probability is ≤ 1.

Constant: unbiased; the variance is Σ_l (‖Δ_l‖₁‖Δ_l‖_p − ‖Δ_l‖²) ≤ ω‖Δ‖² with
ω(d) = 1/ψ_p(d_max) − 1, d_max = min(block_size, d), and ψ₁(d) = 1/d, ψ₂(d) = 1/√d,
ψ_∞(d) = 2/(1+√d) (docs/theory.md §1): ω = d_max − 1, √d_max − 1, (√d_max − 1)/2.

Special cases (tested for exact equality from the same streams): Quant_2 with one block is
QSGD with s = 1, and Quant_∞ with one block is TernGrad without clipping.

Bits: 32 per block norm + 2 bits per coordinate, 32m + 2d; entropy_bits 32m + ⌈d·log₂3⌉
(ternary.py).
"""

from __future__ import annotations

import math

import torch

from .base import Compressor, check_finite
from .params import optional_int, parse_p, require_dim
from .quantize import (
    block_norms,
    compute_dtype,
    num_blocks,
    ternary,
    wire_scale,
)
from .ternary import TernaryPayload, make_wire


def quant_p(*, p=2, block_size: int | None = None) -> Compressor:
    order = parse_p(p)
    block = optional_int("block_size", block_size, 1)

    def check_dim(d: int) -> None:
        require_dim(d)

    def omega(d: int) -> float:
        dm = d if block is None else min(block, d)
        if order == 1.0:
            return dm - 1.0
        if order == 2.0:
            return math.sqrt(dm) - 1.0
        return (math.sqrt(dm) - 1.0) / 2.0

    def compress(x: torch.Tensor, streams) -> TernaryPayload:
        check_finite(x, "quant_p")
        w, d = x.shape
        check_dim(d)
        ct = compute_dtype(x.dtype)
        _, B = num_blocks(d, block)
        xc = x.to(ct)
        norms = wire_scale(block_norms(xc, B, order), x.dtype, f"quant_p: a block's l{p} norm")
        trits = ternary(xc, norms.to(ct), B, streams)
        return TernaryPayload(norms, trits, x.dtype)

    decompress, encode, decode, bits, entropy_bits = make_wire(block)

    return Compressor(
        name="quant_p",
        kind="unbiased",
        omega=omega,
        delta=None,
        compress=compress,
        decompress=decompress,
        encode=encode,
        decode=decode,
        bits=bits,
        entropy_bits=entropy_bits,
        check_dim=check_dim,
        hyperparams=(("p", "inf" if order == math.inf else int(order)), ("block_size", block)),
    )
