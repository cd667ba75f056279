"""Bad configs stop the run before it starts, with a message naming key, value and allowed."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from suite.config import ConfigError
from suite.runner import Run
from tests.conftest import make_cfg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("workers=0", r"workers=0 .*integer >= 1"),
        ("lr=-0.1", r"lr=-0.1 .*number > 0 or `theory`"),
        ("lr=0", r"lr=0 .*number > 0"),
        ("steps=0", r"steps=0 .*integer >= 1"),
        ("batch_size=0", r"batch_size=0 .*integer >= 1 or `full`"),
        ("batch_size=half", r"batch_size='half'"),
        ("lr_schedule=cosine", r"lr_schedule='cosine' .*constant, decaying"),
        ("eval_every=0", r"eval_every=0"),
        ("seed=-1", r"seed=-1"),
        ("batch_size=500", r"batch_size=500 is larger than the smallest worker shard"),
        ("task.split=diagonal", r"task.split='diagonal'.*iid, by_label, dirichlet"),
        ("task.dataset=nope", r"task.dataset='nope'"),
        ("task.l2=-1", r"task.l2=-1"),
        ("task.dtype=float8", r"task.dtype='float8'"),
        ("+task.lambda=3", r"task.lambda is not a key of task=logreg"),
        ("+compressor.widht=16", r"compressor.widht is not a key of compressor=identity"),
        ("compressor.width=8", r"compressor.width=8"),
        ("hardware=gpu", r"hardware=gpu asks for device cuda:0"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    cfg = make_cfg(override)
    with pytest.raises((ConfigError, ValueError), match=expected):
        Run(cfg)


@pytest.mark.parametrize("override", ["wrokers=3", "task.dimm=3"])
def test_misspelt_keys_are_refused_by_hydra(override):
    with pytest.raises(ConfigCompositionException, match=override.split("=")[0].split(".")[-1]):
        make_cfg(override)


def test_unknown_group_option_lists_the_options():
    with pytest.raises(ConfigCompositionException, match="algorithm"):
        make_cfg("algorithm=adamw")


def test_good_config_builds():
    run = Run(make_cfg("workers=4", "batch_size=full", "lr=0.5"))
    assert run.lr0 == 0.5 and run.batch_size is None and run.task.num_workers == 4


def test_lr_theory_resolves_to_one_over_L():
    run = Run(make_cfg("workers=4"))
    assert run.lr0 == pytest.approx(1.0 / run.task.constants["L"])
