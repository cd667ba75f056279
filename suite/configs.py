"""Config nodes for every registered option, generated from its factory's keyword arguments.

For each option of the `algorithm`, `compressor` and `task` groups (suite/plugins.py), and of
the `downlink` group (whose options are the compressors: `DERIVED`), the node
`<group>=<name>` is `{name: <name>, <key>: <default>, ...}` over the factory's keyword
parameters (an algorithm's `build(ctx, *, ...)`, a compressor's factory, a task's constructor
minus `workers`, `worker_ids`, `device`); a parameter without a default becomes a mandatory
value (`???`). An algorithm whose module sets DEFAULT_COMPRESSOR selects that compressor, and
one with FULL_GRADIENTS_ONLY selects batch_size=full, exactly as the YAML presets of the
suite's own `qsgd` and `dqgd` do (`override /compressor`, in the `_global_` package).

Where the nodes live, and what wins. The nodes are stored in Hydra's ConfigStore, which Hydra
searches last (`structured://`, after every YAML directory). A name that both a YAML file and
the ConfigStore provide would be loaded from the YAML and then merged with the ConfigStore node
as an "automatically matched schema" (hydra/_internal/config_loader_impl.py,
`_load_single_config`): deprecated since Hydra 1.1, with a warning, and an error when the node
has a defaults list. So the rule here is: **a YAML preset on the search path (the suite's
conf/, a plugin's config package) is the option's config; a node is generated only for an option
no YAML provides.** The suite's own options all ship YAML presets (they carry the comments users
read, and tests check they agree with the factories); a plugin needs none. The suite's
`downlink` presets are two lines each (`/compressor/<name>@_here_`: the compressor's preset
in the downlink package), so that `--help` and a Tab press, which register the nodes too,
never import a factory's module (torch, ~2 s). A plugin option without YAML pays that import
where its node is made; its own `commsgd.configs` presets avoid it.

`register(search_path)` runs wherever Hydra composes a config (the command line, a joblib or
SLURM job, the compose API in tests and notebooks), from the search-path plugin
hydra_plugins/commsgd/searchpath.py, which also adds the plugins' config packages
(`commsgd.configs` entry points) to the search path.
"""

from __future__ import annotations

import importlib.resources
import inspect
import os
from typing import Any

from hydra.core.config_store import ConfigStore

from suite.errors import PluginError
from suite.plugins import REGISTRIES

PROVIDER = "commsgd"
# Config groups whose options are another group's registry: `downlink=<compressor>` offers
# every compressor option for the server's broadcast (suite/comm/downlinks.py), its keys
# generated from the same factories.
DERIVED = {"downlink": "compressor"}
GROUPS = {**REGISTRIES, **{group: REGISTRIES[of] for group, of in DERIVED.items()}}
# parameters the run fills in itself, never config keys
FIXED = {"algorithm": ("ctx",), "compressor": (), "downlink": (),
         "task": ("workers", "worker_ids", "device")}
MISSING = "???"
_CONFIG_VALUES = (type(None), bool, int, float, str)


def factory_of(group: str, option):
    """The callable whose keyword arguments are the option's config keys."""
    return option.build if group == "algorithm" else option


def option_keys(group: str, name: str, factory) -> dict[str, Any]:
    """{key: default} over the factory's keyword parameters, in signature order."""
    keys: dict[str, Any] = {}
    for key, p in inspect.signature(factory).parameters.items():
        if key in FIXED[group] or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is p.POSITIONAL_ONLY:
            raise PluginError(f"{group} plugin {name!r}: parameter {key!r} is positional-only; "
                              f"config keys are keyword arguments")
        keys[key] = MISSING if p.default is p.empty else _config_value(group, name, key,
                                                                        p.default)
    return keys


def _config_value(group: str, name: str, key: str, value):
    if isinstance(value, (list, tuple)):
        return [_config_value(group, name, key, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _config_value(group, name, key, v) for k, v in value.items()}
    if not isinstance(value, _CONFIG_VALUES):
        raise PluginError(
            f"{group} plugin {name!r}: the default of {key!r} is a {type(value).__name__} "
            f"({value!r}); a config key's default must be null, a bool, a number, a string or "
            f"a list/dict of them")
    return value


def node(group: str, name: str) -> tuple[dict, str | None]:
    """(the generated node, its package: None for the group's own, '_global_' when the option
    also sets keys outside its group)."""
    option = GROUPS[group][name]
    body = {"name": name, **option_keys(group, name, factory_of(group, option))}
    if group != "algorithm":
        return body, None
    outside: dict[str, Any] = {}
    defaults: list = []
    if option.default_compressor != "identity":  # conf/config.yaml's compressor default
        defaults.append({"override /compressor": option.default_compressor})
    if option.full_gradients_only:
        outside["batch_size"] = "full"
    if not defaults and not outside:
        return body, None
    return {"defaults": [*defaults, "_self_"], "algorithm": body, **outside}, "_global_"


def yaml_preset(search_path, group: str, name: str) -> str | None:
    """Where a YAML file provides `<group>/<name>` on the search path (file and pkg
    directories), or None."""
    relative = f"{group}/{name}.yaml"
    for element in search_path.get_path():
        path = element.path or ""
        if path.startswith("pkg://"):
            package = path[len("pkg://"):].strip("/").replace("/", ".")
            try:
                if importlib.resources.files(package).joinpath(relative).is_file():
                    return f"{path}/{relative}"
            except (ImportError, TypeError, ValueError):
                continue
        elif path.startswith("file://") or "://" not in path:
            directory = path[len("file://"):] if path.startswith("file://") else path
            if directory and os.path.isfile(os.path.join(directory, relative)):
                return os.path.join(directory, relative)
    return None


def register(search_path) -> dict[str, list[str]]:
    """Store the generated node of every option that no YAML on `search_path` provides.
    Returns {group: names stored}. An option whose node cannot be made (its module fails to
    import, a default that is no config value) is stored as `{name: <name>}` alone, so that
    composing succeeds and the run refuses it with the registry's one-line PluginError."""
    cs = ConfigStore.instance()
    stored: dict[str, list[str]] = {}
    for group, registry in GROUPS.items():
        names = list(registry)
        stored[group] = []
        for name in names:
            if yaml_preset(search_path, group, name) is not None:
                # stored by an earlier composition with another search path (a notebook, a
                # test): it would now be merged into the YAML as a schema
                _forget(cs, group, name)
                continue
            try:
                body, package = node(group, name)
            except PluginError:
                body, package = {"name": name}, None
            cs.store(group=group, name=name, node=body, package=package, provider=PROVIDER)
            stored[group].append(name)
    return stored


def _forget(cs: ConfigStore, group: str, name: str) -> None:
    """Remove a node this module stored (and only such a node) from the ConfigStore."""
    options = cs.repo.get(group)
    stored = options.get(f"{name}.yaml") if isinstance(options, dict) else None
    if stored is not None and getattr(stored, "provider", None) == PROVIDER:
        del options[f"{name}.yaml"]


def append_config_packages(search_path) -> list[str]:
    """Add every `commsgd.configs` package (a plugin's YAML presets) to the search path, after
    the suite's own conf/ so that the suite's presets keep their names."""
    from suite.plugins import config_packages

    added = []
    for entry in config_packages().values():
        path = f"pkg://{entry.value.strip()}"
        if all(e.path != path for e in search_path.get_path()):
            search_path.append(provider=f"commsgd-plugin:{entry.distribution}", path=path)
            added.append(path)
    return added
