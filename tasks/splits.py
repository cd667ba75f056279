"""Worker splits: which samples each of the K workers holds.

- `iid`:       a seeded random permutation cut into K near-equal shards (sizes differ by ≤ 1).
- `by_label`:  samples sorted by label, then cut into K contiguous shards: the heterogeneous split
               of the DIANA experiments (most workers see a single class).
- `dirichlet`: per class, the class's samples are divided among workers in proportions drawn from
               Dirichlet(alpha) (Hsu et al. 2019); small alpha is very heterogeneous.

Every split returns a list of K index arrays that together cover range(n) exactly once.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("iid", "by_label", "dirichlet")


def split_indices(
    labels: np.ndarray, workers: int, kind: str, *, seed: int, alpha: float = 0.5
) -> list[np.ndarray]:
    n = len(labels)
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    if workers > n:
        raise ValueError(
            f"workers={workers} exceeds the {n} training samples; every worker needs one"
        )
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return [np.sort(s) for s in np.array_split(rng.permutation(n), workers)]
    if kind == "by_label":
        # stable sort keeps the original order inside a class, so the split is deterministic
        return list(np.array_split(np.argsort(labels, kind="stable"), workers))
    if kind == "dirichlet":
        return _dirichlet(labels, workers, rng, alpha)
    raise ValueError(f"task.split={kind!r}: allowed values are {', '.join(SPLITS)}")


def _dirichlet(labels, workers, rng, alpha):
    if not alpha > 0:
        raise ValueError(f"task.dirichlet_alpha={alpha}: must be > 0")
    shards: list[list[int]] = [[] for _ in range(workers)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        proportions = rng.dirichlet(np.full(workers, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
        for k, part in enumerate(np.split(idx, cuts)):
            shards[k].extend(part.tolist())
    # A worker with no data has no local objective; move one sample to it from the largest shard
    # so that every worker exists, and the split still covers every sample exactly once.
    for k in range(workers):
        if not shards[k]:
            donor = max(range(workers), key=lambda j: len(shards[j]))
            shards[k].append(shards[donor].pop())
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
