"""The theorem's prediction beside the measurement, for each group (docs/theory.md §8a, §8b, §8e).

Predictions come from the algorithm modules' own `theorem(...)` functions, evaluated at the
logged task constants (task/L, task/L_max, task/mu, ...), the compressor's declared ω or δ
(`suite.compressors.build_compressor(...).omega(d)` / `.delta(d)`, exactly as the runner
computes them) and the step size the run actually used (`lr.resolved`). Nothing is re-derived
here, and the runner is never imported.

Comparisons, both one-sided because the theorems are upper bounds:
- rate: holds when the upper end of the 95% CI of ρ̂ contracts at least (1 − RATE_TOL) as fast
  as the bound: log ρ̂_hi ≤ (1 − RATE_TOL)·log ρ_th. The tightness ratio log ρ̂ / log ρ_th is
  ≥ 1 when the measured curve is faster than the bound (the usual case). The bound's rate is
  for E‖x − x*‖² (dist_sq) or E f − f* (subopt); both contract at the same asymptotic rate
  for a smooth strongly convex f, so ρ̂ of f − f* is compared with either.
- floor: the bound on f − f* is Theorem.floor_suboptimality(L) (f − f* ≤ (L/2)‖x − x*‖²). It
  holds when the upper CI of the measured floor is ≤ (1 + FLOOR_TOL)·bound. It is only judged
  where the tail is a plateau (§8b); a curve still decaying has not shown its floor, and where
  the bound is 0 (DIANA with full gradients) that is exactly the prediction. Slack =
  bound / measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .groups import Group
from .rates import EPS

RATE_TOL = 0.05  # 5% of the exponent: the rate fit's own bias on short windows is smaller
FLOOR_TOL = 0.05


@dataclass(frozen=True)
class Prediction:
    theorem: object | None  # suite.algorithms.Theorem
    omega: float | None
    delta: float | None
    note: str = ""


def predict(g: Group) -> Prediction:
    """Evaluate the group's theorem through its algorithm module at the logged constants."""
    from suite.algorithms import REGISTRY
    from suite.compressors import build_compressor

    p = g.params
    alg = p.get("algorithm.name")
    if alg not in REGISTRY:
        return Prediction(None, None, None, f"algorithm {alg!r} has no theorem module")
    needed = ("L", "L_max", "mu", "dim")
    if any(k not in g.constants for k in needed):
        return Prediction(None, None, None, "task constants not logged")
    d = int(g.constants["dim"])
    comp_hp = {k[len("compressor."):]: v for k, v in p.items()
               if k.startswith("compressor.") and k != "compressor.name"}
    try:
        comp = build_compressor(p.get("compressor.name", "identity"), **comp_hp)
        omega = comp.omega(d) if comp.kind == "unbiased" else None
        delta = comp.delta(d) if comp.delta is not None else None
    except Exception as exc:  # a compressor this checkout does not know: say so, go on
        return Prediction(None, None, None, f"compressor: {exc}")
    hyper = {k[len("algorithm."):]: v for k, v in p.items()
             if k.startswith("algorithm.") and k != "algorithm.name"}
    batch = p.get("batch_size")
    # as the runner does: lr=theory evaluates the theorem at its own step size (lr=None),
    # a numeric lr at that step size
    lr = None if p.get("lr") == "theory" else p.get("lr")
    try:
        thm = REGISTRY[alg].theorem(
            g.constants, workers=int(p.get("workers", 1)),
            batch_size=None if batch == "full" else int(batch), omega=omega, delta=delta,
            lr=None if lr is None else float(lr), **hyper)
    except Exception as exc:
        return Prediction(None, omega, delta, f"theorem refused: {exc}")
    return Prediction(thm, omega, delta)


@dataclass(frozen=True)
class Comparison:
    group: Group
    prediction: Prediction
    rate_bound: float | None
    rate_holds: bool | None
    tightness: float | None  # log ρ̂ / log ρ_th
    floor_bound: float | None  # on f − f*
    floor_measured: float | None
    floor_hi: float | None
    floor_holds: bool | None
    floor_slack: float | None  # bound / measured
    note: str = ""


def compare(g: Group) -> Comparison:
    pred = predict(g)
    thm = pred.theorem
    notes = [pred.note] if pred.note else []
    schedule = g.params.get("lr_schedule", "constant")
    rate_bound = rate_holds = tight = None
    floor_bound = floor_meas = floor_hi = floor_holds = slack = None
    if thm is not None and schedule != "constant":
        notes.append(f"lr_schedule={schedule}: the theorems are for a constant step")
    elif thm is not None:
        if thm.rate is not None and 0 < thm.rate < 1:
            rate_bound = float(thm.rate)
            if g.rate is not None and g.rate.ok and math.isfinite(g.rate.rho.hi):
                rho = g.rate.rho
                rate_holds = bool(math.log(rho.hi) <= (1 - RATE_TOL) * math.log(rate_bound))
                tight = math.log(rho.value) / math.log(rate_bound)
        elif not thm.rate:
            notes.append("no linear rate: " + (thm.source or "theorem gives none"))
        L = g.constants.get("L", math.nan)
        fb = thm.floor_suboptimality(L)
        if fb is not None and math.isfinite(fb):
            floor_bound = float(fb)
        if g.floor is not None and g.floor.floor.ok:
            floor_meas, floor_hi = g.floor.floor.value, g.floor.floor.hi
            if g.joint is not None and g.joint.F.ok and g.floor.plateau:
                # the joint fit separates the transient: prefer it where there is a plateau
                floor_meas, floor_hi = g.joint.F.value, max(g.joint.F.hi, 0.0)
            precision = max(100 * EPS * abs(g.constants.get("f_star", 0.0)),
                            1e-12 * g.initial_gap)
            if floor_bound is not None:
                if not g.floor.plateau:
                    # still decaying at the end of the run: no floor within the run
                    floor_holds = True if floor_bound == 0 else None
                    if floor_bound > 0:
                        notes.append("no plateau yet: floor not judged")
                else:
                    floor_holds = bool(floor_hi <= (1 + FLOOR_TOL) * floor_bound
                                       or floor_hi <= precision)
                if floor_meas > 0 and floor_bound > 0:
                    slack = floor_bound / floor_meas
    return Comparison(g, pred, rate_bound, rate_holds, tight, floor_bound, floor_meas,
                      floor_hi, floor_holds, slack, "; ".join(notes))
