"""The sparse message shared by top-k and rand-k: k float32 values and k bit-packed indices.

Wire format: k little-endian float32 values, then k indices of ⌈log₂d⌉ bits each (d = 1 needs
no index bits). Bits: 32k + k·⌈log₂d⌉. Indices are in the sender's order (top-k: unspecified,
rand-k: draw order); the receiver scatters, so order carries no information and costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from . import bitpack
from .base import CompressorError
from .quantize import compute_dtype


class SparsePayload(NamedTuple):
    values: torch.Tensor  # [w, k] float32 wire values (unscaled x_j)
    indices: torch.Tensor  # [w, k] int64, distinct within a row
    d: int
    out_dtype: torch.dtype


def index_bits(d: int) -> int:
    """⌈log₂d⌉: enough bits to name any of d coordinates."""
    return (d - 1).bit_length()


def wire_values(x: torch.Tensor, idx: torch.Tensor, factor: float, what: str) -> torch.Tensor:
    """x's kept values as float32, refusing what float32 or the output dtype cannot hold."""
    values = x.gather(1, idx).to(torch.float32)
    if not torch.isfinite(values).all():
        raise CompressorError(f"{what}: a kept value exceeds float32's range (the wire format)")
    # Values copied from x fit x's dtype; only a receiver-side scaling can overflow it.
    limit = torch.finfo(x.dtype).max
    if factor != 1.0 and values.numel() and values.abs().max().item() * factor > limit:
        raise CompressorError(
            f"{what}: a kept value times {factor:g} exceeds the largest {x.dtype}; the "
            "decompressed message could not be held in the input's dtype"
        )
    return values


def make_wire(k_of: Callable[[int], int], factor_of: Callable[[int], float]):
    """decompress/encode/decode/bits for sparse payloads; k_of(d) is the number of kept
    coordinates, factor_of(d) the receiver's scaling (d/k for scaled rand-k, else 1)."""

    def decompress(p: SparsePayload) -> torch.Tensor:
        ct = compute_dtype(p.out_dtype)
        w = p.values.shape[0]
        vals = p.values.to(ct)
        factor = factor_of(p.d)
        if factor != 1.0:
            vals = vals * factor
        out = torch.zeros(w, p.d, dtype=ct, device=p.values.device)
        return out.scatter_(1, p.indices, vals).to(p.out_dtype)

    def encode(p: SparsePayload) -> list[bytes]:
        return bitpack.join_rows(
            bitpack.floats_to_bytes(p.values),
            bitpack.pack_fields(p.indices, index_bits(p.d)),
        )

    def decode(msgs, d: int, dtype: torch.dtype, device="cpu") -> SparsePayload:
        k, ib = k_of(d), index_bits(d)
        head, body = bitpack.split_rows(msgs, [4 * k, bitpack.packed_nbytes(k, ib)])
        idx = torch.from_numpy(bitpack.unpack_fields(body, k, ib).astype(np.int64))
        if bool((idx >= d).any()):
            raise CompressorError(f"sparse message names an index >= d={d}")
        values = bitpack.bytes_to_floats(head, k)
        return SparsePayload(values.to(device), idx.to(device), d, dtype)

    def bits(p: SparsePayload) -> torch.Tensor:
        w, k = p.values.shape
        return torch.full((w,), k * (32 + index_bits(p.d)), dtype=torch.int64)

    return decompress, encode, decode, bits
