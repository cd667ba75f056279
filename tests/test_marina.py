"""MARINA (suite/algorithms/marina.py, docs/theory.md §11): the coin, what p = 1 reduces to,
convergence to the exact optimum within a budget from its theorem, the up-link bits per round
against p·32d + (1 − p)·bits(Q), exactly and by Monte Carlo, and its refusals."""

from __future__ import annotations

import math

import pytest
import torch

from suite.algorithms import REGISTRY, marina
from suite.compressors import build_compressor
from suite.rng import SharedStream, WorkerStreams
from suite.runner import Run
from tests.conftest import make_cfg

K, D = 8, 30
HETERO = ("task=logreg", "task.dataset=breast_cancer", "task.split=by_label", "task.l2=0.1",
          f"workers={K}", "batch_size=full", "hardware.threads=1")
RAND3 = ("compressor=randk", "compressor.k=3", "compressor.ratio=null")  # ω = 9, p = 0.1
EPS = 1e-8


def coins(seed: int, rounds: int, p: float) -> list[bool]:
    """The coins of rounds 1..rounds−1, replayed from the channel's shared stream (round 0
    is dense without a coin)."""
    shared = SharedStream(seed, "communication", list(range(K)), K)
    return [float(shared.common_uniform(dtype=torch.float64)) < p for _ in range(rounds - 1)]


# -- the theorem -----------------------------------------------------------------------------

def test_theorem_step_size_and_default_p():
    c = {"L": 2.0, "L_max": 3.0, "L_qm": 2.5, "mu": 0.1}
    th = REGISTRY["marina"].theorem
    omega = 9.0
    t = th(c, workers=8, batch_size=None, omega=omega)
    p = 1 / (omega + 1)
    assert marina.resolve_p(None, omega) == p
    spread = (1 - p) * omega / (p * 8)
    lr = min(1 / (2.0 + 2.5 * math.sqrt(2 * spread)), p / (2 * 0.1))
    assert t.lr_max == pytest.approx(lr, rel=1e-14)
    assert t.rate == pytest.approx(1 - lr * 0.1) and t.floor == 0.0 and "§11" in t.source
    # a larger p spends more dense rounds and buys a larger step
    assert th(c, workers=8, batch_size=None, omega=omega, p=0.5).lr_max > t.lr_max
    # p = 1 is gradient descent: 1/L, or 1/(2μ) if smaller
    assert th(c, workers=8, batch_size=None, omega=omega, p=1.0).lr_max == pytest.approx(0.5)
    flat = th(c | {"mu": 0.0}, workers=8, batch_size=None, omega=omega)
    assert flat.lr_max == pytest.approx(1 / (2.0 + 2.5 * math.sqrt(spread)))
    assert flat.rate is None
    assert th(c, workers=8, batch_size=None, omega=omega, lr=2 * lr).rate is None


# -- reduces-to ------------------------------------------------------------------------------

def test_with_p_1_every_round_is_dense_and_marina_is_gradient_descent_bit_for_bit():
    """p = 1: every coin lands (u < 1), every worker sends its full gradient dense, g is
    their mean: `sgd` with full gradients, the same iterates and the same bits."""
    common = (*HETERO, "lr=0.2")
    a = Run(make_cfg(*common, "algorithm=marina", *RAND3, "algorithm.p=1"))
    b = Run(make_cfg(*common, "algorithm=sgd"))
    sa, sb = a.algorithm.init(a.task.x0()), b.algorithm.init(b.task.x0())
    for t in range(30):
        sa, sb = a.algorithm.step(sa, t, 0.2), b.algorithm.step(sb, t, 0.2)
        assert torch.equal(sa.x, sb.x), t
    for key, value in b.channel.counters().items():
        assert torch.equal(a.channel.counters()[key], value), key


# -- the paper's claims ----------------------------------------------------------------------

