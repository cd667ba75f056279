"""The example plugin (examples/commsgd-ef21-plugin), installed by pip into a directory of its
own and put on the path of every process, run as a user runs it: through the command line
(FINISHED in MLflow, loss falling), on 2 gloo ranks started by the suite and by torchrun (the
same iterates as the simulated run), in a joblib sweep, resumed from a checkpoint, through its
own YAML preset, and in `commsgd-report`'s leaderboard and theory table. Every scenario is a
subprocess; they start together and overlap (most of each is interpreter start-up)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

PLUGIN = ROOT / "examples" / "commsgd-ef21-plugin"
RUN = (sys.executable, "-m", "suite")
METHOD = ("algorithm=ef21_example", "compressor=bf16_example", "task=ridge_example")
# eval_every=1: every iterate's loss and gradient norm are logged, so equal histories mean
# equal iterates
COMMON = (*METHOD, "workers=4", "batch_size=full", "steps=40", "eval_every=1", "seed=0",
          "progress=false", "lr=theory", "tracking.experiment=plugin")
EXACT_KEYS = ("train/loss", "train/suboptimality", "train/grad_norm_sq", "test/loss",
              "comm/bits_up", "comm/bits_down", "comm/rounds")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCENARIOS = {  # name: list of commands, run one after the other in the scenario's directory
    "simulated": [[*RUN, *COMMON]],
    "multi_cpu": [[*RUN, *COMMON, "hardware=multi_cpu", "hardware.world_size=2"]],
    "torchrun": [[sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                  "--master-addr", "127.0.0.1", "--master-port", "{port}", "-m", "suite",
                  *COMMON, "hardware=multi_cpu", "hardware.world_size=2"]],
    "joblib": [[*RUN, "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *METHOD,
                "steps=20", "eval_every=5", "seed=0,1", "progress=false",
                "tracking.experiment=plugin"]],
    "resume": [[*RUN, *COMMON, "checkpoint_every=10"],  # fails at step 25 (environment)
               [*RUN, *COMMON, "checkpoint_every=10", "resume=true"]],
    "preset": [[*RUN, "experiment=ef21_example_vs_ef", "steps=100"],
               [sys.executable, "-m", "analysis.report", "--experiment", "ef21_example_vs_ef",
                "--out", "report"]],
    "misspelt": [[*RUN, *METHOD, "algorithm.alhpa=1", "tracking=none"]],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The plugin installed by pip (not editable) into its own directory: its package and a
    .dist-info with its entry points, what `pip install` leaves in site-packages."""
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
                   check=True, capture_output=True, timeout=300)
    assert (target / "commsgd_ef21_plugin" / "ef21.py").is_file()
    (info,) = target.glob("commsgd_ef21_plugin-*.dist-info")
    assert "commsgd.algorithms" in (info / "entry_points.txt").read_text()
    return target


class Scenario:
    def __init__(self, name, directory, env):
        self.name, self.dir, self.results = name, directory, []
        self.thread = threading.Thread(target=self._run, args=(env,), daemon=True)
        self.thread.start()

    def _run(self, env):
        port = _free_port()
        for i, command in enumerate(SCENARIOS[self.name]):
            extra = {"COMMSGD_TEST_FAIL_AT_STEP": "25"} if self.name == "resume" and i == 0 \
                else {}
            proc = subprocess.run([c.format(port=port) for c in command], cwd=self.dir,
                                  env=env | extra, capture_output=True, text=True, timeout=600)
            self.results.append(proc)

    def done(self):
        self.thread.join(timeout=700)
        assert not self.thread.is_alive(), f"scenario {self.name} did not end"
        assert len(self.results) == len(SCENARIOS[self.name]), self.name
        return self.results


@pytest.fixture(scope="module")
def scenarios(site, tmp_path_factory):
    root = tmp_path_factory.mktemp("scenarios")
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}", OMP_NUM_THREADS="1")
    running = {}
    for name in SCENARIOS:
        (root / name).mkdir()
        running[name] = Scenario(name, root / name, env)
    return running


