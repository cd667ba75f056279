"""Figures of the report, as PNG bytes (matplotlib, Agg backend: no display needed).

- `convergence`: seed-mean suboptimality of each method of one problem against iterations,
  uplink bits per worker and wall seconds, with a band over seeds (min to max);
- `targets`: the cost to each target level of one problem against the level's depth;
- `profile`: performance profiles of the cost to target (the fraction of problems on which a
  method is within a factor τ of the best method, against τ);
- `speedup`: measured S(K) against K beside the linear ideal.

Each has a `*_figure` twin that returns the matplotlib Figure, for tests that inspect the
rendered text. Readability at 100% zoom: 100 dpi, 10 pt text (14 px) and 9 pt legends (12.5 px),
legends outside the axes so that they hide no curve, at most a handful of ticks per axis, and
engineering notation on the bits and seconds axes ('1.5 Mbit', '200 ms') instead of long
integers that run into each other. The sample report, PNGs plus the HTML that embeds them, stays
a few MB.
"""

from __future__ import annotations

import io
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    EngFormatter,
    FixedLocator,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    ScalarFormatter,
)

from .groups import SUBOPT, Group  # noqa: E402

DPI = 100
FONT_PT = 10
LEGEND_PT = 9
STYLE = {"font.size": FONT_PT, "axes.titlesize": FONT_PT + 1, "axes.labelsize": FONT_PT,
         "xtick.labelsize": FONT_PT - 1, "ytick.labelsize": FONT_PT - 1,
         "legend.fontsize": LEGEND_PT, "figure.titlesize": FONT_PT + 2}
