"""Round to bfloat16: every coordinate sent as the nearest bfloat16 (round to nearest, ties to
even), 16 bits per coordinate.

bfloat16 keeps float32's exponent range and 8 significant bits, so for a coordinate in its
normal range the relative rounding error is at most u = 2⁻⁸, and

    ‖C(x) − x‖² ≤ 2⁻¹⁶ ‖x‖²:   contractive with δ = 1 − 2⁻¹⁶,  deterministic.

(A coordinate below bfloat16's smallest normal, |x_j| < 2⁻¹²⁶, can lose more than that; no
gradient of the tasks here comes near it.) Bits: 16·d, no header.

A stateless compressor is all a plugin needs to write: the channel's adapter (suite/comm/
adapter.py) compresses each worker's row, ships the encoded bytes and averages the decoded
messages, and counts `bits`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from suite.compressors import Compressor, CompressorError
from suite.compressors.base import check_finite

UNIT_ROUNDOFF = 2.0**-8


class Bf16Payload(NamedTuple):
    values: torch.Tensor  # [w, d] bfloat16
    out_dtype: torch.dtype


def bf16() -> Compressor:
    def compress(x, streams=None):
        check_finite(x, "bf16_example")
        values = x.to(torch.bfloat16)
        if not torch.isfinite(values).all():
            raise CompressorError("bf16_example: |x| exceeds bfloat16's range (3.4e38)")
        return Bf16Payload(values, x.dtype)

    def decompress(p):
        return p.values.to(p.out_dtype)

    def encode(p):
        rows = p.values.view(torch.int16).cpu().numpy().astype("<i2")
        return [row.tobytes() for row in rows]

    def decode(msgs, d, dtype, device="cpu"):
        rows = np.stack([np.frombuffer(m, dtype="<i2", count=d) for m in msgs])
        values = torch.from_numpy(rows.astype(np.int16)).view(torch.bfloat16)
        return Bf16Payload(values.to(device), dtype)

    def bits(p):
        w, d = p.values.shape
        return torch.full((w,), 16 * d, dtype=torch.int64)

    return Compressor(
        name="bf16_example",
        kind="contractive",
        omega=None,
        delta=lambda d: 1.0 - UNIT_ROUNDOFF**2,
        compress=compress,
        decompress=decompress,
        encode=encode,
        decode=decode,
        bits=bits,
        fixed_bits=lambda d: 16 * d,
    )