def _runs(directory, experiment="plugin"):
    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlruns.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def _history(client, run_id) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in EXACT_KEYS}


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_the_plugin_runs_through_the_command_line_and_converges(scenarios):
    (proc,) = scenarios["simulated"].done()
    _ok(proc)
    assert "commsgd: run finished" in proc.stdout
    client, (run,) = _runs(scenarios["simulated"].dir)
    assert run.info.status == "FINISHED"
    assert run.data.tags["algorithm"] == "ef21_example"
    assert run.data.params["task.name"] == "ridge_example"
    h = _history(client, run.info.run_id)
    first, last = h["train/suboptimality"][0][1], h["train/suboptimality"][-1][1]
    # linear convergence at the theorem's step size: 1 − γμ ≈ 0.6 per step, 40 steps
    assert first > 0.1 and last < 1e-8 * first
    assert h["comm/bits_up"][-1][1] == 40 * 16 * 20  # bf16: 16 bits per coordinate, d = 20


@pytest.mark.parametrize("name", ["multi_cpu", "torchrun"])
def test_two_gloo_ranks_give_the_simulated_iterates(scenarios, name):
    (proc,) = scenarios[name].done()
    _ok(proc)
    (sim,) = scenarios["simulated"].done()
    _ok(sim)
    client, (run,) = _runs(scenarios[name].dir)
    sim_client, (sim_run,) = _runs(scenarios["simulated"].dir)
    assert run.info.status == "FINISHED" and run.data.tags["hardware"] == "multi_cpu"
    got, expected = _history(client, run.info.run_id), _history(sim_client, sim_run.info.run_id)
    assert len(expected["train/loss"]) == 41
    assert got == expected  # bf16 messages travel as bytes: the same means bit for bit
    assert run.data.metrics["comm/wire_bytes"] == run.data.metrics["comm/bytes_up"] > 0


def test_a_joblib_sweep_loads_the_plugin_in_its_workers(scenarios):
    (proc,) = scenarios["joblib"].done()
    _ok(proc)
    _, runs = _runs(scenarios["joblib"].dir)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["seed"] for r in runs} == {"0", "1"}


def test_a_failed_plugin_run_resumes_from_its_checkpoint_to_the_same_end(scenarios):
    failed, resumed = scenarios["resume"].done()
    assert failed.returncode == 1, failed.stderr
    _ok(resumed)
    (sim,) = scenarios["simulated"].done()
    client, (run,) = _runs(scenarios["resume"].dir)
    sim_client, (sim_run,) = _runs(scenarios["simulated"].dir)
    assert run.info.status == "FINISHED"
    for key in EXACT_KEYS:
        assert run.data.metrics[key] == sim_run.data.metrics[key], key


def test_a_misspelt_plugin_key_is_refused_in_one_line(scenarios):
    (proc,) = scenarios["misspelt"].done()
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "commsgd: configuration error: algorithm.alhpa is not a key of "
        "algorithm=ef21_example; allowed keys: alpha (did you mean algorithm.alpha?)"]


def test_the_plugins_preset_sweeps_and_the_report_shows_its_theorem(scenarios):
    sweep, report = scenarios["preset"].done()
    _ok(sweep)
    _ok(report)
    _, runs = _runs(scenarios["preset"].dir, "ef21_example_vs_ef")
    runs = [r for r in runs if "commsgd.report" not in r.data.tags]  # the report's own run
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    text = (scenarios["preset"].dir / "report" / "report.md").read_text()
    leaderboard = text.split("## Leaderboards")[1].split("\n## ")[0]
    theory = text.split("## Theory against measurement")[1].split("\n## ")[0]
    # methods are named by the preset's method files (leaderboard.name, docs/analysis.md)
    for method in ("ef21_bf16", "ef21_topk", "ef_sgd_topk"):
        assert f"| {method} |" in leaderboard, method
    row = next(line for line in theory.splitlines() if line.startswith("| ef21_bf16 |"))
    cells = [c.strip() for c in row.split("|")]
    # the ρ bound is the plugin theorem's 1 − γμ at the run's step size (γ = 0.1 ≤ lr_max)
    rho_bound = float(cells[4])
    assert 0.9 < rho_bound < 1.0
    assert "has no theorem module" not in theory
