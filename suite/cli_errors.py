"""Command-line mistakes as one line each: what is wrong, what is allowed, the closest match.

Hydra reports its own errors on many lines (a config search path, a hint to append with `+`,
"set HYDRA_FULL_ERROR=1") and exits 1; argparse prints its usage. The suite's own checks say
one line and exit 2. `run_app` makes every mistake on the command line look like the latter:

    $ commsgd-run algorithm=sdg
    commsgd: configuration error: algorithm=sdg is not an option of group algorithm;
      allowed: delayed_sgd, diana, ..., terngrad (did you mean algorithm=sgd?)     [one line]

It asks Hydra to raise its errors instead of printing them (HYDRA_FULL_ERROR=1: Hydra's own
switch; a user who sets it keeps Hydra's full traces) and turns the ones it knows (an unknown
group option, an unknown key, an override that does not parse, a missing launcher plugin, an
unknown --option) into one line. Ctrl-C ends with one line too, and exit status 130 (128 +
SIGINT), the shell's convention; the run itself is closed as KILLED by the runner.
"""

from __future__ import annotations

import difflib
import os
import re
import sys

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
FULL_ERROR = "HYDRA_FULL_ERROR"
# The line Hydra writes to stderr before re-raising a failed job's exception (JobReturn).
_JOB_FAILED = "Error executing job with overrides:"


class UsageError(Exception):
    """A command-line option argparse refuses; the message is one line."""


def did_you_mean(word: str, options, prefix: str = "") -> str:
    """' (did you mean <prefix><option>?)' for the closest option, or '' when none is close."""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def check_options(argv: list[str]) -> None:
    """Parse argv with Hydra's own argument parser, refusing an unknown --option in one line
    (argparse would print its whole usage)."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    options = sorted({s for a in parser._actions for s in a.option_strings if s.startswith("--")})

    def error(message: str):
        unknown = re.findall(r"(?<!\S)(-{1,2}[\w-]+)", message.split(":", 1)[-1])
        hint = did_you_mean(unknown[0], options) if unknown else ""
        raise UsageError(f"{message}; allowed options: {', '.join(options)}{hint}")

    parser.error = error  # type: ignore[method-assign]
    parser.parse_args(argv)


def describe(exc: BaseException) -> str | None:
    """One line for a mistake Hydra or OmegaConf found in the overrides, or None."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, MissingConfigException):
        return _missing_config(exc)
    if isinstance(exc, OverrideParseException):
        reason = str(exc).splitlines()[0]
        return (f"an override does not parse: {reason}; write key=value, group=option, "
                f"+new_key=value or a sweep key=a,b (Hydra's override grammar)")
    cause = exc.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(
            cause, "full_key", None):
        return _unknown_key(str(cause.full_key), getattr(cause, "parent_node", None))
    return None


def _missing_config(exc) -> str:
    missing = exc.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    if exc.options:  # group=option with an option the group does not have
        allowed = sorted(exc.options)
        return (f"{group}={option} is not an option of group {group}; allowed: "
                f"{', '.join(allowed)}{did_you_mean(option, allowed, prefix=f'{group}=')}")
    extra = plugin_extra(group, option)
    if extra is not None:
        return (f"{missing} is a Hydra plugin that is not installed; install it with "
                f"pip install -e \".[{extra}]\" (the `{extra}` extra)")
    where = re.search(r"In '([^']+)'", str(exc))
    return (f"config {missing!r} is not found"
            + (f" (needed by {where.group(1)!r})" if where else "")
            + "; check the group and option names")


def plugin_extra(group: str, option: str) -> str | None:
    """The extra of this package that installs the Hydra plugin providing `group/option`
    (e.g. hydra/launcher/submitit_slurm: hydra-submitit-launcher, the `slurm` extra), read
    from the package's own requirements, or None."""
    if not group.startswith("hydra/"):
        return None
    for extra, requirement in _extras():
        # Hydra plugins are named hydra-<x>-<kind> and provide configs named <x>[_...]
        m = re.match(r"hydra-([a-z0-9]+)-[a-z]+", requirement)
        if m and option.split("_")[0] == m.group(1):
            return extra
    return None


def _extras() -> list[tuple[str, str]]:
    """(extra, requirement name) for every optional requirement of the commsgd package."""
    from importlib import metadata

    try:
        requires = metadata.requires("commsgd") or []
    except metadata.PackageNotFoundError:
        return []
    out = []
    for r in requires:
        m = re.match(r"([A-Za-z0-9_.-]+).*;\s*extra\s*==\s*['\"]([^'\"]+)['\"]", r)
        if m:
            out.append((m.group(2), m.group(1).lower()))
    return out


def _unknown_key(full_key: str, parent) -> str:
    from suite.config import refused_key

    group_option = refused_key(full_key, parent)  # a key an option of a group does not have
    if group_option is not None:
        return str(group_option)
    path, _, key = full_key.rpartition(".")
    allowed = [] if parent is None else [k for k in parent.keys() if k != "hydra" or path]
    if path and not allowed:
        return f"{full_key} is not a key: {path} holds a value, not keys"
    where = f"of {path}" if path else "at the top level"
    if path and "name" in allowed and parent.get("name") is not None:
        where = f"of {path}={parent.get('name')}"
    hint = did_you_mean(key, allowed, prefix=f"{path}." if path else "")
    return f"{full_key} is not a key {where}; allowed: {', '.join(map(str, allowed))}{hint}"


class _WithoutJobFailedLine:
    """stderr, minus Hydra's 'Error executing job with overrides: [...]' line: the one-line
    message printed after it names the problem (and the job's overrides stay in the run's
    tags)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith(_JOB_FAILED):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def run_app(app, user_errors: tuple[type[BaseException], ...]) -> int:
    """Run the Hydra app; the exit status, with every mistake reported in one line."""
    full = os.environ.get(FULL_ERROR, "") not in ("", "0")
    if full:  # the user asked for Hydra's complete traces
        app()
        return 0
    os.environ[FULL_ERROR] = "1"  # Hydra raises its errors: they are reported below
    stderr = sys.stderr
    try:
        check_options(sys.argv[1:])
        sys.stderr = _WithoutJobFailedLine(stderr)
        app()
        return 0
    except KeyboardInterrupt:
        _say(stderr, "interrupted (Ctrl-C); a run that had started is recorded as KILLED")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        _say(stderr, f"usage error: {exc}")
        return EXIT_USAGE
    except user_errors as exc:  # a job of a sweep refused its config
        if not getattr(exc, "commsgd_reported", False):  # the job said it already
            from suite.errors import one_line

            _say(stderr, one_line(exc).removeprefix("commsgd: "))
        return EXIT_USAGE
    except Exception as exc:
        line = describe(exc)
        if line is None:
            raise
        _say(stderr, f"configuration error: {line}")
        return EXIT_USAGE
    finally:
        sys.stderr = stderr


def _say(stream, line: str) -> None:
    stream.write(f"commsgd: {' '.join(line.split())}\n")
    stream.flush()
