"""Each job of a sweep run as Hydra's `run_job` runs it, with two copies of its config fewer.

What a job gets from Hydra (`hydra.core.utils.run_job`, which the basic launcher calls once
per job): HydraConfig holding the job's hydra node (so `${hydra:...}` resolves), the
output directory in `hydra.runtime.output_dir` and on disk, the working directory changed
when `hydra.job.chdir`, logging configured from `hydra.job_logging`, the job's three
`.hydra/*.yaml` files, `hydra.job.env_set` in the environment around the task, the callbacks'
`on_job_start` and `on_job_end`, and a `JobReturn` with the task's config (the config
without its hydra node), a copy of the hydra node, the overrides, the working directory, the
status, the return value and the task's name. HydraConfig and the working directory are put
back afterwards.

Hydra's function copies the hydra node four times per job: a `set_config` before the output
directory is known (its interpolations may read `${hydra:...}`) and another after it is set,
the deep copy of the whole config from which the task's config then deletes the node, and the
copy kept in the JobReturn. With its three YAML files written by PyYAML's pure-Python
emitter that is ~20 ms a job on a 2-core machine, about a sixth of a short run's overhead in
a sweep. `run_job` here does the same with:

- one `set_config`: the output directory is then written into the config and into the copy
  HydraConfig holds, which is what the second copy would have held;
- the task's config deep-copied without the hydra node (deepcopy is told the node is its own
  copy, and the copy's reference to it is deleted, as Hydra deletes its copy of it);
- the files written by suite.yaml_text (the same text as OmegaConf.to_yaml).

Everything else is Hydra's order of the same steps. `hydra_jobs_lighter()` puts it in place
of Hydra's function for the basic launcher while a sweep launches (the launcher's own loop is
Hydra's). tests/test_sweep_jobs.py runs the same jobs through both functions and compares all
they produce: the files byte for byte, the JobReturns, the HydraConfig and environment the
task sees, the callbacks' arguments and the log file.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

from hydra._internal.core_plugins import basic_launcher
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,
    configure_log,
    env_override,
)
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from suite.yaml_text import save_config


def run_job(task_function, config: DictConfig, job_dir_key: str, job_subdir_key: str | None,
            hydra_context, configure_logging: bool = True) -> JobReturn:
    """Hydra's `run_job` (same arguments, same result), with fewer copies of the config."""
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    held = HydraConfig.instance()
    orig_hydra_cfg = held.cfg
    held.set_config(config)  # the output directory's interpolations may read ${hydra:...}
    output_dir = str(OmegaConf.select(config, job_dir_key))
    if job_subdir_key is not None:
        output_dir = os.path.join(output_dir, str(OmegaConf.select(config, job_subdir_key)))
    absolute = os.path.abspath(output_dir)
    for runtime in (config.hydra.runtime, held.cfg.hydra.runtime):
        with read_write(runtime), open_dict(runtime):
            runtime.output_dir = absolute

    chdir = False
    try:
        ret = JobReturn()
        task_cfg = _without_hydra(config)
        ret.cfg = task_cfg
        hydra_cfg = copy.deepcopy(held.cfg)
        # the copy carries the flags OmegaConf cached in HydraConfig's nodes, whose parent is
        # the job's config (struct); the copy's root has no flags. Setting the parent again
        # drops those caches: Hydra's copy is made before any are cached, to the same effect
        hydra_cfg.hydra._set_parent(hydra_cfg)
        ret.hydra_cfg = hydra_cfg
        ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        # version_base 1.2 and later (the suite's 1.3): no chdir unless asked
        chdir = bool(hydra_cfg.hydra.job.chdir)
        if chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        if configure_logging:
            configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / Path(
                config.hydra.output_subdir)
            save_config(task_cfg, "config.yaml", hydra_output)
            save_config(hydra_cfg, "hydra.yaml", hydra_output)
            save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)
        with env_override(hydra_cfg.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as e:  # Hydra's contract: the launcher re-raises it
                ret.return_value = e
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        held.cfg = orig_hydra_cfg
        if chdir:
            os.chdir(old_cwd)


def _without_hydra(config: DictConfig) -> DictConfig:
    """A deep copy of `config` without its hydra node, equal to Hydra's (a deep copy of all
    of it, the node then deleted) without copying the node: deepcopy's memo names the node
    as its own copy, and the copy's reference to it is deleted at once."""
    node = config._get_node("hydra")
    task_cfg = copy.deepcopy(config, {id(node): node})
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


@contextlib.contextmanager
def hydra_jobs_lighter():
    """While active, the basic launcher runs each job with `run_job` above."""
    hydras = basic_launcher.run_job
    basic_launcher.run_job = run_job
    try:
        yield
    finally:
        basic_launcher.run_job = hydras
