"""Per-group arrays and fits: the numbers every table and plot of the report is built from.

A group is one configuration over its seeds (analysis.runs). For each group we align the seeds'
histories on their common steps and fit, from the FINISHED seeds (docs/theory.md §8):
- the linear rate of the seed-mean suboptimality (§8a), over a window that stops at 10× the
  floor where the tail shows a plateau;
- the floor: the tail mean with its plateau test, and the joint fit F + Cρ^k where a plateau
  exists (§8b);
- the theorem's prediction for the configuration (analysis.theory).

Time-to-target uses every run that ended (FINISHED and FAILED): a diverged seed is a seed that
did not reach ε, a censored observation, not a missing one (§8d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import rates
from .runs import RunSet, parse_value, split_params

SUBOPT = "train/suboptimality"


@dataclass
class Curves:
    """Aligned histories of some runs of one group: rows = runs, columns = steps."""

    run_ids: list[str]
    steps: np.ndarray
    values: dict[str, np.ndarray]  # metric key -> [R, n]

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.values:
            return self.values[key]
        return np.full((len(self.run_ids), len(self.steps)), np.nan)


def aligned(runset: RunSet, run_ids: list[str], keys: tuple[str, ...]) -> Curves:
    """The histories of `run_ids` for `keys` on the union of their steps (NaN where absent).
    Cumulative series (bits, seconds) are logged with the suboptimality, at the same steps."""
    h = runset.history
    h = h[h["run_id"].isin(run_ids) & h["key"].isin(keys)]
    if h.empty:
        return Curves(list(run_ids), np.zeros(0), {})
    steps = np.sort(h.loc[h["key"] == SUBOPT, "step"].unique()) if (h["key"] == SUBOPT).any() \
        else np.sort(h["step"].unique())
    values = {}
    for key, part in h.groupby("key"):
        wide = part.pivot_table(index="run_id", columns="step", values="value", aggfunc="last")
        wide = wide.reindex(index=list(run_ids), columns=steps)
        values[key] = wide.to_numpy(dtype=float)
    return Curves(list(run_ids), steps.astype(float), values)


@dataclass
class Group:
    group: str
    experiment: str
    task_key: str
    problem: str
    problem_label: str
    method: str
    method_key: str
    params: dict  # parsed params of the group (seed left out)
    constants: dict  # task constants (params task/<name>; metrics in older runs)
    run_ids: list[str]
    statuses: dict  # status -> count
    diverged: int
    finished: Curves  # FINISHED seeds only: what the rates and floors are fitted on
    ended: Curves  # FINISHED and FAILED seeds: what time-to-target is computed on
    rate: rates.LinearRate | None = None
    floor: rates.Floor | None = None
    joint: rates.JointFit | None = None
    power: rates.PowerLaw | None = None  # decaying step sizes: m_k ∝ k^(−p)
    notes: list[str] = field(default_factory=list)
    method_id: str = ""  # the method minus its tuned keys: one id for all trials of a method
    short_name: str | None = None  # leaderboard.name, where the runs set one
    seeds: list[int] = field(default_factory=list)  # of the ended runs, in run_ids' order
    logged: dict = field(default_factory=dict)  # the params as MLflow holds them (strings)

    @property
    def method_config(self) -> dict[str, str]:
        """The method's params as logged: the configuration minus the problem's keys."""
        return split_params(self.logged)[3]

    @property
    def n_seeds(self) -> int:
        return len(self.ended.run_ids)

    @property
    def initial_gap(self) -> float:
        y = self.ended[SUBOPT]
        return float(np.nanmedian(y[:, 0])) if y.size else math.nan

    @property
    def workers(self) -> int:
        return int(self.params.get("workers", 1))

    @property
    def label(self) -> str:
        return self.method


def build_groups(runset: RunSet, *, n_boot: int = rates.N_BOOT, fit: bool = True,
                 runs: pd.DataFrame | None = None) -> list[Group]:
    """One Group per configuration among the runs that ended (or among `runs`, a subset of
    them: the tuning or the held-out seeds); fits included when `fit`."""
    runs = runset.usable() if runs is None else runs
    keys = (SUBOPT, "comm/bits_up", "comm/bits_down", "comm/rounds", "time/compute_s",
            "time/compress_s", "time/wall_s", "test/accuracy", "train/loss")
    out = []
    for gid, part in runs.groupby("group", sort=False):
        part = part.sort_values("seed")
        first = part.iloc[0]
        name = first.get("short_name")
        logged = {c[len("params."):]: v for c, v in first.items()
                  if c.startswith("params.") and isinstance(v, str) and c != "params.seed"}
        params = {k: parse_value(v) for k, v in logged.items()}
        constants = {c[len("const."):]: float(v) for c, v in first.items()
                     if c.startswith("const.") and pd.notna(v)}
        ended_ids = list(part["run_id"])
        fin_ids = list(part.loc[part["status"] == "FINISHED", "run_id"])
        diverged = int((part.get("tags.diverged", pd.Series(dtype=str)) == "true").sum())
        g = Group(gid, first["experiment"], first["task_key"], first["problem"],
                  first["problem_label"], first["method"], first["method_key"], params,
                  constants, ended_ids, part["status"].value_counts().to_dict(), diverged,
                  aligned(runset, fin_ids, keys), aligned(runset, ended_ids, keys),
                  method_id=first.get("method_id", first["method_key"]),
                  short_name=name if isinstance(name, str) else None,
                  seeds=[int(s) for s in part["seed"]], logged=logged)
        if fit:
            fit_group(g, n_boot=n_boot)
        out.append(g)
    return out


def fit_group(g: Group, *, n_boot: int = rates.N_BOOT) -> None:
    """Rate and floor of the group's FINISHED seeds (docs/theory.md §8a, §8b)."""
    Y = g.finished[SUBOPT]
    if Y.size == 0 or Y.shape[1] < 4:
        g.notes.append("no finished seed with a full curve")
        return
    steps = g.finished.steps
    f_star = g.constants.get("f_star", 0.0)
    g.floor = rates.tail_floor(steps, Y, n_boot=n_boot)
    # the window stops at 10× the floor only where there is one (a plateau); a curve still
    # decaying at the end has no floor within the run
    floor = g.floor.floor.value if g.floor.plateau and g.floor.floor.ok else 0.0
    if g.params.get("lr_schedule", "constant") != "constant":
        # a decaying step size gives a power law (docs/theory.md §8c), not a geometric transient to
        # a floor: fit p in m_k ∝ k^(−p) on the anytime curve instead of F + Cρ^k
        g.power = rates.power_law(steps, Y, n_boot=n_boot)
        return
    g.rate = rates.linear_rate(steps, Y, floor=floor, f_star=f_star, n_boot=n_boot)
    if g.floor.plateau and (Y > 0).all():
        g.joint = rates.joint_floor(steps, Y, n_boot=n_boot)


