"""The papers' claims (docs/theory.md §9), each checked against the runs of its experiment preset.

A claim is evaluated only on the runs of the preset made for it (conf/experiment/<name>.yaml,
which logs to the MLflow experiment of the same name, or its `_full` variant). Where those runs
are absent the verdict is "not run". Verdicts:
- supported: every check of the claim passes on the measured runs;
- not supported: a check fails with the measured intervals clearly on the wrong side;
- mixed: some checks pass and some do not;
- partly supported: the checks that can decide pass, the others cannot decide;
- inconclusive: the runs exist but cannot decide (too few seeds, no target reached...).
Checks compare intervals, never single numbers, and ratios between paired runs rather than the
theorems' unverified absolute constants (docs/theory.md §8e).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import rates
from .groups import (
    SUBOPT,
    Group,
    series_speedup,
    speedup_series,
    speedup_target,
    target_costs,
)
from .theory import Comparison

# Ratios of asymptotic errors within this band count as "the same" (§8e: "→ 1"): with 3 seeds
# of a stochastic run the tail mean itself scatters by tens of per cent.
SAME_BAND = (2 / 3, 3 / 2)
TAIL = 0.25


@dataclass
class Claim:
    number: int
    text: str
    experiment: str
    verdict: str = "not run"
    evidence: list[str] = field(default_factory=list)


def _runs_of(groups: list[Group], preset: str) -> list[Group]:
    return [g for g in groups if g.experiment in (preset, preset + "_full")]


def _fmt(e: rates.Estimate, digits: int = 3) -> str:
    if not e.ok:
        return "n/a"
    return f"{e.value:.{digits}g} [{e.lo:.{digits}g}, {e.hi:.{digits}g}]"


def _verdict(checks: list[bool | None]) -> str:
    known = [c for c in checks if c is not None]
    if not known:
        return "inconclusive"
    if all(known):
        return "supported" if len(known) == len(checks) else "partly supported"
    return "not supported" if not any(known) else "mixed"


def tail_means(g: Group, tail: float = TAIL) -> np.ndarray:
    """Per-seed mean of f − f* over the last `tail` of the run; a diverged seed counts as +∞
    (it did worse than any finite error), never as missing."""
    Y = g.ended[SUBOPT]
    n = Y.shape[1]
    i0 = min(int(n * (1 - tail)), n - 1)
    with np.errstate(invalid="ignore"):
        t = np.nanmean(Y[:, i0:], axis=1) if n else np.zeros(0)
    finished = np.isfinite(Y[:, -1]) if n else np.zeros(0, bool)
    return np.where(finished, t, np.inf)


def ratio(a: np.ndarray, b: np.ndarray, n_boot: int = rates.N_BOOT, seed: int = 0
          ) -> rates.Estimate:
    """mean(a)/mean(b) with a bootstrap interval, resampling the seeds of a and b
    independently (they are different runs)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size == 0 or b.size == 0:
        return rates.NAN
    ra = a[rates.boot_indices(len(a), n_boot, seed)].mean(1)
    rb = b[rates.boot_indices(len(b), n_boot, seed + 1)].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = ra / rb
        point = float(a.mean() / b.mean())
    lo, hi = rates.interval(point, boot, min(len(a), len(b)))
    return rates.Estimate(point, max(lo, 0.0), hi)


def same_as_baseline(r: rates.Estimate) -> bool | None:
    """A ratio of asymptotic errors 'matches' (→ 1, §8e) when its point lies in SAME_BAND and
    its interval meets the band; it does not when the whole interval lies outside the band;
    otherwise the seeds cannot decide."""
    if not r.ok:
        return None
    lo_b, hi_b = SAME_BAND
    if r.hi < lo_b or r.lo > hi_b:
        return False
    return True if lo_b <= r.value <= hi_b else None


def _relative_final(g: Group) -> float:
    Y = g.finished[SUBOPT]
    if Y.size == 0:
        return math.nan
    return float(np.mean(Y[:, -1]) / g.initial_gap)


def _exact(g: Group) -> tuple[bool, float]:
    """(no floor within the run, final gap / F0): the gap keeps falling to the end (no plateau)
    or has fallen below 1e-10 of F0, where float64 rounding flattens any curve."""
    rel = _relative_final(g)
    return bool(g.floor is not None and (not g.floor.plateau or rel < 1e-10)), rel


def _stalls_above(g: Group, gap: float) -> bool:
    """g's tail is a plateau whose floor's lower end lies more than 10× above `gap` (f − f*)."""
    return bool(g.floor is not None and g.floor.plateau and g.floor.floor.lo > 10 * gap)


def _linear(g: Group) -> bool:
    return bool(g.rate is not None and g.rate.ok and g.rate.rho.hi < 1)


def _paired(gs: list[Group], label, keys: tuple[str, ...]) -> dict[tuple, dict[str, Group]]:
    """The groups that differ only in what `label` names (a group -> a label, or None to leave
    it out), keyed by the values of `keys`: one dict label -> group per setting."""
    out: dict[tuple, dict[str, Group]] = {}
    for g in gs:
        name = label(g)
        if name is not None:
            out.setdefault(tuple(str(g.params.get(k)) for k in keys), {})[name] = g
    return out


