"""EF21: error feedback that compresses the change of each worker's gradient estimate.

Richtárik, Sokolov & Fatkhullin, "EF21: A New, Simpler, Theoretically Better, and Practically
Faster Error Feedback", NeurIPS 2021, arXiv:2106.05203. Worker i keeps an estimate g_i of its
gradient and the server keeps their mean g (g_i = g = 0 before the first step):

    c_i  = α·C(∇f_i(x_t) − g_i)       sent up-link (C contractive, C(δ); α = 1 is EF21)
    g_i ← g_i + c_i
    g   ← g + (1/K) Σ_i c_i           broadcast down-link, dense
    x_{t+1} = x_t − γ g

The first step sends C(∇f_i(x_0)), the paper's g_i^0. With minibatch gradients this is
EF21-SGD. `alpha` < 1 damps the update: α·C is contractive with δ_α = 1 − (1 − α(1 − √(1 − δ)))²
(‖αC(x) − x‖ ≤ α‖C(x) − x‖ + (1 − α)‖x‖), which the theorem below uses.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from suite.algorithms import Algorithm, ConfigurationError, Theorem
from suite.algorithms.common import check_lr, no_theorem

COMPRESSOR_KINDS = ("contractive",)  # EF21's analysis is for contractive compressors
DEFAULT_COMPRESSOR = "topk"  # `algorithm=ef21_example` selects top-k unless told otherwise


class EF21State(NamedTuple):
    x: torch.Tensor  # [d] the model
    g_workers: torch.Tensor  # [w, d] each held worker's estimate g_i
    g: torch.Tensor  # [d] the server's estimate, the mean of all K g_i


def build(ctx, *, alpha: float = 1.0) -> Algorithm:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ConfigurationError(f"algorithm.alpha={alpha!r}: must be a number in (0, 1]")
    w = len(ctx.channel.backend.worker_ids)

    def init(x0):
        d = x0.numel()
        return EF21State(x0.clone(), x0.new_zeros(w, d), x0.new_zeros(d))

    def step(state, t, lr):
        check_lr(lr, "ef21_example", "EF21's theorem needs a contractive compressor")
        own, mean = ctx.channel.send_up(ctx.grads(state.x) - state.g_workers)
        g_workers = state.g_workers + alpha * own
        g = state.g + alpha * mean  # the server keeps g exactly; the wire rounds the message
        return EF21State(state.x - lr * ctx.channel.broadcast(g), g_workers, g)

    return Algorithm("ef21_example", init, step, lambda s: s.x)


def theorem(c: dict, *, workers: int, batch_size: int | None, omega: float | None = None,
            delta: float | None = None, lr: float | None = None, alpha: float = 1.0,
            **_) -> Theorem:
    """EF21 under the PL condition (arXiv:2106.05203, Theorem 2), full gradients: for

        γ ≤ min{ 1/(L + L̃·√(2β/θ)),  θ/(2μ) },   θ = 1 − √(1 − δ),  β = (1 − δ)/θ,

    f(x_T) − f* ≤ (1 − γμ)^T Ψ_0, so the suboptimality contracts by 1 − γμ per step. L̃ is the
    quadratic mean of the workers' constants; L_max ≥ L̃ is what the task logs, so the bound
    taken here is the safe side of the paper's. With minibatch gradients (EF21-SGD) the
    paper's bound has a neighbourhood this function does not state: rate None.
    """
    if delta is None:
        return no_theorem("EF21 needs a contractive compressor (δ)")
    d = 1.0 - (1.0 - alpha * (1.0 - math.sqrt(1.0 - delta))) ** 2
    theta = 1.0 - math.sqrt(1.0 - d)
    beta = (1.0 - d) / theta
    lr_max = min(1.0 / (c["L"] + c["L_max"] * math.sqrt(2.0 * beta / theta)),
                 theta / (2.0 * c["mu"]))
    gamma = lr_max if lr is None else lr
    source = "Richtárik, Sokolov & Fatkhullin 2021, Theorem 2 (EF21, PL, L̃ ≤ L_max)"
    if batch_size is not None:
        return Theorem(lr_max, None, None, "subopt", source + "; full gradients only")
    rate = 1.0 - gamma * c["mu"] if gamma <= lr_max else None
    return Theorem(lr_max, rate, None, "subopt", source)
