"""Minibatch parallel SGD, optionally with compressed messages and no error feedback.

    x_{t+1} = x_t − γ_t · (1/K) Σ_k C(g_t^k),    g_t^k = (1/b) Σ_{j∈B_t^k} ∇f_j(x_t)

With `momentum` β > 0, the server applies heavy-ball momentum (Polyak 1964) to the averaged
message, as deep-learning recipes do (He et al. 2016 train CIFAR ResNets with β = 0.9):

    v_{t+1} = β v_t + (1/K) Σ_k C(g_t^k),    x_{t+1} = x_t − γ_t v_{t+1},    v_0 = 0.

The theorems below are for β = 0; with β > 0, lr=theory is refused.

With the identity compressor this is minibatch parallel SGD (docs/theory.md §2); with an unbiased
compressor it is QSGD (Alistarh et al. 2017), TernGrad (Wen et al. 2017) or, with full local
gradients, DQGD (Khirirat, Feyzmahdavian & Johansson 2018) (docs/theory.md §6); with a biased one
(top-k, sign) it is the no-error-feedback baseline that EF-SGD is measured against.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .base import Algorithm, ConfigurationError, Context, Theorem
from .common import check_lr, no_theorem, sigma_sq

# compressed SGD runs with any compressor (its theorem only covers unbiased ones)
COMPRESSOR_KINDS = ("unbiased", "contractive", "biased")


class SGDState(NamedTuple):
    x: torch.Tensor
    v: torch.Tensor  # the server's momentum buffer (all zeros when momentum = 0)


def build(ctx: Context, *, momentum: float = 0.0) -> Algorithm:
    if not 0.0 <= momentum < 1.0:
        raise ConfigurationError(f"algorithm.momentum={momentum}: allowed 0 <= momentum < 1")

    def init(x0):
        return SGDState(x0.clone(), torch.zeros_like(x0))

    def step(state, t, lr):
        check_lr(lr, "sgd", "a biased compressor without error feedback can diverge")
        g = ctx.grads(state.x)
        _, g_mean = ctx.channel.send_up(g)
        g_mean = ctx.channel.broadcast(g_mean)
        if momentum == 0.0:
            # kept apart so that β = 0 is exactly plain SGD, not SGD up to 0·v rounding
            return SGDState(state.x - lr * g_mean, state.v)
        v = momentum * state.v + g_mean
        return SGDState(state.x - lr * v, v)

    return Algorithm("sgd", init, step, lambda s: s.x)


def theorem(c: dict, *, workers: int, batch_size: int | None, omega: float | None = 0.0,
            lr: float | None = None, momentum: float = 0.0, **_) -> Theorem:
    """docs/theory.md §2 (ω = 0) and §6 (unbiased ω): for γ ≤ 1/(L(1 + 2ω/K)),

        E‖x_t − x*‖² ≤ (1 − γμ)^t r0 + (γ/(μK))·(2ωζ*² + (1 + ω)σ²/b).

    L is the global constant when ω = 0 and the largest worker constant L_max otherwise (the
    compression noise depends on each worker's own gradient). With full gradients σ² = 0.

    A biased compressor (ω = None) has no theorem: compressed SGD without error feedback can
    diverge. Then lr_max is NaN, a numeric lr runs, and lr=theory is refused at the first step.
    """
    if omega is None:
        return no_theorem("compressed SGD with a biased compressor can diverge; "
                          "use algorithm=ef_sgd")
    if momentum:
        return no_theorem("the bounds of docs/theory.md §2 and §6 are for momentum = 0")
    L = c["L"] if omega == 0 else c["L_max"]
    lr_max = 1.0 / (L * (1.0 + 2.0 * omega / workers))
    gamma = lr_max if lr is None else lr
    noise = sigma_sq(c, batch_size)
    floor = gamma / (c["mu"] * workers) * (2 * omega * c["zeta_sq"] + (1 + omega) * noise)
    rate = 1.0 - gamma * c["mu"] if gamma <= lr_max else None
    return Theorem(lr_max, rate, floor if math.isfinite(floor) else None, "dist_sq",
                   "docs/theory.md §2, §6")