# The ladder of relative targets r (ε = r·F0) a claim's target is chosen from, the shallow end
# first: the early-phase levels where stochastic methods stall (claim 15), and to the depths
# only exactly-converging methods reach (claim 14).
SHALLOW_LADDER = (1e-4, 1e-3, 1e-2, 1e-1)
DEEP_LADDER = (1e-8, 1e-6) + SHALLOW_LADDER


def reference_target(reference: list[Group], ladder: tuple[float, ...] = SHALLOW_LADDER
                     ) -> tuple[float, float]:
    """(ε, r): the tightest level r·F0 of `ladder` that one of the reference groups reaches
    with at least half of its seeds (so that its cost to ε is measured), F0 the reference's
    median initial gap; the shallowest level when none is reached (every cost censored)."""
    F0 = float(np.nanmedian([g.initial_gap for g in reference]))
    for r in sorted(ladder):
        for g in reference:
            Y = g.ended[SUBOPT]
            if Y.size and (rates.hitting(Y, r * F0) >= 0).sum() * 2 >= len(Y):
                return r * F0, r
    return max(ladder) * F0, max(ladder)


def cost_to(g: Group, hit_index: np.ndarray, keys: tuple[str, ...]) -> np.ndarray:
    """Per seed of g.ended, the sum of the cumulative series `keys` at the seed's hitting index
    (−1: censored, +∞)."""
    rows = np.arange(len(hit_index))
    j = np.maximum(hit_index, 0)
    total = sum(g.ended[k][rows, j] for k in keys)
    return np.where(hit_index >= 0, total, np.inf)


def ahead(a: np.ndarray, b: np.ndarray) -> bool | None:
    """True when every seed of a costs less than every seed of b (censored seeds +∞), False in
    the reverse order, None when they interleave or tie (both censored throughout)."""
    if a.size == 0 or b.size == 0:
        return None
    if a.max() < b.min():
        return True
    return False if b.max() < a.min() else None


def _show(v: np.ndarray, fmt: str = "{:.3g}") -> str:
    """Per-seed values, censored ones (+∞) as —."""
    return ", ".join("—" if not np.isfinite(x) else fmt.format(x) for x in v)


def per_step(g: Group, key: str) -> np.ndarray:
    """Per finished seed, the cumulative `key` at the last logged step over that step."""
    Y = g.finished[key]
    if Y.size == 0 or not len(g.finished.steps) or g.finished.steps[-1] <= 0:
        return np.zeros(0)
    return Y[:, -1] / g.finished.steps[-1]


