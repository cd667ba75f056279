"""SCAFFOLD: local steps corrected by control variates, so that heterogeneous workers do not
drift apart (stochastic controlled averaging).

Server: global model x_r and control variate c; worker i: control variate c_i (c = c_i = 0 at
the start). Round r, H local steps (`local_steps`), m sampled workers S_r (`participation`):

    y_i   ← x_r, then H steps  y_i ← y_i − η_t (g_i(y_i) − c_i + c)       for i ∈ S_r
    c_i⁺  = c_i − c + (x_r − y_i) / Σ_t η_t          (option II; Σ_t η_t = Hη for constant η)
    up:     Δy_i = y_i − x_r  and  Δc_i = c_i⁺ − c_i  (two messages: twice FedAvg's up-link)
            c_i ← c_i + Δc_i                          (the workers not sampled keep their c_i)
    server: x_{r+1} = x_r + η_g (1/m) Σ_{S_r} Δy_i,   c ← c + (m/K)·(1/m) Σ_{S_r} Δc_i
    down:   both increments, broadcast to every worker (twice the down-link too)

Karimireddy, Kale, Mohri, Reddi, Stich & Suresh, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", ICML 2020, arXiv:1910.06378, Algorithm 1 (option II); docs/theory.md §16.
`server_lr` is η_g. At the optimum with full gradients, c_i = ∇f_i(x*) and c = ∇f(x*) = 0 make
x* a fixed point of the local steps themselves, so the client drift that holds FedAvg at a
floor on heterogeneous data (docs/theory.md §15) vanishes and SCAFFOLD converges to x*.

Messages: the model progress on the channel's main lane, the control-variate increment on a
lane of its own ("control"), each with the run's up- and down-link schemes (so a stateful
scheme never mixes the two). Every worker applies the control increment as the server decodes
it, so that c stays the mean of the c_i up to the broadcast's rounding. The workers not
sampled neither step nor send (their minibatches are drawn and discarded, as in fedavg), and
their c_i are kept for the round in which they are sampled again.

Evaluated point: the mean of the participating workers' local models, as fedavg's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .base import Algorithm, ConfigurationError, Context, Theorem
from .common import no_theorem
from .fedavg import Rounds, check_rounds

COMPRESSOR_KINDS = ("unbiased",)  # the analysis averages exact messages; unbiased noise only
# Theorem III of the paper [M: constants as remembered, unverified]: effective step
# η̃ = H·η_l·η_g ≤ min(1/(81L), S/(15μN)), linear rate exp(−min(S/(30N), μ/(162L))·R) in rounds
# R at that step. Never a test threshold (docs/theory.md §16): tests check the claim (x*
# reached on heterogeneous data), not these numbers.
STEP_L, STEP_MU, RATE_S = 81.0, 15.0, 30.0


class ScaffoldState(NamedTuple):
    xs: torch.Tensor  # [w, d] the held workers' local models y_i
    anchor: torch.Tensor  # [d] x_r
    c_workers: torch.Tensor  # [w, d] the held workers' control variates c_i
    c: torch.Tensor  # [d] the server's control variate
    lr_sum: torch.Tensor  # [] float64: Σ_t η_t over the round so far
    sampled: torch.Tensor  # [K] bool: this round's participants


def build(ctx: Context, *, local_steps: int = 1, participation: float = 1.0,
          server_lr: float = 1.0) -> Algorithm:
    H, p = check_rounds(local_steps, participation, ctx)
    if isinstance(server_lr, bool) or not isinstance(server_lr, (int, float)) \
            or not server_lr > 0:
        raise ConfigurationError(f"algorithm.server_lr={server_lr!r}: must be a number > 0")
    eta_g = float(server_lr)
    rounds = Rounds(ctx, H, p)
    channel = ctx.channel
    control = channel.lane("control")

    def init(x0):
        xs = x0.expand(rounds.w, -1).clone()
        return ScaffoldState(xs, x0.clone(), torch.zeros_like(xs), torch.zeros_like(x0),
                             torch.zeros((), dtype=torch.float64, device=x0.device),
                             rounds.everyone(x0.device))

    def step(state, t, lr):
        sampled = rounds.sample(state.sampled, t)
        corrected = ctx.grads(state.xs) - state.c_workers + state.c
        xs = rounds.local(state.xs, state.xs - lr * corrected, sampled)
        lr_sum = state.lr_sum + lr
        anchor, c_workers, c = state.anchor, state.c_workers, state.c
        if rounds.synchronises(t):
            which = rounds.uplink_sample(sampled)
            dy = xs - anchor
            # c_i⁺ − c_i = −c + (x − y_i)/Σ η  (option II)
            dc = -c - dy / lr_sum.to(dy.dtype)
            _, mean_dy = channel.send_up(dy, sampled=which)
            own_dc, mean_dc = control.send_up(dc, sampled=which)
            c_workers = rounds.local(c_workers, c_workers + own_dc, sampled)
            anchor = anchor + channel.broadcast(mean_dy if eta_g == 1.0 else eta_g * mean_dy)
            share = int(sampled.sum()) / rounds.K  # m/K (1 with everyone)
            c = c + control.broadcast(mean_dc if share == 1.0 else share * mean_dc)
            xs = anchor.expand(rounds.w, -1).clone()
            lr_sum = torch.zeros_like(lr_sum)
        return ScaffoldState(xs, anchor, c_workers, c, lr_sum, sampled)

    return Algorithm("scaffold", init, step, lambda s: rounds.mean_local(s.xs, s.sampled))


def theorem(c: dict, *, workers: int, batch_size: int | None, omega: float | None = 0.0,
            lr: float | None = None, local_steps: int = 1, participation: float = 1.0,
            server_lr: float = 1.0, **_) -> Theorem:
    """docs/theory.md §16, the paper's Theorem III (strongly convex) [M]: with m = S sampled of
    K = N workers, the local step η_l ≤ lr_max = min(1/(81L), m/(15μK))/(H·η_g), and the
    global model contracts per round by 1 − min(m/(30K), μη̃/2), η̃ = H·η_l·η_g (the paper's
    exp(−min(S/(30N), μ/(162L))R) at the largest η̃); per step t that is the H-th root. With
    full gradients no floor (x* exactly, whatever the heterogeneity); with minibatches the
    paper's noise term decays with R at its step-size choice, which a constant step does not
    follow: floor None. Needs an uncompressed up-link (ω = 0)."""
    if omega:
        return no_theorem("SCAFFOLD's theorem is for exact messages (ω = 0)")
    from suite.comm.participation import size

    H, K = int(local_steps), int(workers)
    m = size(float(participation), K)
    L, mu = c["L"], c["mu"]
    lr_max = min(1.0 / (STEP_L * L), m / (STEP_MU * mu * K)) / (H * server_lr)
    gamma = lr_max if lr is None else lr
    source = "docs/theory.md §16 (SCAFFOLD, Theorem III [M])"
    if gamma > lr_max:
        return Theorem(lr_max, None, None, "subopt", source)
    per_round = 1.0 - min(m / (RATE_S * K), mu * H * gamma * server_lr / 2.0)
    return Theorem(lr_max, per_round ** (1.0 / H), 0.0 if batch_size is None else None,
                   "subopt", source)
