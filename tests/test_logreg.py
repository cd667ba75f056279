"""The logistic-regression task: gradients, optimum, constants, splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.logreg import LogisticRegression
from tasks.splits import split_indices


@pytest.fixture(scope="module")
def cancer():
    return LogisticRegression(dataset="breast_cancer", workers=4, split="by_label")


def test_worker_gradients_equal_autograd(cancer):
    """Each worker's gradient equals autograd on its weighted local objective f_k."""
    torch.manual_seed(0)
    x = torch.randn(cancer.dim, dtype=torch.float64, requires_grad=True)
    ours = cancer.grads(x.detach(), None)
    for k in range(cancer.num_workers):
        A, b, w = cancer.A_shards[k], cancer.b_shards[k], cancer.w_shards[k]
        local = (w * torch.logaddexp(torch.zeros_like(b), -b * (A @ x))).sum() \
            + 0.5 * cancer.l2 * x.dot(x)
        (g,) = torch.autograd.grad(local, x)
        torch.testing.assert_close(ours[k], g, rtol=1e-12, atol=1e-14)


def test_average_of_worker_objectives_is_the_global_gradient(cancer):
    x = torch.randn(cancer.dim, dtype=torch.float64)
    torch.testing.assert_close(cancer.grads(x, None).mean(0), cancer.full_grad(x),
                               rtol=1e-12, atol=1e-14)


def test_minibatch_gradient_is_unbiased(cancer):
    """Averaging the minibatch gradient over every possible single sample gives ∇f_k."""
    x = torch.randn(cancer.dim, dtype=torch.float64)
    full = cancer.grads(x, None)
    m = int(cancer.n_held.min())
    # batch of size m that enumerates the first m samples of each shard exactly once
    batch = torch.arange(m).expand(cancer.num_workers, m)
    enumerated = cancer.grads(x, batch)
    sizes = cancer.n_held.to(torch.float64)
    # with batch = all samples of a shard of size m == n_k, the estimate is exact
    exact_rows = sizes == m
    torch.testing.assert_close(enumerated[exact_rows], full[exact_rows], rtol=1e-12,
                               atol=1e-14)


def test_f_star_matches_scikit_learn(cancer):
    from sklearn.linear_model import LogisticRegression as SkLR

    A, b = cancer.A_train.numpy(), cancer.b_train.numpy()
    n = len(b)
    sk = SkLR(C=1.0 / (n * cancer.l2), fit_intercept=False, tol=1e-14, max_iter=100000)
    sk.fit(A, b)
    x = torch.as_tensor(sk.coef_[0], dtype=torch.float64)
    f_sklearn = float(cancer.loss(x))
    f_star = cancer.constants["f_star"]
    assert f_star <= f_sklearn + 1e-15
    assert abs(f_sklearn - f_star) / f_star < 1e-8
    assert cancer.constants["grad_norm_at_x_star"] <= 1e-10


