"""The bad-input catalogue: every wrong config or file gets a clear message naming what is
wrong, a non-zero exit, and leaves no RUNNING run behind in the store."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient

from suite.cli import run_job
from tests.conftest import make_cfg, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corrupt_libsvm(cache: Path) -> None:
    (cache / "libsvm").mkdir(parents=True, exist_ok=True)
    (cache / "libsvm" / "mushrooms").write_bytes(b"\x00\x01 this is not svmlight \xff\n" * 50)


def _corrupt_checkpoint(tmp: Path) -> str:
    path = tmp / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    return f"checkpoint_path={path}"


def _not_sqlite(tmp: Path) -> str:
    path = tmp / "notes.db"
    path.write_text("not a database\n")
    return f"tracking.uri=sqlite:///{path}"


def _a_directory(tmp: Path) -> str:
    (tmp / "adir").mkdir()
    return f"tracking.uri=sqlite:///{tmp / 'adir'}"


def _nan_features(cache: Path) -> None:
    """heart's 270 rows (its row count as published), one feature value NaN."""
    rows = [b"+1 1:%d 2:1\n" % i if i % 2 else b"-1 1:%d 3:1\n" % i for i in range(269)]
    (cache / "libsvm").mkdir(parents=True, exist_ok=True)
    (cache / "libsvm" / "heart").write_bytes(b"".join(rows) + b"+1 1:nan\n")


# (overrides, text the message must contain); callables build overrides needing tmp_path
CATALOGUE = [
    (["lr=-0.1"], "lr=-0.1"),
    (["lr=0"], "lr=0"),
    (["workers=0"], "workers=0"),
    (["steps=0"], "steps=0"),
    (["batch_size=0"], "batch_size=0"),
    (["batch_size=500"], "batch_size=500 is larger than the smallest worker shard"),
    (["workers=1000"], "workers=1000 exceeds the"),
    (["eval_every=0"], "eval_every=0"),
    (["lr_schedule=cosine"], "lr_schedule='cosine'"),
    (["compressor=topk", "compressor.k=1000", "compressor.ratio=null"], "k=1000"),
    (["compressor=topk", "compressor.ratio=1.5"], "ratio"),
    (["compressor=qsgd", "compressor.levels=0"], "levels"),
    (["compressor=quant_p", "compressor.p=3"], "p"),
    (["algorithm=diana", "compressor=topk"], "algorithm=diana needs an unbiased compressor"),
    (["algorithm=dqgd", "batch_size=16"], "set batch_size=full"),
    (["task.split=diagonal"], "task.split='diagonal'"),
    (["task.dataset=nope"], "task.dataset='nope'"),
    (["task.split=dirichlet", "task.dirichlet_alpha=0"], "dirichlet_alpha"),
    (["task.l2=-1"], "task.l2=-1"),
    (["+algorithm.delya=3"], "algorithm.delya is not a key of algorithm=sgd"),
    (["hardware=gpu"], "hardware=gpu asks for device cuda:0"),
    (["checkpoint_path=/nonexistent/ckpt.pt"], "no such file"),
    (lambda tmp: [_corrupt_checkpoint(tmp)], "is not a readable checkpoint"),
    (lambda tmp: [f"tracking.uri=http://127.0.0.1:{_free_port()}"], "unreachable"),
    (lambda tmp: (_corrupt_libsvm(tmp / "cache"), ["task.dataset=mushrooms"])[1],
     "mushrooms"),
    (["task.dataset=phishing"], "phishing"),  # not cached, and the network is refused
    (["tracking.writer=thread"], "tracking.writer='thread' is not allowed: one of process, "
                                 "inline"),
    # -- tracking URIs (issue 18, item 10) --
    (["tracking.uri=garbage"], "tracking.uri='garbage' is not allowed: MLflow's file store"),
    (["tracking.uri=file:///tmp/commsgd-file-store"], "MLflow's file store is in maintenance"),
    (["tracking.uri=foo://bar"], "no tracking store for the scheme 'foo'; allowed schemes:"),
    (lambda tmp: [_a_directory(tmp)], "names a directory"),
    (lambda tmp: [_not_sqlite(tmp)], "is not an SQLite database"),
    (["tracking.uri=postgresql://user:pw@127.0.0.1/mlflow"],
     "needs a database driver that is not installed"),
    (["tracking.uri=sqlite://"], "an in-memory SQLite store vanishes"),
    (["tracking.uri=sqlite:///:memory:"], "an in-memory SQLite store vanishes"),
    (lambda tmp: [f"tracking.uri=sqlite:///{tmp}/missing/dir/mlruns.db"],
     "is in a directory that does not exist"),
    # -- types and ranges (item 11) --
    (["task.dim=2.5"], "task.dim=2.5 is not allowed: an integer >= 1"),
    (["task.n_samples=100.5"], "task.n_samples=100.5 is not allowed: an integer >= 2"),
    (["checkpoint_path=123"], "checkpoint_path=123 is not allowed: null or a file path"),
    (["tracking.flush_every=abc"], "tracking.flush_every='abc' is not allowed"),
    (["tracking.flush_every=-5"], "tracking.flush_every=-5 is not allowed"),
    (["tracking.delivery_timeout_s=abc"], "tracking.delivery_timeout_s='abc' is not allowed"),
    (["tracking.delivery_timeout_s=-1"], "tracking.delivery_timeout_s=-1 is not allowed"),
    (["tracking.plot=maybe"], "tracking.plot='maybe' is not allowed: true or false"),
    (["~workers"], "workers missing from the config"),
    (["steps=${nope}"], "steps='${nope}' cannot be resolved"),
    (["task.l2=abc"], "task.l2='abc' is not allowed"),
    (["task.data_seed=-1"], "task.data_seed=-1 is not allowed"),
    (["task.heterogeneity=nan"], "task.heterogeneity=nan is not allowed"),
    (lambda tmp: (_nan_features(tmp / "cache"), ["task.dataset=heart"])[1],
     "task.dataset='heart': 1 feature values are NaN or infinite"),
    (["task.allow_row_mismatch=maybe"], "task.allow_row_mismatch='maybe' is not allowed"),
    # -- delays no gradient survives (item 12) --
    (["algorithm=delayed_sgd", "algorithm.delay=5"],
     "algorithm.delay=5 is not allowed with steps=5"),
    (["algorithm=delayed_sgd", "algorithm.delay=5000000"],
     "algorithm.delay=5000000 is not allowed with steps=5: no gradient would ever be applied"),
    (["algorithm=delayed_sgd", "algorithm.mode=random", "algorithm.max_delay=9"],
     "algorithm.max_delay=9 is not allowed with steps=5"),
    # -- experiment names that are paths (item 7) --
    (["tracking.experiment='../../escaped'"], "tracking.experiment='../../escaped'"),
    (["tracking.experiment=/tmp/absolute"], "tracking.experiment='/tmp/absolute'"),
    (["tracking.experiment='..'"], "tracking.experiment='..'"),
]


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("overrides, expected", CATALOGUE,
                         ids=[str(i) for i in range(len(CATALOGUE))])
