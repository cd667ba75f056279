"""A config as YAML text: the text `OmegaConf.to_yaml` writes, in about half its time.

Every job of a sweep writes its config three times (Hydra's `.hydra/config.yaml` and
`hydra.yaml`, and the run's `config.yaml` artifact), ~7 ms a job with PyYAML's pure-Python
emitter. OmegaConf's text is `yaml.dump` of the plain container with OmegaConf's dumper (its
one change: a string that reads as a bool, int or float is single-quoted). The same dump with
libyaml's C emitter (`yaml.CDumper`, the same representers) writes the same text except in
two cases, found by comparing the two (tests/test_yaml_text.py): libyaml escapes characters
outside Unicode's basic plane (an emoji becomes "\\U0001F642") and writes an empty key as
`''` where PyYAML writes `? ''`. Both are equally valid YAML for the same config, but a file
should not depend on which emitter wrote it, so a config with either takes PyYAML's emitter,
as does every config when PyYAML was built without libyaml.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf._utils import get_omega_conf_dumper

_PLANE_0_END = 0xFFFF

if getattr(yaml, "__with_libyaml__", False):
    class _FastDumper(yaml.CDumper):
        """libyaml's emitter with OmegaConf's representers."""

    _FastDumper.add_representer(str, get_omega_conf_dumper().str_representer)
else:  # pragma: no cover - PyYAML without libyaml
    _FastDumper = None


def to_yaml(cfg) -> str:
    """`OmegaConf.to_yaml(cfg)`, the same text (interpolations kept, keys in their order)."""
    container = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    dumper = _FastDumper if _FastDumper is not None and _emits_alike(container) \
        else get_omega_conf_dumper()
    return yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False,
                     Dumper=dumper)


def save_config(cfg, filename: str, output_dir: Path) -> None:
    """What Hydra's `hydra.core.utils._save_config` writes (the job's `.hydra/*.yaml`)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(str(output_dir / filename), "w", encoding="utf-8") as file:
        file.write(to_yaml(cfg))


def _emits_alike(node) -> bool:
    """True when libyaml writes `node` as PyYAML does: no empty key, and every string in
    Unicode's basic plane."""
    if isinstance(node, dict):
        return all(k != "" and _emits_alike(k) and _emits_alike(v) for k, v in node.items())
    if isinstance(node, list):
        return all(_emits_alike(v) for v in node)
    if isinstance(node, str):
        return node.isascii() or max(map(ord, node)) <= _PLANE_0_END
    return True
