"""EF21: error feedback that compresses the change of each worker's gradient estimate, and with
minibatch gradients EF21-SGD.

Richtárik, Sokolov & Fatkhullin, "EF21: A New, Simpler, Theoretically Better, and Practically
Faster Error Feedback", NeurIPS 2021, arXiv:2106.05203 (Algorithm 2); EF21-SGD: Fatkhullin,
Sokolov, Gorbunov, Li & Richtárik, "EF21 with Bells & Whistles", arXiv:2110.03294;
docs/theory.md §10. Worker i keeps an estimate g_i of its gradient, the server their mean g:

    c_i   = C(ĝ_i(x_t) − g_i)         sent up-link (C contractive, C(δ))
    g_i  ← g_i + c_i
    g    ← g + (1/K) Σ_i c_i          kept by the server; broadcast down-link (dense)
    x_{t+1} = x_t − γ g

ĝ_i is worker i's full local gradient (EF21) or its minibatch gradient (EF21-SGD). g_i and g
start at 0, so step 0 sends C(ĝ_i(x_0)): the paper's g_i^0 = C(∇f_i(x^0)), and step t uses the
paper's g^t (its x^{t+1} = x^t − γg^t, then c_i from ∇f_i(x^{t+1})): one gradient per step.

Why it beats EF14 (`ef_sgd`): the compressed quantity ĝ_i − g_i goes to 0 as x → x* and
g_i → ∇f_i(x*), even when the workers' gradients at the optimum differ (heterogeneous data), so
with full gradients EF21 converges linearly to the exact optimum at a constant step; EF-SGD's
memory holds O(γ‖∇f_i(x*)‖/δ) at its fixed point, a floor that no constant step removes.

What the server keeps is exact: g is the sum of the decoded means, the same on every process;
the wire rounds only the messages c_i (float32), and rounding errors of g_i reappear in the next
difference ĝ_i − g_i, which corrects them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .base import Algorithm, Context, Theorem
from .common import check_lr, no_theorem, sigma_sq

COMPRESSOR_KINDS = ("contractive",)  # the paper's class C(δ)
DEFAULT_COMPRESSOR = "topk"


class EF21State(NamedTuple):
    x: torch.Tensor  # [d] the model (replicated)
    g_workers: torch.Tensor  # [w, d] the held workers' estimates g_i
    g: torch.Tensor  # [d] the server's estimate, the mean of all K estimates


def build(ctx: Context) -> Algorithm:
    channel = ctx.channel
    w = len(channel.backend.worker_ids)

    def init(x0):
        d = x0.numel()
        return EF21State(x0.clone(), x0.new_zeros(w, d), x0.new_zeros(d))

    def step(state, t, lr):
        check_lr(lr, "ef21", "EF21's theorem needs the compressor's δ")
        own, mean = channel.send_up(ctx.grads(state.x) - state.g_workers)
        g = state.g + mean
        return EF21State(state.x - lr * channel.broadcast(g), state.g_workers + own, g)

    return Algorithm("ef21", init, step, lambda s: s.x)


class EF21Constants(NamedTuple):
    theta: float  # contraction of the estimates' error G per step
    beta: float  # its growth per unit of ‖x_{t+1} − x_t‖²·L̃²
    noise: float  # the additive term per step (0 with full gradients)


def lyapunov_constants(delta: float, noise_sq: float) -> EF21Constants:
    """θ, β and the noise term of G^{t+1} ≤ (1 − θ)G^t + βL̃²‖x^{t+1} − x^t‖² + N
    (docs/theory.md §10), G^t = (1/K) Σ_i ‖g_i^t − ∇f_i(x^t)‖².

    Full gradients (noise_sq = 0): the paper's θ = 1 − √(1 − δ), β = (1 − δ)/θ. Minibatch
    gradients with per-worker variance noise_sq = σ²/b: Young's inequality with
    ν = θ/(2(1 − θ)) halves θ and gives N = ((1 + ν)(1 − δ) + 1 + 1/ν)·σ²/b [D].
    """
    if not 0 < delta <= 1:
        raise ValueError(f"EF21 needs a contraction 0 < δ <= 1, got δ={delta}")
    theta = 1.0 - math.sqrt(1.0 - delta)
    beta = (1.0 - delta) / theta
    if noise_sq == 0:
        return EF21Constants(theta, beta, 0.0)
    if delta == 1.0:  # exact messages: g_i is the last stochastic gradient
        return EF21Constants(1.0, 0.0, noise_sq)
    nu = theta / (2.0 * (1.0 - theta))
    return EF21Constants(theta / 2.0, (1.0 + nu) * beta,
                         ((1.0 + nu) * (1.0 - delta) + 1.0 + 1.0 / nu) * noise_sq)


def quadratic_mean_L(c: dict) -> tuple[float, str]:
    """L̃ = √((1/K) Σ_i L_i²), logged by the task as L_qm; L_max ≥ L̃ where it is not."""
    if "L_qm" in c and math.isfinite(c["L_qm"]):
        return c["L_qm"], "L̃ = L_qm"
    return c["L_max"], "L̃ ≤ L_max (the task logs no L_qm)"


def theorem(c: dict, *, workers: int, batch_size: int | None, omega: float | None = None,
            delta: float | None = None, lr: float | None = None, **_) -> Theorem:
    """docs/theory.md §10. With θ, β, N from `lyapunov_constants` and
    Ψ^t = f(x^t) − f* + (γ/θ)G^t:

    - μ-strongly convex (PL), the paper's Theorem 2 (EF21) and its EF21-SGD analogue [D]: for
      γ ≤ lr_max = min{1/(L + L̃√(2β/θ)), θ/(2μ)},

          E f(x^T) − f* ≤ E Ψ^T ≤ (1 − γμ)^T Ψ^0 + N/(θμ):

      rate 1 − γμ and floor N/(θμ) on f − f* (0 with full gradients: the exact optimum);
    - μ = 0, the paper's Theorem 1 (nonconvex): lr_max = 1/(L + L̃√(β/θ)), no linear rate.

    L is f's constant, L̃ the quadratic mean of the workers' (`quadratic_mean_L`); with
    minibatches σ² is the task's per-sample variance at x*, taken as a bound for every x.
    """
    if delta is None:
        return no_theorem("EF21 needs a contractive compressor (δ)")
    Lt, which = quadratic_mean_L(c)
    k = lyapunov_constants(delta, sigma_sq(c, batch_size))
    source = f"docs/theory.md §10 (EF21{'-SGD' if batch_size else ''}, {which})"
    mu = c["mu"]
    if not mu > 0:
        return Theorem(1.0 / (c["L"] + Lt * math.sqrt(k.beta / k.theta)), None, None, "subopt",
                       source + ", nonconvex: no linear rate")
    lr_max = min(1.0 / (c["L"] + Lt * math.sqrt(2.0 * k.beta / k.theta)), k.theta / (2.0 * mu))
    gamma = lr_max if lr is None else lr
    if gamma > lr_max * (1 + 1e-12):
        return Theorem(lr_max, None, None, "subopt", source + "; γ above lr_max")
    return Theorem(lr_max, 1.0 - gamma * mu, k.noise / (k.theta * mu), "subopt", source)
