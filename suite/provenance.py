"""How a run was started, as MLflow tags: the command line, the job's own overrides, the user.

    commsgd.command      the command as typed, e.g. `commsgd-run -m seed=0,1 workers=4`
    commsgd.overrides    this job's overrides (in a sweep, one combination: `seed=1 workers=4`)
    mlflow.source.name   the entry point (`commsgd-run`): the UI's "Source" column
    mlflow.source.type   LOCAL
    mlflow.user          the user who ran it: the UI's "Created by"

The command line is read in the process the user started (`remember_command`, called by the
CLI) and handed to the processes that run the jobs through the environment (COMMSGD_COMMAND):
joblib and SLURM workers, and the ranks of a distributed job, have argv of their own. The
overrides are the job's (`remember_overrides`, per job, from Hydra), in the same way.
"""

from __future__ import annotations

import getpass
import os
import shlex
import sys
from pathlib import Path

COMMAND_ENV = "COMMSGD_COMMAND"
OVERRIDES_ENV = "COMMSGD_OVERRIDES"


def entry_point(argv0: str) -> str:
    """`commsgd-run`, or `python -m suite` for `python -m suite ...` (argv[0] is then the
    package's __main__.py)."""
    name = Path(argv0).name
    return "python -m suite" if name == "__main__.py" else name


def remember_command(argv: list[str] | None = None) -> None:
    """Record this process's command line for the jobs it starts (the first caller wins: a
    job started by another commsgd process keeps that one's command)."""
    argv = sys.argv if argv is None else argv
    if COMMAND_ENV not in os.environ:
        os.environ[COMMAND_ENV] = _command(argv)


def remember_overrides(overrides: list[str]) -> None:
    """Record the overrides of the job about to run (Hydra's hydra.overrides.task)."""
    os.environ[OVERRIDES_ENV] = " ".join(map(shlex.quote, overrides))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER (some containers)
        return "unknown"


def _command(argv: list[str]) -> str:
    return " ".join([entry_point(argv[0]), *map(shlex.quote, argv[1:])])


def tags() -> dict[str, str]:
    command = os.environ.get(COMMAND_ENV) or _command(sys.argv)
    module = "python -m suite"
    return {
        "commsgd.command": command,
        "commsgd.overrides": os.environ.get(OVERRIDES_ENV, ""),
        "mlflow.source.name": module if command.startswith(module) else command.split(" ")[0],
        "mlflow.source.type": "LOCAL",
        "mlflow.user": _user(),
    }
