"""PowerSGD (suite/compressors/powersgd.py, docs/theory.md §12): the matrices a message is viewed
as, the exact bits 32·r·(n + m) per matrix, full rank reproducing the mean, the two all-reduces,
the warm-started power iteration reaching the best rank-r approximation, linearity (so error
feedback with full gradients reaches the exact optimum where top-k stalls), and refusals."""

from __future__ import annotations

import math

import pytest
import torch

from suite.backends import SimulatedBackend
from suite.comm import Channel
from suite.compressors import CompressorError, build_compressor
from suite.compressors.powersgd import layout, matrix_shape
from suite.rng import WorkerStreams
from suite.runner import Run
from suite.timing import Stopwatch
from tasks.resnet import resnet20
from tests.conftest import make_cfg

K = 4
HETERO = ("task=logreg", "task.dataset=breast_cancer", "task.split=by_label", "task.l2=0.1",
          "workers=8", "batch_size=full", "hardware.threads=1")
CIFAR = ("task=cifar10_resnet", "task.dataset=fake", "task.fake_size=48",
         "task.fake_test_size=16", "task.eval_batches=1", "task.eval_batch_size=16",
         "workers=2", "batch_size=2", "hardware.threads=1")


class CountingBackend(SimulatedBackend):
    """The simulated backend, counting the all-reduces a scheme makes."""

    def __init__(self, k):
        super().__init__(k)
        self.calls = []

    def all_reduce(self, x, op="sum", *, counted=True):
        self.calls.append((tuple(x.shape), op))
        return super().all_reduce(x, op, counted=counted)


def channel(rank: int, *, shapes=None, backend=None, seed=0):
    backend = backend or SimulatedBackend(K)
    return Channel(backend, build_compressor("powersgd", rank=rank),
                   WorkerStreams(seed, "compression", backend.worker_ids),
                   Stopwatch(backend.device), seed=seed, shapes=shapes)


def resnet20_shapes():
    return tuple(tuple(p.shape) for p in resnet20().parameters())


def expected_bits(shapes, rank: int) -> int:
    """32·r'·(n + m) per n×m matrix (r' = min(r, n, m)), 32 per coordinate of a tensor of
    fewer than 2 dimensions: the documented count, written out independently."""
    total = 0
    for s in shapes:
        if len(s) >= 2:
            n, m = s[0], math.prod(s[1:])
            total += 32 * min(rank, n, m) * (n + m)
        else:
            total += 32 * math.prod(s)
    return total


# -- the matrices and the bits ---------------------------------------------------------------

@pytest.mark.parametrize("d, rows, cols", [(30, 5, 6), (300, 17, 18), (1, 1, 1), (7, 3, 3),
                                           (16, 4, 4), (17, 4, 5)])
def test_a_vector_is_one_zero_padded_matrix_of_about_square_shape(d, rows, cols):
    assert matrix_shape(d) == (rows, cols)
    assert rows * cols >= d and rows * cols - d < cols  # fewer pad entries than one row
    lay = layout(d, None, 2)
    assert len(lay.blocks) == 1 and lay.padded == (rows * cols > d)
    assert lay.bits == 32 * min(2, rows, cols) * (rows + cols)


def test_resnet20_bits_are_32_r_n_plus_m_per_matrix_and_32_per_vector_coordinate():
    shapes = resnet20_shapes()
    for rank in (1, 2, 4, 1000):
        assert layout(sum(math.prod(s) for s in shapes), shapes, rank).bits == \
            expected_bits(shapes, rank)
    # per-layer matrices, batched by shape: ResNet-20 has few distinct shapes
    lay = layout(269_722, shapes, 2)
    assert sum(b.count for b in lay.blocks) == sum(len(s) >= 2 for s in shapes)
    assert len(lay.blocks) < 12


def test_one_ef_sgd_step_on_resnet20_logs_exactly_those_bits():
    """comm/bits_up per step, through the runner, on CIFAR ResNet-20 (FakeData)."""
    run = Run(make_cfg(*CIFAR, "algorithm=ef_sgd", "compressor=powersgd", "lr=0.05"))
    state = run.algorithm.init(run.task.x0())
    for t in range(2):
        state = run.algorithm.step(state, t, 0.05)
    assert run.channel.shapes == resnet20_shapes()
    per_step = expected_bits(resnet20_shapes(), 2)
    assert run.channel.totals()["comm/bits_up"] == 2 * per_step
    # a real compression: over 15× fewer bits than dense, though every bias and BatchNorm
    # vector travels uncompressed (they are 31% of the rank-2 message)
    assert per_step < 32 * run.task.dim / 15


# -- what is decoded ------------------------------------------------------------------------