def test_smoothness_and_strong_convexity_bound_the_hessian(cancer):
    L, mu = cancer.constants["L"], cancer.constants["mu"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = torch.as_tensor(rng.standard_normal(cancer.dim) * 3, dtype=torch.float64)
        H = torch.autograd.functional.hessian(cancer.loss, x)
        eig = torch.linalg.eigvalsh(H)
        assert eig[-1] <= L * (1 + 1e-12)
        assert eig[0] >= mu * (1 - 1e-12)
    # L is attained at x = 0, where s(1−s) = 1/4 for every sample
    H0 = torch.autograd.functional.hessian(cancer.loss, torch.zeros(cancer.dim,
                                                                    dtype=torch.float64))
    assert torch.linalg.eigvalsh(H0)[-1] == pytest.approx(L, rel=1e-10)


def test_worker_smoothness_bounds_each_local_hessian(cancer):
    L_max = cancer.constants["L_max"]
    for k in range(cancer.num_workers):
        A, w = cancer.A_shards[k], cancer.w_shards[k]
        H0 = (A.T * (w * 0.25)) @ A + cancer.l2 * torch.eye(cancer.dim, dtype=torch.float64)
        assert torch.linalg.eigvalsh(H0)[-1] <= L_max * (1 + 1e-12)


def test_heterogeneity_constant_is_the_mean_local_gradient_norm_at_the_optimum():
    iid = LogisticRegression(dataset="breast_cancer", workers=4, split="iid")
    by_label = LogisticRegression(dataset="breast_cancer", workers=4, split="by_label")
    assert by_label.constants["zeta_sq"] > 1.2 * iid.constants["zeta_sq"]
    for task in (iid, by_label):
        g = task.grads(task.x_star, None)
        assert float((g * g).sum(1).mean()) == pytest.approx(task.constants["zeta_sq"],
                                                             rel=1e-9)


@pytest.mark.parametrize("kind", ["iid", "by_label", "dirichlet"])
@pytest.mark.parametrize("workers", [1, 3, 8])
def test_splits_cover_every_sample_exactly_once(kind, workers):
    labels = np.random.default_rng(1).integers(0, 2, size=101) * 2 - 1
    shards = split_indices(labels, workers, kind, seed=3, alpha=0.1)
    assert len(shards) == workers
    assert all(len(s) >= 1 for s in shards)
    joined = np.concatenate(shards)
    assert np.array_equal(np.sort(joined), np.arange(101))


def test_by_label_split_separates_the_classes():
    labels = np.array([1, -1] * 50)
    shards = split_indices(labels, 2, "by_label", seed=0)
    assert {labels[i] for i in shards[0]} == {-1}
    assert {labels[i] for i in shards[1]} == {1}


def test_bad_split_and_dataset_are_refused():
    with pytest.raises(ValueError, match="task.split='diagonal'"):
        split_indices(np.ones(10), 2, "diagonal", seed=0)
    with pytest.raises(ValueError, match="task.dataset='nope'.*breast_cancer"):
        LogisticRegression(dataset="nope", workers=2)


def test_unequal_shards_keep_the_global_objective():
    """Dirichlet shards differ in size; the K·n_k/n weights keep f = (1/K) Σ f_k."""
    task = LogisticRegression(dataset="breast_cancer", workers=5, split="dirichlet",
                              dirichlet_alpha=0.3)
    assert len(set(task.shard_sizes.tolist())) > 1
    x = torch.randn(task.dim, dtype=torch.float64)
    torch.testing.assert_close(task.grads(x, None).mean(0), task.full_grad(x), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("batch_size", [None, 1, 3, 4])
def test_a_workers_gradient_does_not_depend_on_which_other_workers_the_process_holds(batch_size):
    """A rank holding workers 2 and 3 computes their gradients bit for bit as the simulation
    holding all 4 does (the distributed parity of per-worker states rests on it): torch's
    scalar tail of an elementwise kernel would differ by an ulp (tasks/logreg.py,
    SIGMOID_BLOCK). 50 random points, each with its own minibatch: plain torch.sigmoid fails
    this on an AVX-512 machine for b = 4 and full gradients (blocks of 16 doubles)."""
    full = LogisticRegression(dataset="breast_cancer", workers=4, split="by_label")
    half = LogisticRegression(dataset="breast_cancer", workers=4, split="by_label",
                              worker_ids=[2, 3])
    gen = torch.Generator().manual_seed(0)
    m = int(full.n_held.min())
    for _ in range(50):
        x = 3 * torch.randn(full.dim, dtype=torch.float64, generator=gen)
        batch = None if batch_size is None else \
            torch.randint(0, m, (4, batch_size), generator=gen)
        assert torch.equal(full.grads(x, batch)[2:],
                           half.grads(x, None if batch is None else batch[2:]))
        xs = 3 * torch.randn(4, full.dim, dtype=torch.float64, generator=gen)
        assert torch.equal(full.grads(xs, batch)[2:],
                           half.grads(xs[2:], None if batch is None else batch[2:]))


def test_breast_cancer_read_from_its_file_is_scikit_learns_to_the_bit():
    """The bundled CSV read without importing scikit-learn gives load_breast_cancer()'s arrays:
    the same float64 bits, the same int targets (569 × 30, 357 benign)."""
    from sklearn.datasets import load_breast_cancer

    from tasks.datasets import breast_cancer

    A, target = breast_cancer()
    reference = load_breast_cancer()
    assert A.dtype == np.float64 and A.shape == (569, 30)
    assert A.tobytes() == reference.data.astype(np.float64).tobytes()
    assert target.dtype == reference.target.dtype and np.array_equal(target, reference.target)
    assert int(target.sum()) == 357


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_evaluation_is_the_textbook_formulas_to_the_bit(dtype):
    """Each evaluated value has the bits of the formulas written out here with nothing kept
    between calls (−b, Aᵀ and logaddexp's zeros are made once per task since round 6 of
    docs/performance.md): at points from 0.01 to 100 times a unit Gaussian, where the
    margins go from the logistic's linear part to where log(1 + e^z) is z."""
    task = LogisticRegression(dataset="breast_cancer", workers=1, split="iid", l2=0.1,
                              dtype=dtype)
    A, b, At, bt = task.A_train, task.b_train, task.A_test, task.b_test
    for seed, scale in enumerate([0.01, 1.0, 10.0, 100.0]):
        x = scale * torch.randn(task.dim, dtype=task.dtype,
                                generator=torch.Generator().manual_seed(seed))
        z = -b * (A @ x)
        loss = float(torch.logaddexp(torch.zeros_like(z), z).mean() + 0.5 * 0.1 * x.dot(x))
        g = A.T @ (-b * torch.sigmoid(z)) / A.shape[0] + 0.1 * x
        zt = -bt * (At @ x)
        assert task.evaluate(x) == {
            "train/loss": loss,
            "train/suboptimality": loss - task.constants["f_star"],
            "train/grad_norm_sq": float(g.dot(g)),
            "test/loss": float(torch.logaddexp(torch.zeros_like(zt), zt).mean()),
            "test/accuracy": float(((bt * (At @ x)) > 0).to(task.dtype).mean()),
        }
        assert float(task.loss(x)) == loss
        assert torch.equal(task.full_grad(x), g)
    # what is kept per task follows the data sets when they are replaced (tests do it)
    task.A_train, task.b_train = At, bt
    z = -bt * (At @ x)
    assert float(task.loss(x)) == float(torch.logaddexp(torch.zeros_like(z), z).mean()
                                        + 0.5 * 0.1 * x.dot(x))


def test_evaluation_is_the_loss_gradient_and_test_metrics_to_the_bit(cancer):
    """evaluate() shares one A·x per data set between the metrics; each value is the bit
    pattern of the task's loss, full gradient and test metrics computed on their own, and
    the loss and gradient equal autograd's."""
    from tasks.logreg import _mean_logistic

    for seed in range(4):
        x = torch.randn(cancer.dim, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed))
        loss, g = float(cancer.loss(x)), cancer.full_grad(x)
        assert cancer.evaluate(x) == {
            "train/loss": loss,
            "train/suboptimality": loss - cancer.constants["f_star"],
            "train/grad_norm_sq": float(g.dot(g)),
            "test/loss": float(_mean_logistic(cancer.A_test, cancer.b_test, x)),
            "test/accuracy": float(((cancer.b_test * (cancer.A_test @ x)) > 0)
                                   .to(torch.float64).mean()),
        }
        xg = x.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(cancer.loss(xg), xg)
        torch.testing.assert_close(g, auto, rtol=1e-12, atol=1e-14)
