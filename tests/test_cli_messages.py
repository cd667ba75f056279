"""Every mistake on the command line is one line, exit 2; Ctrl-C is one line, exit 130; and
`--help` names the app, its groups and its top-level keys, from the config itself."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from suite import cli_errors
from suite.cli_help import top_level_keys
from tests.conftest import ROOT, run_cli

CONF = ROOT / "conf"
QUIET = ("tracking=none", "progress=false", "steps=2")


def one_line(proc) -> str:
    """The command's stderr, which must be exactly one line starting with 'commsgd: '."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("commsgd: ") and "Traceback" not in proc.stderr
    return lines[0]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# (arguments, what the one line must contain): the key or option, what is allowed, and the
# suggestion where one is close
MISTAKES = [
    (["algorithm=sdg"], ["algorithm=sdg is not an option of group algorithm",
                         ", ".join(group_options("algorithm")), "did you mean algorithm=sgd?"]),
    (["compressor=qsgdd"], ["compressor=qsgdd", "did you mean compressor=qsgd?"]),
    (["-m", "algorithm=sgd,sdg"], ["algorithm=sdg is not an option", "algorithm=sgd?"]),
    (["experiment=nope"], ["experiment=nope is not an option of group experiment",
                           "diana_vs_quantized"]),
    (["algoritm=sgd"], ["algoritm is not a key at the top level", "workers, batch_size",
                        "did you mean algorithm?"]),
    (["stpes=100"], ["stpes is not a key", "did you mean steps?"]),
    (["task.datset=w8a"], ["task.datset is not a key of task=logreg", "dataset, path",
                           "did you mean task.dataset?"]),
    (["compressor=qsgd", "compressor.levls=3"], ["compressor.levls is not a key of "
                                                 "compressor=qsgd", "levels, bucket_size",
                                                 "did you mean compressor.levels?"]),
    (["workers.x=1"], ["workers.x is not a key: workers holds a value"]),
    (["lr=[1,2"], ["an override does not parse", "[1,2"]),
    (["--frobnicate"], ["unrecognized arguments: --frobnicate", "allowed options: --cfg"]),
    (["--multirn"], ["--multirn", "did you mean --multirun?"]),
    (["-m", "workers=0,1"], ["workers=0 is not allowed: an integer >= 1"]),
]


class Result:
    def __init__(self, returncode: int, stderr: str):
        self.returncode, self.stderr = returncode, stderr


def run_in_process(args, tmp_path, monkeypatch, capsys) -> Result:
    """What `commsgd-run <args>` does, in this process (a subprocess costs seconds of imports
    each; two tests below check the real console script)."""
    from suite.cli import USER_ERRORS, app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(cli_errors.FULL_ERROR, "")  # run_app sets it; restored afterwards
    monkeypatch.setattr("sys.argv", ["commsgd-run", *args])
    capsys.readouterr()
    try:
        code = cli_errors.run_app(app, USER_ERRORS)
    except SystemExit as exc:  # a single run refused by the suite's own checks
        code = exc.code
    return Result(code, capsys.readouterr().err)


@pytest.mark.parametrize("args, expected", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_command_line_mistake_is_one_line_and_exit_2(args, expected, tmp_path, monkeypatch,
                                                       capsys):
    proc = run_in_process([*args, *QUIET], tmp_path, monkeypatch, capsys)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    line = one_line(proc)
    for text in expected:
        assert text in line, (text, line)


@pytest.mark.parametrize("args, expected", [(["algoritm=sgd"], "did you mean algorithm?"),
                                            (["--frobnicate"], "--frobnicate")])
def test_the_console_script_prints_one_line_and_exits_2(args, expected, tmp_path):
    proc = run_cli(*args, *QUIET, cwd=tmp_path, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert expected in one_line(proc)


def test_a_user_who_asks_for_hydras_full_error_gets_it(tmp_path, monkeypatch):
    from hydra.errors import MissingConfigException

    from suite.cli import USER_ERRORS, app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(cli_errors.FULL_ERROR, "1")
    monkeypatch.setattr("sys.argv", ["commsgd-run", "algorithm=sdg", *QUIET])
    with pytest.raises(MissingConfigException):
        cli_errors.run_app(app, USER_ERRORS)


def test_suggestions_are_only_made_when_close():
    assert cli_errors.did_you_mean("sdg", ["sgd", "diana"], "algorithm=") == \
        " (did you mean algorithm=sgd?)"
    assert cli_errors.did_you_mean("zzzz", ["sgd", "diana"]) == ""


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher")
                    is not None, reason="the slurm extra is installed here: nothing is missing")
def test_the_slurm_launcher_without_its_extra_says_how_to_install_it(tmp_path, monkeypatch,
                                                                     capsys):
    proc = run_in_process(["-m", "hydra/launcher=slurm", "seed=0,1", *QUIET], tmp_path,
                          monkeypatch, capsys)
    assert proc.returncode == 2
    line = one_line(proc)
    assert 'pip install -e ".[slurm]"' in line and "submitit_slurm" in line


def test_the_extra_for_a_plugin_is_read_from_the_package_requirements():
    """The mapping comes from pyproject.toml's extras (hydra-submitit-launcher in `slurm`,
    hydra-joblib-launcher in `joblib`), not from a table of our own."""
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'slurm = \["hydra-submitit-launcher', text)
    assert cli_errors.plugin_extra("hydra/launcher", "submitit_slurm") == "slurm"
    assert cli_errors.plugin_extra("hydra/launcher", "submitit_local") == "slurm"
    assert cli_errors.plugin_extra("hydra/launcher", "joblib") == "joblib"
    assert cli_errors.plugin_extra("hydra/launcher", "ray") is None
    assert cli_errors.plugin_extra("algorithm", "submitit_slurm") is None