def floor_estimate(g: Group) -> tuple[rates.Estimate, bool, str] | None:
    """The group's floor of f − f* as (estimate, plateau, kind), or None where it cannot be
    measured. Where the tail is flat the joint fit separates the transient from the floor (F of
    F + Cρ^k, 'joint fit'); otherwise the tail mean, which bounds the floor from above when the
    curve is still decaying ('tail mean', plateau False) (docs/theory.md §8b)."""
    fl = g.floor
    if fl is None or not fl.floor.ok:
        return None
    if fl.plateau and g.joint is not None and g.joint.F.ok:
        return g.joint.F, True, "joint fit"
    return fl.floor, fl.plateau, "tail mean"


def by_problem(groups: list[Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(g.problem, []).append(g)
    return out


def by_task(groups: list[Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(g.task_key, []).append(g)
    return out


# --------------------------------------------------------------------------- targets (§8d)

def target_costs(g: Group, eps: float, *, n_boot: int = rates.N_BOOT) -> rates.TimeToTarget:
    """Iterations, uplink bits per worker and wall seconds to reach ε, per seed, censored."""
    c = g.ended
    return rates.time_to_target(c.steps, c[SUBOPT], eps,
                                {"bits": c["comm/bits_up"], "seconds": c["time/wall_s"]},
                                n_boot=n_boot)


# ------------------------------------------------------------- alpha-beta projection (§report)

ALPHA_S = 10e-6  # per-round latency α: 10 µs, a typical datacenter round trip share
LINKS_GBPS = (1, 10, 100)


def projected_time(g: Group, eps: float, gbps: float, *, alpha: float = ALPHA_S,
                   n_boot: int = rates.N_BOOT) -> rates.Censored:
    """Projected time to ε on a link of `gbps` Gbit/s in the alpha-beta model:

        time = T_ε·(c + α·r) + B_ε/β,

    with T_ε the seed's iterations to ε, c its measured compute (gradient + compression)
    seconds per step, r its communication rounds per step, B_ε its bits sent and received per
    worker (up + down) until T_ε, and β = gbps·1e9 bit/s. Evaluated per seed at its hitting step
    from the cumulative logs (T_ε·c = compute_s + compress_s there, T_ε·r = rounds there);
    censored seeds are +∞."""
    c = g.ended
    idx = rates.hitting(c[SUBOPT], eps)
    rows = np.arange(len(idx))
    j = np.maximum(idx, 0)
    compute = c["time/compute_s"][rows, j] + c["time/compress_s"][rows, j]
    rounds = c["comm/rounds"][rows, j]
    bits = c["comm/bits_up"][rows, j] + c["comm/bits_down"][rows, j]
    t = compute + alpha * rounds + bits / (gbps * 1e9)
    return rates.censored_median(np.where(idx >= 0, t, np.inf), n_boot)


# ------------------------------------------------------------------------------ speedup (§8d)

def speedup_series(groups: list[Group]) -> dict[tuple[str, str], list[Group]]:
    """Groups of one task and one method that differ only in K (workers), with K = 1 among them
    and at least two values of K: the series a speedup S(K) is measured on. Keyed by
    (task_key, method_key)."""
    series: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        # by method_id, not method_key: in a tuned sweep each K has its own chosen step size
        series.setdefault((g.task_key, g.method_id + str(g.params.get("batch_size"))),
                          []).append(g)
    return {k: sorted(v, key=lambda g: g.workers) for k, v in series.items()
            if len({g.workers for g in v}) >= 2 and any(g.workers == 1 for g in v)}


def series_speedup(series: list[Group], eps: float, *, n_boot: int = rates.N_BOOT
                   ) -> rates.Speedup:
    curves = {g.workers: (g.ended.steps, g.ended[SUBOPT]) for g in series}
    return rates.speedup(curves, eps, n_boot=n_boot)


SPEEDUP_LADDER = tuple(m * 10.0**e for e in range(-5, 0) for m in (1, 2, 5))


def speedup_target(series: list[list[Group]]) -> tuple[float, float]:
    """ε for the speedup of one task, as (ε, relative level): docs/theory.md §8d asks for an ε above
    all floors, reached by every K. The smallest level r·F0 on the 1-2-5 ladder from 1e-5 to
    0.5 that the seed-mean curve of every K reaches, in the series with the smallest H (the
    reference where speedup should be best); the same ε then serves every series of the task,
    so a series that does not reach it is censored, as it should be."""
    if not series:
        return math.nan, math.nan
    ref = min(series, key=lambda s: s[0].params.get("algorithm.local_steps", 1) or 1)
    F0 = float(np.nanmedian([g.initial_gap for s in series for g in s]))
    for r in SPEEDUP_LADDER:
        if all(rates.hitting(np.nanmean(g.ended[SUBOPT], axis=0, keepdims=True), r * F0)[0] >= 0
               for g in ref):
            return r * F0, r
    return math.nan, math.nan
