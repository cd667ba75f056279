"""Checks of the composed Hydra config, before anything runs.

Hydra already refuses an unknown group option (`algorithm=foo`) and an override of a key that
does not exist (`wrokers=4`: the root config is in struct mode). This module checks the rest:
value ranges and types of the top-level keys, and the keys of each group option against the
signature of the factory that will receive them, so a misspelt key inside a preset or a YAML
file is caught too. Every message names the key, the value and what is allowed.
"""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf

from suite.errors import ConfigError
from suite.tracking_writer import WRITERS

ROOT_KEYS = {
    "workers", "batch_size", "steps", "lr", "lr_schedule", "lr_offset", "seed", "eval_every",
    "divergence_threshold", "progress", "warmup_steps", "lr_milestones", "lr_gamma",
    "resume", "checkpoint_every", "checkpoint_path",
    "task", "algorithm", "compressor", "downlink", "hardware", "tracking", "experiment",
}
LR_SCHEDULES = ("constant", "decaying", "warmup_cosine", "step")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def check_root(cfg: DictConfig) -> None:
    unknown = set(cfg.keys()) - ROOT_KEYS - {"hydra"}
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {sorted(unknown)}; allowed: {', '.join(sorted(ROOT_KEYS))}"
        )
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
    tracking = cfg.get("tracking")
    if isinstance(tracking, DictConfig) and tracking.get("name") == "mlflow":
        writer = tracking.get("writer", "process")
        _require(writer in WRITERS, "tracking.writer", writer, f"one of {', '.join(WRITERS)}")


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
    return ConfigError(f"{group}.{key} is not a key of {group}={name}; allowed keys: "
                       f"{', '.join(allowed) or '(none)'}")


def bind(factory, group: str, name: str, kwargs: dict, *, fixed: tuple = ()) -> None:
    """Refuse keys the factory does not take, naming the key and the ones allowed."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p not in fixed and p != "ctx"]
    for key in kwargs:
        if key not in params or key in fixed:
            raise unknown_key(group, name, key, allowed)


def refused_override(exc: BaseException) -> ConfigError | None:
    """The suite's one-line error for Hydra's refusal to override a key that a group option
    (`algorithm.alhpa=1`) does not have, or None for any other composition error.

    Hydra composes the option's node (a YAML preset or the node generated from its factory,
    suite/configs.py), so the node's keys are the allowed ones, exactly `bind`'s."""
    cause = exc.__cause__
    parent, full_key = getattr(cause, "parent_node", None), getattr(cause, "full_key", None)
    if not isinstance(parent, DictConfig) or not isinstance(full_key, str):
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
