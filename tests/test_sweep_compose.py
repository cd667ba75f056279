"""A sweep composes each job's config once, building each defaults tree once per set of group
choices (suite/sweep_compose.py), and every job's config is the one Hydra composes for it:
compared, job by job (keys, values, key order, struct and read-only flags), with a loader that
composes as Hydra does."""

from __future__ import annotations

import itertools

import pytest
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


def flags(cfg, path="") -> list:
    """(path, struct, read-only) of every container node, in order."""
    out = [(path, OmegaConf.is_struct(cfg), OmegaConf.is_readonly(cfg))]
    items = cfg.items_ex(resolve=False) if OmegaConf.is_dict(cfg) else enumerate(cfg)
    for key, _ in items:
        child = cfg._get_node(key)
        if OmegaConf.is_config(child):
            out += flags(child, f"{path}.{key}")
    return out


def same_config(got, want, overrides):
    assert as_dict(got) == as_dict(want), overrides
    assert OmegaConf.to_yaml(got) == OmegaConf.to_yaml(want), overrides  # key order too
    assert flags(got) == flags(want), overrides


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
        same_config(got, want, overrides)
    assert len(calls) == len(batch)  # the launcher composed nothing again
    assert once.kept == {}
    # a job that was not validated first is composed, as before
    extra = ["workers=2", "algorithm=sgd", "seed=3"]
    same_config(reusing.load_sweep_config(m_reusing, extra),
                fresh.load_sweep_config(m_fresh, extra), extra)
    assert len(calls) == len(batch) + 1
    return once


def test_every_job_s_config_is_what_hydra_composes():
    once = check_sweep([], jobs(SWEEP))
    # one defaults tree per algorithm (the only group swept; the extra job is algorithm=sgd)
    assert len(once.reuse.trees) == 2


def test_a_sweep_over_values_builds_one_defaults_tree():
    """Values set, added (+key), deleted (~key), in the app's config and in Hydra's: every
    job's config as Hydra composes it, from one defaults tree."""
    batch = jobs({"compressor": ["qsgd"], "workers": ["1", "16"],
                  "compressor.levels": ["4", "16"], "+extra": ["1", "[1,2]"],
                  "~progress": [""], "hydra.job.chdir": ["true"]})
    once = check_sweep([], [[o.rstrip("=") for o in job] for job in batch])
    assert len(once.reuse.trees) == 2  # the batch's, and the extra job's (compressor=identity)


def test_the_kept_tree_never_hides_a_job_s_own_error():
    """A value override that one job's config has and another's lacks (compressor.levels is a
    key of qsgd, not of topk): the job without it fails as Hydra fails it, though the jobs
    before it had their trees kept."""
    from hydra.errors import ConfigCompositionException

    fresh, reusing = loader(), loader()
    once = ComposedOnce(reusing)
    m_fresh, m_reusing = master(fresh), master(reusing)
    once.validate(m_reusing, [["compressor=qsgd", "compressor.levels=4"]])
    bad = ["compressor=topk", "compressor.levels=4"]
    with pytest.raises(ConfigCompositionException) as hydras:
        fresh.load_sweep_config(m_fresh, bad)
    with pytest.raises(ConfigCompositionException) as ours:
        once.validate(m_reusing, [bad])
    assert str(ours.value) == str(hydras.value)
    assert str(ours.value.__cause__) == str(hydras.value.__cause__)


def test_hydra_s_functions_are_back_after_the_sweep_composed():
    from hydra._internal import config_loader_impl

    ld = loader()
    hydras = config_loader_impl.create_defaults_list
    ComposedOnce(ld).validate(master(ld), jobs(SWEEP))
    assert config_loader_impl.create_defaults_list is hydras
    assert "_compose_config_from_defaults_list" not in vars(ld)


def test_a_preset_with_method_files_is_composed_as_hydra_does():
    batch = jobs({"+experiment/dvq_methods": ["diana_l2", "qsgd", "terngrad"],
                  "seed": ["0", "2"]})
    check_sweep(["experiment=diana_vs_quantized"], batch)


def test_the_default_sweeper_composes_once():
    cfg = master(loader())
    assert cfg.hydra.sweeper._target_.endswith("reusing_sweeper.ReusingBasicSweeper")


def test_a_searchpath_override_reaches_the_job_not_the_loader(tmp_path):
    """hydra.searchpath on the command line re-initialises a composition's repository: its
    config groups are found as Hydra finds them, and the loader's own repository (read, not
    copied, by every other composition) keeps its sources."""
    extra = tmp_path / "extra" / "compressor"
    extra.mkdir(parents=True)
    (extra / "topk_from_elsewhere.yaml").write_text(
        "defaults:\n  - topk\n  - _self_\nratio: 0.25\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'extra'}]"
    ld = loader()
    sources = [(s.provider, s.path) for s in ld.repository.get_sources()]
    batch = [[searchpath, "compressor=topk_from_elsewhere", f"seed={s}"] for s in (0, 1)]
    check_sweep([], batch + [["compressor=topk", "seed=0"]])
    once = ComposedOnce(ld)
    once.validate(master(ld), batch)
    got = once.kept[next(iter(once.kept))]
    assert got.compressor.ratio == 0.25
    assert [(s.provider, s.path) for s in ld.repository.get_sources()] == sources
