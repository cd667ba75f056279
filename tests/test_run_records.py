"""What a run records about itself: divergence wherever it is noticed, the communication
metrics under names that say what they are, the task constants as params, how the run was
started, and where its MLflow page is."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from suite import cli_errors, provenance, runner
from suite.cli import USER_ERRORS, app, run_job, summary
from suite.compressors.base import MessageRangeError
from suite.runner import Diverged, execute
from suite.tracking import print_links, run_url, runs_table_url
from tests.conftest import ROOT, make_cfg

CONSTANTS = ("L", "L_max", "mu", "f_star", "zeta_sq", "sigma_sq", "dim", "n")


def mlflow_cfg(tmp_path: Path, *overrides: str):
    return make_cfg("tracking=mlflow", f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}",
                    *overrides)


def only_run(tmp_path: Path, experiment: str = "logreg"):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return client, exp, run


# ---------------------------------------------------------------- divergence


def test_a_huge_step_size_is_a_divergence_not_a_configuration_error(tmp_path, capsys):
    """lr=1e10: the compressors' range checks notice the blow-up before the loss check does.
    It is still divergence: FAILED, tagged, 'diverged at step t', a smaller lr suggested, and
    the command's status is 1 (a failed run), not 2 (a refused config)."""
    cfg = mlflow_cfg(tmp_path, "algorithm=qsgd", "lr=1e10", "steps=50")
    code, result = run_job(cfg, launch_dir=tmp_path)
    out = capsys.readouterr()
    assert code == 1 and result.status == "FAILED"
    assert re.match(r"diverged at step [1-9]\d*: the message could not be sent", result.reason)
    assert result.reason.endswith("try a smaller lr")
    assert "run failed (diverged at step" in out.out and "configuration error" not in out.err
    _, _, run = only_run(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags["diverged"] == "true"
    assert run.data.tags["failure"] == result.reason


@pytest.mark.parametrize("algorithm", ["diana", "terngrad", "ef_sgd compressor=sign"])
def test_other_compressors_range_checks_also_report_divergence(algorithm):
    res = execute(make_cfg(*f"algorithm={algorithm}".split(), "lr=1e10", "steps=50"))
    assert res.status == "FAILED"
    assert re.match(r"diverged at step [1-9]\d*: .*; try a smaller lr$", res.reason)


class _Raises:
    """An algorithm whose step raises MessageRangeError from step `at` on."""

    def __init__(self, at: int):
        self.at = at

    def step(self, state, t, lr):
        if t >= self.at:
            raise MessageRangeError("qsgd: a bucket's l2 norm=inf exceeds float32's range")
        return state


def test_a_message_out_of_range_at_the_first_step_is_the_problems_not_a_divergence():
    """At t = 0 the message is x0's own gradient: nothing has diverged yet."""
    with pytest.raises(MessageRangeError):
        runner._step(_Raises(0), None, 0, 0.1)
    assert runner._step(_Raises(5), "s", 4, 0.1) == "s"
    with pytest.raises(Diverged, match=r"^diverged at step 5: the message could not be sent "
                                       r"\(qsgd: .*\); try a smaller lr$"):
        runner._step(_Raises(5), "s", 5, 0.1)


def test_every_divergence_message_suggests_a_smaller_lr():
    for loss in (math.nan, math.inf, 1e9):
        with pytest.raises(Diverged, match=r"^diverged at step 7: .*; try a smaller lr$"):
            runner._check_divergence({"train/loss": loss}, 1.0, 1e6, 7)


# ---------------------------------------------------------------- communication metrics


def history(res, key):
    return [(s, v) for k, v, s in res.history if k == key]


@pytest.mark.parametrize("compressor", [("compressor=identity",),
                                        ("compressor=qsgd", "compressor.levels=16",
                                         "compressor.bucket_size=7")])
def test_bits_up_total_is_the_sum_over_the_workers(compressor):
    """comm/bits_up is one worker's cumulative uplink (the mean over the K workers);
    comm/bits_up_total every worker's, K times as much at every logged step."""
    res = execute(make_cfg("workers=4", "steps=20", "eval_every=5", "lr=0.1", *compressor))
    up, total = history(res, "comm/bits_up"), history(res, "comm/bits_up_total")
    assert [s for s, _ in up] == [s for s, _ in total] == [0, 5, 10, 15, 20]
    assert all(t == 4 * u for (_, u), (_, t) in zip(up, total, strict=True))
    assert up[-1][1] > 0


def test_the_alternative_code_is_named_as_such_and_can_exceed_the_wire_size():
    """QSGD s = 16 in buckets of 7 (the issue's example): the Elias-coded messages are larger
    than the fixed-width ones, so a name suggesting a lower bound would mislead."""
    res = execute(make_cfg("compressor=qsgd", "compressor.levels=16", "compressor.bucket_size=7",
                           "steps=20", "eval_every=20", "lr=0.1"))
    keys = {k for k, _, _ in res.history}
    assert "comm/bits_up_alt_code" in keys and "comm/bits_up_entropy" not in keys
    alt, wire = res.final["comm/bits_up_alt_code"], res.final["comm/bits_up"]
    assert alt > 1.05 * wire, (alt, wire)


def test_the_analysis_reads_old_runs_entropy_metric_as_the_alternative_code(tmp_path):
    from mlflow.entities import Metric, Param

    from analysis.runs import load_runs

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("old", artifact_location=(tmp_path / "a").as_uri())
    run = client.create_run(exp)
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, params=[Param("seed", "0"), Param("task.dataset", "x")],
                     metrics=[Metric("comm/bits_up_entropy", 10.0 * t, now, t) for t in (0, 5)])
    client.set_terminated(run.info.run_id, "FINISHED")
    runs = load_runs(uri, "old")
    assert set(runs.history["key"]) == {"comm/bits_up_alt_code"}
    assert runs.runs.loc[0, "final.comm/bits_up_alt_code"] == 50.0


