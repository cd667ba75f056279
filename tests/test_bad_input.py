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


def test_catalogue_has_at_least_twenty_cases():
    assert len(CATALOGUE) + 3 >= 20
