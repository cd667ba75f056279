"""Delayed SGD: every step applies a gradient taken at a stale iterate.

    x_{t+1} = x_t − γ_t · (1/K) Σ_k g^k(x_{t−τ_t^k}),      g(x_s) := 0 for s < 0

Stich & Karimireddy, "The Error-Feedback Framework: Better Rates for SGD with Delayed Gradients
and Compressed Communication", arXiv:1909.05350 (JMLR 2020); docs/theory.md §3. In the framework the
delay is an error memory e_t = γ Σ_{s=t−τ}^{t−1} g_s, and the virtual iterate x̃_t = x_t − e_t
is plain SGD: the delay slows only the transient, not the σ²/(μT) term.

Modes:
- `mode: fixed`, `delay: τ`: every worker reads x_{t−τ}. For t < τ nothing is applied (the
  gradient g_{t−τ} does not exist): no gradient is computed and nothing is sent.
- `mode: random`, `max_delay: D`: each worker k reads x_{t−τ_t^k}, with τ_t^k uniform on
  {0, …, D}, drawn independently per worker and per step (an asynchronous parameter server in
  which each worker's read is of its own random age). A worker whose τ_t^k > t sends a zero
  message. τ_t^k is a pure function of (run seed, worker, t), hashed with suite.rng.derive_seed
  from the worker's sampling-stream seed (itself derived from the run seed): reproducible,
  identical in the simulated and distributed backends, and nothing to checkpoint.

The state holds the last D past iterates (D = τ or max_delay), newest first, so a checkpoint
captures the queue. The gradient is evaluated at time t at the stale point (one fresh minibatch),
which has the same distribution as a gradient computed at t − τ and delivered at t.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from suite.rng import derive_seed

from .base import Algorithm, ConfigurationError, Context, Theorem

MODES = ("fixed", "random")
# the delay analysis is for exact messages; an unbiased compressor only adds variance
COMPRESSOR_KINDS = ("unbiased",)
# docs/theory.md §3: γ ≤ 1/(c·L·(τ + M + 1)) with an unverified absolute constant c [M]. We take
# c = 5: in the framework's virtual-iterate argument the memory bound
# E‖e‖² ≲ γ²τ²‖∇f‖² ≤ 2Lγ²τ²(f − f*) keeps 3Lγ·E‖e‖² below (γ/4)(f − f*) once γ ≤ 1/(5Lτ),
# and τ + 1 covers γ ≤ 1/(4L) at τ = 0. A sketch, not the paper's constant: tests check the
# scaling in τ, never this number.
DELAY_CONSTANT = 5.0
NOISE_M = 0.0  # noise model E‖ξ‖² ≤ M‖∇f‖² + σ²: M = 0, σ² the minibatch variance at x*


class DelayedState(NamedTuple):
    x: torch.Tensor  # [d] the current iterate x_t
    past: torch.Tensor  # [D, d] x_{t−1}, …, x_{t−D}, newest first (rows for s < 0 unused)


def _check_int(value, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"algorithm.{key}={value!r}: must be an integer >= {low}")
    return value


def _depth(mode: str, delay: int, max_delay: int | None) -> int:
    if mode not in MODES:
        raise ConfigurationError(f"algorithm.mode={mode!r}: allowed values are {', '.join(MODES)}")
    if mode == "fixed":
        return _check_int(delay, "delay", 0)
    if max_delay is None:
        raise ConfigurationError(
            "algorithm.mode=random needs algorithm.max_delay (an integer >= 0)")
    return _check_int(max_delay, "max_delay", 0)


def build(ctx: Context, *, mode: str = "fixed", delay: int = 0, max_delay: int | None = None
          ) -> Algorithm:
    depth = _depth(mode, delay, max_delay)
    # One hash seed per held worker, from the run's sampling stream and the global worker id,
    # so the draws belong to the worker, not to the process.
    delay_seeds = ctx.sample_streams.worker_seeds("delay")
    device = ctx.task.device

    def delays_at(t: int) -> torch.Tensor:
        return torch.tensor([derive_seed(s, "step", t) % (depth + 1) for s in delay_seeds],
                            device=device)

    def init(x0):
        return DelayedState(x0.clone(), x0.new_zeros(depth, x0.numel()))

    def shift(state, x_new):
        past = torch.cat([state.x[None], state.past[:-1]]) if depth else state.past
        return DelayedState(x_new, past)

    def step(state, t, lr):
        if mode == "fixed":
            if t < depth:  # g_{t−τ} := 0: nothing computed, nothing sent
                return shift(state, state.x)
            point = state.x if depth == 0 else state.past[depth - 1]
            g = ctx.grads(point)
        else:
            tau = delays_at(t)
            stack = torch.cat([state.x[None], state.past])  # [D+1, d]: x_t, x_{t−1}, …
            g = ctx.grads(stack[tau])  # [w, d]: each worker at its own stale iterate
            g = g * (tau <= t).to(g.dtype)[:, None]  # g_s := 0 for s < 0
        _, g_mean = ctx.channel.send_up(g)
        return shift(state, state.x - lr * ctx.channel.broadcast(g_mean))

    return Algorithm("delayed_sgd", init, step, lambda s: s.x)


def theorem(c: dict, *, workers: int, batch_size: int | None, omega: float | None = 0.0,
            lr: float | None = None, mode: str = "fixed", delay: int = 0,
            max_delay: int | None = None, **_) -> Theorem:
    """docs/theory.md §3, delayed SGD on a μ-quasi-convex f [M: structure from the paper, constant
    c documented above]:

        E f(x_out) − f* = Õ(L(τ+M+1)·r0·exp[−μT/(cL(τ+M+1))] + σ²/(μT)),

    for γ ≤ lr_max = 1/(c·L·(τ+M+1)), c = DELAY_CONSTANT, M = NOISE_M; σ² → σ²/(Kb) for K
    workers with batch b. With random delays τ is the largest, max_delay. The transient
    contracts by exp(−γμ) per step at γ = lr_max; we report rate = 1 − γμ for γ ≤ lr_max
    (quantity: subopt). No floor: the stochastic term decays with T.

    The analysis is for uncompressed messages (identity compressor).
    """
    tau = _depth(mode, delay, max_delay)
    lr_max = 1.0 / (DELAY_CONSTANT * c["L"] * (tau + NOISE_M + 1.0))
    gamma = lr_max if lr is None else lr
    rate = 1.0 - gamma * c["mu"] if gamma <= lr_max else None
    return Theorem(lr_max, rate, None, "subopt", "docs/theory.md §3 (delayed SGD, c=5 [M])")
