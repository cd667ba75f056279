"""task.path=<file>: a user's own LIBSVM/svmlight file is the data set, with the table data
sets' treatment (labels to ±1, a seeded 20% held out, features as they are), and a file that
does not parse is refused in one line naming it."""

from __future__ import annotations

import bz2
import gzip

import numpy as np
import pytest
from sklearn.datasets import dump_svmlight_file

from suite.cli import run_job
from suite.runner import execute
from tasks.datasets import TEST_FRACTION, _holdout
from tasks.libsvm import DatasetFormatError, load_svmlight_path
from tasks.logreg import LogisticRegression
from tests.conftest import make_cfg


def sample(n: int = 60, d: int = 7, seed: int = 0, labels=(2.0, 4.0)):
    """Sparse features (a third of them zero) and labels from {2, 4}, as breast-cancer's
    LIBSVM file has them."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.66)
    y = np.where(A @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n) > 0, *labels)
    return A, y


def write(path, A, y, opener=open):
    with opener(path, "wb") as f:
        dump_svmlight_file(A, y, f, zero_based=False)  # LIBSVM: 1-based indices
    return path


def test_the_file_is_read_as_written(tmp_path):
    A, y = sample()
    path = write(tmp_path / "mine.svm", A, y)
    lines = path.read_text().splitlines()
    assert lines[0].split()[0] in ("2", "4") and ":" in lines[0]  # real svmlight lines
    data = load_svmlight_path(path)
    assert data.X_test is None and data.n_features == A.shape[1] - int(not A[:, -1].any())
    X = data.X_train.toarray()
    # dump_svmlight_file writes 16 significant digits: equal to the last two ulps
    assert np.allclose(X, A[:, :X.shape[1]], rtol=5e-16, atol=0)
    assert np.array_equal(data.y_train, np.where(y == 2.0, -1.0, 1.0))  # smaller label: −1


@pytest.mark.parametrize("suffix, opener", [(".gz", gzip.open), (".bz2", bz2.open)])
def test_compressed_files_give_the_same_data(tmp_path, suffix, opener):
    A, y = sample(seed=1)
    plain = load_svmlight_path(write(tmp_path / "a.svm", A, y))
    packed = load_svmlight_path(write(tmp_path / f"a.svm{suffix}", A, y, opener))
    assert np.array_equal(plain.X_train.toarray(), packed.X_train.toarray())
    assert np.array_equal(plain.y_train, packed.y_train)


def test_the_task_holds_out_a_seeded_fifth_and_keeps_the_features(tmp_path):
    A, y = sample(n=80, seed=2)
    path = str(write(tmp_path / "mine.svm", A, y))
    task = LogisticRegression(path=path, workers=4, data_seed=3)
    n_test = int(round(TEST_FRACTION * 80))
    assert task.n == 80 - n_test and task.A_test.shape[0] == n_test
    data = load_svmlight_path(path)  # the file's values (16 digits), labels in ±1
    expected = _holdout(data.X_train.toarray(), data.y_train, 3, path, standardise=False)
    assert np.array_equal(task.A_train.numpy(), expected.A_train)
    assert np.array_equal(task.A_test.numpy(), expected.A_test)
    other = LogisticRegression(path=path, workers=4, data_seed=4)
    assert not np.array_equal(other.A_test.numpy(), task.A_test.numpy())


def test_a_run_on_the_file_finishes_and_records_the_path(tmp_path):
    A, y = sample(n=120, seed=4)
    path = write(tmp_path / "mine.svm", A, y)
    res = execute(make_cfg(f"task.path={path}", "workers=4", "batch_size=full", "steps=40",
                           "eval_every=20"))
    assert res.status == "FINISHED"
    gaps = [v for k, v, _ in res.history if k == "train/suboptimality"]
    assert gaps[-1] < 0.5 * gaps[0]  # gradient descent at lr=theory makes progress on it


@pytest.mark.parametrize("content, message", [
    (b"this is not svmlight\n" * 3, "cannot parse as a LIBSVM/svmlight file"),
    (b"+1 1:0.5\n-1 2:x\n", "cannot parse"),
    (b"1 1:0.5\n2 2:1\n3 1:2\n", "exactly two distinct labels"),
])
def test_a_file_that_does_not_parse_is_refused_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.svm"
    path.write_bytes(content)
    with pytest.raises(DatasetFormatError):
        load_svmlight_path(path)
    code, _ = run_job(make_cfg(f"task.path={path}", "steps=2"), launch_dir=tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and message in err and str(path) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_missing_file_is_refused_naming_it(tmp_path, capsys):
    code, _ = run_job(make_cfg(f"task.path={tmp_path / 'nope.svm'}", "steps=2"),
                      launch_dir=tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and "task.path=" in err and "no such file" in err
