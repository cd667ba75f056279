"""FedAvg: Local SGD with client sampling and a server optimizer (FedAvgM, DiLoCo's outer
Nesterov momentum).

Rounds of H local steps (`local_steps`); x_r is the global model every worker holds:

    S_r     m = max(1, ⌊pK + 1/2⌋) workers sampled uniformly (`participation` p), drawn from
            the channel's shared stream, identical on every rank (suite/comm/participation.py)
    y^k     ← x_r, then H local steps y^k ← y^k − η_t g^k(y^k) for k ∈ S_r
    Δ_r     = (1/m) Σ_{k∈S_r} (y^k − x_r)                   (up-link: each sampled worker's
                                                            progress; the others send nothing)
    u_r     = β u_{r−1} + Δ_r,   u_{−1} = 0                 (`server_momentum` β)
    s_r     = η_s (Δ_r + β u_r) with `nesterov`, else η_s u_r   (`server_lr` η_s)
    x_{r+1} = x_r + s_r                                     (down-link: the broadcast of s_r)

FedAvg: McMahan, Moore, Ramage, Hampson & Agüera y Arcas, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS 2017, arXiv:1602.05629 (p = C, η_s = 1, β = 0).
The server optimizer on the pseudo-gradient −Δ_r: Hsu, Qi & Brown 2019, arXiv:1909.06335
(FedAvgM) and Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295.
DiLoCo (Douillard et al., arXiv:2311.08105) is the outer Nesterov momentum η_s = 0.7, β = 0.9
over H = 500 inner steps (the preset `experiment=diloco`; its inner optimizer is AdamW, here
the runner's SGD step). In torch.optim.SGD's terms the server runs SGD(lr=η_s, momentum=β,
nesterov=...) on the gradient −Δ_r. docs/theory.md §15.

Reduces to `local_sgd` (suite/algorithms/local_sgd.py): with p = 1, η_s = 1 and β = 0 the
step below is local_sgd's arithmetic operation for operation (no server multiplication, no
sampling draw, the same messages), so the two are equal bit for bit.

Participation p < 1: the workers not sampled in a round neither step nor send; their local
models stay at x_r. (Their minibatches are still drawn, and discarded: the sampling stream
then advances alike in every round and every process layout. That costs compute in the
simulation, not communication.) `comm/bits_up` counts only the sampled workers' messages; the
down-link is a broadcast to every worker (each must hold x_{r+1} to start from when sampled),
counted for every worker.

Evaluated point: the mean of the participating workers' local models (Local SGD's virtual
average x̄_t); right after a synchronisation that is the global model x_r.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from suite.comm import participation as sampling

from . import local_sgd
from .base import Algorithm, ConfigurationError, Context, Theorem
from .common import no_theorem

COMPRESSOR_KINDS = ("unbiased",)  # as local_sgd: an unbiased compressor of the progress


class FedAvgState(NamedTuple):
    xs: torch.Tensor  # [w, d] the held workers' local models
    anchor: torch.Tensor  # [d] x_r, the global model of the current round
    u: torch.Tensor  # [d] the server's momentum buffer (zeros when β = 0)
    sampled: torch.Tensor  # [K] bool: this round's participants (all True when p = 1)


def check_rounds(local_steps, participation_, ctx: Context) -> tuple[int, float]:
    """(H, p) checked, and refused where the up-link scheme cannot sample."""
    if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
        raise ConfigurationError(f"algorithm.local_steps={local_steps!r}: must be an integer >= 1")
    p = sampling.check_fraction(participation_)
    scheme = ctx.channel.compressor
    if p < 1 and not scheme.participation:
        raise ConfigurationError(
            f"algorithm.participation={p:g} needs an up-link that can leave workers out; "
            f"compressor={scheme.name} cannot (its scheme aggregates every worker)")
    return local_steps, p


class Rounds:
    """What FedAvg and SCAFFOLD share: the round's sample, the masked local step, the
    evaluated point."""

    def __init__(self, ctx: Context, H: int, p: float):
        self.channel, self.H, self.p = ctx.channel, H, p
        self.full = p == 1.0
        backend = ctx.channel.backend
        self.backend = backend
        self.K, self.w = backend.num_workers, len(backend.worker_ids)
        self.index = torch.as_tensor(list(backend.worker_ids), dtype=torch.int64,
                                     device=backend.device)

    def everyone(self, device) -> torch.Tensor:
        return torch.ones(self.K, dtype=torch.bool, device=device)

    def sample(self, sampled: torch.Tensor, t: int) -> torch.Tensor:
        """The participants of the round step t belongs to: a new draw at its first step."""
        if self.full or t % self.H:
            return sampled
        return sampling.draw(self.channel.shared, self.p)

    def held(self, sampled: torch.Tensor) -> torch.Tensor:
        return sampled[self.index]

    def local(self, xs: torch.Tensor, moved: torch.Tensor, sampled: torch.Tensor):
        """The sampled workers' rows moved, the others' as they were."""
        if self.full:
            return moved
        return torch.where(self.held(sampled)[:, None], moved, xs)

    def synchronises(self, t: int) -> bool:
        return (t + 1) % self.H == 0

    def uplink_sample(self, sampled: torch.Tensor) -> torch.Tensor | None:
        return None if self.full else sampled

    def mean_local(self, xs: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
        """The mean of the participating workers' local models."""
        if self.full:
            return self.backend.mean(xs)  # local_sgd's, operation for operation
        kept = torch.where(self.held(sampled)[:, None], xs, xs.new_zeros(()))
        return self.backend.sum(kept) / int(sampled.sum())


