"""Natural compression: unbiased stochastic rounding to a power of two (Horváth, Ho, Horváth,
Sahu, Canini, Richtárik 2019, "Natural compression for distributed deep learning").

Definition, per coordinate t ≠ 0 with 2^e ≤ |t| < 2^(e+1) and one uniform u:

    C(t) = sign(t)·2^e·(1 + ξ),   ξ = [u < (|t| − 2^e)/2^e],   C(0) = 0.

Constant: unbiased, ω = 1/8: with |t| = 2^e(1 + q), q ∈ [0, 1), the variance is
4^e·q(1 − q) ≤ t²/8, the maximum at q = 1/3 (|t| = (4/3)·2^e).

Bits: 9 per coordinate, 9d: a sign bit (1 = negative) and an 8-bit exponent code c, the value
being 2^(c − 127) for c ≥ 1 and 0 for c = 0. That is exactly float32's sign and exponent fields
with the mantissa dropped, so zero is handled as float32 handles it (all-zero exponent), and
decompression rebuilds the float32 bits directly.

Range (`data_dependent`): the smallest code, 1, is 2^-126, float32's least normal number.
|t| < 2^-126 is rounded between 0 and 2^-126 (still unbiased, with probability |t|·2^126 of
2^-126), whose variance |t|(2^-126 − |t|) is not bounded by t²/8. |t| > 2^127 is refused,
because rounding up would need code 255; for float16 inputs |t| > 2^15 is refused, because
rounding up could give 65536, which float16 cannot hold.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from . import bitpack
from .base import Compressor, CompressorError, MessageRangeError, check_finite
from .params import require_dim
from .quantize import compute_dtype

_EXP_BIAS = 127
_MAX_CODE = 254  # 2^127; code 255 (float32's inf/NaN) is never sent
WIDTH = 9


class NaturalPayload(NamedTuple):
    # [w, d] int32: (negative << 8) | exponent code. 9 bits would fit int16, but int32 is what
    # both compress and decompress compute in, and a conversion costs a pass over a fresh tensor.
    codes: torch.Tensor
    out_dtype: torch.dtype


def _max_exponent(dtype: torch.dtype) -> int:
    # The largest power of two the reconstruction may need: 2^127 on the float32 wire, 2^15 for
    # float16 (its largest finite value is 65504 < 2^16).
    return 15 if dtype == torch.float16 else 127


def _codes_float32(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """9-bit codes of float32 x by integer arithmetic on its bits, in u's buffer.

    R = ⌊u·2^23⌋ is uniform on [0, 2^23) (torch's float32 uniforms are multiples of 2^-24, a
    test checks it). Adding R to x's bits carries out of the 23-bit mantissa m into the exponent
    exactly when R >= 2^23 − m, with probability m/2^23 = (|t| − 2^e)/2^e: the natural rounding.
    The same carry turns a subnormal (exponent 0) into 2^-126 with probability |t|·2^126, and
    leaves 0 at code 0. Shifting right by 23 leaves sign and exponent: the 9-bit code.

    R is made in place: ⌊u·2^23⌋ + 2^23 is an integer in [2^23, 2^24), whose float32 bits are
    0x4B000000 + R exactly, so no int32 tensor is allocated (on a large vector a fresh tensor
    costs about as much as the rest of the step).
    """
    field = u.mul_(2.0**23).floor_().add_(2.0**23).view(torch.int32).sub_(0x4B000000)
    field.add_(x.view(torch.int32))
    return field.bitwise_right_shift_(23).bitwise_and_(0x1FF)


def _codes_float64(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """9-bit codes of float64 x from frexp: x = mantissa·2^E, mantissa ∈ [0.5, 1)."""
    a = x.abs()
    mantissa, exponent = torch.frexp(a)
    code = exponent + (_EXP_BIAS - 1)  # int32: the code of the power just below |x|
    prob = mantissa.mul_(2.0).sub_(1.0)  # (|x| − 2^e)/2^e, exact
    # Below float32's normal range, or zero (frexp(0) = (0, 0) would read as code 126):
    # round between 0 (code 0) and 2^-126 (code 1) with probability |t|·2^126 (exact).
    tiny = (code < 1) | (a == 0)
    if bool(tiny.any()):
        prob = torch.where(tiny, a * 2.0**126, prob)
        code = torch.where(tiny, torch.zeros_like(code), code)
    code += u < prob
    return torch.where(x < 0, code | 256, code)


def natural() -> Compressor:
    def check_dim(d: int) -> None:
        require_dim(d)

    def compress(x: torch.Tensor, streams) -> NaturalPayload:
        check_finite(x, "natural")
        w, d = x.shape
        check_dim(d)
        top = _max_exponent(x.dtype)
        biggest = max(float(x.amax()), -float(x.amin()))  # max |x|, without a |x| temporary
        if biggest > 2.0**top:
            raise MessageRangeError(
                f"natural: |x| = {biggest:.6g} exceeds 2^{top}; rounding it up to a power of two "
                f"would leave the range of the wire format / {x.dtype}"
            )
        u = streams.uniform(d, dtype=compute_dtype(x.dtype))
        if x.dtype == torch.float64:
            return NaturalPayload(_codes_float64(x, u), x.dtype)
        return NaturalPayload(_codes_float32(x.to(torch.float32), u), x.dtype)

    def decompress(p: NaturalPayload) -> torch.Tensor:
        # (negative << 8 | c) << 23 is float32's sign bit and exponent field, mantissa zero:
        # exactly ±2^(c − 127), and ±0.0 for c = 0. (torch shifts signed ints as unsigned, so
        # the sign landing in bit 31 is well defined.)
        bits32 = p.codes.bitwise_left_shift(23)
        return bits32.view(torch.float32).to(p.out_dtype)

    def encode(p: NaturalPayload) -> list[bytes]:
        return bitpack.join_rows(bitpack.pack_fields(p.codes.to(torch.int64), WIDTH))

    def decode(msgs, d: int, dtype: torch.dtype, device="cpu") -> NaturalPayload:
        (body,) = bitpack.split_rows(msgs, [bitpack.packed_nbytes(d, WIDTH)])
        codes = bitpack.unpack_fields(body, d, WIDTH)  # uint16
        if bool(((codes & 255) > _MAX_CODE).any()):
            raise CompressorError("natural message holds the unused exponent code 255")
        return NaturalPayload(torch.from_numpy(codes.astype(np.int32)).to(device), dtype)

    def bits(p: NaturalPayload) -> torch.Tensor:
        w, d = p.codes.shape
        return torch.full((w,), WIDTH * d, dtype=torch.int64)

    return Compressor(
        name="natural",
        kind="unbiased",
        omega=lambda d: 1.0 / 8.0,
        delta=None,
        compress=compress,
        decompress=decompress,
        encode=encode,
        decode=decode,
        bits=bits,
        data_dependent=(
            "ω = 1/8 holds for |x_j| >= 2^-126 (float32's normal range) or x_j = 0; smaller "
            "entries round between 0 and 2^-126 (unbiased, variance |x_j|·(2^-126 − |x_j|))"
        ),
        check_dim=check_dim,
        hyperparams=(),
    )
