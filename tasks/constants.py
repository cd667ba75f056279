"""Logistic-regression constants and the optimum, in float64 (docs/theory.md §7).

    L      = λ_max(AᵀA)/(4n) + λ          (the Hessian's largest eigenvalue at x = 0 bounds it)
    L_k    = K·λ_max(A_kᵀA_k)/(4n) + λ     (worker k's objective carries weight K·n_k/n)
    L_max  = max_k L_k;  L_qm = √((1/K) Σ_k L_k²), the quadratic mean (EF21's and MARINA's L̃)
    μ      = λ
    f*, x* by Newton's method with backtracking, to ‖∇f(x*)‖ ≤ 1e−10 (certificate:
           f(x̂) − f* ≤ ‖∇f(x̂)‖²/(2μ)), or L-BFGS for very wide problems
    ζ*²    = (1/K) Σ_k ‖∇f_k(x*)‖²         heterogeneity at the optimum
    σ*²    = (1/K) Σ_k Var_{j∈S_k} of worker k's one-sample gradient at x*

Results are cached under $COMMSGD_DATA/constants, keyed by the data and split.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

GRAD_TOL = 1e-10
CACHE_FORMAT = 2


def expit(z):
    """scipy's logistic sigmoid, imported on first use: a run whose constants are cached never
    imports scipy (~0.6 s of start-up)."""
    from scipy.special import expit as logistic

    return logistic(z)


def cache_dir() -> Path:
    root = Path(os.environ.get("COMMSGD_DATA", Path.home() / ".cache" / "commsgd"))
    path = root / "constants"
    path.mkdir(parents=True, exist_ok=True)
    return path


def compute_cached(A, b, shards, l2, *, key) -> dict:
    # the format's version is part of the key: a file cached before a constant was added
    # (L_qm in format 2) is computed afresh, never read without it
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, *(repr(k) for k in key)]).encode())
    digest.update(np.ascontiguousarray(A).tobytes())
    digest.update(np.ascontiguousarray(b).tobytes())
    path = cache_dir() / f"logreg-{digest.hexdigest()[:20]}.npz"
    if path.exists():
        with np.load(path) as stored:
            return {k: (stored[k] if k == "x_star" else float(stored[k])) for k in stored.files}
    result = compute(A, b, shards, l2)
    # a temporary name of this process's own, then an atomic rename: parallel jobs (or the
    # ranks of one distributed job) may compute the same constants at once, and none of them
    # may read a half-written file or rename another's temporary away
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp.npz")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **result)
    os.replace(tmp, path)
    return result


def loss(A, b, l2, x):
    return np.logaddexp(0.0, -b * (A @ x)).mean() + 0.5 * l2 * x @ x


def gradient(A, b, l2, x):
    return A.T @ (-b * expit(-b * (A @ x))) / len(b) + l2 * x


def minimise(A, b, l2, *, max_iter: int = 200):
    """Newton's method with Armijo backtracking from x = 0; returns (x*, ‖∇f(x*)‖)."""
    n, d = A.shape
    x = np.zeros(d)
    if d > 3000:
        return _lbfgs(A, b, l2)
    for _ in range(max_iter):
        g = gradient(A, b, l2, x)
        gnorm = np.linalg.norm(g)
        if gnorm <= GRAD_TOL * 1e-2:
            break
        s = expit(A @ x)
        H = (A.T * (s * (1 - s))) @ A / n + l2 * np.eye(d)
        step = np.linalg.solve(H, g)
        f0, t = loss(A, b, l2, x), 1.0
        while loss(A, b, l2, x - t * step) > f0 - 1e-4 * t * g @ step and t > 1e-10:
            t *= 0.5
        x_new = x - t * step
        if np.array_equal(x_new, x):
            break  # float64 cannot move any more: we are at the optimum to machine precision
        x = x_new
    return x, float(np.linalg.norm(gradient(A, b, l2, x)))


def _lbfgs(A, b, l2):
    from scipy.optimize import minimize

    res = minimize(lambda x: loss(A, b, l2, x), np.zeros(A.shape[1]),
                   jac=lambda x: gradient(A, b, l2, x), method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 0.0, "maxiter": 20000, "maxcor": 30})
    return res.x, float(np.linalg.norm(gradient(A, b, l2, res.x)))


def top_eigenvalue(M: np.ndarray) -> float:
    """λ_max(MᵀM) = σ_max(M)², in float64."""
    if min(M.shape) <= 2000:
        return float(np.linalg.eigvalsh(M.T @ M if M.shape[0] >= M.shape[1] else M @ M.T)[-1])
    from scipy.sparse.linalg import svds

    return float(svds(M, k=1, return_singular_vectors=False)[0] ** 2)


def compute(A, b, shards, l2) -> dict:
    n, d = A.shape
    K = len(shards)
    x_star, grad_norm = minimise(A, b, l2)
    L = top_eigenvalue(A) / (4 * n) + l2
    L_workers = [K * top_eigenvalue(A[s]) / (4 * n) + l2 for s in shards]
    # per-sample gradients of the data term at x*: −b_j σ(−b_j a_jᵀx*) a_j
    per_sample = (-b * expit(-b * (A @ x_star)))[:, None] * A
    zeta_sq, sigma_sq = 0.0, 0.0
    for s in shards:
        scaled = per_sample[s] * (K * len(s) / n)  # one-sample estimate of ∇f_k, minus λx*
        local_grad = scaled.mean(0) + l2 * x_star
        zeta_sq += local_grad @ local_grad / K
        sigma_sq += ((scaled - scaled.mean(0)) ** 2).sum(1).mean() / K
    f_star = float(loss(A, b, l2, x_star))
    zeta_sq, sigma_sq = float(zeta_sq), float(sigma_sq)
    return {
        "L": L,
        "L_max": max(L_workers),
        "L_qm": float(np.sqrt(np.mean(np.square(L_workers)))),
        "mu": l2,
        "f_star": f_star,
        "f_star_certificate": grad_norm**2 / (2 * l2),
        "grad_norm_at_x_star": grad_norm,
        "zeta_sq": zeta_sq,
        "sigma_sq": sigma_sq,
        "dim": float(d),
        "n": float(n),
        "x_star": x_star,
    }
