"""Empirical rates over seeds, with bootstrap confidence intervals (docs/theory.md §8).

Every fit takes a matrix Y[S, n]: one row per seed, one column per logged step, and returns a
point estimate from the seed-MEAN curve m = mean_s Y[s] (theorems bound expectations, so we fit
log m, not mean log, §8) and a 95% interval from the bootstrap over seeds: resample S seeds with
replacement, rebuild the mean curve, refit, take the 2.5/97.5 percentiles. All resamples are
refitted at once with numpy (an array of B mean curves), never a Python loop over resamples.

- `linear_rate`: ρ̂ from OLS of log m_k on k over an automatic window (§8a).
- `power_law`: p̂ from WLS of log m_T on log T over the asymptotic range (§8c).
- `tail_floor`, `joint_floor`: the neighbourhood floor, as a tail mean after a plateau test or
  as F in m_k = F + Cρ^k by weighted least squares (§8b).
- `hitting`, `censored_median`, `time_to_target`: iterations/bits/seconds to reach ε, with runs
  that never reach it kept as censored (+∞), never dropped (§8d).
- `speedup`: S(K) = T_ε(1)/T_ε(K), β̂ in log S = β log K, efficiency S/K (§8d).

Percentiles use numpy's 'lower'/'higher' methods so that censored (+∞) or degenerate (−∞)
replicates give honest infinite bounds instead of NaN interpolations.

Small numbers of seeds. The plain percentile bootstrap is too narrow when S is small: it
resamples from the empirical distribution, whose variance is (S−1)/S of the population's, and
it uses normal rather than Student quantiles. `interval` therefore widens the percentile
distances from the point estimate by √(S/(S−1))·t_{S−1}/z, which turns the percentile interval
of a mean of normal data into exactly Student's t-interval while keeping the bootstrap's
asymmetry elsewhere (×1.22 at S = 10, ×2.7 at S = 3; with one seed there is no interval). The
synthetic-coverage tests (tests/test_analysis.py) measure the result. Censored medians keep
plain percentiles: they are order statistics, and their +∞ bounds are the honest part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

EPS = float(np.finfo(np.float64).eps)
N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a bootstrap interval [lo, hi]; NaN when it could not be fitted."""

    value: float
    lo: float = math.nan
    hi: float = math.nan
    note: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.value)

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi


NAN = Estimate(math.nan)


