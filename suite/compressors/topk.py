"""Top-k sparsification: keep the k coordinates of largest magnitude (Stich, Cordonnier, Jaggi
2018, "Sparsified SGD with memory"; the contraction used by error feedback).

Definition: C(x)_j = x_j for the k largest |x_j| (ties broken by torch.topk), 0 elsewhere.
Exactly one of `k` and `ratio` is set; from a ratio, k = max(1, nearest integer to ratio·d).

Constant: biased, contractive with δ(d) = k/d: the dropped d − k coordinates are the smallest,
so ‖C(x) − x‖² ≤ (1 − k/d)‖x‖², with equality for a constant-magnitude vector. Kept values
travel as float32, so the bound holds up to that rounding (relative 2^-24 per value) for
float64 inputs.

Bits: k float32 values + k indices of ⌈log₂d⌉ bits, 32k + k⌈log₂d⌉ (sparse.py).
"""

from __future__ import annotations

import torch

from .base import Compressor, check_finite
from .params import k_or_ratio, resolve_k
from .sparse import SparsePayload, make_wire, wire_values


def topk(*, k: int | None = None, ratio: float | None = 0.01) -> Compressor:
    k_, ratio_ = k_or_ratio(k, ratio)

    def k_of(d: int) -> int:
        return resolve_k(k_, ratio_, d)

    def check_dim(d: int) -> None:
        k_of(d)

    def compress(x: torch.Tensor, streams=None) -> SparsePayload:
        check_finite(x, "topk")
        w, d = x.shape
        kd = k_of(d)
        idx = torch.topk(x.abs(), kd, dim=1, sorted=False).indices
        return SparsePayload(wire_values(x, idx, 1.0, "topk"), idx, d, x.dtype)

    decompress, encode, decode, bits = make_wire(k_of, lambda d: 1.0)

    return Compressor(
        name="topk",
        kind="contractive",
        omega=None,
        delta=lambda d: k_of(d) / d,
        compress=compress,
        decompress=decompress,
        encode=encode,
        decode=decode,
        bits=bits,
        check_dim=check_dim,
        hyperparams=(("k", k_), ("ratio", ratio_)),
    )
