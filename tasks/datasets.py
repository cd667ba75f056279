"""Binary-classification data for logistic regression: features A and labels b ∈ {−1, +1}.

- `synthetic`:      seeded Gaussian classes; `heterogeneity` scales the distance between the two
                    class means, so with `split=by_label` it sets how different the workers'
                    local objectives are (ζ*² grows with it).
- `breast_cancer`:  scikit-learn's bundled copy (569 × 30), standardised on the training part;
                    its CSV file is read directly (scikit-learn's import costs ~1.3 s).
- LIBSVM names:     w8a, a9a, mushrooms, ... via `tasks.libsvm` (download, checksum, cache).
- `path=<file>`:    a LIBSVM/svmlight file of the user's own (`task.path`); it is then the data
                    set, whatever `task.dataset` says, and is treated as a table data set without
                    a test file: features as they are, a seeded 20% held out.

Each loader returns train and held-out test parts. Where a data set ships no test file, a seeded
20% of the samples is held out.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np

TEST_FRACTION = 0.2


class Dataset(NamedTuple):
    A_train: np.ndarray  # [n, d] float64
    b_train: np.ndarray  # [n] float64 in {-1, +1}
    A_test: np.ndarray
    b_test: np.ndarray
    name: str


def load_dataset(name: str, *, seed: int, n_samples: int = 2000, dim: int = 50,
                 heterogeneity: float = 1.0, allow_row_mismatch: bool = False,
                 path: str | None = None) -> Dataset:
    if path is not None:
        from tasks import libsvm

        data = libsvm.load_svmlight_path(path)
        return _holdout(data.X_train.toarray(), data.y_train, seed, str(path), standardise=False)
    if name == "synthetic":
        return _synthetic(seed=seed, n=n_samples, d=dim, heterogeneity=heterogeneity)
    if name == "breast_cancer":
        A, target = breast_cancer()
        return _holdout(A, 2.0 * target - 1.0, seed, name, standardise=True)
    from tasks import libsvm

    if name not in libsvm.available_datasets():
        allowed = ["synthetic", "breast_cancer", *libsvm.available_datasets()]
        raise ValueError(f"task.dataset={name!r} is not known; allowed: {', '.join(allowed)}")
    data = libsvm.load_libsvm(name, allow_row_mismatch=allow_row_mismatch)
    A = data.X_train.toarray()
    if data.X_test is None:
        return _holdout(A, data.y_train, seed, name, standardise=False)
    return Dataset(A, data.y_train, data.X_test.toarray(), data.y_test, name)


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """The Wisconsin diagnostic breast-cancer data as scikit-learn bundles it: features
    [569, 30] float64 and targets [569] int (0 malignant, 1 benign), the values of
    `sklearn.datasets.load_breast_cancer()` to the bit. Read from the package's CSV file
    (first line: samples, features, class names) without importing scikit-learn, whose import
    takes longer than a short run; scikit-learn's own loader where the file is not found."""
    spec = importlib.util.find_spec("sklearn")  # locates the package, does not import it
    path = None if spec is None or spec.origin is None else \
        Path(spec.origin).parent / "datasets" / "data" / "breast_cancer.csv"
    if path is None or not path.is_file():
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        return data.data.astype(np.float64), data.target
    table, d = _bundled_table(path)
    return table[:, :d].copy(), table[:, d].astype(int)


@functools.lru_cache(maxsize=4)
def _bundled_table(path: Path) -> tuple[np.ndarray, int]:
    """The file's table [n, d + 1] (read-only) and d, parsed once per process: a sweep's jobs
    run in one process, and parsing the 569 rows is most of building a short run's task."""
    with open(path, newline="") as f:
        rows = csv.reader(f)
        n, d = (int(v) for v in next(rows)[:2])
        table = np.array(list(rows), dtype=np.float64)  # decimal strings, correctly rounded
    if table.shape != (n, d + 1):
        raise ValueError(f"{path}: expected {n} rows of {d} features and a target, "
                         f"found a {table.shape[0]}×{table.shape[1]} table")
    table.flags.writeable = False
    return table, d


def _synthetic(*, seed: int, n: int, d: int, heterogeneity: float) -> Dataset:
    if n < 2 or d < 1:
        raise ValueError(f"task.n_samples={n}, task.dim={d}: need n_samples >= 2 and dim >= 1")
    rng = np.random.default_rng(seed)
    total = int(np.ceil(n / (1 - TEST_FRACTION)))
    b = np.where(rng.random(total) < 0.5, -1.0, 1.0)
    direction = rng.standard_normal(d) / np.sqrt(d)
    # Class means at ±heterogeneity·direction, plus label noise so the problem is not separable
    # (a separable problem with a small l2 has a badly conditioned optimum).
    A = rng.standard_normal((total, d)) + heterogeneity * b[:, None] * direction[None, :]
    flip = rng.random(total) < 0.1
    b = np.where(flip, -b, b)
    A_train, A_test = A[:n], A[n:]
    return Dataset(A_train, b[:n], A_test, b[n:], "synthetic")


def _holdout(A, b, seed, name, *, standardise: bool) -> Dataset:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(b))
    n_test = int(round(TEST_FRACTION * len(b)))
    test, train = perm[:n_test], np.sort(perm[n_test:])
    A_train, A_test = A[train], A[test]
    if standardise:
        mean, std = A_train.mean(0), A_train.std(0)
        std[std == 0] = 1.0
        A_train, A_test = (A_train - mean) / std, (A_test - mean) / std
    return Dataset(A_train, b[train], A_test, b[test], name)