COST_AXIS = {"bits": "uplink bits per worker", "iterations": "iterations",
             "seconds": "wall seconds"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _styles(n: int):
    """Colour and line style per curve: beyond the palette's colours, dashes tell them apart."""
    colors = _colors(n)
    dashes = ["-", "--", ":", "-."]
    width = 10 if n <= 10 else 20
    return [(colors[i], dashes[(i // width) % len(dashes)]) for i in range(n)]


def _legend_columns(labels: list[str], width_chars: int) -> int:
    longest = max((len(s) for s in labels), default=1) + 6  # the line sample and padding
    return max(1, min(len(labels), width_chars // longest))


def _log_y(ax) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _plotted(groups: list[Group]) -> tuple[str, str]:
    """(key, y label): f − f* where the task knows f*, else the training loss (a network's
    task has no f*: its runs log no suboptimality, and a log axis of nothing cannot be drawn)."""
    for g in groups:
        Y = g.ended[SUBOPT]
        if Y.size and bool((np.isfinite(Y) & (Y > 0)).any()):
            return SUBOPT, "f(x) − f*  (seed mean, band: min–max)"
    return "train/loss", "training loss  (no f* known; seed mean, band: min–max)"


def convergence_figure(groups: list[Group], title: str, eps: float | None = None):
    """Three panels: f − f* (the training loss where f* is unknown) against iterations,
    uplink bits per worker and wall time."""
    key_y, y_label = _plotted(groups)
    if key_y != SUBOPT:
        eps = None  # a target is a level of f − f*
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), sharey=True, layout="constrained",
                                 dpi=DPI)
        xs = (("iterations", None, None), ("uplink bits per worker", "comm/bits_up", "bit"),
              ("wall time", "time/wall_s", "s"))
        handles = []
        for g, (color, ls) in zip(groups, _styles(len(groups)), strict=True):
            c = g.ended
            Y = c[key_y]
            if Y.size == 0:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps: no curve there
                mean = np.nanmean(Y, axis=0)
                lo, hi = np.nanmin(Y, axis=0), np.nanmax(Y, axis=0)
            for ax, (_, key, _) in zip(axes, xs, strict=True):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    x = c.steps if key is None else np.nanmean(c[key], axis=0)
                ok = np.isfinite(x) & np.isfinite(mean) & (mean > 0)
                (line,) = ax.plot(x[ok], mean[ok], color=color, ls=ls, lw=1.5, label=g.method)
                band = ok & (lo > 0)
                ax.fill_between(x[band], lo[band], hi[band], color=color, alpha=0.15, lw=0)
            handles.append(line)
        for ax, (name, _, unit) in zip(axes, xs, strict=True):
            _log_y(ax)
            ax.set_xlabel(name)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=2))
            if unit:
                ax.xaxis.set_major_formatter(EngFormatter(unit=unit, places=None, sep=" "))
            ax.grid(alpha=0.3, which="both", lw=0.4)
            if eps is not None:
                ax.axhline(eps, color="k", ls=":", lw=1)
        axes[0].set_ylabel(y_label)
        if handles:
            labels = [h.get_label() for h in handles]
            fig.legend(handles, labels, loc="outside lower center",
                       ncol=_legend_columns(labels, 150), frameon=False)
        fig.suptitle(title)
    return fig


def convergence(groups: list[Group], title: str, eps: float | None = None) -> bytes:
    return _png(convergence_figure(groups, title, eps))


def targets_figure(curves: dict[str, tuple[list[float], list[float], list[float], list[float]]],
                   title: str, cost: str = "bits"):
    """curves: method -> (levels r, cost to r·F0, lo, hi) at the levels it reaches (lower median
    over seeds, finite). One line per method against the depth of the target: where a line
    stops, the method stopped reaching targets; a hollow marker has an interval reaching ∞."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 4.6), layout="constrained", dpi=DPI)
        for (name, (r, v, lo, hi)), (color, ls) in zip(curves.items(), _styles(len(curves)),
                                                        strict=True):
            r, v, lo, hi = (np.asarray(a, dtype=float) for a in (r, v, lo, hi))
            if r.size == 0:
                continue
            open_ = ~np.isfinite(hi)
            err = np.vstack([v - np.where(np.isfinite(lo), lo, v),
                             np.where(open_, 0.0, hi - v)])
            ax.errorbar(r, v, yerr=err, color=color, ls=ls, lw=1.3, capsize=2, marker="o",
                        ms=4, label=name)
            if open_.any():
                ax.plot(r[open_], v[open_], "o", ms=7, mfc="white", mec=color)
        ax.set_xscale("log")
        ax.invert_xaxis()  # deeper targets to the right
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=8))
        ax.xaxis.set_minor_formatter(NullFormatter())
        _log_y(ax)
        if cost in ("bits", "seconds"):
            ax.yaxis.set_major_formatter(EngFormatter(unit="bit" if cost == "bits" else "s",
                                                      sep=" "))
        ax.set_xlabel("target ε / F0 (deeper to the right)")
        ax.set_ylabel(f"{COST_AXIS.get(cost, cost)} to ε (median over seeds)")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                      ncol=1 if len(curves) <= 16 else 2)
        else:
            ax.text(0.5, 0.5, "no method reaches a target", transform=ax.transAxes,
                    ha="center", va="center")
        ax.set_title(title)
    return fig


def targets(curves, title: str, cost: str = "bits") -> bytes:
    return _png(targets_figure(curves, title, cost))


def profile_figure(ratios: dict[str, np.ndarray], title: str, cost: str = "bits"):
    """ratios: method -> its cost ratios r_p = cost / best cost over the problems it ran on
    (+∞ where it did not reach the target). Plots ρ(τ) = fraction of problems with r_p ≤ τ."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 4.6), layout="constrained", dpi=DPI)
        finite = np.concatenate([r[np.isfinite(r)] for r in ratios.values()] or [np.ones(1)])
        tmax = max(2.0, float(finite.max()) * 1.2)
        taus = np.geomspace(1.0, tmax, 400)
        for (name, r), (color, ls) in zip(ratios.items(), _styles(len(ratios)), strict=True):
            frac = (r[None, :] <= taus[:, None]).mean(axis=1)
            ax.step(taus, frac, where="post", color=color, ls=ls, lw=1.5, label=name)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=6))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"τ ({COST_AXIS.get(cost, cost)} to target / the best method's)")
        ax.set_ylabel("fraction of problems within τ")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ncol = 1 if len(ratios) <= 16 else 2
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=ncol, frameon=False)
        ax.set_title(title)
    return fig


def profile(ratios: dict[str, np.ndarray], title: str, cost: str = "bits") -> bytes:
    return _png(profile_figure(ratios, title, cost))


def speedup_figure(series: dict[str, tuple[list[int], list[float], list[float], list[float]]],
                   title: str):
    """series: label -> (K, S, S_lo, S_hi); a log-log plot with the ideal S = K."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 4.6), layout="constrained", dpi=DPI)
        Ks = {1}
        for (name, (K, S, lo, hi)), (color, ls) in zip(series.items(), _styles(len(series)),
                                                        strict=True):
            K, S, lo, hi = (np.asarray(a, dtype=float) for a in (K, S, lo, hi))
            ok = np.isfinite(S) & (S > 0)
            Ks |= {int(k) for k in K}
            err = np.vstack([S - np.where(np.isfinite(lo) & (lo > 0), lo, S),
                             np.where(np.isfinite(hi), hi, S) - S])
            ax.errorbar(K[ok], S[ok], yerr=err[:, ok], color=color, ls=ls, marker="o", ms=3,
                        lw=1.2, capsize=2, label=name)
        ks = np.array([1, max(Ks)])
        ax.plot(ks, ks, "k--", lw=1, label="linear S = K")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ticks = sorted(Ks)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("workers K")
        ax.set_ylabel("speedup S(K) = T_ε(1)/T_ε(K)")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.set_title(title)
    return fig


def speedup(series: dict[str, tuple[list[int], list[float], list[float], list[float]]],
            title: str) -> bytes:
    return _png(speedup_figure(series, title))
