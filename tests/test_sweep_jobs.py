"""suite.sweep_jobs.run_job does what Hydra's run_job does for a job (with fewer copies of the
config): the same jobs, composed by Hydra's loader, run through both functions, and everything
each one produced is compared: the `.hydra` files byte for byte, the job's log, the JobReturn
(configs with key order and flags, overrides, working directory, status, value, task name),
the HydraConfig, working directory and environment the task saw, what the callbacks were
given, the job's config afterwards, and what is put back when the job ends."""

from __future__ import annotations

import logging
import os
import re

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.core.utils import run_job as hydras_run_job
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf, open_dict

from suite import sweep_jobs
from tests.conftest import CONF
from tests.test_sweep_compose import flags


def described(cfg):
    """A config as text (key order, interpolations) and its flags."""
    return OmegaConf.to_yaml(cfg), flags(cfg)


class Recorder:
    """Hydra's callbacks object, recording what each call was given."""

    def __init__(self):
        self.calls = []

    def on_job_start(self, *, config, task_function):
        self.calls.append(("start", described(config), task_function.__name__))

    def on_job_end(self, *, config, job_return):
        self.calls.append(("end", described(config), summary(job_return)))


def summary(ret):
    value = ret._return_value
    return {"cfg": described(ret.cfg), "hydra_cfg": described(ret.hydra_cfg),
            "hydra_parent": ret.hydra_cfg.hydra._get_parent() is ret.hydra_cfg,
            "overrides": ret.overrides, "working_dir": ret.working_dir,
            "status": ret.status, "task_name": ret.task_name,
            "value": repr(value) if isinstance(value, Exception) else value}


def task(cfg):
    """What a task can see of its job."""
    held = HydraConfig.instance().cfg
    seen = {"cfg": described(cfg), "hydra": described(held),
            "parent_is_job_config": held.hydra._get_parent().hydra is held.hydra._get_parent()
            ._get_node("hydra") and "hydra" in held.hydra._get_parent(),
            "log_file": HydraConfig.get().job_logging.handlers.file.filename,
            "output_dir": HydraConfig.get().runtime.output_dir,
            "cwd": os.getcwd(), "env": os.environ.get("COMMSGD_SWEEP_JOBS_TEST")}
    logging.getLogger("commsgd.test").info("job %s says hello", cfg.seed)
    if cfg.seed == 3:
        raise RuntimeError("the task failed")
    return seen


def compose_job(tmp_path, overrides, job_num):
    ld = ConfigLoaderImpl(config_search_path=create_config_search_path(CONF))
    master = ld.load_configuration(
        "config", overrides=[f"hydra.sweep.dir={tmp_path / 'sweep'}"], run_mode=RunMode.MULTIRUN)
    config = ld.load_sweep_config(master, list(overrides))
    with open_dict(config):  # what the basic launcher does before run_job

        config.hydra.job.id = job_num
        config.hydra.job.num = job_num
    return ld, config


@pytest.fixture
def logging_put_back():
    """configure_log replaces the root logger's handlers: give pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def run_both(tmp_path, monkeypatch, overrides):
    """Run the job with Hydra's run_job, then (its output moved aside) with ours."""
    results = {}
    before = HydraConfig.instance().cfg
    start_cwd = os.getcwd()
    for name, function in (("hydra", hydras_run_job), ("suite", sweep_jobs.run_job)):
        monkeypatch.delenv("COMMSGD_SWEEP_JOBS_TEST", raising=False)
        ld, config = compose_job(tmp_path, overrides, job_num=7)
        callbacks = Recorder()
        ret = function(hydra_context=HydraContext(config_loader=ld, callbacks=callbacks),
                       task_function=task, config=config, job_dir_key="hydra.sweep.dir",
                       job_subdir_key="hydra.sweep.subdir")
        out = tmp_path / "sweep" / "7"
        files = {p.relative_to(out).as_posix(): p.read_bytes()
                 for p in sorted(out.rglob("*")) if p.is_file()}
        results[name] = {
            "return": summary(ret), "callbacks": callbacks.calls,
            "config_after": described(config),
            "config_hydra_parent": config.hydra._get_parent() is config,
            "files": files, "held_after": HydraConfig.instance().cfg is before,
            "cwd_after": os.getcwd() == start_cwd,
            "env_after": os.environ.get("COMMSGD_SWEEP_JOBS_TEST"),
        }
        out.rename(tmp_path / f"out_{name}")
    return results["hydra"], results["suite"]


def without_times(log: bytes) -> bytes:
    return re.sub(rb"^\[[^]]*\]", b"[time]", log, flags=re.M)


@pytest.mark.parametrize("overrides", [
    ["seed=1", "workers=4"],
    ["seed=2", "hydra.job.chdir=true"],
    ["seed=1", "+hydra.job.env_set.COMMSGD_SWEEP_JOBS_TEST=set_for_the_job"],
    ["seed=1", "hydra.output_subdir=null"],
    ["seed=3"],  # the task raises: the job is FAILED with the exception as its value
], ids=["values", "chdir", "env_set", "no_output_subdir", "task_raises"])
def test_a_job_as_hydras_run_job_runs_it(tmp_path, monkeypatch, logging_put_back, overrides):
    hydras, ours = run_both(tmp_path, monkeypatch, overrides)
    # ${hydra.job.name}.log: the name is whatever this process's Hydra last named a job
    (log_name,) = [name for name in ours["files"] if name.endswith(".log")]
    assert without_times(ours["files"].pop(log_name)) == \
        without_times(hydras["files"].pop(log_name))
    assert b"job " in without_times((tmp_path / "out_suite" / log_name).read_bytes())
    assert ours == hydras
    # and what was compared holds what the case is about
    ret = ours["return"]
    if "task_raises" in str(overrides) or overrides == ["seed=3"]:
        assert ret["status"] == JobStatus.FAILED and "the task failed" in ret["value"]
    else:
        assert ret["status"] == JobStatus.COMPLETED
        seen = ret["value"]
        assert seen["output_dir"] == str(tmp_path / "sweep" / "7")
        assert seen["log_file"] == str(tmp_path / "sweep" / "7" / log_name)
        if "hydra.job.chdir=true" in overrides:
            assert seen["cwd"] == str(tmp_path / "sweep" / "7")
        if any("env_set" in o for o in overrides):
            assert seen["env"] == "set_for_the_job"
    has_files = "hydra.output_subdir=null" not in overrides
    assert sorted(ours["files"]) == (
        [".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"] if has_files
        else [])


def test_the_task_config_is_a_copy_and_the_job_config_keeps_its_hydra_node(tmp_path):
    _, config = compose_job(tmp_path, ["seed=1"], job_num=0)
    task_cfg = sweep_jobs._without_hydra(config)
    assert "hydra" not in task_cfg and "hydra" in config
    assert config.hydra._get_parent() is config
    task_cfg.seed = 5  # the task's changes reach neither the job's config nor its hydra node
    assert config.seed == 1
    assert described(task_cfg)[1] == flags(task_cfg)


def test_the_basic_launcher_uses_it_only_inside_the_block():
    from hydra._internal.core_plugins import basic_launcher

    with sweep_jobs.hydra_jobs_lighter():
        assert basic_launcher.run_job is sweep_jobs.run_job
    assert basic_launcher.run_job is hydras_run_job