# ---------------------------------------------------------------- constants, provenance, URL


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One short run logged to a fresh store (creating the store takes seconds): (its
    directory, the RunResult)."""
    tmp_path = tmp_path_factory.mktemp("logged")
    return tmp_path, execute(mlflow_cfg(tmp_path, "steps=10", "eval_every=10"))


def test_task_constants_are_params_and_the_analysis_reads_them_as_before(logged):
    from analysis.runs import load_runs

    tmp_path, res = logged
    client, exp, run = only_run(tmp_path)
    for name in CONSTANTS:
        assert f"task/{name}" in run.data.params and f"task/{name}" not in run.data.metrics
        assert client.get_metric_history(run.info.run_id, f"task/{name}") == []
    row = load_runs(res.tracking_uri, "logreg").runs.iloc[0]
    for name in CONSTANTS:
        assert row[f"const.{name}"] == float(run.data.params[f"task/{name}"])
        assert f"params.task/{name}" not in row.index  # not a parameter of the method
    assert row["const.mu"] == pytest.approx(1 / 455)  # λ = 1/n on breast cancer's 455


def test_the_run_records_its_command_line_overrides_and_user(tmp_path, monkeypatch, capsys):
    """A sweep of two jobs through the CLI's entry point: each run's tags hold the command as
    typed and its own job's overrides; MLflow's Source and Created-by columns are filled."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(provenance.COMMAND_ENV, raising=False)
    monkeypatch.delenv(provenance.OVERRIDES_ENV, raising=False)
    monkeypatch.setenv(cli_errors.FULL_ERROR, "")
    argv = ["/somewhere/bin/commsgd-run", "-m", "seed=0,1", "steps=5", "progress=false",
            "eval_every=5"]
    monkeypatch.setattr("sys.argv", argv)
    provenance.remember_command()
    assert cli_errors.run_app(app, USER_ERRORS) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("logreg").experiment_id])
    assert len(runs) == 2
    for r in runs:
        tags = r.data.tags
        assert tags["commsgd.command"] == "commsgd-run -m seed=0,1 steps=5 progress=false " \
                                          "eval_every=5"
        seed = r.data.params["seed"]
        # a sweep job's overrides as Hydra gives them to the job (it writes booleans its way)
        assert tags["commsgd.overrides"] == f"seed={seed} steps=5 progress=False eval_every=5"
        assert tags["mlflow.source.name"] == "commsgd-run"
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] and tags["mlflow.user"] != "unknown"


def test_python_dash_m_is_recorded_as_such():
    assert provenance.entry_point("/x/suite/__main__.py") == "python -m suite"
    assert provenance.entry_point("/venv/bin/commsgd-run") == "commsgd-run"


def test_the_summary_shows_the_runs_own_page(logged):
    tmp_path, res = logged
    _, exp, run = only_run(tmp_path)
    assert res.experiment_id == exp.experiment_id and res.run_id == run.info.run_id
    page = f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"
    assert f"  run page: {page}" in summary(res, None).splitlines()
    assert run_url("http://tracking:5050/", "3", "abc") == \
        "http://tracking:5050/#/experiments/3/runs/abc"


def mlflow_ui_bundle() -> str:
    import mlflow

    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    return "".join(p.read_text(errors="ignore") for p in js.glob("main.*.js"))


def test_the_installed_mlflow_ui_has_the_routes_the_links_use():
    """The run page and the runs table, and the machine-learning view chosen by
    ?workflowType=machine_learning (MLflow 3 opens experiments as GenAI ones otherwise): if a
    new MLflow moves them, this fails rather than the links silently breaking."""
    ui = mlflow_ui_bundle()
    assert '"/experiments/:experimentId/runs/:runUuid"' in ui
    assert '"/experiments/:experimentId/runs"' in ui
    assert 'get("workflowType")' in ui and 'MACHINE_LEARNING="machine_learning"' in ui


def test_make_mlflow_ui_prints_each_experiments_runs_table(logged, capsys):
    tmp_path, _ = logged
    _, exp, _ = only_run(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    capsys.readouterr()
    assert print_links(uri) == 1
    link = runs_table_url(uri, exp.experiment_id)
    assert link == f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs" \
                   "?workflowType=machine_learning"
    assert capsys.readouterr().out.strip() == f"runs of experiment 'logreg': {link}"
    target = re.search(r"^mlflow-ui:.*?(?=^\S|\Z)", (ROOT / "Makefile").read_text(),
                       re.S | re.M).group(0)
    assert "-m suite.tracking links --tracking-uri sqlite:///$(CURDIR)/mlruns.db" in target
