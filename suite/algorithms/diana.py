"""DIANA: compress gradient *differences* against learned shifts, so compression noise vanishes
at the optimum even when workers' data differ.

Worker i (shift h_i, h_i^0 = 0) and server (shift h = (1/K) Σ_i h_i, momentum v^{−1} = 0):

    Δ_i   = g_i − h_i                    (g_i: worker i's gradient at x^k)
    Δ̂_i   = Q(Δ_i)                       (sent up-link; Q ∈ U(ω), e.g. Quant_p per block)
    h_i  ← h_i + α Δ̂_i
    ĝ     = h + (1/K) Σ_i Δ̂_i            (broadcast down-link, dense)
    h    ← h + α (1/K) Σ_i Δ̂_i
    v     = β v + ĝ
    x    ← prox_{γR}(x − γ v),           R(x) = l1·‖x‖₁ (soft-thresholding)

Mishchenko, Gorbunov, Takáč & Richtárik, "Distributed Learning with Compressed Gradient
Differences", arXiv:1901.09269; docs/theory.md §5. With σ = 0 (full gradients) the shifts learn
h_i → ∇f_i(x*), the differences and their compression noise go to 0, and DIANA converges
linearly to the exact optimum, where QSGD/TernGrad/DQGD stall at a floor ∝ γωζ*²/(μK).

Options: `alpha: null` takes the theorem's α = 1/(ω+1); `momentum: β` (the strongly convex
theorem is for β = 0); `l1`: the ℓ₁ weight of R (0: no prox). The shifts start at 0. α = 0 with
h ≡ 0 is compressed SGD (QSGD, TernGrad) with heavy-ball momentum.

Only unbiased compressors are admitted: the shift update h_i += αΔ̂_i needs E Δ̂_i = Δ_i.
Note: train/suboptimality is the task's smooth f − f*; with l1 > 0 the composite optimum differs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .base import Algorithm, ConfigurationError, Context, Theorem
from .common import sigma_sq

# the shift update h_i += αΔ̂_i needs E Δ̂_i = Δ_i; DIANA's own p-norm quantizer by default
COMPRESSOR_KINDS = ("unbiased",)
DEFAULT_COMPRESSOR = "quant_p"


class DianaState(NamedTuple):
    x: torch.Tensor  # [d] the model (replicated)
    h_workers: torch.Tensor  # [w, d] the held workers' shifts h_i
    h: torch.Tensor  # [d] the server's shift, the mean of all K worker shifts
    v: torch.Tensor  # [d] the momentum buffer


def _number(value, key: str, low: float, high: float, *, high_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigurationError(f"algorithm.{key}={value!r}: must be a number in "
                                 f"[{low:g}, {high:g}{bracket}")
    return float(value)


def soft_threshold(y: torch.Tensor, tau: float) -> torch.Tensor:
    """prox of τ‖·‖₁: sign(y)·max(|y| − τ, 0)."""
    return torch.sign(y) * torch.clamp(y.abs() - tau, min=0.0)


def build(ctx: Context, *, alpha: float | None = None, momentum: float = 0.0, l1: float = 0.0
          ) -> Algorithm:
    omega = ctx.channel.compressor.omega(ctx.task.dim)
    alpha = 1.0 / (omega + 1.0) if alpha is None else _number(alpha, "alpha", 0.0, 1.0)
    beta = _number(momentum, "momentum", 0.0, 1.0, high_open=True)
    l1 = _number(l1, "l1", 0.0, float("inf"))
    channel = ctx.channel
    w = len(channel.backend.worker_ids)

    def init(x0):
        d = x0.numel()
        return DianaState(x0.clone(), x0.new_zeros(w, d), x0.new_zeros(d), x0.new_zeros(d))

    def step(state, t, lr):
        g = ctx.grads(state.x)
        own, mean = channel.send_up(g - state.h_workers)
        h_workers = state.h_workers + alpha * own if alpha else state.h_workers
        g_hat = channel.broadcast(state.h + mean)
        h = state.h + alpha * mean if alpha else state.h
        v = beta * state.v + g_hat if beta else g_hat
        x = state.x - lr * v
        if l1:
            x = soft_threshold(x, lr * l1)
        return DianaState(x, h_workers, h, v)

    return Algorithm("diana", init, step, lambda s: s.x)


def theorem(c: dict, *, workers: int, batch_size: int | None, omega: float | None = 0.0,
            lr: float | None = None, alpha: float | None = None, momentum: float = 0.0,
            **_) -> Theorem:
    """docs/theory.md §5, strongly convex, β = 0 [D,N structure; the paper's exact constants M]:
    for α ≤ 1/(ω+1) and γ ≤ lr_max = 1/(L_max(1 + 6ω/K)),

        E V^k ≤ (1 − min(γμ, α/2))^k V^0 + γ²(1+ω)(1+4αω)σ² / (K·min(γμ, α/2)),

    V^k = ‖x^k − x*‖² + (4ωγ²/(αK))·(1/K) Σ_i ‖h_i^k − ∇f_i(x*)‖² ≥ ‖x^k − x*‖², so the bound
    holds for dist_sq. σ² is the per-worker minibatch variance σ²/b (0 with full gradients).
    L_max = max_i L_i, the largest worker constant. rate and floor are None where the theorem
    does not apply: α = 0 or α > 1/(ω+1), β > 0, or γ > lr_max.
    """
    if omega is None:
        raise ConfigurationError("algorithm=diana needs an unbiased compressor (ω known)")
    lr_max = 1.0 / (c["L_max"] * (1.0 + 6.0 * omega / workers))
    gamma = lr_max if lr is None else lr
    a = 1.0 / (omega + 1.0) if alpha is None else float(alpha)
    source = "docs/theory.md §5 (DIANA, strongly convex, β=0)"
    if not (0 < a <= 1.0 / (omega + 1.0) + 1e-12) or momentum or gamma > lr_max:
        return Theorem(lr_max, None, None, "dist_sq", source)
    m = min(gamma * c["mu"], a / 2.0)
    floor = gamma**2 * (1 + omega) * (1 + 4 * a * omega) * sigma_sq(c, batch_size) / (workers * m)
    return Theorem(lr_max, 1.0 - m, floor, "dist_sq", source)
