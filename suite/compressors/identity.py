"""The identity compressor: the uncompressed message, sent at a declared float width.

Messages are cast to the wire width (float32 by default, float16 or float64 on request) and the
simulation continues from the decoded values, so what is simulated is what would be sent.
ω = 0 (unbiased) and δ = 1 up to the rounding of the wire format. Bits: width·d per message.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from . import bitpack
from .base import (
    Compressor,
    CompressorError,
    MessageRangeError,
    all_finite,
    check_batch,
    check_finite,
)
from .params import require_dim

_WIRE_DTYPES = {16: torch.float16, 32: torch.float32, 64: torch.float64}


class DensePayload(NamedTuple):
    values: torch.Tensor  # [w, d] at wire width
    out_dtype: torch.dtype


def identity(*, width: int = 32) -> Compressor:
    if width not in _WIRE_DTYPES:
        raise CompressorError(f"compressor.width={width!r}: allowed values are 16, 32, 64")
    wire = _WIRE_DTYPES[width]

    def check_dim(d):
        require_dim(d)

    def compress(x, streams=None):
        check_batch(x, "identity")
        check_dim(x.shape[1])
        values = x.to(wire)
        # One finiteness check on the wire values covers both failures: NaN or inf in x stays
        # NaN or inf, and a narrower wire (float16, or float32 for float64 input) turns an
        # out-of-range value into inf. The message then tells them apart.
        if not all_finite(values):
            check_finite(x, "identity")
            raise MessageRangeError(
                f"identity: |x| = {x.abs().max().item():.6g} exceeds the range of the "
                f"{width}-bit wire format"
            )
        return DensePayload(values, x.dtype)

    def decompress(p):
        return p.values.to(p.out_dtype)

    def encode(p):
        # explicit little-endian, like every other wire format (bitpack.py)
        rows = np.ascontiguousarray(p.values.detach().cpu().numpy(), dtype=f"<f{width // 8}")
        return bitpack.join_rows(rows.view(np.uint8).reshape(rows.shape[0], -1))

    def decode(msgs, d, dtype, device="cpu"):
        (body,) = bitpack.split_rows(msgs, [width // 8 * d])
        values = body.copy().view(f"<f{width // 8}").astype(f"f{width // 8}")
        return DensePayload(torch.from_numpy(values).to(device), dtype)

    def bits(p):
        w, d = p.values.shape
        return torch.full((w,), width * d, dtype=torch.int64)

    return Compressor(
        name="identity",
        kind="unbiased",
        omega=lambda d: 0.0,
        delta=None,
        compress=compress,
        decompress=decompress,
        encode=encode,
        decode=decode,
        bits=bits,
        fixed_bits=lambda d: width * d,
        check_dim=check_dim,
        is_identity=True,
        hyperparams=(("width", width),),
    )
