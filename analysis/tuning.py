"""The tuning protocol: which seeds choose a method's hyper-parameters, which rank it, and the
choice itself (docs/analysis.md, "Tuning").

Benchmarks of optimisers tune every method under the same budget and report on seeds that the
tuning never saw (AlgoPerf's external tuning ruleset, Dahl et al. 2023; Agarwal et al., "On the
Utility of Gradient Compression in Distributed Training Systems", 2022). A sweep declares its
protocol in the config, so every run logs it (`leaderboard.*`):

    tuning_seeds  seeds whose runs only choose hyper-parameters; every other seed is held out
    tune_keys     the keys the sweep searches (its grid, e.g. lr); the other keys define the method
    tune_target   optionally, the deepest relative target r the choice aims at
    tune_by       iterations | bits: the cost minimised

A *trial* is one configuration of a method's tuned keys; the *budget* of a method is its number
of trials, each run on every tuning seed. Per problem and method, from the tuning seeds' runs
only, each trial gets

    depth  the deepest target level (no deeper than tune_target) that at least half of its
           tuning seeds reach
    cost   the lower median over its tuning seeds of the iterations (or bits) to that level
    final  the lower median over its tuning seeds of the last f − f* (+∞ for a failed seed)

and the chosen trial is the one with the deepest depth, then the lowest cost, then the lowest
final, then the smallest hyper-parameter values as text (a fixed order, so that the same trials
give the same choice wherever they are evaluated, e.g. by `commsgd-report --merge`). A trial that
reaches no level has no depth and ranks below every trial that reaches one. The held-out seeds
are never read here: their runs enter only the leaderboard (analysis.leaderboard).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from suite.config import TUNE_COSTS

from . import rates
from .groups import SUBOPT, Group
from .runs import declared

# The report's target levels where a run names none (leaderboard.targets: null): the ladder of
# the early phase (1e-1 … 1e-4), where stochastic methods stall, and two deep levels where only
# exactly converging methods arrive.
DEFAULT_LEVELS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8)


class ProtocolError(ValueError):
    """Runs of one problem that declare different protocols, or input the report cannot use;
    the message names the problem, the key and the values found."""


@dataclass(frozen=True)
class Protocol:
    """How one problem's leaderboard is made."""

    levels: tuple[float, ...]  # relative targets r, shallow to deep
    tuning_seeds: tuple[int, ...] = ()  # empty: untuned, every seed is an evaluation seed
    keys: tuple[str, ...] = ()
    tune_by: str = "iterations"
    tune_target: float | None = None

    @property
    def tuned(self) -> bool:
        return bool(self.tuning_seeds)

    @property
    def tuning_levels(self) -> tuple[float, ...]:
        """The levels a trial's depth is measured on: the targets no deeper than tune_target
        (and tune_target itself)."""
        if self.tune_target is None:
            return self.levels
        return tuple(sorted({lv for lv in self.levels if lv >= self.tune_target}
                            | {self.tune_target}, reverse=True))

    def as_dict(self) -> dict:
        return {"seeds": list(self.tuning_seeds), "keys": list(self.keys),
                "tune_by": self.tune_by, "tune_target": self.tune_target}


def _levels(values) -> tuple[float, ...]:
    return tuple(sorted({float(v) for v in values}, reverse=True))


def plan(runs: pd.DataFrame, *, levels: list[float] | None = None,
         tune_by: str | None = None) -> dict[str, Protocol]:
    """The protocol of each problem, from what its runs declare. `levels` (--target) replaces the
    declared targets, `tune_by` (--tune-by) the declared cost. Targets declared differently by
    different runs are pooled; a tuning protocol must be the same for every run of a problem."""
    if tune_by is not None and tune_by not in TUNE_COSTS:
        raise ProtocolError(f"tune_by={tune_by!r}: one of {', '.join(TUNE_COSTS)}")
    out = {}
    for problem, part in runs.groupby("problem", sort=False):
        found: dict[str, set] = {}
        targets: set[float] = set()
        for _, r in part.iterrows():
            t = declared(r, "targets")
            targets |= set(t if isinstance(t, list) else [t] if t is not None else [])
            seeds = declared(r, "tuning_seeds", []) or []
            setting = {
                "leaderboard.tuning_seeds": tuple(sorted(seeds)),
                "leaderboard.tune_keys": tuple(declared(r, "tune_keys", ["lr"]) or [])
                if seeds else (),
                "leaderboard.tune_target": declared(r, "tune_target") if seeds else None,
                "leaderboard.tune_by": declared(r, "tune_by", "iterations") if seeds else None,
            }
            for k, v in setting.items():
                found.setdefault(k, set()).add(v)
        for k, vs in found.items():
            if len(vs) > 1:
                label = part["problem_label"].iloc[0]
                raise ProtocolError(
                    f"{label}: its runs declare different {k} ({', '.join(sorted(map(str, vs)))}); "
                    f"one problem's runs must share one tuning protocol")
        one = {k: next(iter(vs)) for k, vs in found.items()}
        seeds = one["leaderboard.tuning_seeds"]
        out[problem] = Protocol(
            levels=_levels(levels or targets or DEFAULT_LEVELS),
            tuning_seeds=seeds,
            keys=one["leaderboard.tune_keys"],
            tune_by=(tune_by or one["leaderboard.tune_by"] or "iterations") if seeds
            else "iterations",
            tune_target=one["leaderboard.tune_target"])
    return out


