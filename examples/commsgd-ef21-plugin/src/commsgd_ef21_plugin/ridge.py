"""Ridge regression on synthetic data, split over K workers, with closed-form constants.

    f(x) = (1/2n) Σ_j (a_jᵀx − b_j)² + (λ/2)‖x‖²,     b = A x_true + noise·ε

Worker k holds shard S_k and f_k(x) = (K/2n) Σ_{j∈S_k} (a_jᵀx − b_j)² + (λ/2)‖x‖², so that
f = (1/K) Σ_k f_k exactly. The Hessian H = AᵀA/n + λI is constant: L and μ are its extreme
eigenvalues, x* = H⁻¹Aᵀb/n, and each worker's L_k is the top eigenvalue of (K/n)A_kᵀA_k + λI.
`split: sorted` gives each worker a contiguous range of the targets b (heterogeneous shards);
`iid` a random one. Computation in float64 (task.dtype).

A task is a factory (this class) called with workers=, worker_ids= (the workers this process
holds) and device=, plus its own keys, which become `task.<key>` config keys; it provides x0,
sample_batch, grads ([w, d], batched over the held workers), evaluate and its constants.
"""

from __future__ import annotations

import numpy as np
import torch

SPLITS = ("iid", "sorted")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


class Ridge:
    name = "ridge_example"

    def __init__(self, *, workers: int, worker_ids=None, device="cpu", n_samples: int = 400,
                 dim: int = 20, noise: float = 0.1, l2: float = 0.01, split: str = "iid",
                 data_seed: int = 0, dtype: str = "float64"):
        if split not in SPLITS:
            raise ValueError(f"task.split={split!r}: allowed values are {', '.join(SPLITS)}")
        if dtype not in DTYPES:
            raise ValueError(f"task.dtype={dtype!r}: allowed values are {', '.join(DTYPES)}")
        if not l2 > 0:
            raise ValueError(f"task.l2={l2}: must be > 0 (it is the strong-convexity constant)")
        if n_samples < workers:
            raise ValueError(f"task.n_samples={n_samples}: fewer samples than workers={workers}")
        rng = np.random.default_rng(data_seed)
        A = rng.standard_normal((n_samples + n_samples // 4, dim))
        b = A @ rng.standard_normal(dim) + noise * rng.standard_normal(len(A))
        (A, self.A_test), (b, self.b_test) = np.split(A, [n_samples]), np.split(b, [n_samples])
        order = np.argsort(b, kind="stable") if split == "sorted" else rng.permutation(n_samples)
        shards = np.array_split(order, workers)
        self.dim, self.n, self.num_workers, self.l2 = dim, n_samples, workers, float(l2)
        self.worker_ids = list(range(workers)) if worker_ids is None else list(worker_ids)
        self.dtype, self.device = DTYPES[dtype], torch.device(device)
        self.shard_sizes = np.array([len(s) for s in shards])
        self.constants, x_star = _constants(A, b, shards, self.l2)
        as_t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        self.A, self.b, self.x_star = as_t(A), as_t(b), as_t(x_star)
        self.A_test, self.b_test = as_t(self.A_test), as_t(self.b_test)
        # the held shards, padded to the longest with zero-weight rows: one batched product
        held = [shards[k] for k in self.worker_ids]
        m = max(len(s) for s in held)
        pad = lambda s: np.pad(s, (0, m - len(s)))  # noqa: E731
        self.A_k = as_t(np.stack([A[pad(s)] for s in held]))  # [w, m, d]
        self.b_k = as_t(np.stack([b[pad(s)] for s in held]))  # [w, m]
        self.weight = as_t(np.stack([np.arange(m) < len(s) for s in held])) * workers / self.n
        self.n_held = torch.as_tensor([len(s) for s in held], device=self.device)

    def x0(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=self.dtype, device=self.device)

    def sample_batch(self, streams, batch_size):
        """[w, b] indices into each held shard, uniform with replacement; None: full."""
        if batch_size is None:
            return None
        u = streams.uniform(batch_size, dtype=torch.float64)
        return (u * self.n_held[:, None]).long().clamp_max_(self.n_held[:, None] - 1)

    def grads(self, x: torch.Tensor, batch) -> torch.Tensor:
        X = x.expand(len(self.worker_ids), -1) if x.dim() == 1 else x
        if batch is None:
            A, b, weight = self.A_k, self.b_k, self.weight
        else:  # each sampled row stands for n_k / batch of the shard
            rows = torch.arange(len(self.worker_ids), device=self.device)[:, None]
            A, b = self.A_k[rows, batch], self.b_k[rows, batch]
            weight = (self.num_workers * self.n_held / (self.n * batch.shape[1]))[:, None]
            weight = weight.to(self.dtype).expand_as(b)
        residual = (torch.einsum("wmd,wd->wm", A, X) - b) * weight
        return torch.einsum("wmd,wm->wd", A, residual) + self.l2 * X

    def loss(self, x: torch.Tensor) -> float:
        r = self.A @ x - self.b
        return float(0.5 * r.dot(r) / self.n + 0.5 * self.l2 * x.dot(x))

    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        x = x.to(self.dtype)
        g = self.A.T @ (self.A @ x - self.b) / self.n + self.l2 * x
        r_test = self.A_test @ x - self.b_test
        loss = self.loss(x)
        return {"train/loss": loss, "train/suboptimality": loss - self.constants["f_star"],
                "train/grad_norm_sq": float(g.dot(g)),
                "test/loss": float(0.5 * r_test.dot(r_test) / len(r_test))}


def _constants(A: np.ndarray, b: np.ndarray, shards, l2: float) -> tuple[dict, np.ndarray]:
    """L, L_max, μ, f*, ζ*² = (1/K) Σ‖∇f_k(x*)‖², σ² (the mean over workers of the per-sample
    gradient variance at x*), from the data in float64."""
    n, d = A.shape
    K = len(shards)
    H = A.T @ A / n + l2 * np.eye(d)
    eig = np.linalg.eigvalsh(H)
    x_star = np.linalg.solve(H, A.T @ b / n)
    r = A @ x_star - b
    f_star = 0.5 * r @ r / n + 0.5 * l2 * x_star @ x_star
    L_k, zeta, sigma = [], [], []
    for s in shards:
        L_k.append(np.linalg.eigvalsh(K / n * A[s].T @ A[s] + l2 * np.eye(d))[-1])
        per_sample = K * len(s) / n * A[s] * r[s][:, None] + l2 * x_star  # unbiased for ∇f_k
        grad_k = per_sample.mean(0)
        zeta.append(grad_k @ grad_k)
        sigma.append(((per_sample - grad_k) ** 2).sum(1).mean())
    constants = {"L": float(eig[-1]), "L_max": float(max(L_k)), "mu": float(eig[0]),
                 "f_star": float(f_star), "zeta_sq": float(np.mean(zeta)),
                 "sigma_sq": float(np.mean(sigma)), "dim": float(d), "n": float(n)}
    return constants, x_star
