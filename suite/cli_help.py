"""`commsgd-run --help`: the app, its config groups and its top-level keys, one line each.

The text is made from conf/ itself, so it cannot drift from it: Hydra lists the groups and
their options ($APP_CONFIG_GROUPS), and the top-level keys come from conf/config.yaml with
their defaults and the comments written beside them. conf/hydra/help/commsgd.yaml asks for this
text through the resolver registered here (`${commsgd_help:}`), which the CLI registers before
Hydra composes anything.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
RESOLVER = "commsgd_help"
_KEY = re.compile(r"^([A-Za-z_][\w]*):\s*(.*?)\s*(?:#\s?(.*))?$")
_MORE = re.compile(r"^\s+#\s?(.*)$")
_NOT_KEYS = ("defaults", "hydra")


def top_level_keys(config: Path = CONF_DIR / "config.yaml") -> list[tuple[str, str, str]]:
    """(key, default as written, its comment) for each top-level key of config.yaml, in file
    order; a comment continued on the following indented lines is joined to its key's."""
    keys: list[list[str]] = []
    block = None  # inside `defaults:` or `hydra:`, whose lines are not top-level keys
    for line in config.read_text().splitlines():
        m = _KEY.match(line)
        if m:
            block = m.group(1) if m.group(1) in _NOT_KEYS else None
            if block is None:
                keys.append([m.group(1), m.group(2), m.group(3) or ""])
            continue
        more = _MORE.match(line)
        if more and block is None and keys and line.lstrip().startswith("#"):
            keys[-1][2] = f"{keys[-1][2]} {more.group(1)}".strip()
    return [tuple(k) for k in keys]


def help_template() -> str:
    """Hydra's help template (string.Template: `$` is escaped as `$$` in our own text)."""
    rows = [(f"{k}={v}", c) for k, v, c in top_level_keys()]
    width = max(len(r[0]) for r in rows)
    keys = "\n".join(f"  {left.ljust(width)}  {comment}".rstrip() for left, comment in rows)
    text = f"""commsgd-run: communication-efficient distributed SGD, benchmarked (Hydra + MLflow)

Usage:
  commsgd-run [group=option ...] [key=value ...]     one run
  commsgd-run -m key=a,b [group=x,y ...]             a sweep: one run per combination

Config groups (group=option):
@GROUPS@
Top-level keys (key=default):
{keys}

Each option's own keys are set as group.key=value (task.dataset=w8a, compressor.levels=16);
`commsgd-run --cfg job [overrides]` shows every key of the composed config.
Launchers: hydra/launcher=parallel (joblib), hydra/launcher=slurm (pip install -e ".[slurm]").
Shell completion (bash): eval "$(commsgd-run -sc install=bash)". Hydra's own flags: --hydra-help.
"""
    return text.replace("$", "$$").replace("@GROUPS@", "$APP_CONFIG_GROUPS")


def register() -> None:
    OmegaConf.register_new_resolver(RESOLVER, help_template, replace=True)