@dataclass(frozen=True)
class Trial:
    """One configuration of a method's tuned keys, summarised on its tuning seeds."""

    hyperparameters: dict  # tuned key -> value as logged
    depth: float | None  # deepest tuning level reached by half of the tuning seeds
    cost: float  # lower median cost to `depth` over the tuning seeds (+∞ without a depth)
    final: float  # lower median last f − f* over the tuning seeds (+∞ for a failed seed)
    reached: int  # tuning seeds that reached `depth`
    seeds: tuple[int, ...]
    group: str = ""  # the configuration's group id (the same for tuning and held-out seeds)

    @property
    def text(self) -> str:
        return json.dumps(self.hyperparameters, sort_keys=True)

    def key(self, levels: tuple[float, ...]) -> tuple:
        """The selection order: deeper first, then cheaper, then lower final, then by text."""
        depth = levels.index(self.depth) if self.depth in levels else -1
        return (-depth, self.cost, self.final, self.text)


def final_gaps(g: Group) -> np.ndarray:
    """Per seed of g, the last logged f − f* of a FINISHED run, +∞ for a failed one."""
    out = np.full(len(g.ended.run_ids), np.inf)
    Y = g.ended[SUBOPT]
    for i, run_id in enumerate(g.ended.run_ids):
        row = Y[i][np.isfinite(Y[i])] if Y.size else np.zeros(0)
        if run_id in g.finished.run_ids and row.size:
            out[i] = row[-1]
    return out


def evaluate_trial(g: Group, protocol: Protocol, F0: float) -> Trial:
    """The trial's depth, cost and final on its own runs (which are tuning seeds' runs)."""
    c = g.ended
    Y = c[SUBOPT]
    cost_series = c["comm/bits_up"] if protocol.tune_by == "bits" else None
    depth, cost, reached = None, math.inf, 0
    for level in protocol.tuning_levels:  # shallow to deep: keep the deepest reached
        idx = rates.hitting(Y, level * F0) if Y.size else np.zeros(0, dtype=int)
        if idx.size == 0 or 2 * int((idx >= 0).sum()) < len(idx):
            continue
        if cost_series is None:
            per_seed = np.where(idx >= 0, c.steps[np.maximum(idx, 0)], np.inf)
        else:
            per_seed = np.where(idx >= 0, cost_series[np.arange(len(idx)), np.maximum(idx, 0)],
                                np.inf)
        depth, cost, reached = level, float(rates.lower_median(per_seed)), int((idx >= 0).sum())
    final = float(rates.lower_median(final_gaps(g))) if len(g.ended.run_ids) else math.inf
    hyper = {k: v for k, v in g.method_config.items() if k in protocol.keys}
    return Trial(hyper, depth, cost, final, reached, tuple(g.seeds), g.group)


def choose(trials: list[Trial], levels: tuple[float, ...]) -> Trial:
    return min(trials, key=lambda t: t.key(levels))


@dataclass
class Selection:
    """The trials of one method on one problem and the one chosen."""

    method_id: str
    trials: list[Trial]
    chosen: Trial


def select(tuning_groups: list[Group], protocols: dict[str, Protocol]
           ) -> dict[tuple[str, str], Selection]:
    """The choice per (problem, method_id), from groups holding only tuning seeds' runs."""
    by_method: dict[tuple[str, str], list[Group]] = {}
    for g in tuning_groups:
        if protocols[g.problem].tuned:
            by_method.setdefault((g.problem, g.method_id), []).append(g)
    F0 = {}
    for (problem, _), gs in by_method.items():
        F0.setdefault(problem, []).extend(g.initial_gap for g in gs)
    out = {}
    for (problem, mid), gs in by_method.items():
        protocol = protocols[problem]
        f0 = float(np.nanmedian(F0[problem]))
        trials = sorted((evaluate_trial(g, protocol, f0) for g in gs), key=lambda t: t.text)
        out[(problem, mid)] = Selection(mid, trials, choose(trials, protocol.tuning_levels))
    return out
