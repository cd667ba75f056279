"""suite.yaml_text.to_yaml writes the text OmegaConf.to_yaml writes (the job's `.hydra/*.yaml`
and the run's config.yaml), byte for byte: on every preset's composed config with its hydra
node, and on values chosen to hit YAML's quoting, escaping and line folding, including the two
cases where libyaml's emitter would differ (they take PyYAML's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from suite import yaml_text
from tests.conftest import CONF

PRESETS = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))

AWKWARD = [
    "1e3", "yes", "no", "on", "off", "null", "~", "", "  lead", "trail  ", "a: b", "#c",
    "x #y", "é ü 中文", "multi\nline", "multi\nline\n", "tab\there", "a" * 200,
    " ".join(["word"] * 40), "x" * 79 + " y", "'quoted'", '"dq"', "-", "- x", "? q", "@at",
    "`bt", "%p", "!bang", "&amp", "*star", "[x]", "{y}", "1.5", "0x10", "0o7", ".inf",
    ".nan", "True", "2026-12-03", "12:30", "1_000", "\u2028sep", "\x07bell", "back\\slash",
    "${interp}", "${oc.env:HOME}", "ünï  code  long " * 10, "\ttabstart", "a\r\nb",
    "\ufeffbom", "null ", "  ", "\n", "a\n\nb",
    "emoji \U0001F642",  # outside the basic plane: libyaml would escape it
]


def composed(preset):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={preset}"],
                       return_hydra_config=True)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_presets_config_and_hydra_node_as_omegaconf_writes_them(preset):
    cfg = composed(preset)
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    hydra_node = OmegaConf.masked_copy(cfg, ["hydra"])
    for part in (task, hydra_node, cfg.hydra.overrides.task):
        assert yaml_text.to_yaml(part) == OmegaConf.to_yaml(part)
    # these configs take the fast emitter (the point of the module)
    assert yaml_text._emits_alike(OmegaConf.to_container(cfg, resolve=False))


@pytest.mark.parametrize("value", AWKWARD)
def test_awkward_strings_as_value_list_item_and_key(value):
    cfg = OmegaConf.create({"v": value, "l": [value, {"k": value}], "n": {value: 1}})
    assert yaml_text.to_yaml(cfg) == OmegaConf.to_yaml(cfg)


def test_numbers_nesting_empty_containers_and_an_empty_key():
    cfg = OmegaConf.create({
        "n": [1, -2, 3.5, float("inf"), float("-inf"), float("nan"), 1e300, 1e-300, 2**63,
              None, True, False, [], {}],
        "deep": [{"a": 1, "b": [1, [2, {"c": "d"}]]}], "e": {}, "weird key: x": 1,
        "1": "one"})
    assert yaml_text.to_yaml(cfg) == OmegaConf.to_yaml(cfg)
    with_empty_key = OmegaConf.create({"": "empty", "x": 1})
    assert not yaml_text._emits_alike({"": 1})
    assert yaml_text.to_yaml(with_empty_key) == OmegaConf.to_yaml(with_empty_key)


def test_the_fast_emitter_is_there_and_differs_where_the_module_says():
    """The project's PyYAML has libyaml (else every config takes the slow emitter), and the two
    cases that take PyYAML's emitter are still ones where libyaml writes other text: if a
    PyYAML release makes them agree, this says the fallback can go."""
    assert yaml.__with_libyaml__
    for data in ({"v": "emoji \U0001F642"}, {"": 1}):
        fast = yaml.dump(data, default_flow_style=False, allow_unicode=True, sort_keys=False,
                         Dumper=yaml_text._FastDumper)
        assert fast != OmegaConf.to_yaml(OmegaConf.create(data))


def test_save_config_writes_the_text_to_the_named_file(tmp_path):
    cfg = OmegaConf.create({"a": "é", "b": [1, 2]})
    yaml_text.save_config(cfg, "config.yaml", tmp_path / ".hydra")
    assert (tmp_path / ".hydra" / "config.yaml").read_text(encoding="utf-8") == \
        OmegaConf.to_yaml(cfg)
