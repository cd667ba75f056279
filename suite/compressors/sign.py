"""Scaled sign: (‖x‖₁/d)·sign(x) (Karimireddy, Rebjock, Stich, Jaggi 2019, "Error feedback fixes
SignSGD and other gradient compression schemes").

Definition: C(x) = a·s with a = ‖x‖₁/d (sent as the nearest float32) and s_j = −1 if x_j < 0,
else +1. sign(0) = +1, the convention of the paper above and of QSGD: one bit per coordinate
cannot also say "zero", and it need not, because the contraction is unchanged by it:

    ‖C(x) − x‖² = ‖x‖² − 2a⟨s, x⟩ + a²d = ‖x‖² − ‖x‖₁²/d,

since ⟨s, x⟩ = ‖x‖₁ whatever sign a zero coordinate gets (it contributes 0). C(0) = 0 exactly,
because a = 0.

Constant: biased, contractive with the data-dependent δ(x) = ‖x‖₁²/(d‖x‖²) ∈ [1/d, 1]; the
declared δ(d) = 1/d is the worst case (a one-hot x). Rounding a to float32 adds
(a32 − a)²·d ≤ 2^-48·‖x‖₁²/d to the error.

Bits: a float32 scale + d sign bits (1 = negative), 32 + d.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from . import bitpack
from .base import Compressor, check_finite
from .params import require_dim
from .quantize import block_norms, compute_dtype, wire_nearest


class SignPayload(NamedTuple):
    scales: torch.Tensor  # [w] float32: ‖x‖₁/d
    negative: torch.Tensor  # [w, d] bool
    out_dtype: torch.dtype


def sign() -> Compressor:
    def check_dim(d: int) -> None:
        require_dim(d)

    def compress(x: torch.Tensor, streams=None) -> SignPayload:
        check_finite(x, "sign")
        w, d = x.shape
        check_dim(d)
        ct = compute_dtype(x.dtype)
        a = block_norms(x.to(ct), d, 1.0).squeeze(1) / d  # ‖x‖₁ may overflow where ‖x‖₁/d fits
        return SignPayload(wire_nearest(a, x.dtype, "sign: ‖x‖₁/d"), x < 0, x.dtype)

    def decompress(p: SignPayload) -> torch.Tensor:
        a = p.scales.to(compute_dtype(p.out_dtype)).unsqueeze(1)
        # a − 2a·[negative]: one temporary, two in-place passes (torch.where with broadcast
        # scalars is slower on large vectors). Exact: the result is ±a.
        y = p.negative.to(a.dtype).mul_(-2.0 * a).add_(a)
        return y.to(p.out_dtype)

    def encode(p: SignPayload) -> list[bytes]:
        return bitpack.join_rows(
            bitpack.floats_to_bytes(p.scales.unsqueeze(1)), bitpack.pack_fields(p.negative, 1)
        )

    def decode(msgs, d: int, dtype: torch.dtype, device="cpu") -> SignPayload:
        head, body = bitpack.split_rows(msgs, [4, bitpack.packed_nbytes(d, 1)])
        negative = torch.from_numpy(bitpack.unpack_fields(body, d, 1).view(np.bool_))
        scales = bitpack.bytes_to_floats(head, 1).squeeze(1)
        return SignPayload(scales.to(device), negative.to(device), dtype)

    def bits(p: SignPayload) -> torch.Tensor:
        w, d = p.negative.shape
        return torch.full((w,), 32 + d, dtype=torch.int64)

    return Compressor(
        name="sign",
        kind="contractive",
        omega=None,
        delta=lambda d: 1.0 / d,
        compress=compress,
        decompress=decompress,
        encode=encode,
        decode=decode,
        bits=bits,
        data_dependent=(
            "δ(x) = ‖x‖₁²/(d‖x‖²) ∈ [1/d, 1]: the contraction is exactly "
            "‖x‖² − ‖x‖₁²/d; the declared δ(d) = 1/d is the worst case (one-hot x)"
        ),
        check_dim=check_dim,
        hyperparams=(),
    )