def test_marina_converges_to_the_exact_optimum_and_its_bits_follow_the_coin():
    """At γ = lr_max the theorem bounds E f(x_T) − f* ≤ (1 − γμ)^T Φ_0 with
    Φ_0 = f(x_0) − f* + (γ/p)‖g_0 − ∇f(x_0)‖² (g_0: the dense first round, exact but for the
    float32 wire). T is the first step where the bound is ≤ 1e-3·ε, so by Markov's inequality
    P(f(x_T) − f* ≥ ε) ≤ 1e-3: a failure below is a 1-in-1000 event if MARINA is right.

    Bits: every round's size is known from its coin, so the total up-link bits per worker are
    exactly 32d·(1 + N) + bits(Q)·(T − 1 − N), N the number of coins that landed, replayed from
    the shared stream. And by Monte Carlo: the mean over rounds 1..T−1 is within 5 standard
    errors of p·32d + (1 − p)·bits(Q); one round's size is a two-point variable with standard
    deviation |32d − bits(Q)|·√(p(1 − p)), so the standard error is that over √(T − 1), and a
    5σ deviation has probability < 1e-6 (the count is Binomial; T − 1 > 1000 rounds, p = 0.1:
    ≥ 100 expected coins, where the normal approximation's tail error is far below that)."""
    run = Run(make_cfg(*HETERO, "algorithm=marina", *RAND3, "lr=theory", "seed=4"))
    c, gamma, p = run.task.constants, run.lr0, 0.1
    assert gamma == run.theorem.lr_max
    assert marina.resolve_p(None, run.compressor.omega(D)) == pytest.approx(p)
    x0 = run.task.x0()
    state = run.algorithm.step(run.algorithm.init(x0), 0, gamma)
    G0 = float((state.g - run.task.full_grad(x0)).square().sum())
    phi0 = run.task.evaluate(x0)["train/suboptimality"] + gamma / p * G0
    T = math.ceil(math.log(phi0 / (1e-3 * EPS)) / -math.log(1 - gamma * c["mu"]))
    first = None
    for t in range(1, T):
        state = run.algorithm.step(state, t, gamma)
        if first is None and t % 50 == 0 and run.task.evaluate(state.x)[
                "train/suboptimality"] < EPS:
            first = t
    final = run.task.evaluate(state.x)["train/suboptimality"]
    assert final < EPS, (final, T)

    bits_q = 3 * 32 + 3 * math.ceil(math.log2(D))  # rand-3: 32k + k⌈log₂d⌉
    randk = build_compressor("randk", k=3, ratio=None)
    payload = randk.compress(torch.randn(2, D, dtype=torch.float64),
                             WorkerStreams(0, "x", [0, 1]))
    assert randk.bits(payload).tolist() == [bits_q, bits_q]
    landed = sum(coins(4, T, p))
    total = int(run.channel.counters()["bits_up"][0])
    assert total == 32 * D * (1 + landed) + bits_q * (T - 1 - landed)
    assert run.channel.rounds == T
    # every worker sent the same sizes (the coin is shared)
    assert bool((run.channel.counters()["bits_up"] == total).all())
    mean = (total - 32 * D) / (T - 1)
    expected = p * 32 * D + (1 - p) * bits_q
    stderr = abs(32 * D - bits_q) * math.sqrt(p * (1 - p) / (T - 1))
    assert abs(mean - expected) <= 5 * stderr, (mean, expected, stderr)
    print(f"MARINA: f − f* = {final:.2g} at T = {T} (first below {EPS:g} by step {first}); "
          f"up-link bits/round {mean:.1f}, predicted {expected:.1f} ± {stderr:.1f}")


def test_the_dense_rounds_reset_the_estimate_to_the_mean_gradient():
    """On a coin's round g_t = (1/K) Σ_i ∇f_i(x_t) as the wire carries it (float32), whatever
    the compressed rounds before it accumulated."""
    run = Run(make_cfg(*HETERO, "algorithm=marina", *RAND3, "algorithm.p=0.3", "lr=0.05",
                       "seed=1"))
    landed = coins(1, 40, 0.3)
    state = run.algorithm.init(run.task.x0())
    checked = 0
    for t in range(40):
        x = state.x
        state = run.algorithm.step(state, t, 0.05)
        grads = run.task.grads(x, None)
        if t == 0 or landed[t - 1]:
            assert torch.equal(state.g, grads.to(torch.float32).to(grads.dtype).mean(0))
            checked += 1
        else:
            assert not torch.equal(state.g, grads.mean(0))
    assert checked >= 5


# -- refusals --------------------------------------------------------------------------------

def test_marina_refuses_what_its_analysis_does_not_cover():
    assert REGISTRY["marina"].compressor_kinds == ("unbiased",)
    assert REGISTRY["marina"].full_gradients_only
    cfg = make_cfg("algorithm=marina")
    assert cfg.compressor.name == "randk" and cfg.batch_size == "full"
    with pytest.raises(Exception, match="full local gradients; batch_size=8 is not allowed"):
        Run(make_cfg("algorithm=marina", "batch_size=8", "lr=0.1"))
    with pytest.raises(Exception, match="needs an unbiased compressor"):
        Run(make_cfg("algorithm=marina", "compressor=topk", "lr=0.1"))
    for bad in ("0", "1.5", "-0.1", "true"):
        with pytest.raises(Exception, match=r"algorithm.p=.*: must be null \(1/\(ω\+1\)\) or"):
            Run(make_cfg("algorithm=marina", f"algorithm.p={bad}", "lr=0.1"))