def build(ctx: Context, *, local_steps: int = 1, participation: float = 1.0,
          server_lr: float = 1.0, server_momentum: float = 0.0, nesterov: bool = False
          ) -> Algorithm:
    H, p = check_rounds(local_steps, participation, ctx)
    eta_s, beta = _server(server_lr, server_momentum, nesterov)
    rounds = Rounds(ctx, H, p)
    channel = ctx.channel
    identity_server = eta_s == 1.0 and beta == 0.0

    def init(x0):
        xs = x0.expand(rounds.w, -1).clone()
        return FedAvgState(xs, x0.clone(), torch.zeros_like(x0), rounds.everyone(x0.device))

    def server_step(progress, u):
        """(s_r, u_r) from the mean progress Δ_r."""
        if identity_server:  # local_sgd's broadcast of the mean progress itself
            return progress, u
        if beta == 0.0:
            return eta_s * progress, u
        u = beta * u + progress
        return eta_s * (progress + beta * u if nesterov else u), u

    def step(state, t, lr):
        sampled = rounds.sample(state.sampled, t)
        xs = rounds.local(state.xs, state.xs - lr * ctx.grads(state.xs), sampled)
        anchor, u = state.anchor, state.u
        if rounds.synchronises(t):
            _, progress = channel.send_up(xs - anchor, sampled=rounds.uplink_sample(sampled))
            s, u = server_step(progress, u)
            anchor = anchor + channel.broadcast(s)
            xs = anchor.expand(rounds.w, -1).clone()
        return FedAvgState(xs, anchor, u, sampled)

    return Algorithm("fedavg", init, step, lambda s: rounds.mean_local(s.xs, s.sampled))


def _server(server_lr, server_momentum, nesterov) -> tuple[float, float]:
    if isinstance(server_lr, bool) or not isinstance(server_lr, (int, float)) \
            or not server_lr > 0:
        raise ConfigurationError(f"algorithm.server_lr={server_lr!r}: must be a number > 0 "
                                 "(1: plain averaging)")
    if isinstance(server_momentum, bool) or not isinstance(server_momentum, (int, float)) \
            or not 0 <= server_momentum < 1:
        raise ConfigurationError(f"algorithm.server_momentum={server_momentum!r}: allowed "
                                 "0 <= server_momentum < 1")
    if not isinstance(nesterov, bool):
        raise ConfigurationError(f"algorithm.nesterov={nesterov!r}: allowed values are true, "
                                 "false")
    if nesterov and server_momentum == 0:
        raise ConfigurationError("algorithm.nesterov=true needs algorithm.server_momentum > 0 "
                                 "(Nesterov momentum without momentum is plain averaging)")
    return float(server_lr), float(server_momentum)


def theorem(c: dict, *, workers: int, batch_size: int | None, omega: float | None = 0.0,
            lr: float | None = None, local_steps: int = 1, participation: float = 1.0,
            server_lr: float = 1.0, server_momentum: float = 0.0, nesterov: bool = False,
            **_) -> Theorem:
    """docs/theory.md §15. With p = 1, η_s = 1 and β = 0 this is Local SGD: its theorem
    (constant steps up to 1/(4L), no linear rate; local_sgd.theorem). Otherwise none that
    lr=theory can use: FedAvg's bound under client sampling (Karimireddy et al. 2020,
    Theorem I) needs the gradient dissimilarity constants (G, B) of the workers, which no task
    logs, and server momentum / Nesterov (DiLoCo) has no theorem there."""
    if participation == 1 and server_lr == 1 and server_momentum == 0:
        return local_sgd.theorem(c, workers=workers, batch_size=batch_size, omega=omega,
                                 lr=lr, local_steps=local_steps)
    return no_theorem("FedAvg with client sampling or a server optimizer: no step size "
                      "(docs/theory.md §15)")
