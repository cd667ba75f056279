"""The sign vote of signSGD with majority vote (Bernstein, Zhao, Azizzadenesheli & Anandkumar,
"signSGD with Majority Vote is Communication Efficient and Fault Tolerant", ICLR 2019,
arXiv:1810.05291; docs/theory.md §13), as a pair of schemes of the protocol:

- `sign_vote()`, an Uplink: each worker sends sign(x_k), 1 bit per coordinate (bit 1 for a
  negative coordinate; 0 is sent as +, the convention of the suite's sign compressor), no
  scale. The messages are gathered (the aggregate is not linear in them) and the server's
  aggregate is the vote V = sgn(Σ_k sign(x_k)), with a tie (Σ = 0, possible for even K) sent
  as + as well, so that the vote is one bit per coordinate too. The sum of K values ±1 is an
  integer, exact in any float type for K < 2^24, so every process layout votes alike.
- `vote_downlink()`, a Downlink: the vote, a ±1 vector, broadcast losslessly as its d sign
  bits.

Bits: exactly d per worker up and d per broadcast down, counted as Python ints.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from suite.compressors import bitpack

from .protocol import Downlink, Uplink, stateless


class Signs(NamedTuple):
    negative: torch.Tensor  # [w, d] bool
    out_dtype: torch.dtype


class SignCodec:
    """The 1-bit wire format of the vote's messages, as `link.gather` wants it: d bits,
    most significant first (suite/compressors/bitpack.py), no header."""

    @staticmethod
    def encode(p: Signs) -> list[bytes]:
        return bitpack.join_rows(bitpack.pack_fields(p.negative, 1))

    @staticmethod
    def decode(msgs, d, dtype, device="cpu") -> Signs:
        (body,) = bitpack.split_rows(msgs, [bitpack.packed_nbytes(d, 1)])
        negative = torch.from_numpy(bitpack.unpack_fields(body, d, 1).view(np.bool_))
        return Signs(negative.to(device), dtype)

    @staticmethod
    def decompress(p: Signs) -> torch.Tensor:
        # 1 − 2·[negative]: exactly ±1
        return p.negative.to(p.out_dtype).mul_(-2.0).add_(1.0)


def signs(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1, as ±1 in x's dtype."""
    return SignCodec.decompress(Signs(x < 0, x.dtype))


def sign_vote() -> Uplink:
    def up(x, state, link):
        payload = Signs(x < 0, x.dtype)
        own = SignCodec.decompress(payload)
        everyone = link.gather(SignCodec, payload, own)  # [K, d] of ±1
        return own, signs(everyone.sum(0)), state, x.shape[1], None

    return Uplink(name="sign_vote", kind="sign", omega=None, delta=None, init=stateless,
                  up=up)


def vote_downlink() -> Downlink:
    def down(v, state, link):
        return signs(v), state, v.numel()  # a Received, as a tuple

    return Downlink(name="vote", kind="sign", omega=None, delta=None, init=stateless,
                    down=down)


__all__ = ["Signs", "SignCodec", "signs", "sign_vote", "vote_downlink"]