# ---------------------------------------------------------------- --help


@pytest.fixture(scope="module")
def help_text(tmp_path_factory):
    proc = run_cli("--help", cwd=tmp_path_factory.mktemp("help"))
    return proc.stdout


def test_help_names_the_app_and_says_how_to_run_it(help_text):
    assert help_text.startswith("commsgd-run: ")
    assert "commsgd-run -m key=a,b" in help_text
    assert "Shell completion (bash): eval \"$(commsgd-run -sc install=bash)\"" in help_text


def test_help_lists_every_group_with_its_options_on_one_line(help_text):
    for group in ("task", "algorithm", "compressor", "downlink", "hardware", "tracking",
                  "experiment"):
        line = f"{group}: {', '.join(group_options(group))}"
        assert line in help_text.splitlines(), line


def test_help_lists_every_top_level_key_with_its_default_and_comment(help_text):
    """One line per top-level key of conf/config.yaml, as the file says it: the parser and the
    YAML agree on the keys and defaults, and each line shows the key's own comment."""
    config = yaml.safe_load((CONF / "config.yaml").read_text())
    keys = [k for k in config if k not in ("defaults", "hydra")]
    parsed = top_level_keys()
    assert [k for k, _, _ in parsed] == keys
    lines = help_text.splitlines()
    for key, default, comment in parsed:
        assert yaml.safe_load(default) == config[key], key
        (line,) = [ln for ln in lines if ln.strip().startswith(f"{key}=")]
        assert line.strip().startswith(f"{key}={default} ") or line.strip() == f"{key}={default}"
        assert comment.split()[0] in line, (key, comment)


def hydra_listing(reuse: bool) -> tuple[str, str]:
    """Hydra's own listing of the app's groups and of its own groups (what --help prints),
    made with Hydra's per-question repositories or with suite.cli_help's one repository."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from suite.cli_help import one_repository_per_listing

    GlobalHydra.instance().clear()
    try:
        hydra = Hydra.create_main_hydra2("commsgd", create_config_search_path(str(CONF)))
        with one_repository_per_listing() if reuse else contextlib.nullcontext():
            return (hydra.format_config_groups(lambda g: not g.startswith("hydra")),
                    hydra.format_config_groups(lambda g: g.startswith("hydra")))
    finally:
        GlobalHydra.instance().clear()


def test_help_lists_the_groups_as_hydra_does_with_one_repository():
    """The help's shortcut (one config repository for every listing) changes no line of
    Hydra's listing, of the app's groups or of Hydra's own, and puts Hydra's method back."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    hydras_own = ConfigLoaderImpl.get_group_options
    app_groups, hydra_groups = hydra_listing(reuse=False)
    assert hydra_listing(reuse=True) == (app_groups, hydra_groups)
    assert ConfigLoaderImpl.get_group_options is hydras_own
    assert f"downlink: {', '.join(group_options('downlink'))}" in app_groups.splitlines()
    assert "hydra/sweeper: basic, commsgd" in hydra_groups.splitlines()


def test_help_and_a_completion_request_import_no_torch():
    """`--help` and a Tab press never import torch (~2 s): every option of the suite, down-link
    options included, has a YAML preset, so no config node is generated from a factory."""
    probe = ("import sys, json, os\nfrom suite.cli import main\ntry:\n    main()\n"
             "except SystemExit:\n    pass\n"
             "print(json.dumps([m for m in ('torch', 'mlflow') if m in sys.modules]))")
    for argv, env in ((["--help"], {}),
                      (["-sc", "query=bash"], {"COMP_LINE": "commsgd-run downlink=",
                                               "COMP_POINT": "21"})):
        proc = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, text=True,
                              capture_output=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(ROOT), **env))
        assert proc.returncode == 0, proc.stderr[-3000:]
        *shown, modules = proc.stdout.strip().splitlines()
        assert json.loads(modules) == [], argv
        assert "topk" in "\n".join(shown), argv  # the down-link options were listed


def test_help_comes_from_the_config_not_a_copy():
    """The help option only asks for the resolver; no key is written out twice."""
    option = yaml.safe_load((CONF / "hydra" / "help" / "commsgd.yaml").read_text())
    assert option["template"] == "${commsgd_help:}"
    assert "workers" not in Path(ROOT / "suite" / "cli_help.py").read_text().split('"""', 2)[2]
