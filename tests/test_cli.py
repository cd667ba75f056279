"""End to end through `python -m suite`: what lands in MLflow is what DESIGN.md promises."""

from __future__ import annotations

import shlex
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from analysis.report import main as report_main
from suite.tracking import runs_table_url
from tests.conftest import ROOT, run_cli

FAST = ("task.l2=0.01", "workers=4", "eval_every=10", "progress=false")


def client_for(tmp_path):
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")


def all_runs(client, experiment="logreg"):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_one_run_lands_in_mlflow_as_promised(tmp_path):
    proc = run_cli("steps=30", *FAST, "tracking.plot=true", cwd=tmp_path)
    assert "open it with: mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    client = client_for(tmp_path)
    (run,) = all_runs(client)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "sgd-identity-K4-s0"
    p = run.data.params
    assert p["workers"] == "4" and p["algorithm.name"] == "sgd"
    assert p["task.dataset"] == "breast_cancer" and p["compressor.name"] == "identity"
    assert p["lr"] == "theory" and float(p["lr.resolved"]) > 0
    tags = run.data.tags
    for tag in ("commsgd.version", "git.sha", "hardware", "torch.version", "config_hash"):
        assert tags[tag], tag
    assert tags["hardware"] == "cpu" and len(tags["config_hash"]) == 16
    m = run.data.metrics
    # the task constants are params (one value each), not one-point metrics
    for key in ("task/L", "task/L_max", "task/mu", "task/f_star", "task/zeta_sq",
                "task/sigma_sq", "task/dim", "task/n"):
        assert key in p and key not in m, key
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(h.step for h in loss) == [0, 10, 20, 30]
    bits = sorted(client.get_metric_history(run.info.run_id, "comm/bits_up"),
                  key=lambda h: h.step)
    assert [h.value for h in bits] == [0, 10 * 32 * 30, 20 * 32 * 30, 30 * 32 * 30]
    lr = client.get_metric_history(run.info.run_id, "train/lr")
    assert sorted(h.step for h in lr) == list(range(30))
    for key in ("train/suboptimality", "train/grad_norm_sq", "test/loss", "test/accuracy",
                "comm/bits_down", "comm/rounds", "time/compute_s", "time/compress_s",
                "time/comm_s", "time/wall_s"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 4, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "curves.csv", "convergence.png"} <= artifacts


def test_multirun_2x2_writes_four_finished_runs_of_one_sweep(tmp_path):
    run_cli("-m", "steps=20", "seed=0,1", "workers=2,4", "task.l2=0.01", "progress=false",
            cwd=tmp_path)
    runs = all_runs(client_for(tmp_path))
    assert len(runs) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["sweep.id"] for r in runs}) == 1
    assert len({r.data.tags["config_hash"] for r in runs}) == 4
    assert {(r.data.params["seed"], r.data.params["workers"]) for r in runs} == {
        ("0", "2"), ("0", "4"), ("1", "2"), ("1", "4")}


def test_forced_divergence_fails_the_run_and_the_sweep_goes_on(tmp_path):
    proc = run_cli("-m", "steps=100", "lr=500,0.1", *FAST, cwd=tmp_path)
    assert proc.returncode == 0
    runs = {r.data.params["lr"]: r for r in all_runs(client_for(tmp_path))}
    assert runs["500"].info.status == "FAILED"
    assert runs["500"].data.tags["diverged"] == "true"
    assert "diverged at step" in runs["500"].data.tags["failure"]
    assert runs["0.1"].info.status == "FINISHED"
    single = run_cli("steps=100", "lr=500", *FAST, cwd=tmp_path, check=False)
    assert single.returncode == 1 and "run failed" in single.stdout


