"""Checks of the composed Hydra config, before anything runs.

Hydra already refuses an unknown group option (`algorithm=foo`) and an override of a key that
does not exist (`wrokers=4`: the root config is in struct mode). This module checks the rest:
value ranges and types of the top-level keys, and the keys of each group option against the
signature of the factory that will receive them, so a misspelt key inside a preset or a YAML
file is caught too. Every message names the key, the value and what is allowed.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from suite.errors import ConfigError
from suite.tracking_writer import WRITERS

ROOT_KEYS = {
    "workers", "batch_size", "steps", "lr", "lr_schedule", "lr_offset", "seed", "eval_every",
    "divergence_threshold", "progress", "warmup_steps", "lr_milestones", "lr_gamma",
    "resume", "checkpoint_every", "checkpoint_path",
    "task", "algorithm", "compressor", "downlink", "hardware", "tracking", "experiment",
    "leaderboard",
}
LR_SCHEDULES = ("constant", "decaying", "warmup_cosine", "step")
OPTIONAL_ROOT_KEYS = {"experiment"}  # a preset; every other root key must be there
# The costs a tuned sweep may minimise on its tuning seeds (leaderboard.tune_by); the report
# (analysis/tuning.py) reads this tuple, so the list is written once.
TUNE_COSTS = ("iterations", "bits")
LEADERBOARD_KEYS = ("name", "targets", "tuning_seeds", "tune_keys", "tune_target", "tune_by")
# Keys a sweep may not tune: they define the problem or the replicate, or only say where and
# how a run is recorded.
UNTUNABLE = ("seed", "workers", "batch_size", "steps")
UNTUNABLE_PREFIXES = ("task.", "tracking.", "leaderboard.", "hydra.", "hardware.")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _raw(cfg: DictConfig, full_key: str):
    """The unresolved value at a dotted key (for messages), or '?'."""
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in str(full_key).split("."):
        if not isinstance(node, dict) or part not in node:
            return "?"
        node = node[part]
    return node


def check_resolvable(cfg: DictConfig) -> None:
    """Every interpolation (`steps=${nope}`) resolves; else one line naming the key."""
    for key in cfg.keys():
        if key == "hydra":
            continue
        try:
            value = cfg[key]  # resolves a top-level interpolation
            if isinstance(value, DictConfig):
                OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as exc:
            where = getattr(exc, "full_key", None) or key
            msg = str(exc).splitlines()[0]
            raise ConfigError(f"{where}={_raw(cfg, where)!r} cannot be resolved ({msg})") from None


def check_root(cfg: DictConfig) -> None:
    unknown = set(cfg.keys()) - ROOT_KEYS - {"hydra"}
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {sorted(unknown)}; allowed: {', '.join(sorted(ROOT_KEYS))}"
        )
    missing = sorted(ROOT_KEYS - OPTIONAL_ROOT_KEYS - set(cfg.keys()))
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} missing from the config (an override `~{missing[0]}` "
            f"deletes a key); required top-level keys: "
            f"{', '.join(sorted(ROOT_KEYS - OPTIONAL_ROOT_KEYS))}")
    check_resolvable(cfg)
    _require(_is_int(cfg.workers) and cfg.workers >= 1, "workers", cfg.workers,
             "an integer >= 1")
    bs = cfg.batch_size
    _require(bs == "full" or (_is_int(bs) and bs >= 1), "batch_size", bs,
             "an integer >= 1 or `full`")
    _require(_is_int(cfg.steps) and cfg.steps >= 1, "steps", cfg.steps, "an integer >= 1")
    lr = cfg.lr
    _require(lr == "theory" or (_is_number(lr) and lr > 0), "lr", lr,
             "a number > 0 or `theory`")
    _require(cfg.lr_schedule in LR_SCHEDULES, "lr_schedule", cfg.lr_schedule,
             f"one of {', '.join(LR_SCHEDULES)}")
    _require(_is_number(cfg.lr_offset) and cfg.lr_offset > 0, "lr_offset", cfg.lr_offset,
             "a number > 0")
    _require(_is_int(cfg.warmup_steps) and 0 <= cfg.warmup_steps <= cfg.steps, "warmup_steps",
             cfg.warmup_steps, f"an integer in [0, steps={cfg.steps}]")
    milestones = list(cfg.lr_milestones)
    _require(all(_is_number(m) and 0 < m < 1 for m in milestones), "lr_milestones",
             milestones, "a list of fractions of steps, each in (0, 1)")
    _require(_is_number(cfg.lr_gamma) and 0 < cfg.lr_gamma <= 1, "lr_gamma", cfg.lr_gamma,
             "a number in (0, 1]")
    _require(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    _require(_is_int(cfg.eval_every) and cfg.eval_every >= 1, "eval_every", cfg.eval_every,
             "an integer >= 1")
    _require(_is_number(cfg.divergence_threshold) and cfg.divergence_threshold > 1,
             "divergence_threshold", cfg.divergence_threshold, "a number > 1")
    for flag in ("progress", "resume"):
        _require(isinstance(cfg[flag], bool), flag, cfg[flag], "true or false")
    _require(_is_int(cfg.checkpoint_every) and cfg.checkpoint_every >= 0, "checkpoint_every",
             cfg.checkpoint_every, "an integer >= 0 (0: never)")
    path = cfg.checkpoint_path
    _require(path is None or (isinstance(path, str) and path.strip() != ""), "checkpoint_path",
             path, "null or a file path")
    tracking = cfg.get("tracking")
    if isinstance(tracking, DictConfig):
        plot = tracking.get("plot", False)
        _require(isinstance(plot, bool), "tracking.plot", plot, "true or false")
    if isinstance(tracking, DictConfig) and tracking.get("name") == "mlflow":
        check_tracking(tracking)
    if cfg.get("leaderboard") is not None:
        check_leaderboard(cfg)


def check_experiment_name(name) -> None:
    """An experiment name is a name, not a path: the local store keeps an experiment's
    artifacts in `<store dir>/mlartifacts/<name>`, and `../x` or `/x` would put them elsewhere."""
    ok = name is None or (
        isinstance(name, str) and name.strip() == name and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0") and not name.startswith("~"))
    _require(ok, "tracking.experiment", name,
             "null (the task's name) or a name without '/', '\\' or a leading '~', not '.' or "
             "'..' (it names a directory of the store)")


def check_tracking(tracking: DictConfig) -> None:
    writer = tracking.get("writer", "process")
    _require(writer in WRITERS, "tracking.writer", writer, f"one of {', '.join(WRITERS)}")
    every = tracking.get("flush_every", 5000)
    _require(_is_int(every) and every >= 1, "tracking.flush_every", every, "an integer >= 1")
    timeout = tracking.get("delivery_timeout_s", 30.0)
    _require(_is_number(timeout) and math.isfinite(timeout) and timeout >= 0,
             "tracking.delivery_timeout_s", timeout, "a number of seconds >= 0")
    for key in ("uri", "run_name"):
        value = tracking.get(key)
        _require(value is None or (isinstance(value, str) and value.strip() != ""),
                 f"tracking.{key}", value, "null or a non-empty string")
    check_experiment_name(tracking.get("experiment"))


def check_overrides(overrides: list[str]) -> None:
    """The same key set twice on one command line (`workers=4 workers=2`): Hydra would keep
    the last without a word; refuse it instead."""
    seen: dict[str, str] = {}
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~") if "=" in item else item.lstrip("+~")
        if key in seen:
            raise ConfigError(f"{key} is set twice on the command line ({seen[key]!r} and "
                              f"{item!r}); give each key once")
        seen[key] = item


def _is_level(v) -> bool:
    return _is_number(v) and 0 < v < 1


def check_leaderboard(cfg: DictConfig) -> None:
    """The `leaderboard` block: what commsgd-report needs to rank a sweep (docs/analysis.md)."""
    lb = cfg.leaderboard
    unknown = set(lb.keys()) - set(LEADERBOARD_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) leaderboard.{sorted(unknown)}; allowed: "
                          f"{', '.join(LEADERBOARD_KEYS)}")
    name = lb.get("name")
    _require(name is None or (isinstance(name, str) and name.strip() != ""), "leaderboard.name",
             name, "null or a non-empty string")
    targets = lb.get("targets")
    if targets is not None:
        targets = list(targets)
        _require(bool(targets) and all(_is_level(t) for t in targets)
                 and len(set(targets)) == len(targets), "leaderboard.targets", targets,
                 "null or a list of distinct relative levels, each in (0, 1), e.g. [1e-2, 1e-8]")
    seeds = list(lb.get("tuning_seeds") or [])
    _require(all(_is_int(s) and s >= 0 for s in seeds) and len(set(seeds)) == len(seeds),
             "leaderboard.tuning_seeds", seeds, "a list of distinct integers >= 0")
    keys = list(lb.get("tune_keys") or [])
    for key in keys:
        _require(isinstance(key, str) and key not in UNTUNABLE
                 and not key.startswith(UNTUNABLE_PREFIXES), "leaderboard.tune_keys", key,
                 f"a method's key (not {', '.join(UNTUNABLE)} or task.*, tracking.*, "
                 f"hardware.*, leaderboard.*)")
        _require(OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING,
                 "leaderboard.tune_keys", key, "a key of this run's config, e.g. lr")
    tt = lb.get("tune_target")
    _require(tt is None or _is_level(tt), "leaderboard.tune_target", tt,
             "null or a relative level in (0, 1)")
    _require(lb.get("tune_by") in TUNE_COSTS, "leaderboard.tune_by", lb.get("tune_by"),
             f"one of {', '.join(TUNE_COSTS)}")


_MISSING = object()


def method_choice(choices: dict) -> str | None:
    """The short name of the method a preset sweep composed: the option chosen in the preset's
    own method group (`+experiment/dvq_methods=dqgd_linf` -> 'dqgd_linf'), from Hydra's runtime
    choices; None when there is no such group, or more than one."""
    picked = [v for k, v in choices.items()
              if k.startswith("experiment/") and isinstance(v, str)]
    return picked[0] if len(picked) == 1 else None


def group_kwargs(cfg: DictConfig, group: str) -> tuple[str, dict]:
    """(option name, its keys minus `name`) for a group."""
    node = OmegaConf.to_container(cfg[group], resolve=True)
    if not isinstance(node, dict) or "name" not in node:
        raise ConfigError(f"{group}: the option must be a mapping with a `name` key")
    name = node.pop("name")
    for key, value in node.items():
        if value == "???":  # a factory parameter without a default (suite/configs.py)
            raise ConfigError(f"{group}.{key} has no default in {group}={name}: set it "
                              f"({group}.{key}=<value>)")
    return name, node


def unknown_key(group: str, name: str, key: str, allowed) -> ConfigError:
    """The one message for a key an option does not have (a YAML's, an override's)."""
    from suite.cli_errors import did_you_mean

    allowed = [str(k) for k in allowed]
    return ConfigError(f"{group}.{key} is not a key of {group}={name}; allowed keys: "
                       f"{', '.join(allowed) or '(none)'}"
                       f"{did_you_mean(key, allowed, prefix=f'{group}.')}")


def bind(factory, group: str, name: str, kwargs: dict, *, fixed: tuple = ()) -> None:
    """Refuse keys the factory does not take, naming the key and the ones allowed."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p not in fixed and p != "ctx"]
    for key in kwargs:
        if key not in params or key in fixed:
            raise unknown_key(group, name, key, allowed)


def refused_key(full_key: str, parent) -> ConfigError | None:
    """The suite's one-line error for Hydra's refusal to override a key that a group option
    (`algorithm.alhpa=1`) does not have, or None for any other key.

    Hydra composes the option's node (a YAML preset or the node generated from its factory,
    suite/configs.py), so the node's keys are the allowed ones, exactly `bind`'s."""
    if not isinstance(parent, DictConfig):
        return None
    group, _, key = full_key.partition(".")
    if group not in ("task", "algorithm", "compressor", "downlink") or not key or "." in key:
        return None
    if not isinstance(parent.get("name"), str) or key in parent:
        return None
    return unknown_key(group, parent.name, key, [k for k in parent if k != "name"])


def resolved_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: MLflow params are flat."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
