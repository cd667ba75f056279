"""Top-k sparsification: keep the k coordinates of largest magnitude (Stich, Cordonnier, Jaggi
2018, "Sparsified SGD with memory"; the contraction used by error feedback).

Definition: C(x)_j = x_j for the k largest |x_j| (ties broken by torch.topk), 0 elsewhere.
Exactly one of `k` and `ratio` is set; from a ratio, k = max(1, nearest integer to ratio·d).

Constant: biased, contractive with δ(d) = k/d: the dropped d − k coordinates are the smallest,
so ‖C(x) − x‖² ≤ (1 − k/d)‖x‖², with equality for a constant-magnitude vector. Kept values
travel as float32, so the bound holds up to that rounding (relative 2^-24 per value) for
float64 inputs.

Bits: k float32 values + k indices of ⌈log₂d⌉ bits, 32k + k⌈log₂d⌉ (sparse.py).

Selection: a full torch.topk over d costs several copies of x. For small k/d on large d, a
threshold from a strided sample of 2^16 coordinates (set low, so that it keeps about 1.25k
candidates) leaves few candidates, and top-k among them is top-k of the row whenever at least
k pass, since then the k-th largest value passes too. Rows where fewer than k pass (or too many,
as with ties or zeros) take the full topk, so the result is always exact.
"""

from __future__ import annotations

import math

import torch

from .base import Compressor, check_finite
from .params import k_or_ratio, resolve_k
from .sparse import SparsePayload, make_wire, wire_values

_SAMPLE = 1 << 16


def topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """[w, k] indices of the k largest |x_j| per row (see the module docstring)."""
    w, d = x.shape
    if 16 * k > d or d < 4 * _SAMPLE:
        return torch.topk(x.abs(), k, dim=1, sorted=False).indices
    stride = d // _SAMPLE
    sample = x[:, : stride * _SAMPLE : stride].abs()
    expected = k / d * _SAMPLE
    rank = min(_SAMPLE, math.ceil(1.25 * expected + 6 * math.sqrt(expected) + 8))
    threshold = torch.topk(sample, rank, dim=1).values[:, -1:]
    # |x| >= threshold, without a |x| temporary
    passed = x >= threshold
    torch.logical_or(passed, x <= -threshold, out=passed)
    rows, cols = passed.nonzero(as_tuple=True)  # row-major
    # counted from the candidates: a bool row-sum over x would cost more than the rest
    counts = torch.bincount(rows, minlength=w)
    if bool((counts < k).any()) or int(counts.max()) > d // 4:
        return torch.topk(x.abs(), k, dim=1, sorted=False).indices
    # Gather each row's candidates into a [w, max count] table, padded with -1 (below any |x|).
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=x.device) - start[rows]
    width = int(counts.max())
    cand = torch.full((w, width), -1.0, dtype=x.dtype, device=x.device)
    cand[rows, slot] = x[rows, cols].abs()
    cand_cols = torch.zeros((w, width), dtype=torch.int64, device=x.device)
    cand_cols[rows, slot] = cols
    return cand_cols.gather(1, torch.topk(cand, k, dim=1, sorted=False).indices)


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
        idx = topk_indices(x, kd)
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
