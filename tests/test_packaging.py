"""The installed package: a wheel built from the checkout holds every config file and the
suite's entry points, and a non-editable install into a fresh virtual environment runs
`commsgd-run` from an empty directory (no checkout on its path)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# not part of what a build reads: caches, stores, virtual environments, examples
IGNORED = (".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "outputs", "multirun",
           "mlruns*", "mlartifacts", "checkpoints", "reports", ".pytest_cache", ".ruff_cache",
           ".hypothesis", "examples", "docs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(*IGNORED))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (built,) = (tmp / "dist").glob("commsgd-*.whl")
    return built


def test_the_wheel_holds_every_config_file_and_the_entry_points(wheel):
    conf = {p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*")
            if p.is_file()}
    assert len(conf) > 40 and "config.yaml" in conf
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = {n[len("suite/conf/"):] for n in names if n.startswith("suite/conf/")}
        assert shipped == conf
        for name in sorted(conf):  # byte for byte
            assert z.read(f"suite/conf/{name}") == (ROOT / "conf" / name).read_bytes(), name
        assert "hydra_plugins/commsgd/searchpath.py" in names
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = z.read(entry_points).decode()
    for group in ("commsgd.algorithms", "commsgd.compressors", "commsgd.tasks"):
        assert f"[{group}]" in text


def test_a_non_editable_install_runs_from_an_empty_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    # the dependencies (torch, hydra, mlflow, ...) from this environment's site-packages, as a
    # plain path: its .pth files (this checkout's editable install) are not processed
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    (venv / purelib.split(str(venv) + os.sep, 1)[1] / "dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--quiet", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    where = subprocess.run([str(python), "-c", "import suite, suite.cli; "
                            "print(suite.__file__); print(suite.cli.CONF_DIR)"], cwd=empty,
                           env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where
    proc = subprocess.run([str(venv / "bin" / "commsgd-run"), "steps=5", "tracking=none",
                           "progress=false"], cwd=empty, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "commsgd: run finished" in proc.stdout
    assert not (empty / "mlruns.db").exists()  # tracking=none wrote no store