def message_bits(comp, d: int) -> int | None:
    """The encoded size of one message of a d-vector where the compressor's format has one
    size whatever the values (dense, top-k, rand-k: k values and k indices), else None. Read
    from the compressor's own count on two random vectors, so nothing is derived twice (a
    value-dependent format can agree on two vectors by chance: the claims ask it of the
    presets' rand-k and top-k only)."""
    import torch

    from suite.rng import WorkerStreams

    if comp.fixed_bits is not None:
        return int(comp.fixed_bits(d))
    x = torch.randn(2, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    try:
        sizes = {int(b) for b in comp.roundtrip(x, WorkerStreams(0, "claims", range(2)))[1]}
    except Exception:  # a compressor that needs more (a shared scale, a matrix view)
        return None
    return sizes.pop() if len(sizes) == 1 else None


def _compressor(params: dict, group: str = "compressor"):
    """The run's compressor (or down-link, group="downlink") as the runner builds it, or None
    when this checkout does not know it."""
    from suite.compressors import build_compressor

    hp = {k[len(group) + 1:]: v for k, v in params.items()
          if k.startswith(group + ".") and k != group + ".name"}
    try:
        return build_compressor(params.get(group + ".name", "identity"), **hp)
    except Exception:
        return None


# ------------------------------------------------------------------------------ the claims

def claim_diana_exact(groups: list[Group], comps: dict[str, Comparison]) -> Claim:
    c = Claim(1, "DIANA with full gradients converges linearly to the exact optimum; QSGD, "
                 "TernGrad and DQGD stall at a floor ∝ γωζ*²/(μn)", "diana_vs_quantized")
    gs = [g for g in _runs_of(groups, c.experiment) if g.params.get("batch_size") == "full"]
    if not gs:
        return c
    checks = []
    diana = [g for g in gs if g.params.get("algorithm.name") == "diana"]
    quant = [g for g in gs if g.params.get("algorithm.name") != "diana"]
    best_diana = min((_relative_final(g) for g in diana), default=math.nan)
    for g in diana:
        exact, rel = _exact(g)
        checks.append(exact and _linear(g))
        rho = _fmt(g.rate.rho, 6) if g.rate is not None else "n/a"
        c.evidence.append(f"{g.method}: final gap {rel:.2g}×F0, ρ̂ = {rho}, "
                          + ("no floor within the run" if exact else "stalls"))
    for g in quant:
        cmp_ = comps.get(g.group)
        stalls = _stalls_above(g, best_diana * g.initial_gap)
        checks.append(stalls)
        bound = (f", bound {cmp_.floor_bound:.3g} ({'holds' if cmp_.floor_holds else 'fails'})"
                 if cmp_ is not None and cmp_.floor_bound is not None else "")
        # the same floor estimate as the theory table: the joint fit where the tail is flat
        shown = g.joint.F if (g.joint is not None and g.joint.F.ok and stalls) else (
            g.floor.floor if g.floor else rates.NAN)
        c.evidence.append(f"{g.method}: {'plateau' if stalls else 'no clear floor'} at "
                          f"{_fmt(shown)}{bound}")
    if not diana or not quant:
        checks.append(None)
    c.verdict = _verdict(checks)
    return c


def claim_diana_omega(groups: list[Group], comps: dict[str, Comparison]) -> Claim:
    c = Claim(2, "DIANA's rate worsens with ω only through κω/n + ω; smaller blocks lower ω at "
                 "+32 bits per block", "diana_vs_quantized")
    diana = [g for g in _runs_of(groups, c.experiment)
             if g.params.get("algorithm.name") == "diana"
             and g.params.get("compressor.name") == "quant_p"]
    if not diana:
        return c
    checks: list[bool | None] = []
    by_p: dict = {}
    for g in diana:
        by_p.setdefault(str(g.params.get("compressor.p")), []).append(g)
    for p, gs in sorted(by_p.items()):
        if len(gs) < 2:
            continue
        rows = []
        for g in gs:
            pred = comps[g.group].prediction if g.group in comps else None
            omega = pred.omega if pred is not None else None
            d = int(g.constants.get("dim", 0))
            bs = g.params.get("compressor.block_size")
            blocks = 1 if bs in (None, "None") else math.ceil(d / int(bs))
            Y = g.finished["comm/bits_up"]
            per_step = float(Y[0, -1] / g.finished.steps[-1]) if Y.size else math.nan
            rows.append((omega, g, blocks, per_step))
        rows.sort(key=lambda r: (r[0] is None, r[0]))
        # smaller ω must not be slower: its ρ̂ interval may not lie entirely above the other's
        for (w1, g1, m1, b1), (w2, g2, m2, b2) in zip(rows, rows[1:], strict=False):
            if g1.rate is None or g2.rate is None or not (g1.rate.ok and g2.rate.ok):
                checks.append(None)
                continue
            checks.append(bool(g1.rate.rho.lo <= g2.rate.rho.hi))
            checks.append(bool(abs((b1 - b2) - 32 * (m1 - m2)) < 1e-6))
            c.evidence.append(
                f"p={p}: ω={w1:.3g} ({m1} blocks) ρ̂={_fmt(g1.rate.rho, 6)}, {b1:.0f} bits/step "
                f"vs ω={w2:.3g} ({m2} blocks) ρ̂={_fmt(g2.rate.rho, 6)}, {b2:.0f} bits/step "
                f"(Δbits {b1 - b2:+.0f}, 32·Δblocks = {32 * (m1 - m2):+d})")
    if not checks:
        c.verdict = "inconclusive"
        c.evidence.append("needs DIANA runs at two block sizes with the same p")
        return c
    c.verdict = _verdict(checks)
    return c


def claim_local_speedup(groups: list[Group]) -> Claim:
    c = Claim(3, "Local SGD: linear speedup in K for H ≲ √(T/(Kb)); beyond that an excess "
                 "error ∝ H²", "local_sgd_speedup")
    gs = _runs_of(groups, c.experiment)
    if not gs:
        return c
    series = speedup_series(gs)
    if not series:
        c.verdict = "inconclusive"
        c.evidence.append("no K = 1 baseline, or a single K")
        return c
    checks: list[bool | None] = []
    results = []
    eps = {}
    for (task, _), ser in series.items():
        if task not in eps:
            eps[task] = speedup_target([s for (t, _), s in series.items() if t == task])[0]
        sp = series_speedup(ser, eps[task])
        H = ser[0].params.get("algorithm.local_steps", 1)
        results.append((H, sp, ser))
    results.sort(key=lambda r: (r[0] if isinstance(r[0], int) else 0))
    for H, sp, ser in results:
        Kmax = max(sp.K)
        T = ser[0].params.get("steps")
        b = ser[0].params.get("batch_size")
        c.evidence.append(f"H={H}: β̂ = {_fmt(sp.beta)}, S({Kmax}) = {_fmt(sp.S[Kmax])}, "
                          f"efficiency {_fmt(sp.efficiency[Kmax], 2)}"
                          + (f"; √(T/(K·b)) at K={Kmax}: {math.sqrt(T / (Kmax * b)):.2g}"
                             if isinstance(T, int) and isinstance(b, int) else ""))
    H0, sp0, ser0 = results[0]
    # (a) the asymptotic error ∝ 1/(KbT) (§8e: "error ratio for K vs 2K ≈ 2"): the log-log
    # slope of the final (tail) error against K, −1 for linear speedup
    slope = rates.log_log_slope([g.workers for g in ser0], [tail_means(g) for g in ser0])
    c.evidence.insert(0, f"H={H0}: final error ∝ K^s with s = {_fmt(slope)} (−1: linear)")
    if slope.ok and math.isfinite(slope.lo) and math.isfinite(slope.hi):
        if slope.lo <= -1.0 <= slope.hi and slope.hi < -0.5:
            checks.append(True)
        elif slope.lo > -0.8:
            checks.append(False)
        else:
            checks.append(None)
    else:
        checks.append(None)
    # (b) the iterations to ε: β̂ in S(K) = T_ε(1)/T_ε(K) ∝ K^β
    b = sp0.beta
    if b.ok and math.isfinite(b.lo) and math.isfinite(b.hi):
        # linear: 1 inside the interval, and the interval excludes β ≤ 1/2 (no better than
        # √K); sublinear: the whole interval below 0.9; otherwise the seeds cannot decide
        if b.lo <= 1.0 <= b.hi and b.lo > 0.5:
            checks.append(True)
        elif b.hi < 0.9:
            checks.append(False)
        else:
            checks.append(None)
            c.evidence.append(f"H={H0}: the β̂ interval is too wide to decide (more seeds)")
    else:
        checks.append(None)
    if len(results) > 1:
        # the excess error of large H: final (tail) error at the largest K, H_max against H_min
        Kmax = max(sp0.K)
        H1, _, ser1 = results[-1]
        g0 = next((g for g in ser0 if g.workers == Kmax), None)
        g1 = next((g for g in ser1 if g.workers == Kmax), None)
        if g0 is not None and g1 is not None:
            r = ratio(tail_means(g1), tail_means(g0))
            c.evidence.append(f"K={Kmax}: tail error H={H1} / H={H0} = {_fmt(r)}")
            if r.ok and r.lo > 1:
                checks.append(True)
            elif r.ok and r.hi < 1:
                checks.append(False)
            else:
                checks.append(None)
                c.evidence.append(f"no excess error of H={H1} detected at K={Kmax}")
    c.verdict = _verdict(checks)
    return c


def _baseline(gs: list[Group]) -> Group | None:
    for g in gs:
        if g.params.get("algorithm.name") == "sgd" and g.params.get("compressor.name") == \
                "identity":
            return g
    return None


def _baseline_or_inconclusive(c: Claim, gs: list[Group]) -> Group | None:
    """The sgd/identity baseline of an experiment's runs; when runs exist but none is the
    baseline, the claim is marked inconclusive and says why."""
    base = _baseline(gs)
    if base is None and gs:
        c.verdict = "inconclusive"
        c.evidence.append("no sgd/identity baseline among the runs")
    return base


def claim_transient_only(groups: list[Group]) -> Claim:
    c = Claim(4, "Delay τ and EF compression δ change only the transient: the asymptotic "
                 "σ²/(μT) term matches SGD", "ef_delay")
    gs = _runs_of(groups, c.experiment)
    base = _baseline_or_inconclusive(c, gs)
    if base is None:
        return c
    checks: list[bool | None] = []
    b_tail = tail_means(base)
    merges = []
    for g in gs:
        alg = g.params.get("algorithm.name")
        ef = alg == "ef_sgd" and g.params.get("algorithm.error_feedback", True) is not False
        if not (alg == "delayed_sgd" or ef):
            continue
        r = ratio(tail_means(g), b_tail)
        same = same_as_baseline(r)
        merge = merge_step(g, base)
        when = f"{merge:.0f}" if math.isfinite(merge) else "never (within the run)"
        c.evidence.append(f"{g.method}: tail error / SGD's = {_fmt(r)}; curves merge (within "
                          f"25%) from step {when}")
        if alg == "delayed_sgd":
            merges.append((g.params.get("algorithm.delay"), merge))
        checks.append(same)
    merges = [(t, m) for t, m in merges if isinstance(t, int) and t > 0]
    if len(merges) >= 2:
        finite = [(t, m) for t, m in merges if math.isfinite(m) and m > 0]
        if len(finite) >= 2:
            lt, lm = np.log([t for t, _ in finite]), np.log([m for _, m in finite])
            slope = float(np.polyfit(lt, lm, 1)[0])
            c.evidence.append(f"merge step against τ: log-log slope {slope:.2f} "
                              f"(∝ τ predicts 1; over τ = {[t for t, _ in finite]})")
    if not checks:
        c.verdict = "inconclusive"
        return c
    c.verdict = _verdict(checks)
    return c


def merge_step(g: Group, base: Group, within: float = 1.25, smooth: int = 5) -> float:
    """First step from which g's seed-mean error stays within `within`× the baseline's, the
    ratio smoothed by a running mean over `smooth` logged points (stochastic curves cross any
    threshold many times by noise alone)."""
    Yg, Yb = g.finished[SUBOPT], base.finished[SUBOPT]
    if Yg.size == 0 or Yb.size == 0 or len(g.finished.steps) != len(base.finished.steps):
        return math.inf
    r = Yg.mean(0) / Yb.mean(0)
    if len(r) > smooth:
        r = np.convolve(r, np.ones(smooth) / smooth, mode="same")
    bad = np.nonzero(~(r <= within))[0]
    if bad.size == 0:
        return float(g.finished.steps[0])
    if bad[-1] == len(r) - 1:
        return math.inf
    return float(g.finished.steps[bad[-1] + 1])


def claim_ef_needed(groups: list[Group]) -> Claim:
    c = Claim(5, "EF-sign/top-k without error feedback can fail to converge; with EF they match "
                 "SGD asymptotically", "ef_delay")
    gs = _runs_of(groups, c.experiment)
    base = _baseline_or_inconclusive(c, gs)
    if base is None:
        return c
    checks: list[bool | None] = []
    b_tail = tail_means(base)
    biased = ("topk", "sign")
    for g in gs:
        comp = g.params.get("compressor.name")
        alg = g.params.get("algorithm.name")
        if comp not in biased or alg not in ("ef_sgd", "sgd"):
            continue
        ef = alg == "ef_sgd" and g.params.get("algorithm.error_feedback", True) is not False
        r = ratio(tail_means(g), b_tail)
        if ef:
            ok = same_as_baseline(r)
            c.evidence.append(f"{g.method} (EF): tail error / SGD's = {_fmt(r)}")
        else:
            # fails: diverged, or stalls clearly above SGD (the whole interval beyond the band)
            failed = g.diverged > 0 or (r.ok and r.lo > SAME_BAND[1]) or math.isinf(r.value)
            # "can fail" is shown by a failure; a run that matches SGD does not refute it
            ok = True if failed else None
            c.evidence.append(f"{g.method} (no EF): " + (
                f"{g.diverged} of {g.n_seeds} seeds diverged" if g.diverged else
                f"tail error / SGD's = {_fmt(r)}"))
        checks.append(ok)
    if not checks:
        c.verdict = "inconclusive"
        return c
    c.verdict = _verdict(checks)
    return c


# The claims of the federated methods are numbered by their section of docs/theory.md, so that
# claims added by other method families never collide with them.

def claim_scaffold_no_drift(groups: list[Group]) -> Claim:
    c = Claim(16, "SCAFFOLD on heterogeneous shards converges to f* where FedAvg with the same "
                  "step and local steps keeps a client-drift floor", "scaffold_vs_fedavg")
    gs = _runs_of(groups, c.experiment)
    if not gs:
        return c
    checks: list[bool | None] = []
    by_setting = _paired(
        gs, lambda g: g.params.get("algorithm.name") if g.params.get("algorithm.name") in (
            "scaffold", "fedavg") else None,
        ("task.dataset", "task.split", "batch_size", "lr", "algorithm.local_steps",
         "algorithm.participation"))
    for pair in by_setting.values():
        sc, fa = pair.get("scaffold"), pair.get("fedavg")
        if sc is None or fa is None:
            checks.append(None)
            continue
        where = (f"H={sc.params.get('algorithm.local_steps')}, "
                 f"p={sc.params.get('algorithm.participation')}")
        r = ratio(tail_means(sc), tail_means(fa))
        if sc.params.get("batch_size") == "full":
            # exact: SCAFFOLD's gap keeps falling to precision (no plateau, or below 1e-10 of
            # F0), FedAvg's is flat and clearly above SCAFFOLD's
            exact, rel = _exact(sc)
            stalls = _stalls_above(fa, rel * sc.initial_gap)
            checks.append(exact and stalls)
            c.evidence.append(f"{where}: SCAFFOLD's final gap {rel:.2g}×F0 ("
                              + ("no floor" if exact else "stalls") + "), FedAvg's "
                              + (f"plateau at {_fmt(fa.floor.floor)}" if stalls
                                 else "no clear floor above it"))
        else:
            # minibatches: both have a noise floor; SCAFFOLD's must lie below FedAvg's
            checks.append(True if r.ok and r.hi < 1 else False if r.ok and r.lo > 1 else None)
            c.evidence.append(f"{where}: tail error SCAFFOLD / FedAvg = {_fmt(r)}")
    c.verdict = _verdict(checks) if checks else "inconclusive"
    return c


def claim_diloco_rounds(groups: list[Group]) -> Claim:
    c = Claim(15, "DiLoCo: outer Nesterov momentum reaches a given loss in fewer communication "
                  "rounds than plain averaging at the same local steps", "diloco")
    gs = [g for g in _runs_of(groups, c.experiment) if g.params.get("algorithm.name") == "fedavg"]
    if not gs:
        return c
    checks: list[bool | None] = []
    pairs: dict = {}
    for g in gs:
        outer = ("nesterov" if g.params.get("algorithm.nesterov") is True else
                 "averaging" if g.params.get("algorithm.server_momentum") in (0, 0.0)
                 and g.params.get("algorithm.server_lr") in (1, 1.0) else None)
        if outer is not None:
            pairs.setdefault(g.params.get("algorithm.local_steps"), {})[outer] = g
    for H, pair in sorted(pairs.items(), key=lambda kv: str(kv[0])):
        nes, avg = pair.get("nesterov"), pair.get("averaging")
        if nes is None or avg is None:
            checks.append(None)
            continue
        # the tightest rung of the ladder that averaging reaches with half of its seeds (so
        # that its rounds are measured), and the rounds = iterations/H to it, per seed
        eps, level = reference_target([avg])
        rounds = {name: target_costs(g, eps).per_seed["iterations"] / float(H)
                  for name, g in (("nesterov", nes), ("averaging", avg))}
        n, a = rounds["nesterov"], rounds["averaging"]
        # every seed of one ahead of every seed of the other (censored = +∞); else undecided
        checks.append(ahead(n, a))
        c.evidence.append(f"H={H}: rounds to {level:g}×F0, Nesterov [{_show(n, '{:.0f}')}] vs "
                          f"averaging [{_show(a, '{:.0f}')}]")
    c.verdict = _verdict(checks) if checks else "inconclusive"
    return c


# The claims of the methods of docs/theory.md §10–§14, numbered by their section like those of
# §15 and §16.

def claim_ef21_exact(groups: list[Group]) -> Claim:
    c = Claim(10, "EF21 with top-k and full gradients converges linearly to f* on heterogeneous "
                  "shards, where EF-SGD (EF14) with the same compressor and step size stalls at "
                  "a floor", "ef21_vs_ef")
    gs = [g for g in _runs_of(groups, c.experiment) if g.params.get("batch_size") == "full"]
    if not gs:
        return c
    checks: list[bool | None] = []
    pairs = _paired(gs, lambda g: g.params.get("algorithm.name") if g.params.get(
        "algorithm.name") in ("ef21", "ef_sgd") else None,
        ("task.dataset", "task.split", "workers", "lr", "compressor.name", "compressor.k",
         "compressor.ratio"))
    for pair in pairs.values():
        ef21, ef = pair.get("ef21"), pair.get("ef_sgd")
        if ef21 is None or ef is None:
            checks.append(None)
            c.evidence.append(f"{(ef21 or ef).method}: no run of the other method at the same "
                              "step size and compressor")
            continue
        exact, rel = _exact(ef21)
        linear = _linear(ef21)
        stalls = _stalls_above(ef, rel * ef21.initial_gap)
        checks.append(exact and linear and stalls)
        Y = ef21.finished[SUBOPT]
        below = rates.hitting(Y.mean(0, keepdims=True), 1e-8)[0] if Y.size else -1
        rho = _fmt(ef21.rate.rho, 6) if ef21.rate is not None else "n/a"
        c.evidence.append(
            f"γ = {ef21.params.get('lr')}, {ef21.params.get('compressor.name')}: EF21's final gap "
            f"{rel:.2g}×F0, ρ̂ = {rho}, "
            + (f"f − f* < 1e-8 from step {ef21.finished.steps[below]:.0f}" if below >= 0
               else "never below 1e-8") + ("" if exact else ", stalls")
            + "; EF-SGD's " + (f"plateau at {_fmt(ef.floor.floor)}" if stalls
                               else "curve has no clear floor above it"))
    c.verdict = _verdict(checks) if checks else "inconclusive"
    return c


# A round's up-link size in MARINA is a two-point variable (32d with probability p, bits(Q)
# otherwise), so the mean over n independent coin rounds has standard error
# |32d − bits(Q)|·√(p(1 − p)/n). 5 standard errors: a correct count fails with probability
# 6e-7 (normal tail; n is thousands of rounds), while a coin probability off by 20% of p moves
# the mean by 0.2·p·|32d − bits(Q)|, 11.5 standard errors at the small preset (p = 0.1,
# n = 3·9999 rounds: the standard error is 1.47 bits).
MARINA_SE = 5.0


def marina_bits(g: Group) -> tuple[bool | None, str]:
    """The check of docs/theory.md §11 prediction 2 on g's finished seeds: the mean up-link
    bits of the rounds after round 0, pooled over seeds, against p·32d + (1 − p)·bits(Q)."""
    from suite.algorithms.marina import resolve_p

    d = int(g.constants.get("dim", 0))
    comp = _compressor(g.params)
    bq = message_bits(comp, d) if d and comp is not None and comp.omega is not None else None
    if bq is None:
        return None, "the compressor's size per message is not fixed (or not known here)"
    p = resolve_p(g.params.get("algorithm.p"), comp.omega(d))
    dense = 32 * d
    B, T = g.finished["comm/bits_up"], g.finished.steps
    if B.size == 0 or not len(T) or T[-1] < 2:
        return None, "no up-link bits logged"
    rounds = int(T[-1]) - 1  # rounds 1 … T−1 after the dense round 0, per seed
    per_seed = (B[:, -1] - dense) / rounds
    mean, n = float(per_seed.mean()), rounds * len(per_seed)
    pred = p * dense + (1 - p) * bq
    tol = MARINA_SE * abs(dense - bq) * math.sqrt(p * (1 - p) / n)
    ok = abs(mean - pred) <= max(tol, 1e-9 * pred)
    seeds = _show(per_seed, "{:.5g}")
    return ok, (f"up-link bits a round after round 0: {mean:.5g} (seeds: {seeds}) against "
                f"p·32d + (1 − p)·bits(Q) = {p:.3g}·{dense} + {1 - p:.3g}·{bq} = "
                f"{pred:.5g} ± {tol:.2g} ({MARINA_SE:g} standard errors over {n} coin rounds)")


def claim_marina_exact(groups: list[Group]) -> Claim:
    c = Claim(11, "MARINA with full gradients converges to the exact optimum, its up-link bits a "
                  "round averaging p·32d + (1 − p)·bits(Q)", "marina_vs_diana")
    gs = [g for g in _runs_of(groups, c.experiment)
          if g.params.get("algorithm.name") == "marina" and g.params.get("batch_size") == "full"]
    if not gs:
        return c
    checks: list[bool | None] = []
    for g in gs:
        exact, rel = _exact(g)
        checks.append(exact and _linear(g))
        rho = _fmt(g.rate.rho, 6) if g.rate is not None else "n/a"
        c.evidence.append(f"{g.method}: final gap {rel:.2g}×F0, ρ̂ = {rho}, "
                          + ("no floor within the run" if exact else "stalls"))
        ok, text = marina_bits(g)
        checks.append(ok)
        c.evidence.append(f"{g.method}: {text}")
    c.verdict = _verdict(checks)
    return c


# The test accuracies the PowerSGD claim's target is chosen from (a fraction of the test set).
ACCURACY_LADDER = (0.5, 0.6, 0.7, 0.8, 0.85, 0.88, 0.9, 0.91, 0.92, 0.93, 0.94)
ACCURACY = "test/accuracy"


def accuracy_hits(g: Group, level: float) -> np.ndarray:
    """Per ended seed, the index of the first logged step with test accuracy ≥ level (−1:
    never)."""
    return rates.hitting(-g.ended[ACCURACY], -level)


def claim_powersgd_bits(groups: list[Group]) -> Claim:
    c = Claim(12, "EF-SGD with PowerSGD reaches a test accuracy with fewer up-link bits than "
                  "EF-SGD with top-k (CIFAR-10 ResNet-20)", "powersgd_vs_topk")
    gs = _runs_of(groups, c.experiment)
    if not gs:
        return c
    # FakeData has random labels: no accuracy above chance is reachable, so those runs exercise
    # the comparison but can never decide it
    real = [g for g in gs if g.params.get("task.dataset") != "fake"]
    if not real:
        c.verdict = "inconclusive"
        c.evidence.append("only FakeData runs (task.dataset=fake: random labels, test accuracy "
                          "at chance): the claim is decided on real CIFAR-10 runs "
                          "(powersgd_vs_topk_full)")
        return c
    checks: list[bool | None] = []

    def label(g: Group) -> str | None:
        alg, comp = g.params.get("algorithm.name"), g.params.get("compressor.name")
        if alg == "ef_sgd" and comp in ("powersgd", "topk"):
            return comp
        return "sgd" if alg == "sgd" and comp == "identity" else None

    for trio in _paired(real, label, ("task.dataset", "workers", "batch_size", "steps")).values():
        pw, tk = trio.get("powersgd"), trio.get("topk")
        if pw is None or tk is None:
            checks.append(None)
            continue
        # the target: the highest accuracy that the uncompressed baseline (else either method)
        # reaches with at least half of its seeds
        ref = [trio["sgd"]] if "sgd" in trio else [pw, tk]
        level = max((r for r in ACCURACY_LADDER for g in ref
                     if (accuracy_hits(g, r) >= 0).sum() * 2 >= g.n_seeds), default=None)
        if level is None:
            checks.append(None)
            c.evidence.append(f"{pw.problem_label}: no test accuracy of {ACCURACY_LADDER[0]:g} "
                              "or more reached")
            continue
        bits = {n: cost_to(g, accuracy_hits(g, level), ("comm/bits_up",))
                for n, g in (("powersgd", pw), ("topk", tk))}
        checks.append(ahead(bits["powersgd"], bits["topk"]))
        c.evidence.append(f"up-link bits per worker to test accuracy {level:g}: PowerSGD "
                          f"[{_show(bits['powersgd'])}] ({_show(per_step(pw, 'comm/bits_up'))} a "
                          f"step) vs top-k [{_show(bits['topk'])}] "
                          f"({_show(per_step(tk, 'comm/bits_up'))} a step)")
    c.verdict = _verdict(checks) if checks else "inconclusive"
    return c


def claim_majority_vote_bits(groups: list[Group]) -> Claim:
    c = Claim(13, "signSGD with majority vote sends 1 bit a coordinate each way and reaches "
                  "SGD's target with fewer bits up and down than SGD's 32", "majority_vote_vs_sgd")
    gs = _runs_of(groups, c.experiment)
    base = _baseline_or_inconclusive(c, gs)
    if base is None:
        return c
    votes = [g for g in gs if g.params.get("algorithm.name") == "majority_vote"
             and g.problem == base.problem]
    if not votes:
        c.verdict = "inconclusive"
        c.evidence.append("no majority-vote runs on the baseline's problem")
        return c
    checks: list[bool | None] = []
    d = int(base.constants.get("dim", 0))
    eps, level = reference_target([base])
    up_down = ("comm/bits_up", "comm/bits_down")
    b_hit = rates.hitting(base.ended[SUBOPT], eps)
    b_bits = cost_to(base, b_hit, up_down)
    for g in votes:
        # the wire, exactly: d bits a step each way (SGD: 32d each way)
        up, down = per_step(g, "comm/bits_up"), per_step(g, "comm/bits_down")
        if d and up.size and down.size:
            checks.append(bool(np.all(up == d) and np.all(down == d)))
        else:
            checks.append(None)
        hit = rates.hitting(g.ended[SUBOPT], eps)
        bits = cost_to(g, hit, up_down)
        checks.append(ahead(bits, b_bits))
        its = lambda h, x: np.where(h >= 0, x.ended.steps[np.maximum(h, 0)], np.inf)  # noqa: E731
        c.evidence.append(
            f"{g.method}: {_show(up, '{:.6g}')} bits up and {_show(down, '{:.6g}')} down a step "
            f"(d = {d}; SGD {_show(per_step(base, 'comm/bits_up'), '{:.6g}')} up); to "
            f"{level:g}×F0 bits up + down [{_show(bits)}] vs SGD's [{_show(b_bits)}], "
            f"iterations [{_show(its(hit, g), '{:.0f}')}] vs [{_show(its(b_hit, base), '{:.0f}')}]"
            f"; final gap {_relative_final(g):.2g}×F0 (SGD {_relative_final(base):.2g}×F0)")
    c.verdict = _verdict(checks)
    return c


def claim_downlink_bits(groups: list[Group]) -> Claim:
    c = Claim(14, "A contractive down-link (downlink=topk, EF21-P) still converges to the dense "
                  "broadcast's target with fewer comm/bits_down", "ef21p_downlink")
    gs = _runs_of(groups, c.experiment)
    if not gs:
        return c
    checks: list[bool | None] = []

    def label(g: Group) -> str | None:
        name = g.params.get("downlink.name", "identity")
        if name == "identity":
            return "dense"
        comp = _compressor(g.params, "downlink")
        return f"downlink={name}" if comp is not None and comp.kind == "contractive" else None

    pairs = _paired(gs, label, ("task.dataset", "task.split", "workers", "batch_size", "lr",
                                "algorithm.name", "compressor.name"))
    for pair in pairs.values():
        dense = pair.pop("dense", None)
        if dense is None or not pair:
            checks.append(None)
            continue
        eps, level = reference_target([dense], DEEP_LADDER)
        d_bits = cost_to(dense, rates.hitting(dense.ended[SUBOPT], eps), ("comm/bits_down",))
        for name, g in sorted(pair.items()):
            # the count, exactly: one compressed message a round per worker
            comp, dim = _compressor(g.params, "downlink"), int(g.constants.get("dim", 0))
            down, rounds = g.finished["comm/bits_down"], g.finished["comm/rounds"]
            size = message_bits(comp, dim) if comp is not None and dim else None
            if size is not None and down.size and np.isfinite(rounds).all():
                checks.append(bool(np.all(down[:, -1] == rounds[:, -1] * size)))
                count = f"{size} bits a broadcast (dense {32 * dim})"
            else:
                checks.append(None)
                count = "size per broadcast not checked (no fixed size, or rounds not logged)"
            bits = cost_to(g, rates.hitting(g.ended[SUBOPT], eps), ("comm/bits_down",))
            checks.append(ahead(bits, d_bits))
            c.evidence.append(f"{g.params.get('algorithm.name')} {name}: {count}; "
                              f"comm/bits_down to {level:g}×F0 [{_show(bits)}] vs dense "
                              f"[{_show(d_bits)}]")
    c.verdict = _verdict(checks) if checks else "inconclusive"
    return c


def evaluate(groups: list[Group], comps: dict[str, Comparison]) -> list[Claim]:
    return [claim_diana_exact(groups, comps), claim_diana_omega(groups, comps),
            claim_local_speedup(groups), claim_transient_only(groups),
            claim_ef_needed(groups), claim_ef21_exact(groups), claim_marina_exact(groups),
            claim_powersgd_bits(groups), claim_majority_vote_bits(groups),
            claim_downlink_bits(groups), claim_diloco_rounds(groups),
            claim_scaffold_no_drift(groups)]
