"""Leaderboards: one per problem, from the held-out seeds' runs (every seed where the sweep is
not tuned), ranked by one documented rule, written as leaderboard.json and merged across files
(docs/analysis.md, "Leaderboards"; the file's schema: docs/leaderboard.schema.json).

For each method of a problem, at every target level r of the problem (ε = r·F0, F0 = f(x0) − f*):
the iterations, uplink bits per worker and wall seconds to ε, as lower medians over seeds with
censored seeds +∞ and 95% bootstrap intervals (analysis.rates); its *depth*, the deepest level
that at least half of its seeds reach; the floor of its tail (docs/theory.md §8b); its final
f − f*.

Summary rank. The summary level r* is the deepest depth of any method. Method a *beats* method b
when, at the deeper of their two depths, a's interval of the ranking cost (`rank_by`: bits by
default) lies entirely below b's: hi_a < lo_b, where a bound is +∞ once the censored seeds reach
it. So reaching a level that the other method misses on every resample wins, a faster method
wins only where the intervals separate, and a method's rank is 1 + the number of methods that
beat it: methods that nothing separates share a rank (ties, for overlapping intervals). Methods
that reach no level at all are beaten by every method that reaches one robustly and tie among
themselves. Rows are listed by rank, then depth (deeper first), then the point cost at their depth.

Everything a rank needs is in the entries, so `merge` re-ranks the union of several files'
entries exactly as a report of all their runs would rank them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import rates
from .groups import SUBOPT, Group, floor_estimate, target_costs
from .runs import short_labels, without_keys
from .tuning import Protocol, ProtocolError, Selection, Trial, choose

FORMAT = "commsgd-leaderboard"
VERSION = 1
RANK_COSTS = ("bits", "iterations", "seconds")  # what --rank-by may name
F0_RTOL = 1e-9  # entries of one problem must start from the same gap (one x0, one f*)


# ------------------------------------------------------------------------------ numbers in JSON

def _num(x: float) -> float | None:
    """JSON has no infinity: +∞ (not reached, or a censored bound) is written as null."""
    return float(x) if math.isfinite(x) else None


def _unnum(v) -> float:
    return math.inf if v is None else float(v)


@dataclass(frozen=True)
class Cost:
    """A time-to-target summary over seeds: the lower median with its interval, +∞ censored."""

    value: float
    lo: float
    hi: float
    reached: int
    total: int
    per_seed: tuple[float, ...] = ()

    @classmethod
    def of(cls, c: rates.Censored, per_seed) -> Cost:
        m = c.median
        return cls(m.value, m.lo, m.hi, c.reached, c.total, tuple(float(v) for v in per_seed))

    def to_json(self) -> dict:
        return {"value": _num(self.value), "lo": _num(self.lo), "hi": _num(self.hi),
                "reached": self.reached, "total": self.total,
                "per_seed": [_num(v) for v in self.per_seed]}

    @classmethod
    def from_json(cls, d: dict) -> Cost:
        return cls(_unnum(d["value"]), _unnum(d["lo"]), _unnum(d["hi"]), int(d["reached"]),
                   int(d["total"]), tuple(_unnum(v) for v in d["per_seed"]))


@dataclass(frozen=True)
class AtTarget:
    level: float  # r
    eps: float  # r·F0
    iterations: Cost
    bits: Cost
    seconds: Cost

    def cost(self, name: str) -> Cost:
        return getattr(self, name)

    def to_json(self) -> dict:
        return {"level": self.level, "eps": self.eps, "iterations": self.iterations.to_json(),
                "bits": self.bits.to_json(), "seconds": self.seconds.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> AtTarget:
        return cls(float(d["level"]), _num(d["eps"]), *(Cost.from_json(d[k]) for k in
                                                         ("iterations", "bits", "seconds")))


@dataclass(frozen=True)
class FloorValue:
    value: float
    lo: float
    hi: float
    plateau: bool  # False: the tail still decays and `value` (its mean) is an upper bound
    kind: str  # "joint fit" (F of F + Cρ^k) or "tail mean"

    def to_json(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "plateau": self.plateau,
                "kind": self.kind}

    @classmethod
    def from_json(cls, d: dict | None) -> FloorValue | None:
        return None if d is None else cls(float(d["value"]), float(d["lo"]), float(d["hi"]),
                                          bool(d["plateau"]), str(d["kind"]))


def _trial_json(t: Trial) -> dict:
    return {"hyperparameters": t.hyperparameters, "depth": t.depth, "cost": _num(t.cost),
            "final": _num(t.final), "reached": t.reached, "seeds": list(t.seeds),
            "config_id": t.group}


def _trial_from_json(d: dict) -> Trial:
    return Trial(dict(d["hyperparameters"]), d["depth"], _unnum(d["cost"]), _unnum(d["final"]),
                 int(d["reached"]), tuple(d["seeds"]), d["config_id"])


# ------------------------------------------------------------------------------ the model

@dataclass
class Entry:
    """One method on one problem: its chosen configuration on its evaluation seeds."""

    config_id: str  # the configuration's group id
    method_id: str  # the method minus its tuned keys
    short_name: str | None  # leaderboard.name, where the runs set one
    config: dict  # the method's params as logged
    hyperparameters: dict  # the tuned keys' chosen values ({} untuned)
    trials: list[Trial]  # every trial of the method on the tuning seeds ([] untuned)
    seeds_tuning: list[int]
    seeds_evaluation: list[int]
    F0: float
    targets: list[AtTarget]
    floor: FloorValue | None
    final: float  # mean over its FINISHED evaluation seeds of the last f − f*
    statuses: dict
    name: str = ""  # display name: set by `name_entries`
    depth: float | None = None  # set by `rank`
    rank: int = 0

    def at(self, level: float) -> AtTarget:
        return next(t for t in self.targets if t.level == level)

    def to_json(self) -> dict:
        return {"name": self.name, "short_name": self.short_name, "config_id": self.config_id,
                "method_id": self.method_id, "config": self.config,
                "hyperparameters": self.hyperparameters, "rank": self.rank,
                "depth": self.depth, "trials": [_trial_json(t) for t in self.trials],
                "seeds": {"tuning": self.seeds_tuning, "evaluation": self.seeds_evaluation},
                "F0": self.F0, "targets": [t.to_json() for t in self.targets],
                "floor": self.floor.to_json() if self.floor else None,
                "final": _num(self.final), "statuses": self.statuses}

    @classmethod
    def from_json(cls, d: dict) -> Entry:
        return cls(d["config_id"], d["method_id"], d["short_name"], dict(d["config"]),
                   dict(d["hyperparameters"]), [_trial_from_json(t) for t in d["trials"]],
                   list(d["seeds"]["tuning"]), list(d["seeds"]["evaluation"]), _num(d["F0"]),
                   [AtTarget.from_json(t) for t in d["targets"]],
                   FloorValue.from_json(d["floor"]), _unnum(d["final"]), dict(d["statuses"]),
                   d["name"], d["depth"], int(d["rank"]))


@dataclass
class Board:
    """The leaderboard of one problem (task, K, batch size) of one experiment."""

    problem: str
    experiment: str
    label: str
    task: dict
    workers: str
    batch_size: str
    levels: tuple[float, ...]  # shallow to deep
    protocol: Protocol
    rank_by: str
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)
    summary_level: float | None = None  # set by `rank`

    @property
    def F0(self) -> float:
        return float(np.nanmedian([e.F0 for e in self.entries])) if self.entries else math.nan

    @property
    def tuned(self) -> bool:
        return self.protocol.tuned

    def budget(self) -> dict[str, int]:
        """Trials per method: the number of configurations of its tuned keys that were run."""
        return {e.name: len(e.trials) for e in self.entries}

    def to_json(self) -> dict:
        return {"id": self.problem, "experiment": self.experiment, "label": self.label,
                "task": self.task, "workers": self.workers, "batch_size": self.batch_size,
                "F0": self.F0, "levels": list(self.levels), "summary_level": self.summary_level,
                "protocol": "tuned" if self.tuned else "untuned",
                "tuning": self.protocol.as_dict() if self.tuned else None,
                "rank_by": self.rank_by, "notes": self.notes,
                "methods": [e.to_json() for e in self.entries]}

    @classmethod
    def from_json(cls, d: dict) -> Board:
        t = d["tuning"] or {}
        protocol = Protocol(tuple(d["levels"]), tuple(t.get("seeds", ())),
                            tuple(t.get("keys", ())), t.get("tune_by", "iterations"),
                            t.get("tune_target"))
        return cls(d["id"], d["experiment"], d["label"], dict(d["task"]), d["workers"],
                   d["batch_size"], tuple(d["levels"]), protocol, d["rank_by"],
                   [Entry.from_json(e) for e in d["methods"]], list(d["notes"]),
                   d["summary_level"])


# ------------------------------------------------------------------------------ building

def entry_of(g: Group, levels: tuple[float, ...], F0: float, selection: Selection | None,
             n_boot: int) -> Entry:
    """The leaderboard entry of an evaluation group; `selection` for a tuned method."""
    at = []
    for level in levels:
        tt = target_costs(g, level * F0, n_boot=n_boot)
        at.append(AtTarget(level, level * F0, *(Cost.of(c, tt.per_seed.get(k, ())) for k, c in
                                                (("iterations", tt.iterations),
                                                 ("bits", tt.bits),
                                                 ("seconds", tt.seconds)))))
    fl = floor_estimate(g)
    floor = None if fl is None else FloorValue(fl[0].value, fl[0].lo, fl[0].hi, fl[1], fl[2])
    Y = g.finished[SUBOPT]
    final = float(np.mean(Y[:, -1])) if Y.size else math.nan
    trials = selection.trials if selection else []
    return Entry(g.group, g.method_id, g.short_name, g.method_config,
                 dict(selection.chosen.hyperparameters) if selection else {}, list(trials),
                 list(selection.chosen.seeds) if selection else [], list(g.seeds),
                 g.initial_gap, at, floor, final, {k: int(v) for k, v in g.statuses.items()})


def build(groups: list[Group], protocols: dict[str, Protocol],
          selections: dict[tuple[str, str], Selection], *, rank_by: str = "bits",
          n_boot: int = rates.N_BOOT) -> list[Board]:
    """The boards of the evaluation groups (held-out seeds of the chosen trials, or every seed
    of an untuned problem), named and ranked."""
    by_problem: dict[str, list[Group]] = {}
    for g in groups:
        by_problem.setdefault(g.problem, []).append(g)
    boards = []
    for problem, gs in by_problem.items():
        protocol = protocols[problem]
        F0 = float(np.nanmedian([g.initial_gap for g in gs]))
        first = gs[0]
        task = {k: v for k, v in first.logged.items() if k.startswith("task.")}
        entries = [entry_of(g, protocol.levels, F0,
                            selections.get((problem, g.method_id)) if protocol.tuned else None,
                            n_boot) for g in gs]
        board = Board(problem, first.experiment, first.problem_label, task,
                      first.logged.get("workers", "?"), first.logged.get("batch_size", "?"),
                      protocol.levels, protocol, rank_by, entries)
        if protocol.tuned:
            chosen = {(problem, g.method_id) for g in gs}
            board.notes += [f"no held-out seed of the chosen trial of "
                            f"{_label(s)} ran: it is not ranked"
                            for key, s in selections.items()
                            if key[0] == problem and key not in chosen]
        finish(board)
        boards.append(board)
    return sorted(boards, key=lambda b: b.problem)


def _label(s: Selection) -> str:
    return json.dumps(s.chosen.hyperparameters, sort_keys=True)


def finish(board: Board) -> None:
    name_entries(board)
    rank(board)


def name_entries(board: Board) -> None:
    """Display names: the short name where set, else algorithm/compressor, with the keys that
    tell apart the board's methods (tuned keys left out: they are the choice, not the
    method)."""
    keys = board.protocol.keys if board.tuned else ()
    names = short_labels([without_keys(e.config, keys) for e in board.entries],
                         [e.short_name for e in board.entries])
    for e, n in zip(board.entries, names, strict=True):
        e.name = n


def _deeper(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)


def beats(a: Entry, b: Entry, rank_by: str) -> bool:
    """a beats b: at the deeper of their depths, a's interval lies entirely below b's."""
    level = _deeper(a.depth, b.depth)
    if level is None:
        return False
    return a.at(level).cost(rank_by).hi < b.at(level).cost(rank_by).lo


def rank(board: Board) -> None:
    """Depths, the summary level and the tie-aware ranks (module docstring)."""
    if board.rank_by not in RANK_COSTS:
        raise ProtocolError(f"rank_by={board.rank_by!r}: one of {', '.join(RANK_COSTS)}")
    for e in board.entries:
        reached = [t.level for t in e.targets if math.isfinite(t.iterations.value)]
        e.depth = min(reached) if reached else None
    depths = [e.depth for e in board.entries if e.depth is not None]
    board.summary_level = min(depths) if depths else None
    for e in board.entries:
        e.rank = 1 + sum(beats(o, e, board.rank_by) for o in board.entries if o is not e)

    def order(e: Entry):
        own = e.at(e.depth).cost(board.rank_by).value if e.depth is not None else math.inf
        return (e.rank, -(board.levels.index(e.depth) if e.depth is not None else -1), own,
                e.name)
    board.entries.sort(key=order)


def profile_ratios(boards: list[Board]) -> tuple[dict[str, list[float]], int]:
    """Performance ratios r(p, m) = c(p, m) / min_m' c(p, m') per method name, over the boards
    on which some method reaches a target, at each board's summary level and ranking cost
    (+∞ where m does not reach it); and how many boards that is. A best cost of 0 (nothing sent
    before the target, e.g. before a first synchronisation) ties only with other zeros."""
    ratios: dict[str, list[float]] = {}
    used = 0
    for b in boards:
        if b.summary_level is None:
            continue
        cost = {e.name: e.at(b.summary_level).cost(b.rank_by).value for e in b.entries}
        best = min(cost.values())
        used += 1
        for m, v in cost.items():
            ratios.setdefault(m, []).append(
                1.0 if v == best else v / best if best > 0 else math.inf)
    return ratios, used


# ------------------------------------------------------------------------------ the file

def document(boards: list[Board], *, sources: list[dict], n_boot: int,
             level: float = rates.LEVEL) -> dict:
    """leaderboard.json: every board with its entries, and where they came from."""
    return {"format": FORMAT, "version": VERSION,
            "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "n_boot": n_boot, "level": level, "sources": sources,
            "problems": [b.to_json() for b in sorted(boards, key=lambda b: b.problem)]}


def boards_of(doc: dict, where: str = "") -> list[Board]:
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ProtocolError(f"{where}: not a {FORMAT} file of version {VERSION} "
                            f"(format={doc.get('format')!r}, version={doc.get('version')!r})")
    return [Board.from_json(p) for p in doc["problems"]]


def merge(docs: list[tuple[str, dict]]) -> dict:
    """One leaderboard document from several (name, document) pairs, e.g. the halves of a sweep
    run on two machines. Each configuration must come from one file (all of its seeds); a tuned
    method's trials may be spread over several files, and its choice is made again over all of
    them. Boards are re-named and re-ranked: the result equals the report of all the runs."""
    if not docs:
        raise ProtocolError("--merge: no file given")
    for key in ("n_boot", "level"):
        values = {d.get(key) for _, d in docs}
        if len(values) > 1:
            raise ProtocolError(f"--merge: the files were made with different {key} "
                                f"({', '.join(map(str, sorted(values)))}); their intervals "
                                f"cannot be compared")
    merged: dict[str, Board] = {}
    origin: dict[str, str] = {}
    for where, doc in docs:
        for b in boards_of(doc, where):
            if b.problem not in merged:
                merged[b.problem], origin[b.problem] = b, where
            else:
                merged[b.problem] = _merge_boards(merged[b.problem], b, origin[b.problem],
                                                  where)
    for b in merged.values():
        finish(b)
    first = docs[0][1]
    return document(list(merged.values()), n_boot=first["n_boot"], level=first["level"],
                    sources=[s for _, d in docs for s in d.get("sources", [])])


def _merge_boards(a: Board, b: Board, wa: str, wb: str) -> Board:
    for key in ("experiment", "task", "workers", "batch_size", "levels", "protocol", "rank_by"):
        if getattr(a, key) != getattr(b, key):
            raise ProtocolError(f"--merge: {a.label}: {key} differs between {wa} "
                                f"({getattr(a, key)}) and {wb} ({getattr(b, key)})")
    F0s = [e.F0 for e in a.entries + b.entries]
    if F0s and max(F0s) - min(F0s) > F0_RTOL * abs(max(F0s)):
        raise ProtocolError(f"--merge: {a.label}: the initial gaps differ ({min(F0s):.17g} in "
                            f"one file, {max(F0s):.17g} in another): not the same problem")
    seen = {e.config_id: wa for e in a.entries}
    for e in b.entries:
        if e.config_id in seen:
            raise ProtocolError(f"--merge: {a.label}: configuration {e.config_id} "
                                f"({e.short_name or e.method_id}) is in both {seen[e.config_id]} "
                                f"and {wb}; each configuration's seeds must come from one file")
    if not a.tuned:
        entries = a.entries + b.entries
    else:
        entries = []
        by_method: dict[str, list[Entry]] = {}
        for e in a.entries + b.entries:
            by_method.setdefault(e.method_id, []).append(e)
        for es in by_method.values():
            trials: dict[str, Trial] = {}
            for e in es:
                for t in e.trials:
                    if t.text in trials:
                        raise ProtocolError(
                            f"--merge: {a.label}: trial {t.text} of "
                            f"{e.short_name or e.method_id} is in more than one file")
                    trials[t.text] = t
            pooled = sorted(trials.values(), key=lambda t: t.text)
            best = choose(pooled, a.protocol.tuning_levels)
            winner = next((e for e in es if e.hyperparameters == best.hyperparameters), None)
            if winner is None:
                raise ProtocolError(
                    f"--merge: {a.label}: the best trial {best.text} of "
                    f"{es[0].short_name or es[0].method_id} has no held-out results in any "
                    f"file")
            winner.trials = pooled
            entries.append(winner)
    return Board(a.problem, a.experiment, a.label, a.task, a.workers, a.batch_size, a.levels,
                 a.protocol, a.rank_by, entries, sorted(set(a.notes) | set(b.notes)))


def _num(v) -> float:
    """A number of leaderboard.json, null (unknown: a task without f*) read as NaN."""
    return math.nan if v is None else float(v)


def _json_safe(v):
    """NaN and ±inf as null: JSON has no such numbers. They arise where the task knows no f*
    (F0 = f(x0) − f* and the targets ε = r·F0 are then unknown)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write(doc: dict, path) -> None:
    from pathlib import Path

    text = json.dumps(_json_safe(doc), indent=1, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")
