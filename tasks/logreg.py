"""L2-regularised logistic regression, split over K workers.

    f(x) = (1/n) Σ_j log(1 + exp(−b_j a_jᵀx)) + (λ/2)‖x‖²,      λ = task.l2 (default 1/n)

Worker k holds shard S_k (n_k samples) and the local objective

    f_k(x) = (K/n) Σ_{j∈S_k} log(1 + exp(−b_j a_jᵀx)) + (λ/2)‖x‖²,

weighted by K·n_k/n so that f = (1/K) Σ_k f_k holds exactly even for unequal shards; the
algorithms average worker messages with equal weights, as the theorems assume.

Everything is batched over the worker axis: shards are padded to the largest shard size m and
stored as one [w, m, d] tensor with zero weight on the padding, so all K gradients are one
einsum. Computation is float64 by default (docs/theory.md §7): a suboptimality below ~1e−7 is
invisible in float32, and linear rates must be seen down to 1e−10.
"""

from __future__ import annotations

import numpy as np
import torch

from tasks import constants as logreg_constants
from tasks.datasets import load_dataset
from tasks.splits import split_indices

_DTYPES = {"float64": torch.float64, "float32": torch.float32}
# torch's CPU elementwise kernels run the vectorised (SLEEF) function over whole blocks of
# 2·(vector width) elements and the scalar libm one over the tail (ATen/native/cpu/Loops.h,
# vectorized_loop); the two can differ by an ulp. A worker's rows sit at other offsets when a
# rank holds fewer workers than the simulation, so its gradient would depend on the process
# layout. Padding to a multiple of SIGMOID_BLOCK (≥ 2 × 8 doubles of AVX-512, with room to
# spare) sends every element through the vectorised path, whatever the layout.
SIGMOID_BLOCK = 64


