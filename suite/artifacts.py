"""What a run leaves beside its metrics: the curves as a table, and (when asked) a plot.

The table is built and written with the standard library, not pandas: importing pandas costs
about 1.5 s of a fresh process's start-up, and a run only needs one CSV. It holds what
`pandas.pivot_table(index="step", columns="key", aggfunc="last")` made of the history and
`DataFrame.to_csv` wrote, cell for cell (tests/test_artifacts.py compares the two): one row per
step, one column per metric in sorted order, the last non-NaN value logged for a (key, step),
an empty cell where there is none, and rows and columns without any value left out.

The convergence plot (matplotlib, ~0.5 s a run) is drawn only when asked (`tracking.plot=true`):
plots are a view of the runs, produced by `commsgd-report` (analysis/) over whole sweeps.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Curves:
    """The history as a table: `columns[key][i]` is the value at `steps[i]` (NaN: none)."""

    steps: list[int]
    columns: dict[str, list[float]]

    @property
    def empty(self) -> bool:
        return not self.steps

    def __contains__(self, key: str) -> bool:
        return key in self.columns


def curves(history: list[tuple[str, float, int]]) -> Curves:
    """Long (key, value, step) records -> one row per step, one column per metric."""
    cells: dict[tuple[str, int], float] = {}
    for key, value, step in history:
        value = float(value)
        if not math.isnan(value) or (key, step) not in cells:
            cells[key, step] = value  # the last value that is a number wins
    present = {(k, s): v for (k, s), v in cells.items() if not math.isnan(v)}
    steps = sorted({s for _, s in present})
    row = {s: i for i, s in enumerate(steps)}
    # filled cell by cell, not looked up per (key, step): most cells of a run's table are
    # empty (train/lr at every step, the other metrics every eval_every)
    columns = {k: [math.nan] * len(steps) for k in sorted({k for k, _ in present})}
    for (k, s), v in present.items():
        columns[k][row[s]] = v
    return Curves(steps, columns)


def write_curves(table: Curves, out_dir: Path) -> Path:
    path = out_dir / "curves.csv"
    # each column's cells as text (v != v: NaN, an empty cell), then the rows in one call
    cells = [["" if v != v else repr(v) for v in col] for col in table.columns.values()]
    with path.open("w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["step", *table.columns])
        out.writerows(zip(table.steps, *cells, strict=True))
    return path


def plot_convergence(table: Curves, out_dir: Path, title: str) -> Path | None:
    """Suboptimality (log scale) against iterations and against bits sent per worker."""
    key = "train/suboptimality" if "train/suboptimality" in table else "train/loss"
    if key not in table:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = table.columns.get("comm/bits_up")
    rows = [i for i, v in enumerate(table.columns[key])
            if not math.isnan(v) and (bits is None or not math.isnan(bits[i]))]
    steps = [table.steps[i] for i in rows]
    positive = [max(table.columns[key][i], 1e-300) for i in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].semilogy(steps, positive)
    axes[0].set_xlabel("iteration t")
    axes[0].set_ylabel(key)
    if bits is not None:
        # a log axis has no place for the start, 0 bits
        sent = [(bits[i], p) for i, p in zip(rows, positive, strict=True) if bits[i] > 0]
        axes[1].loglog([b for b, _ in sent], [p for _, p in sent])
        axes[1].set_xlabel("bits sent up per worker (cumulative)")
        axes[1].set_ylabel(key)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = out_dir / "convergence.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
