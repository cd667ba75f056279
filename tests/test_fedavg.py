"""FedAvg with client sampling and a server optimizer (suite/algorithms/fedavg.py), and the
partial participation it needs from the protocol (suite/comm/participation.py, the channel's
`sampled=`, the adapter): docs/theory.md §15.

- reduces-to: participation 1, server_lr 1, no momentum is local_sgd bit for bit;
- sampling: exactly m = round(pK) workers a round, uniformly (Monte Carlo), the same for the
  same seed; only the sampled workers' bits are counted and only their messages averaged;
- the server optimizer follows torch.optim.SGD's momentum and Nesterov recursions;
- refusals.
"""

from __future__ import annotations

import math

import pytest
import torch

from suite.algorithms import ConfigurationError, Context, fedavg, local_sgd
from suite.backends import SimulatedBackend
from suite.comm import Channel, participation
from suite.compressors import build_compressor
from suite.config import ConfigError
from suite.rng import SharedStream, WorkerStreams
from suite.runner import Run
from suite.timing import Stopwatch
from tests.comm_schemes import shared_randk
from tests.conftest import make_cfg

D, K = 12, 4
SMALL = ("task.dataset=synthetic", "task.n_samples=240", f"task.dim={D}", "task.l2=0.05",
         "hardware.threads=1", f"workers={K}")


def run_of(*overrides: str) -> Run:
    return Run(make_cfg(*SMALL, *overrides))


def trajectory(*overrides: str, steps: int = 24):
    run = run_of(*overrides, f"steps={steps}")
    state = run.algorithm.init(run.task.x0())
    points, states = [], []
    for t in range(steps):
        state = run.algorithm.step(state, t, run.schedule(t))
        points.append(run.algorithm.params(state))
        states.append(state)
    return torch.stack(points), states, run


# -- reduces to local_sgd ----------------------------------------------------------------------
@pytest.mark.parametrize("H, compressor", [(1, "identity"), (3, "identity"), (3, "qsgd")])
def test_full_participation_plain_averaging_is_local_sgd_bit_for_bit(H, compressor):
    common = (f"algorithm.local_steps={H}", f"compressor={compressor}", "batch_size=4",
              "lr=0.3")
    ref, ref_states, ref_run = trajectory("algorithm=local_sgd", *common)
    got, states, run = trajectory("algorithm=fedavg", *common)
    assert torch.equal(got, ref)
    for a, b in zip(states, ref_states, strict=True):
        assert torch.equal(a.xs, b.xs) and torch.equal(a.anchor, b.anchor)
    for key, value in ref_run.channel.counters().items():
        assert torch.equal(run.channel.counters()[key], value), key
    assert run.channel.rounds == ref_run.channel.rounds == 24 // H
    assert not torch.equal(got[-1], run.task.x0())


# -- sampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction, K_, m", [(0.5, 4, 2), (0.1, 4, 1), (0.3, 5, 2),
                                            (1.0, 7, 7), (0.25, 6, 2)])
def test_the_sample_size_is_the_nearest_integer_and_at_least_one(fraction, K_, m):
    assert participation.size(fraction, K_) == m
    shared = SharedStream(0, "communication", list(range(K_)), K_)
    for _ in range(5):
        assert int(participation.draw(shared, fraction).sum()) == m


def test_the_sample_is_uniform_over_workers():
    """Each worker is in a round's sample with probability m/K. Over N = 4000 draws the count
    of a worker is Binomial(N, m/K); six standard deviations bound a false failure among the
    K = 5 workers by ~1e-8."""
    K_, fraction, N = 5, 0.4, 4000
    shared = SharedStream(7, "communication", list(range(K_)), K_)
    counts = sum(participation.draw(shared, fraction).to(torch.int64) for _ in range(N))
    p = participation.size(fraction, K_) / K_
    sigma = math.sqrt(N * p * (1 - p))
    assert bool(((counts - N * p).abs() <= 6 * sigma).all()), counts


def test_only_the_sampled_workers_bits_are_counted_and_averaged():
    """participation 0.5, K = 4: each round exactly 2 workers send 32d bits, the others 0;
    a worker's total is 32d × the rounds it was sampled in; the logged mean per worker is
    rounds × m × 32d / K. The new global model is the old one plus the float32 broadcast of
    the mean of the sampled workers' float32 progress, and the others did not move."""
    H, rounds = 3, 8
    run = run_of("algorithm=fedavg", f"algorithm.local_steps={H}",
                 "algorithm.participation=0.5", "batch_size=full", "lr=0.3")
    state = run.algorithm.init(run.task.x0())
    seen, per_worker = set(), torch.zeros(K, dtype=torch.int64)
    for r in range(rounds):
        before = run.channel.counters()["bits_up"].clone()
        for t in range(r * H, r * H + H - 1):
            state = run.algorithm.step(state, t, 0.3)
        mask = state.sampled
        assert int(mask.sum()) == 2
        assert torch.equal(state.xs[~mask], state.anchor.expand(2, -1))  # idle workers
        # the sync step, by hand: the sampled workers' last local step, then the mean
        xs = state.xs - 0.3 * run.task.grads(state.xs, None)
        own = (xs - state.anchor).to(torch.float32).to(torch.float64)
        mean = torch.where(mask[:, None], own, own.new_zeros(())).sum(0) / 2
        expected = state.anchor + mean.to(torch.float32).to(torch.float64)
        state = run.algorithm.step(state, r * H + H - 1, 0.3)
        assert torch.equal(state.anchor, expected), r
        sent = run.channel.counters()["bits_up"] - before
        assert torch.equal(sent, mask.to(torch.int64) * 32 * D), r
        per_worker += sent
        seen.add(tuple(mask.tolist()))
    assert torch.equal(run.channel.counters()["bits_up"], per_worker)
    totals = run.channel.totals()
    assert totals["comm/bits_up"] == rounds * 2 * 32 * D / K
    assert totals["comm/bits_down"] == rounds * 32 * D  # the broadcast reaches everyone
    assert len(seen) > 1  # the sample changes from round to round


