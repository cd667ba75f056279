"""Elias omega ("recursive Elias") coding of positive integers, as QSGD's coding uses.

Alistarh et al. 2017 (§3.1) write Elias(k): the binary representation of k, preceded by the
recursively coded length of that representation, ending in a 0. Its length is
log k + log log k + … + 1 ≤ (1 + o(1)) log k + 1; Elias(1) is the single bit "0".

`omega_length` gives exact code lengths for a whole tensor at once (what `entropy_bits` sums);
`omega_encode` / `omega_decode` are the plain reference codec the tests check it against.
"""

from __future__ import annotations

import torch


def _bit_length(n: torch.Tensor) -> torch.Tensor:
    # frexp writes n = mantissa·2^e with mantissa in [0.5, 1): e is the bit length, exactly,
    # for every integer below 2^53 (all exactly representable in float64).
    return torch.frexp(n.to(torch.float64)).exponent.to(torch.int64)


def omega_length(n: torch.Tensor) -> torch.Tensor:
    """Length in bits of the Elias omega code of each entry of an integer tensor (entries >= 1,
    < 2^53)."""
    n = n.to(torch.int64)
    if n.numel() == 0:
        return n.clone()
    if int(n.min()) < 1:
        raise ValueError("Elias omega codes positive integers only")
    length = torch.ones_like(n)  # the terminating 0
    while True:
        more = n > 1
        if not bool(more.any()):
            return length
        b = _bit_length(n)
        length += torch.where(more, b, torch.zeros_like(b))
        n = torch.where(more, b - 1, n)


def omega_encode(n: int) -> str:
    """The Elias omega code of n >= 1 as a string of '0'/'1'."""
    if n < 1:
        raise ValueError("Elias omega codes positive integers only")
    code = "0"
    while n > 1:
        group = format(n, "b")
        code = group + code
        n = len(group) - 1
    return code


def omega_decode(bits: str, pos: int = 0) -> tuple[int, int]:
    """Read one code starting at bits[pos]; return (value, position after it)."""
    n = 1
    while bits[pos] == "1":
        width = n + 1
        n = int(bits[pos : pos + width], 2)
        pos += width
    return n, pos + 1
