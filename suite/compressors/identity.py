"""The identity compressor: the uncompressed message, sent at a declared float width.

Messages are cast to the wire width (float32 by default, float16 or float64 on request) and the
simulation continues from the decoded values, so what is simulated is what would be sent.
ω = 0 (unbiased) and δ = 1 up to the rounding of the wire format. Bits: width·d per message.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .base import Compressor, CompressorError, check_finite

_WIRE_DTYPES = {16: torch.float16, 32: torch.float32, 64: torch.float64}


class DensePayload(NamedTuple):
    values: torch.Tensor  # [w, d] at wire width
    out_dtype: torch.dtype


def identity(*, width: int = 32) -> Compressor:
    if width not in _WIRE_DTYPES:
        raise CompressorError(f"compressor.width={width!r}: allowed values are 16, 32, 64")
    wire = _WIRE_DTYPES[width]

    def compress(x, streams=None):
        check_finite(x, "identity")
        return DensePayload(x.to(wire), x.dtype)

    def decompress(p):
        return p.values.to(p.out_dtype)

    def encode(p):
        return [row.contiguous().cpu().numpy().tobytes() for row in p.values]

    def decode(msgs, d, dtype, device="cpu"):
        rows = [torch.frombuffer(bytearray(m), dtype=wire) for m in msgs]
        return DensePayload(torch.stack(rows).to(device), dtype)

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
        is_identity=True,
        hyperparams=(("width", width),),
    )