def test_the_same_seed_samples_the_same_workers_and_another_seed_others():
    def masks(seed):
        _, states, _ = trajectory("algorithm=fedavg", "algorithm.local_steps=2",
                                  "algorithm.participation=0.5", "batch_size=4", "lr=0.3",
                                  f"seed={seed}", steps=20)
        return torch.stack([s.sampled for s in states[::2]])

    assert torch.equal(masks(1), masks(1))
    assert not torch.equal(masks(1), masks(2))


# -- the server optimizer ----------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [False, True])
def test_the_server_optimizer_follows_sgd_with_momentum(nesterov):
    """torch.optim.SGD(lr=η_s, momentum=β, nesterov) on the pseudo-gradient −Δ_r: with
    u_r = βu_{r−1} + Δ_r, x_{r+1} = x_r + η_s·(Δ_r + βu_r) (Nesterov) or η_s·u_r, by hand over
    full local gradients and the float32 wire, operation for operation: bit for bit."""
    H, lr, eta, beta = 2, 0.3, 0.7, 0.9
    run = run_of("algorithm=fedavg", f"algorithm.local_steps={H}", f"algorithm.server_lr={eta}",
                 f"algorithm.server_momentum={beta}", f"algorithm.nesterov={nesterov}",
                 "batch_size=full", f"lr={lr}")
    state = run.algorithm.init(run.task.x0())
    anchor, u = run.task.x0().clone(), torch.zeros(D, dtype=torch.float64)
    plain = run_of("algorithm=fedavg", f"algorithm.local_steps={H}", "batch_size=full",
                   f"lr={lr}")
    plain_state = plain.algorithm.init(plain.task.x0())
    for r in range(5):
        xs = anchor.expand(K, -1).clone()
        for _ in range(H):
            xs = xs - lr * run.task.grads(xs, None)
        progress = (xs - anchor).to(torch.float32).to(torch.float64).mean(0)
        u = beta * u + progress
        s = eta * (progress + beta * u if nesterov else u)
        anchor = anchor + s.to(torch.float32).to(torch.float64)
        for t in range(r * H, r * H + H):
            state = run.algorithm.step(state, t, lr)
            plain_state = plain.algorithm.step(plain_state, t, lr)
        assert torch.equal(state.anchor, anchor) and torch.equal(state.u, u), r
    assert not torch.equal(state.anchor, plain_state.anchor)


# -- the theorem -------------------------------------------------------------------------------
def test_the_theorem_is_local_sgds_where_fedavg_is_local_sgd_and_none_elsewhere():
    consts = {"L": 2.0, "L_max": 3.0, "mu": 0.1, "sigma_sq": 4.0, "zeta_sq": 1.0}
    kw = dict(workers=4, batch_size=8, local_steps=3)
    assert fedavg.theorem(consts, **kw) == local_sgd.theorem(consts, **kw)
    for other in (dict(participation=0.5), dict(server_lr=0.7), dict(server_momentum=0.9)):
        assert math.isnan(fedavg.theorem(consts, **kw, **other).lr_max), other
    with pytest.raises(ConfigError, match=r"lr=theory: no theorem.*§15"):
        run_of("algorithm=fedavg", "algorithm.participation=0.5", "lr=theory")


# -- refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (("algorithm.participation=0",), r"participation=0.*\(0, 1\]"),
    (("algorithm.participation=1.5",), r"participation=1.5"),
    (("algorithm.participation=true",), r"participation=True"),
    (("algorithm.server_lr=0",), r"server_lr=0"),
    (("algorithm.server_momentum=1.0",), r"server_momentum=1.0"),
    (("algorithm.nesterov=true",), r"nesterov=true needs algorithm.server_momentum > 0"),
    (("algorithm.local_steps=0",), r"local_steps=0"),
    (("compressor=topk",), r"fedavg needs an unbiased compressor"),
])
def test_bad_configurations_are_refused(overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        run_of("algorithm=fedavg", "lr=0.1", *overrides)


def _channel(uplink):
    backend = SimulatedBackend(K)
    return Channel(backend, uplink, WorkerStreams(0, "c", range(K)),
                   Stopwatch(torch.device("cpu")))


def test_a_scheme_that_cannot_leave_workers_out_is_refused():
    ch = _channel(shared_randk(2))
    mask = torch.tensor([True, False, True, False])
    with pytest.raises(ValueError, match="does not support partial participation"):
        ch.send_up(torch.ones(K, D, dtype=torch.float64), sampled=mask)
    run = run_of("algorithm=fedavg", "lr=0.1")
    ctx = Context(run.task, ch, run.sample_streams, None, run.stopwatch)
    with pytest.raises(ConfigurationError, match="participation=0.5 needs an up-link"):
        fedavg.build(ctx, participation=0.5)
    dense = _channel(build_compressor("identity"))
    for bad in (torch.zeros(K, dtype=torch.bool), torch.ones(K + 1, dtype=torch.bool),
                torch.ones(K)):
        with pytest.raises(ValueError, match="sampled"):
            dense.send_up(torch.ones(K, D, dtype=torch.float64), sampled=bad)
