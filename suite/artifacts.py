"""What a run leaves beside its metrics: the curves as a table and convergence plots."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def history_frame(history: list[tuple[str, float, int]]) -> pd.DataFrame:
    """Long (key, value, step) records -> one row per step, one column per metric."""
    if not history:
        return pd.DataFrame()
    long = pd.DataFrame(history, columns=["key", "value", "step"])
    wide = long.pivot_table(index="step", columns="key", values="value", aggfunc="last")
    return wide.sort_index()


def write_curves(frame: pd.DataFrame, out_dir: Path) -> Path:
    path = out_dir / "curves.csv"
    frame.to_csv(path)
    return path


def plot_convergence(frame: pd.DataFrame, out_dir: Path, title: str) -> Path | None:
    """Suboptimality (log scale) against iterations and against bits sent per worker."""
    key = "train/suboptimality" if "train/suboptimality" in frame else "train/loss"
    if key not in frame or frame[key].dropna().empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = frame[[c for c in (key, "comm/bits_up") if c in frame]].dropna()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    positive = curve[key].clip(lower=1e-300)
    axes[0].semilogy(curve.index, positive)
    axes[0].set_xlabel("iteration t")
    axes[0].set_ylabel(key)
    if "comm/bits_up" in curve:
        sent = curve["comm/bits_up"] > 0  # a log axis has no place for the start, 0 bits
        axes[1].loglog(curve["comm/bits_up"][sent], positive[sent])
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
