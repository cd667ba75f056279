"""Figures of the report, as PNG bytes (matplotlib, Agg backend: no display needed).

- `convergence`: seed-mean suboptimality of each method of one problem against iterations,
  uplink bits per worker and wall seconds, with a band over seeds (min to max);
- `profile`: performance profiles of bits-to-target (the fraction of problems on which a
  method is within a factor τ of the best method, against τ);
- `speedup`: measured S(K) against K beside the linear ideal.
Sizes and resolution are kept small: the sample report, PNGs plus the HTML that embeds them,
stays under a few MB.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .groups import SUBOPT, Group  # noqa: E402

DPI = 80


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def convergence(groups: list[Group], title: str, eps: float | None = None) -> bytes:
    """Three panels: f − f* against iterations, bits up per worker and wall time."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    xs = (("iterations", None), ("uplink bits per worker", "comm/bits_up"),
          ("wall time [s]", "time/wall_s"))
    for g, color in zip(groups, _colors(len(groups)), strict=True):
        c = g.ended
        Y = c[SUBOPT]
        if Y.size == 0:
            continue
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(Y, axis=0)
            lo, hi = np.nanmin(Y, axis=0), np.nanmax(Y, axis=0)
        for ax, (_, key) in zip(axes, xs, strict=True):
            x = c.steps if key is None else np.nanmean(c[key], axis=0)
            ok = np.isfinite(x) & np.isfinite(mean) & (mean > 0)
            ax.plot(x[ok], mean[ok], color=color, lw=1.4, label=g.method)
            band = ok & (lo > 0)
            ax.fill_between(x[band], lo[band], hi[band], color=color, alpha=0.15, lw=0)
    for ax, (name, _) in zip(axes, xs, strict=True):
        ax.set_yscale("log")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3, which="both", lw=0.4)
        if eps is not None:
            ax.axhline(eps, color="k", ls=":", lw=1)
    axes[0].set_ylabel("f(x) − f*  (seed mean, band: min–max)")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def profile(ratios: dict[str, np.ndarray], title: str) -> bytes:
    """ratios: method -> its cost ratios r_p = cost / best cost over the problems it ran on
    (+∞ where it did not reach the target). Plots ρ(τ) = fraction of problems with r_p ≤ τ."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    finite = np.concatenate([r[np.isfinite(r)] for r in ratios.values()] or [np.ones(1)])
    tmax = max(2.0, float(finite.max()) * 1.2)
    taus = np.geomspace(1.0, tmax, 400)
    for (name, r), color in zip(ratios.items(), _colors(len(ratios)), strict=True):
        frac = (r[None, :] <= taus[:, None]).mean(axis=1)
        ax.step(taus, frac, where="post", color=color, lw=1.4, label=name)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("τ (bits-to-target / best method's bits-to-target)")
    ax.set_ylabel("fraction of problems within τ")
    ax.grid(alpha=0.3, which="both", lw=0.4)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def speedup(series: dict[str, tuple[list[int], list[float], list[float], list[float]]],
            title: str) -> bytes:
    """series: label -> (K, S, S_lo, S_hi); a log-log plot with the ideal S = K."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    Kmax = 1
    for (name, (K, S, lo, hi)), color in zip(series.items(), _colors(len(series)), strict=True):
        K, S, lo, hi = (np.asarray(a, dtype=float) for a in (K, S, lo, hi))
        ok = np.isfinite(S) & (S > 0)
        Kmax = max(Kmax, int(K.max()))
        err = np.vstack([S - np.where(np.isfinite(lo) & (lo > 0), lo, S),
                         np.where(np.isfinite(hi), hi, S) - S])
        ax.errorbar(K[ok], S[ok], yerr=err[:, ok], color=color, marker="o", ms=3, lw=1.2,
                    capsize=2, label=name)
    ks = np.array([1, Kmax])
    ax.plot(ks, ks, "k--", lw=1, label="linear S = K")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("workers K")
    ax.set_ylabel("speedup S(K) = T_ε(1)/T_ε(K)")
    ax.grid(alpha=0.3, which="both", lw=0.4)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return _png(fig)
