"""Shared fixtures: compose the real Hydra config with overrides, run jobs in a temp store."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent

# pytest-xdist runs two test processes on two cores; torch's default of one thread per core in
# each would oversubscribe them, and tiny batched kernels then run hundreds of times slower.
torch.set_num_threads(1)
CONF = str(ROOT / "conf")

# A shell starts a background command (`make test &`, nohup) with SIGINT ignored, and every
# process it starts inherits that: the runs the tests interrupt with Ctrl-C would then, rightly,
# ignore it. The tests' processes react to Ctrl-C as a user's foreground run does.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # constants and data caches go to a per-session temp dir, never the user's ~/.cache
    os.environ.setdefault("COMMSGD_DATA", str(tmp_path_factory.mktemp("commsgd-data")))


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    # An app run in this process (Hydra's job logging) points the root logger at the stderr of
    # the test that ran it; a later test's warning would then go to a closed capture stream.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def make_cfg(*overrides: str):
    """The composed config, exactly as `commsgd-run <overrides>` would see it (no tracking,
    no progress bar unless asked)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config",
                       overrides=["tracking=none", "progress=false", *overrides])


def run_cli(*args: str, cwd: Path, check: bool = True, timeout: int = 300):
    """`python -m suite <args>` in cwd, importing this checkout (not an installed copy)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "suite", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc
