"""signSGD with majority vote, and with momentum (Signum).

Each worker k sends the sign of its (momentum) gradient, the server broadcasts the majority
vote of those signs, and every worker steps by the vote:

    m^k_t = β m^k_{t−1} + (1 − β) g^k_t      (m^k_{−1} = 0; β = 0: m^k_t = g^k_t, signSGD)
    V_t   = sgn(Σ_k sign(m^k_t))             (sign(0) = +1, and a tie Σ = 0 votes + too)
    x_{t+1} = x_t − γ_t V_t

Bernstein, Zhao, Azizzadenesheli & Anandkumar, "signSGD with Majority Vote is Communication
Efficient and Fault Tolerant", ICLR 2019, arXiv:1810.05291 (Algorithm 1, Signum with majority
vote; signSGD is β = 0); Signum: Bernstein, Wang, Azizzadenesheli & Anandkumar, ICML 2018,
arXiv:1802.04434. docs/theory.md §13.

Communication: 1 bit per coordinate up (each worker's signs) and 1 bit per coordinate down
(the vote), exactly d bits each way per step, through the schemes of suite/comm/votes.py on a
lane of their own ("vote"). The momentum m^k lives on the worker, so it is per worker, [w, d],
in the state. With K = 1 the vote is the worker's own sign and this is signSGD (Signum).

The run's `compressor` is not used (the messages are signs by definition): only the default
identity is accepted. A compressed `downlink` (suite/comm/downlinks.py) compresses the vote
vector further (EF21-P for a contractive one); the default uncompressed broadcast is the vote's
lossless 1-bit encoding, whatever `downlink.width` says.

Theorem: none that `lr=theory` can use. The paper's Theorem 2 is a non-convex rate for
E[(1/T) Σ ‖∇f(x_t)‖₁]² under unimodal symmetric gradient noise, for γ = 1/√(‖L‖₁T) with a
minibatch growing with the horizon (n = T) and a coordinate-wise smoothness vector L: neither
the growing batch nor ‖L‖₁ is a configuration of this suite, so lr=theory is refused.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from suite.comm.downlinks import is_dense
from suite.comm.votes import sign_vote, vote_downlink

from .base import Algorithm, ConfigurationError, Context, Theorem
from .common import check_lr, no_theorem

# the run's compressor is not used: only the identity (the default) is accepted, in build
COMPRESSOR_KINDS = ("unbiased",)
NO_THEOREM = ("Bernstein et al. 2019, Theorem 2, is a non-convex ℓ1 rate for γ = 1/√(‖L‖₁T) "
              "with a batch growing as T (docs/theory.md §13)")


class VoteState(NamedTuple):
    x: torch.Tensor  # [d] the model (replicated)
    m: torch.Tensor  # [w, d] each held worker's momentum (zeros when β = 0)


def build(ctx: Context, *, momentum: float = 0.0) -> Algorithm:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
            or not 0.0 <= momentum < 1.0:
        raise ConfigurationError(f"algorithm.momentum={momentum!r}: allowed 0 <= momentum < 1")
    beta = float(momentum)
    channel = ctx.channel
    if not channel.compressor.is_identity:
        raise ConfigurationError(
            f"algorithm=majority_vote sends the signs of the gradients (1 bit per coordinate); "
            f"compressor={channel.compressor.name} would not be used: leave compressor=identity")
    # the vote's own 1-bit broadcast, unless a compressed down-link was asked for
    lane = channel.lane("vote", uplink=sign_vote(),
                        downlink=vote_downlink() if is_dense(channel.downlink) else None)
    w = len(channel.backend.worker_ids)

    def init(x0):
        return VoteState(x0.clone(), x0.new_zeros(w, x0.numel()))

    def step(state, t, lr):
        check_lr(lr, "majority_vote", NO_THEOREM)
        g = ctx.grads(state.x)
        # β = 0 kept apart: the signs of g themselves, not of (1 − 0)·g + 0·m
        m = g if beta == 0.0 else beta * state.m + (1.0 - beta) * g
        _, vote = lane.send_up(m)
        x = state.x - lr * lane.broadcast(vote)
        return VoteState(x, state.m if beta == 0.0 else m)

    return Algorithm("majority_vote", init, step, lambda s: s.x)


def theorem(c: dict, *, workers: int, batch_size: int | None, lr: float | None = None,
            momentum: float = 0.0, **_) -> Theorem:
    """docs/theory.md §13: no step size for lr=theory (see the module docstring)."""
    return no_theorem(NO_THEOREM)
