"""A sweep composes each job's config once (suite/sweep_compose.py), and every job's config is
the one Hydra composes for it: compared, job by job, with a loader that composes as Hydra does."""

from __future__ import annotations

import itertools

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.types import RunMode
from omegaconf import OmegaConf

from suite.sweep_compose import ComposedOnce
from tests.conftest import CONF

# Jobs that change values only, groups, and a preset's method files (`+group=option`).
SWEEP = {
    "workers": ["1", "4"],
    "algorithm": ["sgd", "local_sgd"],
    "seed": ["0", "1"],
}


def loader():
    return ConfigLoaderImpl(config_search_path=create_config_search_path(CONF))


def jobs(sweep):
    keys = list(sweep)
    return [[f"{k}={v}" for k, v in zip(keys, values, strict=True)]
            for values in itertools.product(*sweep.values())]


def master(ld, *overrides):
    return ld.load_configuration("config", overrides=["hydra.sweep.dir=/tmp/x", *overrides],
                                 run_mode=RunMode.MULTIRUN)


def as_dict(cfg):
    return OmegaConf.to_container(cfg, resolve=False)


def check_sweep(preset: list[str], batch: list[list[str]]):
    fresh, reusing = loader(), loader()
    calls = []
    compose = reusing.load_sweep_config

    def counted(master_config, overrides):
        calls.append(tuple(overrides))
        return compose(master_config, overrides)

    reusing.load_sweep_config = counted
    once = ComposedOnce(reusing)
    m_fresh, m_reusing = master(fresh, *preset), master(reusing, *preset)
    once.validate(m_reusing, batch)  # the sweeper's validation: every job composed
    assert len(calls) == len(batch)
    for overrides in batch:
        got = reusing.load_sweep_config(m_reusing, list(overrides))  # the launcher's call
        want = fresh.load_sweep_config(m_fresh, list(overrides))
        assert as_dict(got) == as_dict(want), overrides
        assert OmegaConf.is_struct(got) == OmegaConf.is_struct(want)
    assert len(calls) == len(batch)  # the launcher composed nothing again
    assert once.kept == {}
    # a job that was not validated first is composed, as before
    extra = ["workers=2", "algorithm=sgd", "seed=3"]
    assert as_dict(reusing.load_sweep_config(m_reusing, extra)) == as_dict(
        fresh.load_sweep_config(m_fresh, extra))
    assert len(calls) == len(batch) + 1


def test_every_job_s_config_is_what_hydra_composes():
    check_sweep([], jobs(SWEEP))


def test_a_preset_with_method_files_is_composed_as_hydra_does():
    batch = jobs({"+experiment/dvq_methods": ["diana_l2", "qsgd", "terngrad"],
                  "seed": ["0", "2"]})
    check_sweep(["experiment=diana_vs_quantized"], batch)


def test_the_default_sweeper_composes_once():
    cfg = master(loader())
    assert cfg.hydra.sweeper._target_.endswith("reusing_sweeper.ReusingBasicSweeper")
