"""Rand-k sparsification: keep k coordinates chosen uniformly at random without replacement
(Stich, Cordonnier, Jaggi 2018; the scaled variant is the standard unbiased sparsifier).

Definition: S a uniformly random k-subset of {1..d}, drawn from the worker's stream;
C(x)_j = f·x_j for j ∈ S, 0 elsewhere, with f = d/k (`scaled: true`) or f = 1 (`scaled: false`).
Exactly one of `k` and `ratio` is set; from a ratio, k = max(1, nearest integer to ratio·d).

Constants: scaled, unbiased with ω(d) = d/k − 1 (E‖C(x)‖² = (d/k)‖x‖²); unscaled, biased and
contractive with δ(d) = k/d (E‖C(x) − x‖² = (1 − k/d)‖x‖² exactly).

Bits: k float32 values (unscaled x_j; the receiver applies f) + k indices of ⌈log₂d⌉ bits,
32k + k⌈log₂d⌉. A shared-seed variant, where the receiver regenerates S from a seed it shares
with the sender, would need only the 32k bits of values; we count the indices because each
worker's compression stream is private to it (suite.rng), so the receiver cannot regenerate S.

Sampling S: for k ≤ d/8, draw a few more than k uniform indices with replacement and keep the
first k distinct ones in draw order, which is a uniformly random ordered k-subset; this costs
O(k log k) instead of O(d). For larger k, take the k smallest of d float64 uniforms.
"""

from __future__ import annotations

import math

import torch

from .base import Compressor, check_finite
from .params import k_or_ratio, require_bool, resolve_k
from .sparse import SparsePayload, make_wire, wire_values


def _first_k_distinct(draws: torch.Tensor, k: int) -> torch.Tensor | None:
    """[w, m] indices -> [w, k]: each row's first k distinct values in draw order, or None
    when some row has fewer than k distinct values."""
    w = draws.shape[0]
    sorted_vals, order = torch.sort(draws, dim=1, stable=True)
    # In a stable sort, the first of each run of equal values is its earliest draw.
    first = torch.ones_like(sorted_vals, dtype=torch.bool)
    first[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    is_first = torch.empty_like(first).scatter_(1, order, first)
    rank = torch.cumsum(is_first, dim=1)
    if bool((rank[:, -1] < k).any()):
        return None
    keep = is_first & (rank <= k)
    return draws[keep].view(w, k)


def sample_subsets(streams, d: int, k: int) -> torch.Tensor:
    """[w, k] int64: a uniformly random k-subset of range(d) per worker, from its own stream."""
    if 8 * k > d:
        u = streams.uniform(d, dtype=torch.float64)
        return torch.topk(u, k, dim=1, largest=False, sorted=False).indices
    # Among m draws about m²/(2d) ≤ 0.63·k²/d collide; draw twice that plus a 6-sigma margin.
    mean = k * k / d
    extra = math.ceil(mean) + 6 * math.ceil(math.sqrt(mean)) + 8
    draws = torch.empty(len(streams), 0, dtype=torch.int64, device=streams.device)
    while True:
        u = streams.uniform(k + extra, dtype=torch.float64)
        # float64 uniforms have 53 bits, so floor(u·d) is uniform on range(d) to ~d·2^-53;
        # the clamp guards the last-ulp rounding of u·d up to d.
        new = (u * d).floor_().clamp_(max=d - 1).to(torch.int64)
        draws = torch.cat([draws, new], dim=1)
        chosen = _first_k_distinct(draws, k)
        if chosen is not None:
            return chosen


def randk(*, k: int | None = None, ratio: float | None = 0.01, scaled: bool = True) -> Compressor:
    k_, ratio_ = k_or_ratio(k, ratio)
    scaled_ = require_bool("scaled", scaled)

    def k_of(d: int) -> int:
        return resolve_k(k_, ratio_, d)

    def factor_of(d: int) -> float:
        return d / k_of(d) if scaled_ else 1.0

    def check_dim(d: int) -> None:
        k_of(d)

    def compress(x: torch.Tensor, streams) -> SparsePayload:
        check_finite(x, "randk")
        w, d = x.shape
        kd = k_of(d)
        idx = sample_subsets(streams, d, kd)
        return SparsePayload(wire_values(x, idx, factor_of(d), "randk"), idx, d, x.dtype)

    decompress, encode, decode, bits = make_wire(k_of, factor_of)

    return Compressor(
        name="randk",
        kind="unbiased" if scaled_ else "contractive",
        omega=(lambda d: d / k_of(d) - 1.0) if scaled_ else None,
        delta=None if scaled_ else (lambda d: k_of(d) / d),
        compress=compress,
        decompress=decompress,
        encode=encode,
        decode=decode,
        bits=bits,
        check_dim=check_dim,
        hyperparams=(("k", k_), ("ratio", ratio_), ("scaled", scaled_)),
    )
