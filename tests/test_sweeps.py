"""Sweeps that survive: parallel jobs into one SQLite store, resume, checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from suite.runner import execute
from tests.conftest import make_cfg, run_cli

FAST = ("task.l2=0.01", "workers=4", "eval_every=10", "progress=false")


def runs_in(store: Path, experiment: str = "logreg"):
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id], max_results=1000) if exp else [])


def test_parallel_joblib_sweep_into_one_sqlite_store_loses_nothing(tmp_path):
    """16 jobs, 2 at a time, one SQLite file: every run FINISHED with every metric value."""
    run_cli("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1,2,3",
            "workers=1,2,4,8", "steps=40", "eval_every=10", "task.l2=0.01", "progress=false",
            cwd=tmp_path, timeout=600)
    client, runs = runs_in(tmp_path / "mlruns.db")
    assert len(runs) == 16
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        loss = client.get_metric_history(r.info.run_id, "train/loss")
        lr = client.get_metric_history(r.info.run_id, "train/lr")
        assert sorted(m.step for m in loss) == [0, 10, 20, 30, 40]
        assert sorted(m.step for m in lr) == list(range(40))


def test_resume_skips_finished_configs_and_runs_only_what_is_missing(tmp_path):
    run_cli("-m", "seed=0,1", "steps=20", *FAST, cwd=tmp_path)
    proc = run_cli("-m", "seed=0,1,2", "steps=20", "resume=true", *FAST, cwd=tmp_path)
    assert proc.stdout.count("skipped: config_hash") == 2
    _, runs = runs_in(tmp_path / "mlruns.db")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_restart_from_checkpoint_is_bit_identical(tmp_path, monkeypatch):
    """A run that crashes at step 70 with checkpoints every 30 steps, restarted with
    resume=true, continues from step 60 and ends with the same parameters, bit for bit, and
    the same metric histories as an uninterrupted run; its MLflow run is the same run."""
    common = ("algorithm=ef_sgd", "compressor=topk", "compressor.ratio=0.2", "batch_size=4",
              "steps=100", "eval_every=10", "task.l2=0.01", "workers=4")
    reference = execute(make_cfg(*common), launch_dir=tmp_path / "ref")

    store = tmp_path / "crash"
    tracked = (*common, "tracking=mlflow", "checkpoint_every=30", "resume=true")
    monkeypatch.setenv("COMMSGD_TEST_FAIL_AT_STEP", "70")
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(make_cfg(*tracked), launch_dir=store)
    monkeypatch.delenv("COMMSGD_TEST_FAIL_AT_STEP")
    (ckpt,) = (store / "checkpoints").glob("*.pt")
    assert torch.load(ckpt, weights_only=False)["step"] == 60
    _, (crashed,) = runs_in(store / "mlruns.db")
    assert crashed.info.status == "FAILED"

    resumed = execute(make_cfg(*tracked), launch_dir=store)
    assert resumed.status == "FINISHED"
    assert torch.equal(resumed.params, reference.params)
    client, (run,) = runs_in(store / "mlruns.db")
    assert run.info.run_id == crashed.info.run_id and run.info.status == "FINISHED"
    for key in ("train/loss", "comm/bits_up", "train/suboptimality"):
        stored = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                             key))
        expected = sorted((s, v) for k, v, s in reference.history if k == key)
        assert stored == expected, key
    lr_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/lr")]
    assert sorted(lr_steps) == list(range(100))  # no step logged twice


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    execute(make_cfg("steps=20", "checkpoint_every=10", *FAST[:2]), launch_dir=tmp_path)
    (ckpt,) = (tmp_path / "checkpoints").glob("*.pt")
    from suite.config import ConfigError

    with pytest.raises(ConfigError, match="belongs to a run with config_hash"):
        execute(make_cfg("steps=20", "seed=5", f"checkpoint_path={ckpt}", *FAST[:2]),
                launch_dir=tmp_path)


def test_checkpoint_holds_the_algorithm_state_and_generators(tmp_path):
    execute(make_cfg("algorithm=diana", "compressor=quant_p", "steps=20", "checkpoint_every=10",
                     "batch_size=4", *FAST[:2]), launch_dir=tmp_path)
    (ckpt,) = (tmp_path / "checkpoints").glob("*.pt")
    from suite import checkpoint

    payload = checkpoint.load(ckpt, config_hash=ckpt.stem)  # the file is named after it
    assert payload["step"] == 10 and payload["algorithm"] == "diana"
    # one shared sampling stream for all workers, one compression stream per worker
    assert len(payload["sample_streams"]) == 1 and len(payload["compress_streams"]) == 4
    fields = payload["state"]._fields
    assert any("h" in f for f in fields), fields  # DIANA's shifts are in the state
    # quant_p messages: 10 rounds of d coordinates, each at least 2 bits (sign and level)
    d = payload["state"].x.numel()
    bits = payload["channel"]["bits_up"]
    assert bits.shape == (4,) and bool((bits >= 10 * 2 * d).all()), bits
    assert torch.equal(payload["channel"]["bits_down"], torch.full((4,), 10 * 32 * d))
    assert os.path.getsize(ckpt) > 0