def layout_free_sigmoid(u: torch.Tensor) -> torch.Tensor:
    """torch.sigmoid(u), each element computed alike wherever it sits in the tensor (on the
    CPU: see SIGMOID_BLOCK; elsewhere torch.sigmoid itself)."""
    n = u.numel()
    padded = -(-n // SIGMOID_BLOCK) * SIGMOID_BLOCK
    if u.device.type != "cpu" or padded == n:
        return torch.sigmoid(u)
    buf = u.new_zeros(padded)
    buf[:n] = u.reshape(-1)
    return torch.sigmoid_(buf)[:n].view(u.shape)


def _check_keys(*, l2, data_seed, n_samples, dim, heterogeneity, dirichlet_alpha) -> None:
    """Types and ranges of the task keys, each refused with a message that names it (numpy
    and torch would fail later with messages that do not)."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_real(v):
        return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)

    problems = [
        (l2 is None or (is_real(l2) and np.isfinite(l2) and l2 > 0), "l2", l2,
         "null (1/n) or a finite number > 0 (it is the strong-convexity constant μ)"),
        (is_int(data_seed) and 0 <= data_seed < 2**32, "data_seed", data_seed,
         "an integer in [0, 2**32)"),
        (is_int(n_samples) and n_samples >= 2, "n_samples", n_samples, "an integer >= 2"),
        (is_int(dim) and dim >= 1, "dim", dim, "an integer >= 1"),
        (is_real(heterogeneity) and np.isfinite(heterogeneity) and heterogeneity >= 0,
         "heterogeneity", heterogeneity, "a finite number >= 0"),
        (is_real(dirichlet_alpha) and np.isfinite(dirichlet_alpha) and dirichlet_alpha > 0,
         "dirichlet_alpha", dirichlet_alpha, "a finite number > 0"),
    ]
    for ok, key, value, allowed in problems:
        if not ok:
            raise ValueError(f"task.{key}={value!r} is not allowed: {allowed}")


def _check_finite(where: str, *arrays) -> None:
    bad = sum(int((~np.isfinite(a)).sum()) for a in arrays)
    if bad:
        raise ValueError(f"{where}: {bad} feature values are NaN or infinite; "
                         f"the data must be finite (fix or re-download the file)")


class LogisticRegression:
    name = "logreg"

    def __init__(self, *, dataset: str = "synthetic", split: str = "iid", workers: int,
                 worker_ids: list[int] | None = None, l2: float | None = None,
                 data_seed: int = 0, dtype: str = "float64", device="cpu",
                 n_samples: int = 2000, dim: int = 50, heterogeneity: float = 1.0,
                 dirichlet_alpha: float = 0.5, allow_row_mismatch: bool = False,
                 path: str | None = None):
        if dtype not in _DTYPES:
            raise ValueError(f"task.dtype={dtype!r}: allowed values are {', '.join(_DTYPES)}")
        _check_keys(l2=l2, data_seed=data_seed, n_samples=n_samples, dim=dim,
                    heterogeneity=heterogeneity, dirichlet_alpha=dirichlet_alpha)
        if not isinstance(allow_row_mismatch, bool):
            raise ValueError(f"task.allow_row_mismatch={allow_row_mismatch!r} is not allowed: "
                             f"true or false")
        data = load_dataset(dataset, seed=data_seed, n_samples=n_samples, dim=dim,
                            heterogeneity=heterogeneity, allow_row_mismatch=allow_row_mismatch,
                            path=path)
        _check_finite(f"task.dataset={dataset!r}" if path is None else f"task.path={path!r}",
                      data.A_train, data.A_test)
        n, d = data.A_train.shape
        self.l2 = 1.0 / n if l2 is None else float(l2)
        if not self.l2 > 0:
            raise ValueError(f"task.l2={l2}: must be > 0 (it is the strong-convexity constant μ)")
        self.dataset, self.dim, self.n, self.num_workers = dataset, d, n, workers
        self.worker_ids = list(range(workers)) if worker_ids is None else list(worker_ids)
        self.dtype, self.device = _DTYPES[dtype], torch.device(device)

        shards = split_indices(data.b_train, workers, split, seed=data_seed,
                               alpha=dirichlet_alpha)
        self.shard_sizes = np.array([len(s) for s in shards])
        self.constants = logreg_constants.compute_cached(
            data.A_train, data.b_train, shards, self.l2,
            key=(dataset, split, workers, data_seed, self.l2, n_samples, dim, heterogeneity,
                 dirichlet_alpha, path),
        )
        self.x_star = torch.as_tensor(self.constants.pop("x_star"), dtype=self.dtype,
                                      device=self.device)

        as_t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        self.A_train, self.b_train = as_t(data.A_train), as_t(data.b_train)
        self.A_test, self.b_test = as_t(data.A_test), as_t(data.b_test)
        self._pack_shards(data, shards)

    # The data sets, and what each evaluation would otherwise build again from them (~3 µs a
    # tensor op): −b (negation is exact), Aᵀ as the same view, logaddexp's zeros. Set with
    # the data, so that whoever replaces a data set replaces them too.
    @property
    def A_train(self) -> torch.Tensor:
        return self._A_train

    @A_train.setter
    def A_train(self, A: torch.Tensor) -> None:
        self._A_train, self._A_train_T = A, A.T

    @property
    def b_train(self) -> torch.Tensor:
        return self._b_train

    @b_train.setter
    def b_train(self, b: torch.Tensor) -> None:
        self._b_train, self._neg_b_train, self._zeros_train = b, -b, torch.zeros_like(b)

    @property
    def b_test(self) -> torch.Tensor:
        return self._b_test

    @b_test.setter
    def b_test(self, b: torch.Tensor) -> None:
        self._b_test, self._neg_b_test, self._zeros_test = b, -b, torch.zeros_like(b)

    def _pack_shards(self, data, shards):
        held = [shards[k] for k in self.worker_ids]
        m = max(len(s) for s in held)
        w, d = len(held), self.dim
        A = np.zeros((w, m, d))
        b = np.zeros((w, m))
        weight = np.zeros((w, m))
        for row, idx in enumerate(held):
            A[row, : len(idx)] = data.A_train[idx]
            b[row, : len(idx)] = data.b_train[idx]
            weight[row, : len(idx)] = self.num_workers / self.n
        as_t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        self.A_shards, self.b_shards, self.w_shards = as_t(A), as_t(b), as_t(weight)
        self.n_held = torch.as_tensor([len(s) for s in held], device=self.device)
        # Precomputed off the hot path. The gradient coefficient of sample j is
        #     −b_j σ(−b_j z_j) · weight_j,
        # so each step needs −b_j and −b_j·weight_j; both are tabulated here, once.
        self.A_flat, self.b_flat = self.A_shards.view(w * m, d), self.b_shards.view(w * m)
        self._neg_b_shards = -self.b_shards
        self._neg_b_flat = self._neg_b_shards.view(w * m)
        self._neg_b_weight_full = -self.b_shards * self.w_shards  # [w, m], 0 on padding
        self._row_offsets = (torch.arange(w, device=self.device) * m)[:, None]
        self._sample_weight = self.num_workers * self.n_held.to(self.dtype) / self.n
        self._neg_b_weight_batch: dict[int, torch.Tensor] = {}
        self._n_held_col = self.n_held.to(torch.float64)[:, None]
        self._last_row_col = self.n_held[:, None] - 1

    # -- what the engine calls ------------------------------------------------------------
    def x0(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=self.dtype, device=self.device)

    def sample_batch(self, streams, batch_size):
        """Indices [w, b] into each worker's own shard, uniform with replacement (σ²/b)."""
        if batch_size is None:
            return None
        u = streams.uniform(batch_size, dtype=torch.float64)
        # the clamp guards u·n_k rounding up to n_k when u is within an ulp of 1
        return (u * self._n_held_col).long().clamp_max_(self._last_row_col)

    def grads(self, x: torch.Tensor, batch) -> torch.Tensor:
        """Every held worker's gradient [w, d] at x ([d], shared, or [w, d], one per worker):
        full local gradients when batch is None, else over the sampled indices [w, b]."""
        w = len(self.worker_ids)
        X = x.expand(w, -1) if x.dim() == 1 else x
        if batch is None:
            A, neg_b, neg_b_weight = self.A_shards, self._neg_b_shards, self._neg_b_weight_full
        else:
            # one index_select over the flattened shards is several times faster than
            # advanced indexing with a (rows, batch) pair
            size = batch.shape[1]
            flat = (batch + self._row_offsets).view(-1)
            A = self.A_flat.index_select(0, flat).view(w, size, self.dim)
            neg_b = self._neg_b_flat.index_select(0, flat).view(w, size)
            neg_b_weight = self._batch_table(size).index_select(0, flat).view(w, size)
        # z_k = A_k x_k as a row vector times Aᵀ: on the CPU, torch's batched GEMV is several
        # times slower in the [w, b, d]·[w, d, 1] orientation than in this one
        z = torch.bmm(X.unsqueeze(1), A.mT).squeeze(1)
        coef = layout_free_sigmoid(neg_b * z).mul_(neg_b_weight)
        return torch.bmm(coef.unsqueeze(1), A).squeeze(1).add_(X, alpha=self.l2)

    def _batch_table(self, size: int) -> torch.Tensor:
        """−b_j · K·n_k/(n·size) for every shard row j: each of the `size` sampled samples
        stands for n_k/size of worker k's shard. Computed once per batch size."""
        table = self._neg_b_weight_batch.get(size)
        if table is None:
            weight = (self._sample_weight / size)[:, None].expand_as(self.b_shards)
            table = (self._neg_b_shards * weight).reshape(-1)
            self._neg_b_weight_batch[size] = table
        return table

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return self._loss_at(x, self._neg_b_train * (self.A_train @ x))

    def full_grad(self, x: torch.Tensor) -> torch.Tensor:
        return self._grad_at(x, self._neg_b_train * (self.A_train @ x))

    def _loss_at(self, x: torch.Tensor, neg_margin: torch.Tensor) -> torch.Tensor:
        """f(x) = (1/n) Σ_j log(1 + exp(−b_j a_jᵀx)) + (λ/2)‖x‖², given −b_j a_jᵀx for every
        training sample."""
        return _mean_logistic_of(neg_margin, self._zeros_train) + 0.5 * self.l2 * x.dot(x)

    def _grad_at(self, x: torch.Tensor, neg_margin: torch.Tensor) -> torch.Tensor:
        """∇f(x) = (1/n) Aᵀ(−b ⊙ σ(−b ⊙ Ax)) + λx, given −b_j a_jᵀx for every training
        sample."""
        return self._A_train_T @ (self._neg_b_train * torch.sigmoid(neg_margin)) / self.n \
            + self.l2 * x

    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        """The values of `loss`, `full_grad` and the test set's loss and accuracy, from one
        product A·x per set (the same operations on the same products, so the same bits as
        computing each on its own: tests/test_logreg.py; evaluation runs every eval_every
        steps of every run)."""
        x = x.to(self.dtype)
        neg_margin = self._neg_b_train * (self.A_train @ x)
        loss = float(self._loss_at(x, neg_margin))
        g = self._grad_at(x, neg_margin)
        neg_test_margin = self._neg_b_test * (self.A_test @ x)
        return {
            "train/loss": loss,
            "train/suboptimality": loss - self.constants["f_star"],
            "train/grad_norm_sq": float(g.dot(g)),
            "test/loss": float(_mean_logistic_of(neg_test_margin, self._zeros_test)),
            # −b·z < 0 exactly where b·z > 0 (negation is exact)
            "test/accuracy": float((neg_test_margin < 0).to(self.dtype).mean()),
        }


def _mean_logistic(A, b, x):
    return _mean_logistic_of(-b * (A @ x))


def _mean_logistic_of(z, zeros=None):
    """mean_j log(1 + e^{z_j}) for z_j = −b_j a_jᵀx (`zeros`: zeros like z, if at hand).
    logaddexp, not softplus: torch's softplus returns its input above a threshold, an error
    of ~e^−20 that would dominate suboptimalities of 1e−10."""
    return torch.logaddexp(torch.zeros_like(z) if zeros is None else zeros, z).mean()