@pytest.mark.parametrize("shapes", [None, "resnet20"])
def test_full_rank_reproduces_the_uncompressed_mean_and_every_message(shapes):
    """r = min(n, m) = n for every matrix (n ≤ m for a convolution and for the vector's
    view): P̂ is an orthonormal basis of R^n, so P̂P̂ᵀ M = M: the aggregate is the mean and each
    decoded message the message, up to the float32 wire of P and Q: 1e-5 of the largest
    entry in float64, 1e-4 in float32 (ResNet-20's 576-column matrices)."""
    if shapes == "resnet20":
        shapes = resnet20_shapes()
        d = sum(math.prod(s) for s in shapes)
        dtype, tol = torch.float32, 1e-4
    else:
        d, dtype, tol = 30, torch.float64, 1e-5
    ch = channel(10**6, shapes=shapes)
    x = torch.randn(K, d, dtype=dtype, generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # the first round from the random Q, the second warm-started
        own, aggregate = ch.send_up(x)
        scale = float(x.abs().max())
        assert float((aggregate - x.mean(0)).abs().max()) <= tol * scale
        assert float((own - x).abs().max()) <= tol * scale


def test_the_aggregate_is_the_mean_of_the_decoded_messages_and_two_all_reduces_carry_it():
    """Linear once P̂ is fixed: aggregate = P̂·mean(Q_k)ᵀ = mean(P̂Q_kᵀ). One all-reduce for
    every P of the message and one for every Q and the uncompressed coordinates, per round."""
    shapes = resnet20_shapes()
    d = sum(math.prod(s) for s in shapes)
    backend = CountingBackend(K)
    ch = channel(2, shapes=shapes, backend=backend)
    x = torch.randn(K, d, generator=torch.Generator().manual_seed(1))
    for r in range(3):
        own, aggregate = ch.send_up(x)
        assert len(backend.calls) == 2 * (r + 1)
        assert torch.allclose(aggregate, own.mean(0), rtol=0, atol=1e-6 * float(
            aggregate.abs().max()))
    lay = layout(d, shapes, 2)
    p_size = sum(b.count * b.rows * b.rank for b in lay.blocks)
    q_size = sum(b.count * b.cols * b.rank for b in lay.blocks) + lay.dense.numel()
    assert backend.calls[:2] == [((K, p_size), "mean"), ((K, q_size), "mean")]
    assert 32 * (p_size + q_size) == lay.bits  # what is all-reduced is what is counted


def test_warm_started_power_iteration_reaches_the_best_rank_r_approximation():
    """The same mean M̄ every round: Q ← M̄ᵀ orth(M̄Q) is subspace iteration, so ‖M̄ − P̂Q'ᵀ‖²
    falls to the Eckart–Young minimum Σ_{i>r} σ_i², geometrically in (σ_{r+1}/σ_r)² per round
    (here 0.04). The workers' matrices differ (zero-mean perturbations), only their mean is
    low-rank plus a small tail. Tolerance: 1e-6 of the minimum, after 30 rounds (0.04^30 ≈ 1e-42
    for the exact iteration; the float32 wire limits it to ~1e-7 relative)."""
    rows, cols, rank = 5, 6, 2  # the 5×6 view of a 30-vector
    assert matrix_shape(rows * cols) == (rows, cols)
    g = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, dtype=torch.float64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, dtype=torch.float64, generator=g))
    sigma = torch.tensor([10.0, 5.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    mean = u @ torch.diag(sigma) @ v[:, :rows].T
    noise = torch.randn(K, rows * cols, dtype=torch.float64, generator=g)
    x = mean.reshape(1, -1) + noise - noise.mean(0)
    ch = channel(rank)
    errors = []
    for _ in range(30):
        _, aggregate = ch.send_up(x)
        errors.append(float((aggregate - mean.reshape(-1)).square().sum()))
    best = float(sigma[rank:].square().sum())
    assert errors[-1] == pytest.approx(best, rel=1e-6)
    assert errors[0] > 1.5 * best  # the random start is not already optimal


def test_the_random_start_is_shared_by_the_seed_alone():
    x = torch.randn(K, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    a, b, c = channel(1, seed=7), channel(1, seed=7), channel(1, seed=8)
    assert torch.equal(a.send_up(x)[1], b.send_up(x)[1])
    assert not torch.equal(a.send_up(x)[1], c.send_up(x)[1])
    assert not torch.equal(a.lanes["main"].up_state.server.q[0],
                           c.lanes["main"].up_state.server.q[0])


def test_ef_sgd_with_powersgd_reaches_the_exact_optimum_where_top_k_stalls():
    """A linear code compresses the mean of the messages, so the K error memories act on the
    average only: EF-SGD with PowerSGD and full gradients is single-node error feedback on f
    and converges to x* on heterogeneous data (docs/theory.md §12), where EF-SGD with top-k
    at about the same bits (rank 1 of 5×6: 352 bits; top-10: 370) stalls at a floor."""
    finals = {}
    for comp in (("compressor=powersgd", "compressor.rank=1"),
                 ("compressor=topk", "compressor.k=10", "compressor.ratio=null")):
        run = Run(make_cfg(*HETERO, "algorithm=ef_sgd", *comp, "lr=0.1"))
        state = run.algorithm.init(run.task.x0())
        for t in range(3000):
            state = run.algorithm.step(state, t, 0.1)
        finals[comp[0]] = (run.task.evaluate(state.x)["train/suboptimality"],
                           run.channel.totals()["comm/bits_up"] / 3000)
    (power, power_bits), (top, top_bits) = finals.values()
    assert power_bits == 352 and top_bits == 370
    assert power < 1e-12 and top > 1e-8, finals


# -- refusals --------------------------------------------------------------------------------

def test_powersgd_declares_no_constant_and_is_admitted_by_ef_sgd_only():
    c = build_compressor("powersgd")
    assert (c.kind, c.omega, c.delta) == ("low_rank", None, None)
    with pytest.raises(Exception, match=r"lr=theory: no theorem admits a step size for "
                                        r"algorithm=ef_sgd with compressor=powersgd .*no δ"):
        Run(make_cfg("algorithm=ef_sgd", "compressor=powersgd", "lr=theory"))
    with pytest.raises(Exception, match="compressor=powersgd is low_rank.* accepts low_rank "
                                        r"ones \(ef_sgd\)"):
        Run(make_cfg("algorithm=sgd", "compressor=powersgd", "lr=0.1"))
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(CompressorError, match=r"compressor.rank=.*: allowed an integer"):
            build_compressor("powersgd", rank=bad)
    with pytest.raises(CompressorError, match="d >= 1"):
        c.check_dim(0)
