"""Options from entry points (suite/plugins.py) and their generated config nodes
(suite/configs.py), in this process: one mechanism for the suite's options and a plugin's, the
rule for a name both a YAML and a generated node could provide, and the refusals (a name
offered twice, an entry that fails to import or has the wrong shape). The example plugin's
end-to-end runs through the command line are in tests/test_example_plugin.py."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore

from suite import plugins
from suite.algorithms import REGISTRY as ALGORITHMS
from suite.compressors import REGISTRY as COMPRESSORS
from suite.compressors import build_compressor
from suite.errors import ConfigError, PluginError
from suite.plugins import TASKS
from suite.runner import Run
from tests.conftest import ROOT, make_cfg

PYPROJECT = ROOT / "pyproject.toml"


def fake_distribution(root: Path, name: str, entry_points: dict[str, dict[str, str]],
                      files: dict[str, str] | None = None) -> Path:
    """A distribution as pip leaves it (a .dist-info with METADATA, WHEEL and
    entry_points.txt) plus its files, in `root`, which the caller puts on sys.path."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n"
        for group, entries in entry_points.items()))
    for path, text in (files or {}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


@pytest.fixture
def on_path(request):
    """Put directories on sys.path for one test; afterwards the registries and the generated
    config nodes are as they were."""
    added: list[str] = []
    before = {g: set(ConfigStore.instance().repo.get(g, {})) for g in plugins.REGISTRIES}

    def add(directory: Path):
        sys.path.insert(0, str(directory))
        added.append(str(directory))
        plugins.reload()

    yield add
    for directory in added:
        sys.path.remove(directory)
    plugins.reload()
    repo = ConfigStore.instance().repo
    for group, names in before.items():
        for name in set(repo.get(group, {})) - names:
            del repo[group][name]


SHADOW_MODULE = '''
from suite.algorithms import sgd


def build(ctx, *, momentum: float = 0.0, extra: int = 7):
    return sgd.build(ctx, momentum=momentum)
'''


# -- one mechanism --------------------------------------------------------------------------
def test_the_suites_own_options_are_entry_points_of_its_distribution():
    for registry in (ALGORITHMS, COMPRESSORS, TASKS):
        assert len(registry) > 0
        for name in registry:
            assert registry.entry(name).distribution == "commsgd", name
    text = PYPROJECT.read_text()
    for group, registry in (("algorithms", ALGORITHMS), ("compressors", COMPRESSORS),
                            ("tasks", TASKS)):
        section = text.split(f'[project.entry-points."commsgd.{group}"]')[1].split("[")[0]
        names = {line.split("=")[0].strip() for line in section.splitlines() if "=" in line}
        assert names == set(registry), group


def test_variants_are_modules_with_their_constants():
    assert ALGORITHMS["qsgd"].build is ALGORITHMS["sgd"].build
    assert ALGORITHMS["qsgd"].compressor_kinds == ("unbiased",)
    assert ALGORITHMS["dqgd"].full_gradients_only and ALGORITHMS["dqgd"].default_compressor \
        == "quant_p"
    # compressed SGD runs with any compressor, biased ones too (its theorem covers unbiased ones)
    assert ALGORITHMS["sgd"].compressor_kinds == ("unbiased", "contractive", "biased")


# -- the generated nodes and the YAML presets ------------------------------------------------
def test_a_yaml_preset_is_the_options_config_and_no_node_is_generated_for_it():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Hydra's automatic-schema-matching warning would raise
        cfg = make_cfg("task=logreg", "algorithm=diana")
    # logreg's factory defaults to the synthetic data set, its YAML preset to breast_cancer
    assert cfg.task.dataset == "breast_cancer"
    assert cfg.compressor.name == "quant_p"
    repo = ConfigStore.instance().repo
    for group, registry in plugins.REGISTRIES.items():
        for name in registry:
            assert f"{name}.yaml" not in repo.get(group, {}), (group, name)


def test_generated_nodes_equal_the_suites_yaml_presets(tmp_path):
    """Compose every algorithm and compressor once from conf/ and once from a copy of conf/
    without the group's YAML files, i.e. from the nodes generated from the factories: the same
    config. (Task presets choose other defaults than their factories on purpose.)"""
    import shutil

    from hydra import compose, initialize_config_dir

    bare = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", bare)
    for group in ("algorithm", "compressor"):
        for f in (bare / group).glob("*.yaml"):
            f.unlink()
    try:
        for group, registry in (("algorithm", ALGORITHMS), ("compressor", COMPRESSORS)):
            for name in registry:
                with_yaml = make_cfg(f"{group}={name}")
                with initialize_config_dir(config_dir=str(bare), version_base="1.3"):
                    generated = compose(config_name="config",
                                        overrides=["tracking=none", "progress=false",
                                                   f"{group}={name}"])
                assert generated == with_yaml, (group, name)
    finally:
        repo = ConfigStore.instance().repo
        for group in ("algorithm", "compressor"):
            for name in list(repo.get(group, {})):
                del repo[group][name]


def test_a_plugins_own_yaml_preset_wins_over_its_generated_node(tmp_path, on_path):
    on_path(fake_distribution(
        tmp_path, "shadow-plugin",
        {"commsgd.algorithms": {"shadowed": "shadow_plugin", "plain": "shadow_plugin"},
         "commsgd.configs": {"shadow_plugin": "shadow_plugin.conf"}},
        {"shadow_plugin/__init__.py": SHADOW_MODULE,
         "shadow_plugin/conf/__init__.py": "",
         "shadow_plugin/conf/algorithm/shadowed.yaml": "name: shadowed\nmomentum: 0.5\n"
                                                       "extra: 3\n"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shadowed = make_cfg("algorithm=shadowed")
    plain = make_cfg("algorithm=plain")
    assert dict(shadowed.algorithm) == {"name": "shadowed", "momentum": 0.5, "extra": 3}
    assert dict(plain.algorithm) == {"name": "plain", "momentum": 0.0, "extra": 7}
    repo = ConfigStore.instance().repo["algorithm"]
    assert "plain.yaml" in repo and "shadowed.yaml" not in repo
    assert ALGORITHMS.entry("plain").distribution == "shadow-plugin"
    assert not ALGORITHMS["plain"].has_theorem
    # a module without theorem(): no step size for lr=theory, said in one line
    with pytest.raises(ConfigError, match="no theorem admits a step size"):
        Run(make_cfg("algorithm=plain"))
    assert Run(make_cfg("algorithm=plain", "lr=0.5")).lr0 == 0.5


def test_a_parameter_without_default_is_mandatory(tmp_path, on_path):
    on_path(fake_distribution(
        tmp_path, "mandatory-plugin", {"commsgd.algorithms": {"needs_it": "mandatory_plugin"}},
        {"mandatory_plugin/__init__.py":
         "from suite.algorithms import sgd\n\n\ndef build(ctx, *, momentum):\n"
         "    return sgd.build(ctx, momentum=momentum)\n"}))
    with pytest.raises(ConfigError, match=r"algorithm.momentum has no default"):
        Run(make_cfg("algorithm=needs_it"))
    assert Run(make_cfg("algorithm=needs_it", "algorithm.momentum=0.0", "lr=1")).lr0 == 1.0


# -- refusals ---------------------------------------------------------------------------------
def test_a_name_offered_twice_is_refused_naming_both_distributions(tmp_path, on_path):
    on_path(fake_distribution(tmp_path, "clashing-plugin",
                              {"commsgd.algorithms": {"sgd": "clashing_plugin"}}))
    with pytest.raises(PluginError, match=r"'sgd' is offered twice, by 'clashing_plugin' from "
                       r"distribution clashing-plugin 0.1 and by 'suite.algorithms.sgd' from "
                       r"distribution commsgd "):
        ALGORITHMS["sgd"]


def test_an_entry_that_fails_to_import_is_refused_naming_plugin_distribution_and_error(
        tmp_path, on_path):
    on_path(fake_distribution(tmp_path, "broken-plugin",
                              {"commsgd.compressors": {"broken": "no_such_module_xyz:factory"}}))
    message = (r"commsgd.compressors plugin 'broken' \('no_such_module_xyz:factory' from "
               r"distribution broken-plugin 0.1\) failed to import: ModuleNotFoundError: No "
               r"module named 'no_such_module_xyz'")
    with pytest.raises(PluginError, match=message):
        build_compressor("broken")
    # the other options compose and run; the broken one composes and is refused by the run
    assert make_cfg("compressor=topk").compressor.name == "topk"
    with pytest.raises(PluginError, match=message):
        Run(make_cfg("compressor=broken"))


@pytest.mark.parametrize("group, value, message", [
    ("commsgd.compressors", "suite.compressors.topk", "names a module; a commsgd.compressors "
                                                      "entry names its factory"),
    ("commsgd.algorithms", "suite.compressors.topk", "has no build"),
    ("commsgd.tasks", "tasks.logreg:_DTYPES", "names dict"),
])
def test_entries_of_the_wrong_shape_are_refused(tmp_path, on_path, group, value, message):
    on_path(fake_distribution(tmp_path, "odd-plugin", {group: {"odd": value}}))
    registry = {"commsgd.compressors": COMPRESSORS, "commsgd.algorithms": ALGORITHMS,
                "commsgd.tasks": TASKS}[group]
    with pytest.raises(PluginError, match=message):
        registry["odd"]


def test_a_compressor_factory_must_return_a_compressor_or_an_uplink(tmp_path, on_path):
    on_path(fake_distribution(tmp_path, "wrong-return", {
        "commsgd.compressors": {"wrong": "wrong_return:factory"}},
        {"wrong_return/__init__.py": "def factory(*, level: int = 1):\n    return level\n"}))
    with pytest.raises(PluginError, match=r"'wrong' .* returned a int"):
        build_compressor("wrong")


def test_an_uplink_scheme_is_a_compressor_option(tmp_path, on_path):
    """A scheme of its own (here the tests' shared-seed rand-k) is selected, bound and run as
    any compressor; its bits are its own count."""
    on_path(fake_distribution(tmp_path, "scheme-plugin", {
        "commsgd.compressors": {"shared_randk": "tests.comm_schemes:shared_randk"}}))
    cfg = make_cfg("compressor=shared_randk", "compressor.k=4", "steps=20", "lr=0.5",
                   "task.dataset=synthetic", "task.n_samples=200", "task.dim=10")
    from suite.runner import execute

    result = execute(cfg)
    assert result.status == "FINISHED"
    assert result.final["comm/bits_up"] == 20 * 32 * 4  # 4 values, no indices, per round
    assert result.final["train/loss"] < result.history[0][1]


def test_a_stateful_schemes_state_is_checkpointed_with_the_run(tmp_path, on_path):
    """10 steps, checkpoint, restore into a fresh Run, 10 more == 20 straight steps, bit for
    bit, with the error memory inside the scheme (the channel's state, not the algorithm's);
    restoring everything but the scheme's state gives another trajectory."""
    import torch

    from suite import checkpoint

    on_path(fake_distribution(tmp_path / "dist", "stateful-plugin", {
        "commsgd.compressors": {"ef_topk": "tests.comm_schemes:ef_topk"}}))
    overrides = ("compressor=ef_topk", "compressor.k=3", "batch_size=4", "lr=0.2",
                 "steps=20", "task.dataset=synthetic", "task.n_samples=200", "task.dim=10")

    def steps(run, state, start, stop):
        for t in range(start, stop):
            state = run.algorithm.step(state, t, run.schedule(t))
        return state

    straight = Run(make_cfg(*overrides))
    end = steps(straight, straight.algorithm.init(straight.task.x0()), 0, 20)
    first = Run(make_cfg(*overrides))
    state = steps(first, first.algorithm.init(first.task.x0()), 0, 10)
    memory = first.channel.lanes["main"].up_state.workers.e
    assert memory.shape == (first.task.num_workers, 10)  # one row per held worker
    assert float(memory.abs().sum()) > 0
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, run=first, state=state, step=10, wall=0.0, initial_loss=1.0,
                    run_id=None, config_hash="x")
    saved = checkpoint.load(path, config_hash="x")
    second = Run(make_cfg(*overrides))
    resumed = steps(second, checkpoint.restore(saved, second), 10, 20)
    assert torch.equal(second.algorithm.params(resumed), straight.algorithm.params(end))
    third = Run(make_cfg(*overrides))
    without = checkpoint.restore(saved | {"comm": None}, third)  # a checkpoint of format 2
    assert not torch.equal(third.algorithm.params(steps(third, without, 10, 20)),
                           straight.algorithm.params(end))