def test_a_sweep_says_one_line_per_job_and_one_summary_at_its_end(tmp_path, monkeypatch):
    first = run_cli("-m", "steps=100", "lr=500,0.1", *FAST, cwd=tmp_path)
    runs = {r.data.params["lr"]: r for r in all_runs(client_for(tmp_path))}
    lines = first.stdout.splitlines()
    # per job, one line naming its run (no run summary: no metrics table, no store lines)
    assert [x for x in lines if x.startswith("commsgd: run")] == [
        f"commsgd: run failed ({runs['500'].data.tags['failure']}): "
        f"run {runs['500'].info.run_id}",
        f"commsgd: run finished: train/suboptimality "
        f"{runs['0.1'].data.metrics['train/suboptimality']:.6g}, run {runs['0.1'].info.run_id}"]
    assert "time/wall_s" not in first.stdout
    # once, at the end: the counts, the store, the command that opens it, the runs table and
    # the report command
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    exp_id = runs["0.1"].info.experiment_id
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    summary = lines[lines.index(next(x for x in lines if x.startswith("commsgd: sweep"))):]
    assert summary[:4] == [
        f"commsgd: sweep done: 2 jobs (1 finished, 1 failed); outputs in {sweep_dir}",
        f"  logged to {uri}, experiment 'logreg'",
        f"  open it with: mlflow ui --backend-store-uri {uri}",
        f"  runs table of 'logreg': {runs_table_url(uri, exp_id)}"]
    assert first.stdout.count("open it with") == 1
    prefix = "  leaderboard: "
    assert summary[4].startswith(prefix) and len(summary) == 5
    command = shlex.split(summary[4][len(prefix):])
    assert command[:3] == ["commsgd-report", "--tracking-uri", uri]
    monkeypatch.chdir(tmp_path)  # the command, as printed, run where the sweep ran
    assert report_main([*command[1:], "--n-boot", "1000", "--no-log"]) == 0
    assert (tmp_path / "reports" / "logreg" / "report.md").is_file()

    # a resumed sweep: the finished config is skipped, the new one runs
    again = run_cli("-m", "steps=100", "lr=0.1", "seed=0,1", "resume=true", *FAST,
                    cwd=tmp_path)
    assert again.stdout.count("commsgd: skipped:") == 1
    assert "commsgd: sweep done: 2 jobs (1 finished, 1 skipped)" in again.stdout


def test_a_sweep_without_tracking_says_where_its_outputs_are(tmp_path):
    proc = run_cli("-m", "steps=20", "seed=0,1", "tracking=none", *FAST, cwd=tmp_path)
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    assert proc.stdout.count("commsgd: run finished") == 2
    assert proc.stdout.splitlines()[-2:] == [
        f"commsgd: sweep done: 2 jobs (2 finished); outputs in {sweep_dir}",
        "  not tracked (tracking=none): each job's curves are in its output directory"]
    assert not (tmp_path / "mlruns.db").exists()


def test_config_error_exits_nonzero_and_records_no_run(tmp_path):
    proc = run_cli(*(a for a in FAST if not a.startswith("workers=")), "workers=0",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "workers=0" in proc.stderr
    assert not (tmp_path / "mlruns.db").exists() or not all_runs(client_for(tmp_path))


def test_tracking_none_writes_no_store(tmp_path):
    run_cli("steps=10", "tracking=none", *FAST, cwd=tmp_path)
    assert not (tmp_path / "mlruns.db").exists()


def test_ctrl_c_marks_the_run_killed(tmp_path):
    env_cmd = [sys.executable, "-m", "suite", "steps=100000000", "eval_every=1000",
               *(a for a in FAST if not a.startswith("eval_every="))]  # a key given once
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(env_cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    db = tmp_path / "mlruns.db"
    deadline = time.time() + 120
    started = False
    while time.time() < deadline and not started:
        time.sleep(0.5)
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    started = bool(con.execute(
                        "select count(*) from metrics where key='train/loss'").fetchone()[0])
            except sqlite3.Error:
                pass
        if proc.poll() is not None:
            pytest.fail(f"run ended early: {proc.communicate()}")
    assert started, "the run never logged its first metrics"
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # it ignored Ctrl-C: do not leave it running
            proc.kill()
            proc.communicate()
    (run,) = all_runs(client_for(tmp_path))
    assert run.info.status == "KILLED"
    # one line, not a KeyboardInterrupt traceback, and the shell's status for SIGINT
    assert proc.returncode == 130, err
    assert [ln for ln in err.splitlines() if ln.strip() and "mlflow.store" not in ln] == [
        "commsgd: interrupted (Ctrl-C); a run that had started is recorded as KILLED"], err
    assert "interrupted" in run.data.tags["failure"]
