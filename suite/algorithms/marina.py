"""MARINA: compressed gradient differences, with a full dense gradient on the rounds of a shared
coin, so that the server's estimate stays unbiased without any shift to learn.

Gorbunov, Burlachenko, Li & Richtárik, "MARINA: Faster Non-Convex Distributed Learning with
Compression", ICML 2021, arXiv:2102.07845 (Algorithm 1); docs/theory.md §11. Full local
gradients; Q ∈ U(ω) unbiased; c_t ~ Bernoulli(p) drawn identically by every worker:

    round 0, and every round with c_t = 1:   worker i sends ∇f_i(x_t) dense (32 bits each),
                                             g_t = (1/K) Σ_i ∇f_i(x_t)
    otherwise:                               worker i sends Q(∇f_i(x_t) − ∇f_i(x_{t−1})),
                                             g_t = g_{t−1} + (1/K) Σ_i Q(∇f_i(x_t) − ∇f_i(x_{t−1}))
    x_{t+1} = x_t − γ g_t                    (g_t broadcast down-link, dense)

This is the paper's g^0 = ∇f(x^0), x^{k+1} = x^k − γg^k with g^{k+1} computed at x^{k+1}, one
index later. Each worker keeps its last gradient ∇f_i(x_{t−1}) (one gradient per step). The
coin is `ctx.channel.shared` (one stream drawn identically on every rank), so every process
takes the same branch and makes the same collective calls. The dense rounds travel on their own
lane (`dense`, the identity compressor: an all-reduce, 32d bits a worker), the compressed ones
on the run's compressor: the up-link bits vary from round to round, with mean
p·32d + (1 − p)·bits(Q) per round after round 0.

`p: null` takes p = 1/(ω + 1): the paper's choice p = ζ_Q/d (ζ_Q the expected number of
coordinates a message keeps) for its rand-k, where ζ_Q/d = k/d = 1/(ω + 1), written through
the ω every unbiased compressor declares. With p = 1 every round is dense: gradient descent
(`sgd` with full gradients, bit for bit). Minibatch gradients (VR-MARINA) are not implemented:
the paper's variance-reduced variants evaluate one minibatch at two points.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .base import Algorithm, ConfigurationError, Context, Theorem
from .common import check_lr
from .ef21 import quadratic_mean_L

COMPRESSOR_KINDS = ("unbiased",)  # E Q(Δ) = Δ keeps g_t unbiased between the coin's rounds
DEFAULT_COMPRESSOR = "randk"  # the paper's experiments: rand-k with p = k/d
FULL_GRADIENTS_ONLY = True
DENSE_LANE = "dense"


class MarinaState(NamedTuple):
    x: torch.Tensor  # [d] the model (replicated)
    g: torch.Tensor  # [d] the server's gradient estimate g_{t−1}
    last_grads: torch.Tensor  # [w, d] the held workers' ∇f_i(x_{t−1})
    started: torch.Tensor  # int64 scalar: 0 before round 0 (which is always dense)


def resolve_p(p, omega: float) -> float:
    """The coin's probability: p, or 1/(ω + 1) for p = null."""
    if p is None:
        return 1.0 / (omega + 1.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ConfigurationError(f"algorithm.p={p!r}: must be null (1/(ω+1)) or a number in "
                                 "(0, 1]")
    return float(p)


def build(ctx: Context, *, p: float | None = None) -> Algorithm:
    from suite.compressors import build_compressor

    channel = ctx.channel
    prob = resolve_p(p, channel.compressor.omega(ctx.task.dim))
    dense = channel.lane(DENSE_LANE, uplink=build_compressor("identity"))
    w = len(channel.backend.worker_ids)

    def init(x0):
        d = x0.numel()
        return MarinaState(x0.clone(), x0.new_zeros(d), x0.new_zeros(w, d),
                           torch.zeros((), dtype=torch.int64))

    def step(state, t, lr):
        check_lr(lr, "marina", "MARINA's theorem needs an unbiased compressor")
        grads = ctx.grads(state.x)
        # the coin comes first in every round after round 0, on every process alike
        full = not int(state.started) or float(
            channel.shared.common_uniform(dtype=torch.float64)) < prob
        if full:
            _, g = dense.send_up(grads)
        else:
            _, mean = channel.send_up(grads - state.last_grads)
            g = state.g + mean
        x = state.x - lr * channel.broadcast(g)
        return MarinaState(x, g, grads, torch.ones((), dtype=torch.int64))

    return Algorithm("marina", init, step, lambda s: s.x)


def theorem(c: dict, *, workers: int, batch_size: int | None, omega: float | None = None,
            lr: float | None = None, p: float | None = None, **_) -> Theorem:
    """docs/theory.md §11, full gradients, Q ∈ U(ω) independent across workers. With
    Φ^t = f(x^t) − f* + (γ/p)‖g^t − ∇f(x^t)‖² (Φ^0 = f(x^0) − f*, since g^0 = ∇f(x^0)):

    - μ-strongly convex (PL), the paper's Theorem 2.2 with f's L and the workers' quadratic
      mean L̃ kept apart [D]: for γ ≤ lr_max = min{1/(L + L̃√(2(1 − p)ω/(pK))), p/(2μ)},

          E f(x^T) − f* ≤ (1 − γμ)^T Φ^0:   rate 1 − γμ, floor 0 (the exact optimum);

    - μ = 0, Theorem 2.1 (nonconvex): lr_max = 1/(L + L̃√((1 − p)ω/(pK))), no linear rate.
    """
    if omega is None:
        raise ConfigurationError("algorithm=marina needs an unbiased compressor (ω known)")
    prob = resolve_p(p, omega)
    Lt, which = quadratic_mean_L(c)
    spread = (1.0 - prob) * omega / (prob * workers)
    source = f"docs/theory.md §11 (MARINA, {which})"
    if batch_size is not None:
        return Theorem(math.nan, None, None, "subopt", "no theorem: MARINA needs full "
                       "gradients here")
    mu = c["mu"]
    if not mu > 0:
        return Theorem(1.0 / (c["L"] + Lt * math.sqrt(spread)), None, None, "subopt",
                       source + ", nonconvex: no linear rate")
    lr_max = min(1.0 / (c["L"] + Lt * math.sqrt(2.0 * spread)), prob / (2.0 * mu))
    gamma = lr_max if lr is None else lr
    if gamma > lr_max * (1 + 1e-12):
        return Theorem(lr_max, None, None, "subopt", source + "; γ above lr_max")
    return Theorem(lr_max, 1.0 - gamma * mu, 0.0, "subopt", source)
