"""`commsgd-run --help`: the app, its config groups and its top-level keys, one line each.

The text is made from conf/ itself, so it cannot drift from it: Hydra lists the groups and
their options ($APP_CONFIG_GROUPS), and the top-level keys come from conf/config.yaml with
their defaults and the comments written beside them. conf/hydra/help/commsgd.yaml asks for this
text through the resolver registered here (`${commsgd_help:}`), which the CLI registers before
Hydra composes anything.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
RESOLVER = "commsgd_help"
_KEY = re.compile(r"^([A-Za-z_][\w]*):\s*(.*?)\s*(?:#\s?(.*))?$")
_MORE = re.compile(r"^\s+#\s?(.*)$")
_SUBKEY = re.compile(r"^\s+([A-Za-z_][\w]*):\s*(.*?)\s*(?:#\s?(.*))?$")
_NOT_KEYS = ("defaults", "hydra")


def top_level_keys(config: Path = CONF_DIR / "config.yaml") -> list[tuple[str, str, str]]:
    """(key, default as written, its comment) for each top-level key of config.yaml, in file
    order; a comment continued on the following indented lines is joined to its key's. A key
    that holds a block of keys (`leaderboard:`) has the block as its default, in YAML's flow
    style, and the comment written above it."""
    return [(k, d, c) for k, d, c, _ in _parse(config)]


def _parse(config: Path) -> list[tuple[str, str, str, list]]:
    """(key, default, comment, [(sub-key, default, comment)]) per top-level key."""
    import yaml

    values = yaml.safe_load(config.read_text())
    keys: list[list] = []
    block = None  # inside `defaults:` or `hydra:`, whose lines are not top-level keys
    above: list[str] = []  # the comment lines right above the current line
    for line in config.read_text().splitlines():
        m = _KEY.match(line)
        if m:
            block = m.group(1) if m.group(1) in _NOT_KEYS else None
            if block is None:
                keys.append([m.group(1), m.group(2), m.group(3) or "", [], " ".join(above)])
            above = []
            continue
        if line.startswith("#"):
            above.append(line.lstrip("#").strip())
            continue
        above = []
        sub = _SUBKEY.match(line)
        if sub and block is None and keys and keys[-1][1] == "":
            keys[-1][3].append([sub.group(1), sub.group(2), sub.group(3) or ""])
            continue
        more = _MORE.match(line)
        if more and block is None and keys and line.lstrip().startswith("#"):
            target = keys[-1][3][-1] if keys[-1][3] else keys[-1]
            target[2] = f"{target[2]} {more.group(1)}".strip()
    out = []
    for key, default, comment, subs, written_above in keys:
        if subs and isinstance(values.get(key), dict):
            default = yaml.safe_dump(values[key], default_flow_style=True, width=10**6,
                                     sort_keys=False).strip()
            comment = comment or written_above.split(";")[0]
        out.append((key, default, comment, [tuple(s) for s in subs]))
    return out


def help_template() -> str:
    """Hydra's help template (string.Template: `$` is escaped as `$$` in our own text)."""
    rows = []
    for key, default, comment, subs in _parse(CONF_DIR / "config.yaml"):
        rows.append((f"{key}={default}", comment))
        rows += [(f"  {key}.{k}={v}", c) for k, v, c in subs]
    # a block's one-line default (leaderboard={...}) is long: it does not set the column
    width = max(len(r[0]) for r in rows if len(r[0]) <= 40)
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


def asks_for_help(argv: list[str]) -> bool:
    """Whether Hydra's command line would print the app's help (`--help` or `-h`)."""
    return "--help" in argv or "-h" in argv


@contextlib.contextmanager
def one_repository_per_listing():
    """While Hydra writes `--help`: every group listing answered by one config repository.

    Hydra's help lists the options of every config group twice over (`Hydra.get_help` formats
    the app's groups and Hydra's own, walking the group tree), and each of those ~130 questions
    goes to `ConfigLoaderImpl.get_group_options`, which builds a new repository for it: a deep
    copy of the whole ConfigStore (~5 ms each, most of the help's second on 2 cores). A
    repository depends only on the config name and the overrides, which do not change while
    one help text is written, so the repository built for the first question with them
    answers the rest: the same listing, by Hydra's own code (tests/test_cli_messages.py
    compares the two). Outside this block Hydra's method is back as it was."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.object_type import ObjectType

    hydras_own = ConfigLoaderImpl.get_group_options
    repositories: dict[tuple, object] = {}

    def get_group_options(self, group_name, results_filter=ObjectType.CONFIG,
                          config_name=None, overrides=None):
        key = (id(self), config_name, tuple(overrides or ()))
        if key not in repositories:
            repositories[key] = self._parse_overrides_and_create_caching_repo(
                config_name, list(overrides or ()))[1]
        return repositories[key].get_group_options(group_name, results_filter)

    ConfigLoaderImpl.get_group_options = get_group_options
    try:
        yield
    finally:
        ConfigLoaderImpl.get_group_options = hydras_own
