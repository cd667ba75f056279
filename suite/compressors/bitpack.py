"""Bit packing for the wire formats: float32 scalars and runs of equal-width unsigned fields.

Every compressor's message is `[float32 scalars][one run of n fields of `width` bits]`. The
scalars are little-endian float32 (4 bytes each, so they stay byte-aligned); the fields are
packed most-significant-bit first, back to back with no padding between fields, and the last
byte is zero-padded. A run therefore takes exactly `ceil(n·width / 8)` bytes.

Packing is vectorised over workers and fields with numpy. The trick for any width: 8 fields of
`width` bits fill exactly `width` bytes, so the fields are processed in groups of 8 and each of
the (at most width + 8) pairs (field i, byte j) that overlap contributes one shifted, truncated
slice. That is O(1) numpy passes per field position instead of one bit per element, and it needs
no temporary larger than the output.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import CompressorError

__all__ = [
    "packed_nbytes",
    "pack_fields",
    "unpack_fields",
    "floats_to_bytes",
    "bytes_to_floats",
    "join_rows",
    "split_rows",
]

# The smallest unsigned dtype that holds a field; shifts wrap in it, which is what the
# byte-slicing below relies on (only the low 8 bits of each shifted value are kept).
_UINTS = ((8, np.uint8), (16, np.uint16), (32, np.uint32), (64, np.uint64))
_WHOLE_BYTES = {8: ">u1", 16: ">u2", 32: ">u4", 64: ">u8"}


def _uint_for(width: int):
    for bits, dt in _UINTS:
        if width <= bits:
            return dt
    raise CompressorError(f"bitpack: field width {width} exceeds 64 bits")


def packed_nbytes(n: int, width: int) -> int:
    """Bytes taken by n fields of `width` bits: ceil(n·width / 8)."""
    return (n * width + 7) // 8


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _overlaps(width: int):
    """(field i, byte j, left shift) for every field of an 8-field group and byte it touches.

    Field i occupies stream bits [i·width, (i+1)·width), bit 0 being the group's first (most
    significant) bit. Value bit b (0 = least significant) sits at stream bit end−1−b; in byte j
    that is bit position b + (8j + 8 − end) counted from the byte's least significant bit. So
    the field contributes `value << (8j + 8 − end)` to byte j (a right shift when negative).
    """
    out = []
    for i in range(8):
        start, end = i * width, (i + 1) * width
        for j in range(start // 8, (end - 1) // 8 + 1):
            out.append((i, j, 8 * j + 8 - end))
    return out


def pack_fields(values, width: int) -> np.ndarray:
    """Pack a [w, n] array of unsigned integers < 2**width into [w, ceil(n·width/8)] bytes."""
    v = _as_numpy(values)
    if v.ndim != 2:
        raise CompressorError(f"bitpack: expected [w, n] fields, got shape {v.shape}")
    w, n = v.shape
    if not 0 <= width <= 64:
        raise CompressorError(f"bitpack: field width {width} outside 0..64")
    if width == 0 or n == 0:
        return np.zeros((w, packed_nbytes(n, width)), dtype=np.uint8)
    if width == 1:
        return np.packbits(v.astype(np.uint8, copy=False), axis=1)
    if width in _WHOLE_BYTES:
        return np.ascontiguousarray(v.astype(_WHOLE_BYTES[width])).view(np.uint8).reshape(w, -1)
    udt = _uint_for(width)
    groups = -(-n // 8)
    padded = np.zeros((w, groups * 8), dtype=udt)
    padded[:, :n] = v
    grouped = padded.reshape(w, groups, 8)
    out = np.zeros((w, groups, width), dtype=np.uint8)
    for i, j, shift in _overlaps(width):
        field = grouped[:, :, i]
        part = field << udt(shift) if shift >= 0 else field >> udt(-shift)
        out[:, :, j] |= part.astype(np.uint8)  # unsigned cast keeps the low 8 bits
    return out.reshape(w, groups * width)[:, : packed_nbytes(n, width)]


def unpack_fields(buf: np.ndarray, n: int, width: int) -> np.ndarray:
    """Inverse of `pack_fields`: [w, ceil(n·width/8)] bytes -> [w, n] fields, in the smallest
    unsigned dtype that holds `width` bits (uint8 for width <= 8: a decoder then works on 1
    byte per coordinate, not 8)."""
    buf = np.asarray(buf, dtype=np.uint8)
    w = buf.shape[0]
    if buf.shape[1] != packed_nbytes(n, width):
        raise CompressorError(
            f"bitpack: {buf.shape[1]} bytes cannot hold exactly {n} fields of {width} bits "
            f"(expected {packed_nbytes(n, width)})"
        )
    udt = _uint_for(max(width, 1))
    if width == 0 or n == 0:
        return np.zeros((w, n), dtype=udt)
    if width == 1:
        return np.unpackbits(buf, axis=1, count=n)
    if width in _WHOLE_BYTES:
        return np.ascontiguousarray(buf).view(_WHOLE_BYTES[width]).astype(udt)
    groups = -(-n // 8)
    padded = np.zeros((w, groups * width), dtype=np.uint8)
    padded[:, : buf.shape[1]] = buf
    grouped = padded.reshape(w, groups, width)
    fields = np.zeros((w, groups, 8), dtype=udt)
    for i, j, shift in _overlaps(width):
        byte = grouped[:, :, j].astype(udt)
        fields[:, :, i] |= byte >> udt(shift) if shift >= 0 else byte << udt(-shift)
    # A field's first byte also holds the tail of the previous field: mask it off.
    fields &= udt((1 << width) - 1) if width < 64 else udt(~0)
    return fields.reshape(w, groups * 8)[:, :n]


def floats_to_bytes(t: torch.Tensor) -> np.ndarray:
    """[w, m] scalars -> [w, 4m] little-endian float32 bytes (the caller rounds to float32)."""
    if t.dtype != torch.float32:
        raise CompressorError(f"bitpack: wire scalars must be float32, got {t.dtype}")
    a = t.detach().cpu().numpy().astype("<f4", copy=False)
    return np.ascontiguousarray(a).view(np.uint8).reshape(a.shape[0], -1)


def bytes_to_floats(buf: np.ndarray, m: int) -> torch.Tensor:
    """[w, 4m] little-endian float32 bytes -> [w, m] float32 tensor."""
    a = np.ascontiguousarray(buf).view("<f4").astype(np.float32).reshape(buf.shape[0], m)
    return torch.from_numpy(a)


def join_rows(*parts: np.ndarray) -> list[bytes]:
    """Concatenate per-worker byte arrays [w, n_i] into one `bytes` message per worker."""
    rows = np.concatenate([np.asarray(p, dtype=np.uint8) for p in parts], axis=1)
    return [row.tobytes() for row in rows]


def split_rows(msgs: list[bytes], sizes: list[int]) -> list[np.ndarray]:
    """Inverse of `join_rows`: checks every message has sum(sizes) bytes, returns the parts."""
    total = sum(sizes)
    for k, m in enumerate(msgs):
        if len(m) != total:
            raise CompressorError(
                f"message {k} has {len(m)} bytes; this compressor's format for this d has {total}"
            )
    rows = np.frombuffer(b"".join(msgs), dtype=np.uint8).reshape(len(msgs), total)
    out, at = [], 0
    for s in sizes:
        out.append(rows[:, at : at + s])
        at += s
    return out