def test_bad_input_is_refused_clearly(overrides, expected, tmp_path, monkeypatch, offline,
                                      capsys):
    monkeypatch.setenv("COMMSGD_DATA", str(tmp_path / "cache"))
    if callable(overrides):
        overrides = overrides(tmp_path)
    cfg = make_cfg("tracking=mlflow", "steps=5", *overrides)
    code, _ = run_job(cfg, launch_dir=tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err, err
    assert err.startswith("commsgd: ") and "Traceback" not in err
    store = tmp_path / "mlruns.db"
    if store.exists():
        client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id]):
                assert run.info.status != "RUNNING"


@pytest.mark.parametrize("override", ["algorithm=adamw", "wrokers=3", "compressor.kk=3"])
def test_unknown_options_and_keys_are_refused_at_composition(override):
    with pytest.raises(ConfigCompositionException) as info:
        make_cfg(override)
    assert override.split("=")[0].split(".")[-1].replace("algorithm", "adamw") in str(
        info.value) or "adamw" in str(info.value)


def test_the_command_line_exits_nonzero_with_one_line(tmp_path):
    proc = run_cli("compressor=topk", "compressor.ratio=1.5", "steps=5", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert "compressor.ratio" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("algorithm=adamw", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "adamw" in proc.stderr


def test_a_key_given_twice_on_the_command_line_is_refused(tmp_path):
    proc = run_cli("workers=4", "workers=2", "steps=5", "progress=false", "tracking=none",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "workers is set twice on the command line ('workers=4' and 'workers=2')" in \
        proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_store_file_that_cannot_be_written_is_refused(tmp_path, capsys):
    """A read-only store: a read-only file system where this runs as root (root writes any
    file whatever its mode), a file without write permission otherwise."""
    import os
    import shutil
    import sqlite3
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(ro)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("root without permission to mount: cannot make a read-only store")
    db = ro / "mlruns.db"
    sqlite3.connect(db).close()
    try:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        else:
            db.chmod(0o444)
            ro.chmod(0o555)
        code, _ = run_job(make_cfg("tracking=mlflow", "steps=5", f"tracking.uri=sqlite:///{db}"),
                          launch_dir=tmp_path)
        err = capsys.readouterr().err
        assert code == 2
        assert "is not writable" in err and "Traceback" not in err
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(ro)], check=False)
        else:
            ro.chmod(0o755)
            shutil.rmtree(ro, ignore_errors=True)


def test_diana_with_alpha_zero_says_it_is_compressed_sgd(caplog):
    """α = 0 is allowed (docs/theory.md §5: it is QSGD-style compressed SGD), but not silently."""
    import logging

    from suite.runner import Run

    with caplog.at_level(logging.WARNING, logger="commsgd"):
        Run(make_cfg("algorithm=diana", "algorithm.alpha=0", "steps=5"))
    assert "algorithm.alpha=0: DIANA's shifts h_i stay at 0, so this run is plain compressed " \
        "SGD" in caplog.text


def test_catalogue_has_at_least_twenty_cases():
    assert len(CATALOGUE) + 3 >= 20
