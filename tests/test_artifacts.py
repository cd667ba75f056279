"""A run's files beside its metrics (suite/artifacts.py) and what starting the program imports.

- curves.csv is written with the standard library; it must hold, cell for cell, what pandas'
  pivot_table + to_csv wrote before (the analysis and users read it with pandas).
- the convergence plot is drawn only with tracking.plot=true, and a run without it never
  imports matplotlib.
- `import suite.cli` (what `commsgd-run --help` and every Tab press start) imports none of the
  heavy optional modules; a run imports only what it uses.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from suite import artifacts
from suite.runner import execute
from tests.conftest import ROOT, make_cfg

FAST = ("steps=20", "workers=2", "eval_every=10", "task.l2=0.01")


def pandas_csv(history, path):
    """How curves.csv was written before (pandas), for comparison."""
    long = pd.DataFrame(history, columns=["key", "value", "step"])
    wide = long.pivot_table(index="step", columns="key", values="value", aggfunc="last")
    wide.sort_index().to_csv(path)
    return path.read_text()


HISTORIES = {
    "a run's": [(k, v * (s + 1), s) for s in range(0, 50, 10)
                for k, v in (("train/loss", 0.693), ("comm/bits_up", 960.0),
                             ("time/wall_s", 1e-5))]
               + [("train/lr", 0.1 / (1 + t), t) for t in range(50)],
    "edge cases": [
        ("b", 1.0, 0), ("a", 2.0, 0), ("a", 3.0, 0),       # the last value of a step wins
        ("a", float("nan"), 1), ("b", 4.0, 1),              # a NaN is an empty cell
        ("a", 5.0, 2), ("a", float("nan"), 2),              # ... and does not hide a number
        ("c", float("nan"), 3),                             # a step / key with only NaN: gone
        ("a", float("inf"), 4), ("b", -float("inf"), 4),    # infinities are written
        ("b", 1e300, 5), ("a", 0.1 + 0.2, 5), ("a", 123456789.0, 6), ("b", -0.0, 6),
        ("a", 7.0, 10), ("a", 8.0, 9),                      # steps out of order
    ],
}


@pytest.mark.parametrize("name", HISTORIES)
def test_curves_csv_is_what_pandas_wrote(tmp_path, name):
    history = HISTORIES[name]
    expected = pandas_csv(history, tmp_path / "pandas.csv")
    table = artifacts.curves(history)
    path = artifacts.write_curves(table, tmp_path)
    assert path.read_text() == expected
    # and it reads back to the same numbers
    back = pd.read_csv(path, index_col="step")
    assert list(back.columns) == list(table.columns)
    for key, column in table.columns.items():
        for got, want in zip(back[key], column, strict=True):
            assert (math.isnan(got) and math.isnan(want)) or got == want


def test_no_history_no_curves():
    assert artifacts.curves([]).empty
    assert artifacts.curves([("a", float("nan"), 0)]).empty


@pytest.mark.parametrize("plot", [False, True])
def test_the_plot_is_drawn_only_when_asked(tmp_path, plot):
    cfg = make_cfg(*FAST, f"tracking.plot={str(plot).lower()}")
    result = execute(cfg, launch_dir=tmp_path, output_dir=tmp_path / "out")
    assert result.status == "FINISHED"
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.yaml", "curves.csv"} <= files
    assert ("convergence.png" in files) == plot
    if plot:
        assert (tmp_path / "out" / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def imported_after(code: str, *args: str) -> set[str]:
    """The modules of HEAVY that a fresh interpreter holds after running `code`."""
    probe = (f"import sys\n{code}\nimport json\n"
             f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


HEAVY = ("sklearn", "torchvision", "tasks.cifar10", "tasks.cifar_data", "tasks.libsvm",
         "mlflow", "sqlalchemy", "matplotlib", "pandas", "scipy")


def test_importing_the_cli_imports_nothing_heavy():
    assert imported_after("import suite.cli") == set()


@pytest.mark.parametrize("dataset", ["synthetic", "breast_cancer"])
def test_a_run_imports_only_what_it_uses(tmp_path, dataset):
    """tracking=none, no plot: no data-set library, no MLflow, no plotting, no pandas. The
    default data set, breast_cancer, is read from scikit-learn's bundled file without importing
    scikit-learn (~1.3 s). (scipy is imported to compute the task's constants, once per data
    set; with them cached it is not.)"""
    run = ("from tests.conftest import make_cfg\nfrom suite.runner import execute\n"
           "from pathlib import Path\n"
           f"r = execute(make_cfg('task.dataset={dataset}', *{FAST!r}), "
           f"launch_dir=Path({str(tmp_path)!r}), output_dir=Path({str(tmp_path / 'o')!r}))\n"
           "assert r.status == 'FINISHED', r.reason")
    imported_after(run)  # computes and caches the constants
    assert imported_after(run) == set()