def _percentiles(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    a = (1 - level) / 2
    s = np.asarray(samples, dtype=float)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return math.nan, math.nan
    return (float(np.percentile(s, 100 * a, method="lower")),
            float(np.percentile(s, 100 * (1 - a), method="higher")))


def widening(n_seeds: int, level: float = LEVEL) -> float:
    """√(S/(S−1))·t_{S−1}/z: the small-sample correction of the percentile interval."""
    from scipy import stats

    if n_seeds < 2:
        return math.nan
    a = (1 + level) / 2
    return math.sqrt(n_seeds / (n_seeds - 1)) * stats.t.ppf(a, n_seeds - 1) / stats.norm.ppf(a)


def interval(point: float, samples: np.ndarray, n_seeds: int, level: float = LEVEL
             ) -> tuple[float, float]:
    """Bootstrap percentile interval around `point`, widened for S = n_seeds (see above);
    infinite bounds stay infinite. NaN bounds with a single seed: nothing to resample."""
    lo, hi = _percentiles(samples, level)
    f = widening(n_seeds, level)
    if not math.isfinite(f) or not math.isfinite(point):
        return (math.nan, math.nan) if not math.isfinite(f) else (lo, hi)
    lo = point - f * (point - lo) if math.isfinite(lo) else lo
    hi = point + f * (hi - point) if math.isfinite(hi) else hi
    return float(min(lo, point)), float(max(hi, point))


def boot_indices(n_seeds: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[B, S] seed indices drawn with replacement: one row per bootstrap replicate."""
    return np.random.default_rng(seed).integers(0, n_seeds, size=(n_boot, n_seeds))


def boot_means(Y: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[B, n] mean curves of the bootstrap replicates of the rows (seeds) of Y [S, n]."""
    Y = np.asarray(Y, dtype=float)
    idx = boot_indices(Y.shape[0], n_boot, seed)
    return Y[idx].mean(axis=1)


def _ols_slopes(x: np.ndarray, Z: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Slopes of the (weighted) least-squares lines of each row of Z [B, n] against x [n]."""
    w = np.ones_like(x) if w is None else w
    xb = (w * x).sum() / w.sum()
    zb = (Z * w).sum(axis=-1, keepdims=True) / w.sum()
    return ((Z - zb) * (w * (x - xb))).sum(axis=-1) / (w * (x - xb) ** 2).sum()


# --------------------------------------------------------------------------- linear rate (§8a)

@dataclass(frozen=True)
class LinearRate:
    rho: Estimate  # contraction factor per step of the seed-mean gap
    window: tuple[int, int] | None  # [k0, k1] in steps
    points: int
    seeds: int

    @property
    def ok(self) -> bool:
        return self.rho.ok


def rate_window(steps: np.ndarray, m: np.ndarray, *, floor: float = 0.0, f_star: float = 0.0,
                burn_in: float = 0.1, floor_factor: float = 10.0, rel_precision: float = 1e-12
                ) -> tuple[int, int] | None:
    """Indices [i0, i1] of the window for the linear fit of log m (docs/theory.md §8a):
    - start k0: the first step after burn-in, where the gap is < burn_in × its initial value;
    - end k1: the last step before the gap first falls to max(floor_factor·floor,
      rel_precision·scale, 100·eps·|f*|), with scale the initial gap. Below 10× the floor the
      curve bends towards the floor; below 100·eps·|f*| the gap is float64 rounding noise.
    None when fewer than 3 points remain."""
    m = np.asarray(m, dtype=float)
    scale = m[0]
    if not (np.isfinite(scale) and scale > 0):
        return None
    low = max(floor_factor * max(floor, 0.0), rel_precision * scale, 100 * EPS * abs(f_star))
    after = np.nonzero(m < burn_in * scale)[0]
    if after.size == 0:
        return None
    i0 = int(after[0])
    bad = np.nonzero(~(m[i0:] > low))[0]  # also stops at NaN/inf
    i1 = i0 + int(bad[0]) - 1 if bad.size else len(m) - 1
    return (i0, i1) if i1 - i0 + 1 >= 3 else None


def linear_rate(steps, Y, *, floor: float = 0.0, f_star: float = 0.0, n_boot: int = N_BOOT,
                seed: int = 0, level: float = LEVEL, **window_kw) -> LinearRate:
    """ρ̂ = exp(slope) of the OLS line through log m_k, k in the window (docs/theory.md §8a).

    The window is chosen once on the full-sample mean curve and kept for every replicate, so
    the interval reflects seed-to-seed variation of the slope, not of the window rule. A
    replicate whose mean is ≤ 0 somewhere in the window (possible only at rounding level)
    gives a NaN slope and is left out of the percentiles."""
    steps = np.asarray(steps, dtype=float)
    Y = np.asarray(Y, dtype=float)
    if Y.ndim != 2 or Y.shape[0] == 0 or np.isnan(Y).any():
        return LinearRate(Estimate(math.nan, note="incomplete curves"), None, 0, len(Y))
    m = Y.mean(axis=0)
    win = rate_window(steps, m, floor=floor, f_star=f_star, **window_kw)
    if win is None:
        return LinearRate(Estimate(math.nan, note="no window with 3 points"), None, 0, len(Y))
    i0, i1 = win
    x = steps[i0:i1 + 1]
    slope = float(_ols_slopes(x, np.log(m[i0:i1 + 1])[None])[0])
    M = boot_means(Y[:, i0:i1 + 1], n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(M > 0, np.log(np.where(M > 0, M, 1.0)), np.nan)
    slopes = _ols_slopes(x, logs)
    lo, hi = interval(slope, slopes, len(Y), level)
    est = Estimate(math.exp(slope), math.exp(lo) if math.isfinite(lo) else lo,
                   math.exp(hi) if math.isfinite(hi) else hi)
    return LinearRate(est, (int(steps[i0]), int(steps[i1])), i1 - i0 + 1, len(Y))


# ----------------------------------------------------------------------------- power law (§8c)

@dataclass(frozen=True)
class PowerLaw:
    p: Estimate  # exponent in m_T ∝ T^(−p)
    t_range: tuple[float, float] | None
    upper_half: Estimate = NAN  # refit on the upper half of the range, for the stability check

    @property
    def stable(self) -> bool:
        """The upper-half refit's interval overlaps the full fit's (docs/theory.md §8c)."""
        return (self.p.ok and self.upper_half.ok and self.upper_half.lo <= self.p.hi
                and self.p.lo <= self.upper_half.hi)


def _power_fit(T, Y, n_boot, seed, level) -> Estimate:
    x = np.log(T)
    m = Y.mean(axis=0)
    S = Y.shape[0]
    # WLS weights 1/Var(log m_T) ≈ S·m²/Var_s(Y) (delta method); equal weights when the seeds
    # agree exactly (a deterministic curve), where the variance carries no information.
    var = Y.var(axis=0, ddof=1) if S > 1 else np.zeros_like(m)
    w = np.where(var > 0, S * m**2 / np.where(var > 0, var, 1.0), np.nan)
    w = np.ones_like(m) if np.isnan(w).any() or not np.isfinite(w).all() else w / w.max()
    slope = float(_ols_slopes(x, np.log(m)[None], w)[0])
    M = boot_means(Y, n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(M > 0, np.log(np.where(M > 0, M, 1.0)), np.nan)
    lo, hi = interval(-slope, -_ols_slopes(x, logs, w), S, level)
    return Estimate(-slope, lo, hi)


def power_law(T, Y, *, t_min: float | None = None, n_boot: int = N_BOOT, seed: int = 0,
              level: float = LEVEL) -> PowerLaw:
    """p̂ in log m_T = c − p·log T by WLS over T ≥ t_min (docs/theory.md §8c). By default t_min is
    the geometric midpoint of the T range: the asymptotic range is taken as the upper half in
    log T, where the higher-order terms (∝ T^−2 and faster) have decayed most. The fit is
    repeated on the upper half of that range; `stable` says whether the two agree."""
    T = np.asarray(T, dtype=float)
    Y = np.asarray(Y, dtype=float)
    keep = (T > 0) & np.isfinite(Y).all(axis=0) & (Y.mean(axis=0) > 0)
    T, Y = T[keep], Y[:, keep]
    if T.size < 3:
        return PowerLaw(Estimate(math.nan, note="fewer than 3 points"), None)
    if t_min is None:
        t_min = math.sqrt(T.min() * T.max())
    sel = T >= t_min
    if sel.sum() < 3:
        return PowerLaw(Estimate(math.nan, note="fewer than 3 points above t_min"), None)
    full = _power_fit(T[sel], Y[:, sel], n_boot, seed, level)
    t_half = math.sqrt(T[sel].min() * T[sel].max())
    upper = T >= t_half
    half = (_power_fit(T[upper], Y[:, upper], n_boot, seed + 1, level) if upper.sum() >= 3
            else NAN)
    return PowerLaw(full, (float(T[sel].min()), float(T[sel].max())), half)


# ----------------------------------------------------------------------- neighbourhood floor (§8b)

@dataclass(frozen=True)
class Floor:
    floor: Estimate  # the tail mean of f − f* (an upper bound on the floor if no plateau)
    plateau: bool  # the tail is flat: the curve has reached its floor
    decline: float  # mean over seeds of log(second half / first half of the tail)
    tail_start: int = 0


def tail_floor(steps, Y, *, tail: float = 0.25, n_boot: int = N_BOOT, seed: int = 0,
               level: float = LEVEL, flat: float = math.log(0.9)) -> Floor:
    """Tail mean over the last `tail` fraction of steps (docs/theory.md §8b), averaged over seeds,
    with a bootstrap interval over seeds.

    Plateau test: for each seed, d_s = log(mean of the tail's second half / mean of its first
    half). The tail is a plateau unless the mean decline is both larger than 10% (d < log 0.9)
    and significant (one-sided t-test over seeds at 5%; with one seed, the size alone decides).
    A curve still decaying linearly (DIANA) or as a power law halves quickly over its tail and
    fails the test; a stochastic floor fluctuates around a constant and passes. Seeds are
    independent, so the t-test is honest even though steps within a seed are autocorrelated."""
    from scipy import stats

    steps = np.asarray(steps, dtype=float)
    Y = np.asarray(Y, dtype=float)
    n = Y.shape[1]
    i0 = min(int(math.floor(n * (1 - tail))), n - 2)
    T_ = Y[:, i0:]
    if np.isnan(T_).any() or T_.shape[1] < 2:
        return Floor(Estimate(math.nan, note="incomplete curves"), False, math.nan)
    per_seed = T_.mean(axis=1)
    half = T_.shape[1] // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.log(T_[:, half:].mean(axis=1) / T_[:, :half].mean(axis=1))
    d_mean = float(np.nanmean(d))
    big = d_mean < flat
    sd = d.std(ddof=1) if len(d) > 1 and np.isfinite(d).all() else 0.0
    if sd > 1e-12 * max(1.0, abs(d_mean)):
        # one-sided t-test of mean(d) < 0 over independent seeds
        t_stat = d_mean / (sd / math.sqrt(len(d)))
        significant = stats.t.cdf(t_stat, len(d) - 1) < 0.05
    else:
        significant = True  # one seed, or seeds that agree exactly: the size alone decides
    plateau = not (big and significant)
    boot = per_seed[boot_indices(len(per_seed), n_boot, seed)].mean(axis=1)
    lo, hi = interval(float(per_seed.mean()), boot, len(per_seed), level)
    return Floor(Estimate(float(per_seed.mean()), lo, hi), plateau, d_mean, int(steps[i0]))


@dataclass(frozen=True)
class JointFit:
    F: Estimate  # the floor in m_k = F + C·ρ^k
    rho: Estimate
    C: float


def _wls_FC(sw, swe, swee, swm, swme, swmm):
    """F, C ≥ 0 minimising Σ w (m − F − C·e)² from its weighted sums (any broadcast shape):
    the closed-form 2×2 solution, replaced by the best one-parameter fit on the boundary where
    it breaks a sign constraint. Returns F, C and the weighted sum of squares."""
    det = sw * swee - swe**2
    with np.errstate(divide="ignore", invalid="ignore"):
        F = (swm * swee - swe * swme) / det
        C = (sw * swme - swe * swm) / det
        C_only = np.maximum(swme / swee, 0.0)  # F = 0
        F_only = np.broadcast_to(swm / sw, np.shape(F))  # C = 0
    interior = (det > 0) & (F >= 0) & (C >= 0)
    sse_c = swmm - 2 * C_only * swme + C_only**2 * swee
    sse_f = swmm - 2 * F_only * swm + F_only**2 * sw
    use_c = sse_c <= sse_f
    F = np.where(interior, F, np.where(use_c, 0.0, F_only))
    C = np.where(interior, C, np.where(use_c, C_only, 0.0))
    sse = swmm - 2 * F * swm - 2 * C * swme + F**2 * sw + 2 * F * C * swe + C**2 * swee
    return F, C, sse


def _profile_fit(k: np.ndarray, M: np.ndarray, u: np.ndarray, w: np.ndarray):
    """Each row of M [B, n] fitted by F + C·ρ^k with weights w [n] (or [B, n]). For fixed ρ the
    model is linear in (F, C): solve it in closed form for every ρ = 1 − e^u on the grid u [G]
    at once (matrix products), take the best grid point, refine it by a parabola through its
    neighbours, and solve again there. Returns F, C, ρ as [B] arrays."""
    W = np.broadcast_to(w, M.shape)
    WM = W * M
    E = (1.0 - np.exp(u))[:, None] ** k[None, :]  # [G, n]
    sums = (W.sum(1, keepdims=True), W @ E.T, W @ (E**2).T, WM.sum(1, keepdims=True), WM @ E.T,
            (WM * M).sum(1, keepdims=True))
    _, _, sse = _wls_FC(*sums)  # [B, G]
    G = len(u)
    j = np.clip(sse.argmin(1), 1, G - 2)
    r = np.arange(len(M))
    s0, s1, s2 = sse[r, j - 1], sse[r, j], sse[r, j + 1]
    den = s0 - 2 * s1 + s2
    shift = np.where(den > 0, 0.5 * (s0 - s2) / np.where(den > 0, den, 1.0), 0.0)
    rho = 1.0 - np.exp(u[j] + np.clip(shift, -1.0, 1.0) * (u[1] - u[0]))
    e = rho[:, None] ** k[None, :]  # [B, n]
    F, C, _ = _wls_FC(W.sum(1), (W * e).sum(1), (W * e**2).sum(1), WM.sum(1), (WM * e).sum(1),
                      (WM * M).sum(1))
    return F, C, rho


def joint_floor(steps, Y, *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL,
                grid_size: int = 240, burn_in: float = 0.1) -> JointFit:
    """F and ρ in m_k = F + C·ρ^k by weighted nonlinear least squares with relative weights
    (docs/theory.md §8b), fitted after the burn-in of §8a (from the first step where the gap is
    < burn_in × its initial value: the first steps of a real transient are rarely one
    exponential, and with relative weights they would decide ρ), as iteratively reweighted
    least squares:
    1. a global fit with weights 1/m_k² by the profile over ρ (exact in F and C for each ρ on a
       grid log-spaced in 1 − ρ, refined by a parabola): no local optimum can trap it, which
       matters because a transient that is not a single exponential has several;
    2. weights w_k = 1/model_k² from that fit (weights taken from the noisy data themselves
       favour points that happen to be low and bias F down by about the noise level), and the
       profile fit again with them;
    3. scipy.optimize.curve_fit with the same weights (sigma = model), started there, polishes
       the three parameters jointly; kept only if it lowers the weighted residual.
    Bootstrap: every replicate's mean curve is refitted by step 2 with the same weights, which
    vectorises over replicates where 2000 curve_fit calls would not."""
    from scipy.optimize import curve_fit

    steps = np.asarray(steps, dtype=float)
    Y = np.asarray(Y, dtype=float)
    m = Y.mean(axis=0)
    if np.isnan(Y).any() or (m <= 0).any() or len(m) < 4:
        return JointFit(Estimate(math.nan, note="incomplete or non-positive curve"), NAN,
                        math.nan)
    after = np.nonzero(m < burn_in * m[0])[0]
    i0 = int(after[0]) if after.size and len(m) - after[0] >= 4 else 0
    steps, Y, m = steps[i0:], Y[:, i0:], m[i0:]
    k = steps - steps[0]
    span = max(k[-1], 1.0)
    # 1 − ρ from 0.01/span (barely moves over the run) to 0.9 (gone after a few steps)
    u = np.linspace(math.log(0.01 / span), math.log(0.9), grid_size)

    def model(kk, F, C, rho):
        return F + C * rho**kk

    F0, C0, rho0 = (float(a[0]) for a in _profile_fit(k, m[None], u, 1.0 / m**2))
    sigma = np.maximum(model(k, F0, C0, rho0), m.min() * 1e-3)
    w = 1.0 / sigma**2
    F, C, rho = (float(a[0]) for a in _profile_fit(k, m[None], u, w))

    def sse(p):
        return float((w * (m - model(k, *p)) ** 2).sum())

    try:
        polished, _ = curve_fit(model, k, m, p0=(F, max(C, 1e-300), rho), sigma=sigma,
                                bounds=([0, 0, 0], [np.inf, np.inf, 1.0]), maxfev=2000)
        if sse(polished) < sse((F, C, rho)):
            F, C, rho = (float(x) for x in polished)
    except (RuntimeError, ValueError):
        pass
    FB, _, rhoB = _profile_fit(k, boot_means(Y, n_boot, seed), u, w)
    Flo, Fhi = interval(F, FB, len(Y), level)
    rlo, rhi = interval(rho, rhoB, len(Y), level)
    return JointFit(Estimate(F, max(Flo, 0.0), Fhi),
                    Estimate(rho, max(rlo, 0.0), min(rhi, 1.0)), C)


# ---------------------------------------------------------------------- time to target (§8d)

def hitting(Y, eps: float) -> np.ndarray:
    """Per row, the index of the first value ≤ eps, or −1 if none (a censored run). NaN (no
    value: the run diverged or stopped) never counts as reaching the target."""
    Y = np.asarray(Y, dtype=float)
    with np.errstate(invalid="ignore"):
        mask = Y <= eps
    first = mask.argmax(axis=-1)
    return np.where(mask.any(axis=-1), first, -1)


def lower_median(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """The ⌈S/2⌉-th smallest value along axis. With censored runs as +∞ it is finite exactly
    when at least half of the runs reached the target."""
    v = np.sort(values, axis=axis)
    S = v.shape[axis]
    return np.take(v, math.ceil(S / 2) - 1, axis=axis)


@dataclass(frozen=True)
class Censored:
    """A time-to-target summary over seeds with right-censoring."""

    median: Estimate  # lower median over seeds; +∞ = "not reached" by half of the seeds
    reached: int
    total: int

    @property
    def fraction(self) -> float:
        return self.reached / self.total if self.total else math.nan


def censored_median(values, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
                    ) -> Censored:
    """Summary of per-seed costs to reach ε, censored runs given as +∞ (never dropped).

    The point estimate is the lower median over seeds; its interval is the bootstrap percentile
    interval of the replicate lower medians, where a replicate with fewer than half of its
    seeds reaching ε has median +∞. So the upper bound becomes +∞ whenever a fair share of
    resamples does not reach: the censoring shows up in the interval instead of vanishing."""
    v = np.asarray(values, dtype=float)
    v = np.where(np.isnan(v), np.inf, v)
    if v.size == 0:
        return Censored(NAN, 0, 0)
    point = float(lower_median(v))
    reps = lower_median(v[boot_indices(len(v), n_boot, seed)], axis=1)
    lo, hi = _percentiles(reps, level)
    return Censored(Estimate(point, lo, hi), int(np.isfinite(v).sum()), len(v))


@dataclass(frozen=True)
class TimeToTarget:
    eps: float
    iterations: Censored
    bits: Censored
    seconds: Censored
    per_seed: dict = field(default_factory=dict)  # name -> per-seed values (+∞ = censored)


def time_to_target(steps, Y, eps: float, costs: dict[str, np.ndarray] | None = None, *,
                   n_boot: int = N_BOOT, seed: int = 0) -> TimeToTarget:
    """Iterations, bits and seconds at which each seed first reaches f − f* ≤ ε.

    `costs` maps 'bits' and 'seconds' (and any other name) to [S, n] cumulative series aligned
    with Y. A seed that never reaches ε is censored: +∞ in every cost."""
    steps = np.asarray(steps, dtype=float)
    Y = np.asarray(Y, dtype=float)
    idx = hitting(Y, eps)
    reached = idx >= 0
    per_seed = {"iterations": np.where(reached, steps[np.maximum(idx, 0)], np.inf)}
    for name, X in (costs or {}).items():
        X = np.asarray(X, dtype=float)
        vals = X[np.arange(len(X)), np.maximum(idx, 0)]
        per_seed[name] = np.where(reached, vals, np.inf)
    summary = {name: censored_median(v, n_boot, seed) for name, v in per_seed.items()}
    empty = Censored(NAN, int(reached.sum()), len(Y))
    return TimeToTarget(eps, summary["iterations"], summary.get("bits", empty),
                        summary.get("seconds", empty), per_seed)


# ------------------------------------------------------------------------------ speedup (§8d)

@dataclass(frozen=True)
class Speedup:
    eps: float
    K: list[int]
    T: dict  # K -> T_ε of the seed-mean curve (+∞: not reached)
    S: dict  # K -> Estimate of T_ε(1)/T_ε(K)
    efficiency: dict  # K -> Estimate of S(K)/K
    beta: Estimate  # log S = β log K


def _first_step(steps: np.ndarray, M: np.ndarray, eps: float) -> np.ndarray:
    idx = hitting(M, eps)
    return np.where(idx >= 0, steps[np.maximum(idx, 0)], np.inf)


def speedup(curves: dict[int, tuple[np.ndarray, np.ndarray]], eps: float, *,
            n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Speedup:
    """S(K) = T_ε(1)/T_ε(K), with T_ε the first step at which the seed-mean gap is ≤ ε.

    curves: K -> (steps, Y[S_K, n_K]); K = 1 must be present. The bootstrap resamples seeds
    independently for each K (the runs at different K are independent), recomputes every T_ε,
    S(K), S(K)/K and β̂ = Σ log K·log S / Σ (log K)² (least squares through the origin, since
    S(1) = 1). Censoring is kept: T_ε(K) = +∞ gives S = 0 and β = −∞; T_ε(1) = +∞ gives
    S = +∞ and β = +∞; both +∞ leave S undefined (NaN, left out of the percentiles)."""
    Ks = sorted(curves)
    if 1 not in Ks:
        raise ValueError("speedup needs the K = 1 runs")
    T_point, T_boot = {}, {}
    for i, K in enumerate(Ks):
        steps, Y = (np.asarray(a, dtype=float) for a in curves[K])
        T_point[K] = float(_first_step(steps, Y.mean(0, keepdims=True), eps)[0])
        T_boot[K] = _first_step(steps, boot_means(Y, n_boot, seed + 7919 * i), eps)

    def ratio(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.asarray(a, dtype=float) / np.asarray(b, dtype=float)
        return np.where(np.isinf(a) & np.isinf(b), np.nan, r)

    # the interval widening uses the smallest number of seeds among the K's (conservative)
    n_min = min(np.asarray(curves[K][1]).shape[0] for K in Ks)
    S, E = {}, {}
    logK = np.log(np.array([K for K in Ks if K > 1], dtype=float))
    boot_logS = []
    point_logS = []
    for K in Ks:
        s_point = float(ratio(T_point[1], T_point[K]))
        s_boot = ratio(T_boot[1], T_boot[K])
        lo, hi = interval(s_point, s_boot, n_min, level) if K > 1 else (1.0, 1.0)
        S[K] = Estimate(s_point, max(lo, 0.0), hi)
        E[K] = Estimate(s_point / K, max(lo, 0.0) / K, hi / K)
        if K > 1:
            with np.errstate(divide="ignore"):
                boot_logS.append(np.log(s_boot))
                point_logS.append(np.log(s_point) if s_point >= 0 else math.nan)
    if logK.size:
        LS = np.vstack(boot_logS)  # [nK, B]
        with np.errstate(invalid="ignore"):
            b_boot = (logK[:, None] * LS).sum(0) / (logK**2).sum()
            b_point = float((logK * np.array(point_logS)).sum() / (logK**2).sum())
        beta = Estimate(b_point, *interval(b_point, b_boot, n_min, level))
    else:
        beta = NAN
    return Speedup(eps, Ks, T_point, S, E, beta)


# ----------------------------------------------------------------- scaling laws (§8b, §8e)

def log_log_slope(x: list[float], samples: list[np.ndarray], *, n_boot: int = N_BOOT,
                  seed: int = 0, level: float = LEVEL) -> Estimate:
    """Slope of log mean(samples[i]) against log x[i] by OLS, e.g. the exponent of the
    asymptotic error in K (−1 for linear speedup, docs/theory.md §8e) or of a floor in γ (+1, §8b).
    samples[i] are per-seed values at x[i] (independent runs); the bootstrap resamples the
    seeds of each x independently."""
    lx = np.log(np.asarray(x, dtype=float))
    if len(lx) < 2 or any(len(s) == 0 for s in samples):
        return NAN
    point = np.log([np.mean(s) for s in samples])
    boot = np.stack([np.asarray(s, float)[boot_indices(len(s), n_boot, seed + 31 * i)].mean(1)
                     for i, s in enumerate(samples)], axis=1)  # [B, len(x)]
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = _ols_slopes(lx, np.log(boot))
    slope = float(_ols_slopes(lx, point[None])[0])
    lo, hi = interval(slope, slopes, min(len(s) for s in samples), level)
    return Estimate(slope, lo, hi)
