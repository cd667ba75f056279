"""The ternary message shared by TernGrad and DIANA's Quant_p: float32 scales and trits.

Wire format (m blocks, d coordinates): m little-endian float32 scales, then d 2-bit fields, the
trit in two's complement (00 = 0, 01 = +1, 11 = −1; 10 never occurs and is refused on decode).
Bits: 32m + 2d, the 2-bit packing used in practice.

Entropy-coded size (`entropy_bits`): 32m + ⌈d·log₂3⌉, the length of the message's trits written
as one base-3 integer: the fewest bits any fixed-length code for d trits can use, achievable,
not a bound. (Packing 5 trits per byte would give 32m + 8·⌈d/5⌉, i.e. 1.6 bits per trit.)
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

from . import bitpack
from .base import CompressorError
from .quantize import compute_dtype, scale_blocks


class TernaryPayload(NamedTuple):
    scales: torch.Tensor  # [w, m] float32: the wire scale of each block
    trits: torch.Tensor  # [w, d] int8 in {-1, 0, 1}
    out_dtype: torch.dtype


@lru_cache(maxsize=256)
def ternary_bits(d: int) -> int:
    """⌈d·log₂3⌉ computed exactly: the least b with 2^b >= 3^d."""
    if d <= 0:
        return 0
    x = d * math.log2(3)
    b = math.ceil(x)
    # log₂3 is irrational, so x is never an integer; but float rounding (relative error a few
    # 1e-16) could put it on the wrong side of one when x is that close to an integer.
    # Settle those rare cases exactly with integers.
    if abs(x - round(x)) < 1e-12 * (1.0 + x):
        b = (3**d - 1).bit_length()
    return b


def make_wire(B: int | None):
    """decompress/encode/decode/bits/entropy_bits for ternary payloads with block length B
    (None: one block)."""

    def block_len(d: int) -> int:
        return d if B is None else min(B, d)

    def decompress(p: TernaryPayload) -> torch.Tensor:
        ct = compute_dtype(p.out_dtype)
        d = p.trits.shape[1]
        return scale_blocks(p.trits, p.scales.to(ct), block_len(d)).to(p.out_dtype)

    def encode(p: TernaryPayload) -> list[bytes]:
        codes = (p.trits & 3).to(torch.uint8)  # two's complement in 2 bits
        return bitpack.join_rows(
            bitpack.floats_to_bytes(p.scales), bitpack.pack_fields(codes, 2)
        )

    def decode(msgs, d: int, dtype: torch.dtype, device="cpu") -> TernaryPayload:
        m = -(-d // block_len(d))
        head, body = bitpack.split_rows(msgs, [4 * m, bitpack.packed_nbytes(d, 2)])
        codes = bitpack.unpack_fields(body, d, 2)  # uint8
        if (codes == 2).any():
            raise CompressorError("ternary message holds the unused 2-bit code 10")
        # sign-extend the 2-bit two's complement in uint8 arithmetic (3 − 4 wraps to 255 = −1)
        trits = torch.from_numpy(np.ascontiguousarray(codes - ((codes >> 1) << 2)).view(np.int8))
        scales = bitpack.bytes_to_floats(head, m)
        return TernaryPayload(scales.to(device), trits.to(device), dtype)

    def bits(p: TernaryPayload) -> torch.Tensor:
        w, d = p.trits.shape
        return torch.full((w,), 32 * p.scales.shape[1] + 2 * d, dtype=torch.int64)

    def entropy_bits(p: TernaryPayload) -> torch.Tensor:
        w, d = p.trits.shape
        return torch.full((w,), 32 * p.scales.shape[1] + ternary_bits(d), dtype=torch.int64)

    return decompress, encode, decode, bits, entropy_bits
