"""`commsgd-report`: leaderboards, performance profiles, convergence plots, theory against
measurement and the papers' claims, from the runs of one or more MLflow experiments.

    commsgd-report --tracking-uri sqlite:///$PWD/mlruns.db --experiment diana_vs_quantized \
                   --experiment ef_delay --out reports/latest

writes OUT/report.md, OUT/report.html (standalone: plots embedded as data URIs), OUT/*.png and
OUT/leaderboard.json (docs/leaderboard.schema.json), and logs them as artifacts of a summary
run "report-<timestamp>" (tag commsgd.report=true) in the first experiment; the runs reader
leaves such summary runs out of every analysis. `commsgd-report --merge a.json b.json --out DIR`
combines leaderboard.json files into one leaderboard instead (analysis.leaderboard.merge).
The methods (targets, rank and tie rules, tuning protocol, fits, intervals, alpha-beta model,
profiles) are stated in the report itself and in docs/analysis.md; the fits are docs/theory.md
§8's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from suite import costmodel
from suite.config import TUNE_COSTS

from . import claims as claims_mod
from . import groups as G
from . import leaderboard as LB
from . import plots, rates, report_out, tuning
from . import projection as P
from .document import Doc
from .runs import REPORT_TAG, RunSet, load_runs, parse_value
from .theory import RATE_TOL, compare


def default_uri() -> str:
    return f"sqlite:///{Path.cwd().resolve() / 'mlruns.db'}"


# ------------------------------------------------------------------------------ formatting

def num(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "not reached" if x > 0 else "−∞"
    return f"{x:.{digits}g}"


def ci(e: rates.Estimate, digits: int = 3) -> str:
    """'value [lo, hi]'; an infinite upper bound prints as ∞ (censoring reached the interval)."""
    if e is None or not e.ok:
        return "not reached" if e is not None and e.value == math.inf else "n/a"

    def b(x):
        return "∞" if x == math.inf else ("−∞" if x == -math.inf else f"{x:.{digits}g}")
    return f"{e.value:.{digits}g} [{b(e.lo)}, {b(e.hi)}]"


def cens(c: rates.Censored, digits: int = 3) -> str:
    return ci(c.median, digits)


def yes_no(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "**no**")


def power_txt(g) -> str:
    """The power-law exponent of a decaying-step run, with its range and stability check."""
    if g.power is None or not g.power.p.ok:
        return "—"
    lo, hi = g.power.t_range
    stable = "stable" if g.power.stable else "upper-half refit differs"
    return f"{ci(g.power.p)} (k ∈ [{lo:.0f}, {hi:.0f}], {stable})"


def floor_text(fl: tuple[rates.Estimate, bool, str] | None) -> str:
    """'F [lo, hi] (plateau, joint fit)', or the tail mean of a curve still decaying."""
    if fl is None:
        return "n/a"
    est, plateau, kind = fl
    return f"{ci(est)} ({'plateau' if plateau else 'still decaying'}, {kind})"


def slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "_" for ch in text.lower())
    return "_".join(p for p in out.split("_") if p)[:80]


def _distinct(runs, column: str) -> list[str]:
    return sorted(set(runs[column].dropna())) if not runs.empty and column in runs else []


def summary_target(b: LB.Board) -> tuple[float, float]:
    """(ε, r) of a board's summary level; the shallowest level where no method reaches one."""
    r = b.summary_level if b.summary_level is not None else b.levels[0]
    return r * b.F0, r


def how_to_read(doc: Doc, n_boot: int) -> None:
    doc.heading("How to read this report")
    doc.bullets([
        "Every figure is over seeds: the point estimate comes from the seed-mean curve "
        "(theorems bound expectations) and the bracket is a 95% bootstrap interval over "
        f"seeds ({n_boot} resamples; docs/theory.md §8).",
        "Targets per leaderboard (one problem: task, K, batch size): ε = r·F0, with "
        "F0 = f(x0) − f* the initial gap, at each level r the runs' preset names "
        f"(`leaderboard.targets`; default {', '.join(f'{v:g}' for v in tuning.DEFAULT_LEVELS)}"
        ", or `--target`). A method's depth is the deepest level that at least half of its "
        "seeds reach; the summary target is the deepest depth of any method.",
        "Rank: method a beats b when, at the deeper of their depths, a's interval of uplink "
        "bits to ε lies entirely below b's (an upper bound is ∞ once censored seeds reach "
        "it); rank = 1 + the number of methods that beat it. Methods whose intervals overlap "
        "share a rank: they are not distinguishable.",
        "Tuned leaderboards choose each method's hyper-parameters on the tuning seeds only "
        "(the deepest target reached, then the fewest iterations or bits, then the lowest "
        "final f − f*) and rank the choice on the held-out seeds only; untuned ones show every "
        "configuration as run, on all its seeds.",
        "A seed that never reaches ε (or diverged) is censored, not dropped: it counts in "
        "the 'reached' denominator, the median over seeds is the lower median (finite only "
        "if at least half reached), and an interval bound of ∞ means the censoring reaches "
        "it.",
        "Bits are uplink bits per worker (`comm/bits_up`), the direction compressors act "
        "on; the projection below adds the downlink.",
        "Convergence bands span the seeds (min to max); the dotted line is the summary ε.",
        "Methods: docs/analysis.md.",
    ])


def _cost_cell(c: LB.Cost) -> str:
    """A time-to-target cell: 'value [lo, hi]', with the reached count where not all did."""
    text = ci(rates.Estimate(c.value, c.lo, c.hi))
    return text if c.reached == c.total else f"{text} ({c.reached}/{c.total})"


def _level(r: float | None) -> str:
    return "—" if r is None else f"{r:g}·F0"


def _protocol_text(b: LB.Board) -> str:
    if not b.tuned:
        lrs = {e.config.get("lr") for e in b.entries}
        step = (" Every method at lr = theory, the largest step its own theorem admits."
                if lrs == {"theory"} else "")
        return f"**Untuned**: every configuration as run, on all of its seeds.{step}"
    t = b.protocol
    budgets = sorted(set(b.budget().values()))
    held = sorted({s for e in b.entries for s in e.seeds_evaluation})
    return (f"**Tuned** over {', '.join(f'`{k}`' for k in t.keys)} on the tuning seeds "
            f"{list(t.tuning_seeds)}, ranked on the held-out seeds {held} only; budget: "
            f"{' to '.join(map(str, budgets))} trials per method, chosen by the deepest target "
            f"reached, then the fewest {t.tune_by}"
            + (f" (targets no deeper than {t.tune_target:g}·F0)" if t.tune_target else "")
            + " (section Tuning).")


def board_sections(doc: Doc, boards: list[LB.Board], image) -> None:
    """Leaderboards, time to each target, tuning and performance profiles: what a report of
    runs and a merge of leaderboard.json files both show. `image(doc, name, png, alt)` adds a
    figure."""
    doc.heading("Leaderboards")
    doc.para("One leaderboard per problem. Columns at the summary target ε: 'reached' is the "
             "number of seeds, of all that ended (FINISHED or FAILED), that reached ε; bits are "
             "uplink bits per worker, the median over seeds. 'deepest target': the method's "
             "depth. Floor: F of the joint fit F + Cρ^k where the tail is flat, else the tail "
             "mean (an upper bound while the curve still decays). The rank rule and the ties "
             "are in 'How to read this report'; every target's numbers are in the next section "
             "and in leaderboard.json.")
    for b in boards:
        eps, r = summary_target(b)
        doc.heading(b.label, 3)
        reach = ("the deepest of the targets that some method reaches with at least half of "
                 "its seeds" if b.summary_level is not None
                 else "no method reaches any target with half of its seeds")
        doc.para(f"Target ε = {r:g}·F0 = {eps:.4g} (F0 = {b.F0:.4g}): {reach}; targets "
                 f"{', '.join(f'{v:g}' for v in b.levels)}. {_protocol_text(b)}"
                 + "".join(f" Note: {n}." for n in b.notes))
        head = ["rank", "method"] + (["trials", "chosen"] if b.tuned else []) + [
            "reached", "bits to ε [95% CI]", "iterations to ε [95% CI]",
            "wall s to ε [95% CI]", "deepest target", "floor f − f* [95% CI]",
            "final f − f* (mean)"]
        rows = []
        for e in b.entries:
            at = e.at(r)
            fl = e.floor
            floor = "n/a" if fl is None else floor_text(
                (rates.Estimate(fl.value, fl.lo, fl.hi), fl.plateau, fl.kind))
            chosen = ", ".join(f"{k}={v}" for k, v in e.hyperparameters.items()) or "—"
            rows.append([e.rank, e.name] + ([len(e.trials), chosen] if b.tuned else []) + [
                f"{at.iterations.reached}/{at.iterations.total}", _cost_cell(at.bits),
                _cost_cell(at.iterations), _cost_cell(at.seconds), _level(e.depth), floor,
                num(e.final)])
        doc.table(head, rows)

    doc.heading("Time to each target")
    doc.para("Iterations and uplink bits per worker to ε = r·F0 at every target level of the "
             "problem (lower median over seeds [95% CI]; '(k/S)': k of the S seeds reached it). "
             "A method fast to a shallow target and one that converges exactly both show here.")
    for b in boards:
        doc.heading(b.label, 3)
        head = ["method"] + [f"{w} to {v:g}·F0" for v in b.levels for w in ("iterations",
                                                                             "bits")]
        rows = [[e.name] + [_cost_cell(e.at(v).cost(w)) for v in b.levels
                            for w in ("iterations", "bits")] for e in b.entries]
        doc.table(head, rows)
        curves = {}
        for e in b.entries:
            reached = [t for t in e.targets if math.isfinite(t.cost(b.rank_by).value)]
            curves[e.name] = tuple([getattr(t.cost(b.rank_by), k) if k else t.level
                                    for t in reached] for k in ("", "value", "lo", "hi"))
        png = plots.targets(curves, f"{b.label}: {b.rank_by} to each target", b.rank_by)
        image(doc, f"targets_{slug(b.label)}.png", png, f"cost to each target, {b.label}")

    tuned = [b for b in boards if b.tuned]
    if tuned:
        doc.heading("Tuning")
        doc.para("Per problem and method, every trial (a value of the tuned keys) ran on every "
                 "tuning seed; the budget is the number of trials. A trial's depth is the "
                 "deepest target (no deeper than the sweep's tune_target) that at least half "
                 "of its tuning seeds reach; the chosen trial has the deepest depth, then the "
                 "lowest cost to it (lower median over the tuning seeds), then the lowest final "
                 "f − f*. Held-out seeds play no part in the choice.")
        for b in tuned:
            doc.heading(b.label, 3)
            t = b.protocol
            doc.para(f"Tuning seeds {list(t.tuning_seeds)}, tuned keys "
                     f"{', '.join(f'`{k}`' for k in t.keys)}, cost: {t.tune_by}.")
            rows = []
            for e in b.entries:
                c = next(x for x in e.trials if x.hyperparameters == e.hyperparameters)
                rows.append([e.name, len(e.trials), _values_tried(e.trials),
                             ", ".join(f"{k}={v}" for k, v in e.hyperparameters.items()),
                             _level(c.depth), num(c.cost), num(c.final),
                             ", ".join(map(str, c.seeds)),
                             ", ".join(map(str, e.seeds_evaluation))])
            doc.table(["method", "trials", "values tried", "chosen",
                       "depth (tuning seeds)", f"{t.tune_by} to it (tuning seeds)",
                       "final f − f* (tuning seeds)", "tuning seeds", "held-out seeds"], rows)

    profiles(doc, boards, image)


def _values_tried(trials) -> str:
    keys = sorted({k for t in trials for k in t.hyperparameters})

    def order(v):
        p = parse_value(v)
        return (0, p, "") if isinstance(p, (int, float)) and not isinstance(p, bool) \
            else (1, 0.0, str(v))
    parts = []
    for k in keys:
        values = sorted({t.hyperparameters.get(k) for t in trials}, key=order)
        parts.append(f"{k} ∈ {{{', '.join(map(str, values))}}}")
    return "; ".join(parts)


def profiles(doc: Doc, boards: list[LB.Board], image) -> None:
    """Performance profiles over every problem of the report, one per protocol (untuned,
    tuned), drawn where at least two problems have a method reaching a target."""
    doc.heading("Performance profiles")
    doc.para("For each problem p and method m with cost c(p, m) to p's summary target (uplink "
             "bits, lower median over seeds; +∞ if not reached), r(p, m) = c(p, m) / min over "
             "methods of c(p, ·). A method's profile is ρ_m(τ) = fraction of the problems it "
             "ran on with r(p, m) ≤ τ (Dolan & Moré 2002; AlgoPerf's presentation): ρ_m(1) is "
             "how often it was best, the height at large τ how often it reached ε at all. One "
             "profile per protocol (untuned, tuned) over every problem of the report, methods "
             "matched by name; problems on which no method reached a target are left out, and "
             "a profile needs at least two problems.")
    for protocol in ("untuned", "tuned"):
        mine = [b for b in boards if (b.tuned) == (protocol == "tuned")]
        if not mine:
            continue
        ratios, used = LB.profile_ratios(mine)
        if used < 2:
            doc.para(f"{protocol.capitalize()} problems: {used} with a method reaching a "
                     f"target, so no profile (it needs at least two problems).")
            continue
        rank_by = mine[0].rank_by
        png = plots.profile({m: np.array(v) for m, v in ratios.items()},
                            f"{protocol} problems: {rank_by}-to-target profile over {used} "
                            f"problems", cost=rank_by)
        image(doc, f"profile_{protocol}.png", png, f"performance profile, {protocol} problems")


# ------------------------------------------------------------------------------ the report

class Report:
    """The report of a set of runs. A problem whose runs declare tuning seeds is split first
    (analysis.tuning): the tuning seeds choose each method's hyper-parameters, and only the
    held-out seeds of the chosen configurations enter this report's groups, so every section
    below the tuning table (leaderboards, convergence, theory, speedup, projection) sees
    evaluation runs only."""

    def __init__(self, runset: RunSet, *, targets: list[float] | None = None,
                 n_boot: int = rates.N_BOOT, alpha: float = G.ALPHA_S, rank_by: str = "bits",
                 tune_by: str | None = None):
        self.runset = runset
        self.n_boot = n_boot
        self.alpha = alpha
        usable = runset.usable()
        self.protocols = tuning.plan(usable, levels=targets, tune_by=tune_by)
        tuned = [p for p, pr in self.protocols.items() if pr.tuned]
        in_tuned = usable["problem"].isin(tuned)
        tune_runs = usable[in_tuned & (usable["role"] == "tuning")]
        self.selections = tuning.select(G.build_groups(runset, fit=False, runs=tune_runs),
                                        self.protocols)
        chosen = [s.chosen.group for s in self.selections.values()]
        evaluation = usable[~in_tuned | ((usable["role"] == "evaluation")
                                         & usable["group"].isin(chosen))]
        self.groups = G.build_groups(runset, n_boot=n_boot, runs=evaluation)
        self.boards = LB.build(self.groups, self.protocols, self.selections, rank_by=rank_by,
                               n_boot=n_boot)
        # every section names a method as its leaderboard does
        names = {e.config_id: e.name for b in self.boards for e in b.entries}
        for g in self.groups:
            g.method = names.get(g.group, g.method)
        self.comparisons = {g.group: compare(g) for g in self.groups}
        # the summary target ε of each leaderboard: the deepest level some method reaches
        self.targets = {b.problem: summary_target(b) for b in self.boards}
        self.claims = claims_mod.evaluate(self.groups, self.comparisons)
        self.images: dict[str, bytes] = {}

    # -------------------------------------------------------------- sections
    def build(self) -> Doc:
        doc = Doc("commsgd report")
        self._header(doc)
        self._claims(doc)
        board_sections(doc, self.boards, self._image)
        self._convergence(doc)
        self._theory(doc)
        self._speedup(doc)
        self._projection(doc)
        self._failures(doc)
        return doc

    def document(self) -> dict:
        """leaderboard.json's content."""
        runs = self.runset.runs
        source = {"tracking_uri": self.runset.tracking_uri,
                  "experiments": list(self.runset.experiments), "runs": len(runs),
                  "git": _distinct(runs, "tags.git.sha"),
                  "commsgd": _distinct(runs, "tags.commsgd.version")}
        return LB.document(self.boards, sources=[source], n_boot=self.n_boot)

    def _header(self, doc: Doc) -> None:
        runs = self.runset.runs
        counts = runs["status"].value_counts().to_dict() if not runs.empty else {}
        status = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        shas = _distinct(runs, "tags.git.sha")
        versions = _distinct(runs, "tags.commsgd.version")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        doc.para(f"Generated {stamp} from `{self.runset.tracking_uri}`, "
                 f"experiments: {', '.join(f'`{e}`' for e in self.runset.experiments)}.")
        doc.para(f"Runs: {len(runs)} ({status}); {len(self.groups)} configurations "
                 f"(groups of seeds); summary runs left out: "
                 f"{self.runset.excluded_summary_runs}. commsgd {', '.join(versions) or '?'}, "
                 f"git {', '.join(s[:10] for s in shas) or '?'}.")
        how_to_read(doc, self.n_boot)

    def _claims(self, doc: Doc) -> None:
        doc.heading("Claims of the papers (docs/theory.md §9)")
        doc.para("Each claim is checked on the runs of its experiment preset "
                 "(`commsgd-run experiment=<name>`); 'not run' means those runs are not in the "
                 "experiments read.")
        rows = [[c.number, c.text, f"`{c.experiment}`", f"**{c.verdict}**",
                 "; ".join(c.evidence) or "—"] for c in self.claims]
        doc.table(["#", "claim", "preset", "verdict", "evidence"], rows)

    def _convergence(self, doc: Doc) -> None:
        doc.heading("Convergence")
        # curves in leaderboard order, so that a method keeps its colour across the figures
        order = {e.config_id: i for b in self.boards for i, e in enumerate(b.entries)}
        for gs in G.by_problem(self.groups).values():
            gs = sorted(gs, key=lambda g: order.get(g.group, len(order)))
            eps = self.targets[gs[0].problem][0]
            label = gs[0].problem_label
            doc.heading(label, 3)
            png = plots.convergence(gs, label, eps)
            self._image(doc, f"convergence_{slug(label)}.png", png, f"convergence {label}")

    def _theory(self, doc: Doc) -> None:
        doc.heading("Theory against measurement")
        doc.para("ρ̂: contraction per step of the seed-mean f − f*, OLS of its log over the "
                 "window shown (docs/theory.md §8a); ρ bound: the theorem's rate at the run's step "
                 "size (from the algorithm module's theorem, at the logged constants). The rate "
                 f"bound holds when log ρ̂_hi ≤ (1 − {RATE_TOL})·log ρ_bound; tightness = "
                 "log ρ̂ / log ρ_bound (≥ 1: faster than the bound). Floor: the tail mean "
                 "over the last 25% with a plateau test, or F of the joint fit F + Cρ^k where "
                 "the tail is flat (§8b); the bound on f − f* is (L/2)× the theorem's floor on "
                 "‖x − x*‖²; slack = bound / measured. Runs with decaying step sizes get no "
                 "rate or floor comparison (the theorems here are for a constant step); p̂ is "
                 "their power-law exponent, WLS of log m_k on log k over the upper half of the "
                 "range in log k, refitted on its upper half as a stability check (§8c).")
        for gs in G.by_problem(self.groups).values():
            doc.heading(gs[0].problem_label, 3)
            rows = []
            for g in gs:
                cmp_ = self.comparisons[g.group]
                rate = g.rate
                window = f"{rate.window[0]}–{rate.window[1]}" if rate and rate.window else "—"
                floor_txt = floor_text(G.floor_estimate(g))
                rows.append([
                    g.method, ci(rate.rho, 6) if rate else "n/a", window,
                    num(cmp_.rate_bound, 6), yes_no(cmp_.rate_holds), num(cmp_.tightness),
                    floor_txt, num(cmp_.floor_bound), yes_no(cmp_.floor_holds),
                    num(cmp_.floor_slack), power_txt(g), cmp_.note or "",
                ])
            doc.table(["method", "ρ̂ [95% CI]", "window (steps)", "ρ bound", "rate holds",
                       "tightness", "floor f − f* [95% CI]", "floor bound", "floor holds",
                       "slack", "p̂: m_k ∝ k^−p [95% CI]", "note"], rows)

    def _speedup(self, doc: Doc) -> None:
        series = G.speedup_series(self.groups)
        if not series:
            return
        doc.heading("Speedup in K")
        doc.para("S(K) = T_ε(1)/T_ε(K), T_ε the first step at which the seed-mean gap is ≤ ε; "
                 "β̂ from log S = β log K (through the origin); intervals by resampling the "
                 "seeds of each K independently (docs/theory.md §8d). ε per task: the smallest "
                 "r·F0 on a 1-2-5 ladder that every K reaches in the series with the smallest "
                 "H (docs/theory.md §8d: ε above all floors); a series that misses it is censored.")
        by_task: dict[str, dict] = {}
        for (task, mk), ser in series.items():
            by_task.setdefault(task, {})[mk] = ser
        for sers in by_task.values():
            eps, r = G.speedup_target(list(sers.values()))
            exp = next(iter(sers.values()))[0].experiment
            doc.heading(f"`{exp}`: ε = {num(r)}·F0 = {num(eps, 4)}", 3)
            rows, plot_series = [], {}
            Ks = sorted({g.workers for ser in sers.values() for g in ser})
            for ser in sers.values():
                sp = G.series_speedup(ser, eps, n_boot=self.n_boot)
                label = ser[0].method
                rows.append([label, ci(sp.beta)] + [
                    f"{ci(sp.S[K])}; eff. {num(sp.efficiency[K].value, 2)}" if K in sp.S
                    else "—" for K in Ks])
                plot_series[label] = (sp.K, [sp.S[K].value for K in sp.K],
                                      [sp.S[K].lo for K in sp.K], [sp.S[K].hi for K in sp.K])
            doc.table(["method", "β̂ [95% CI]"] + [f"S({K})" for K in Ks], rows)
            png = plots.speedup(plot_series, f"{exp}: speedup at ε = {num(r)}·F0")
            self._image(doc, f"speedup_{slug(exp)}.png", png, f"speedup {exp}")

    def _projection(self, doc: Doc) -> None:
        doc.heading("Projected time to target on real links (collective model)")
        cal = P.latest_calibration(self.runset.tracking_uri)
        calibrated = cal is not None and math.isfinite(cal.alpha_s)
        alpha = cal.alpha_s if calibrated else self.alpha
        source = (f"the latest calibration's, run `{cal.run_id}` below" if calibrated else
                  "a default: no calibration in this store; run `commsgd-calibrate` where the "
                  "runs are recorded")
        doc.para(
            "Collective model (suite/costmodel.py): each run's own collectives, as it logged "
            "them (comm/<kind>_calls, comm/<kind>_bytes: what a distributed run handed to its "
            "collectives, or what a simulated one would with one worker per rank, W = K), "
            "each costed by the ring algorithms on W ranks: all_reduce of n bytes "
            "2(W−1)·α + 2(W−1)/W·n/β, all_gather of n bytes (variable-size messages padded "
            "to the longest) (W−1)·α + (W−1)·n/β, broadcast (W−1)·α + (W−1)·n/β; PowerSGD's "
            "two all-reduces are two all_reduce terms. Links: switched full-duplex Ethernet "
            "per rank at the rate shown, β = rate × 1448/1538 (TCP/IPv4 payload in 1500-byte "
            f"frames), α = {alpha * 1e6:.4g} µs per message ({source}). time = T_ε·c + the "
            "model's time for the collectives until T_ε, with T_ε the iterations to ε and c "
            "the measured compute and compression seconds per step; evaluated per seed, then "
            "the median over seeds (censored seeds count as not reached). c is measured in the "
            "simulator, where one process computes all K workers' gradients (an upper bound on "
            "one worker's), and leaves out encoding and decoding to bytes, which the simulator "
            "never does (benchmarks/bench_links.py measures them). † marks groups whose runs "
            "predate the ledger: the bit model (up + down bits / rate + α per round).")
        if cal is not None:
            over = cal.overall
            doc.para(
                f"Latest calibration: run `{cal.run_id}` ({cal.started}), {cal.world_size} "
                f"ranks on a tc-shaped loopback, MTU {cal.mtu}. Its fitted model against its "
                f"own measurements, |model − measured| / measured: median "
                f"{over.get('median_rel_error', math.nan):.1%}, max "
                f"{over.get('max_rel_error', math.nan):.1%} over all samples; on the "
                f"bandwidth side (the sizes β is fitted on) median "
                f"{over.get('bandwidth_median_rel_error', math.nan):.1%}, max "
                f"{over.get('bandwidth_max_rel_error', math.nan):.1%}.")
            doc.table(["link", "α µs", "β MB/s", "β / rate", "median error", "max error",
                       "bandwidth side: median", "max"],
                      [[rate, num(v.get("alpha_s", math.nan) * 1e6),
                        num(v.get("bytes_per_s", math.nan) / 1e6, 4),
                        num(v.get("beta_over_rate", math.nan)),
                        f"{v.get('median_rel_error', math.nan):.1%}",
                        f"{v.get('max_rel_error', math.nan):.1%}",
                        f"{v.get('bandwidth_median_rel_error', math.nan):.1%}",
                        f"{v.get('bandwidth_max_rel_error', math.nan):.1%}"]
                       for rate, v in sorted(cal.rates.items())])
        for gs in G.by_problem(self.groups).values():
            eps = self.targets[gs[0].problem][0]
            doc.heading(gs[0].problem_label, 3)
            rows = []
            for g in gs:
                proj = [P.projected_time(self.runset, g, eps, costmodel.Link.ethernet(
                    gbps * 1e9, alpha_s=alpha), n_boot=self.n_boot) for gbps in G.LINKS_GBPS]
                mark = "" if all(used for _, used in proj) else " †"
                rows.append((proj[0][0].median.value,
                             [g.method + mark] + [cens(p) for p, _ in proj]))
            rows.sort(key=lambda r: r[0])
            doc.table(["method"] + [f"{b} Gbit/s: s to ε [95% CI]" for b in G.LINKS_GBPS],
                      [r for _, r in rows])
        shaped = P.shaped_runs(self.runset)
        if shaped:
            doc.heading("Measured against projected: runs on shaped links", 3)
            doc.para("Runs made with hardware.link.rate (a tc-shaped loopback shared by the "
                     "ranks): their collectives' seconds per step as measured (time/"
                     "comm_per_step_s: the rank that waited least) and as the collective "
                     "model projects them for that link and those collectives (time/"
                     "comm_projected_per_step_s); median over seeds.")
            doc.table(["method", "problem", "link", "seeds", "measured s / step",
                       "projected s / step", "measured / projected"],
                      [[r["method"], r["problem"], r["link"], r["seeds"], num(r["measured"]),
                        num(r["projected"]), num(r["ratio"])] for r in shaped])

    def _failures(self, doc: Doc) -> None:
        runs = self.runset.runs
        if runs.empty:
            return
        bad = runs[runs["status"] != "FINISHED"]
        doc.heading("Runs that did not finish")
        if bad.empty:
            doc.para("None: every run FINISHED.")
            return
        rows = [[r["run_name"], r["status"], r.get("method", ""),
                 str(r.get("tags.failure", "") or "")[:160]] for _, r in bad.iterrows()]
        doc.para("FAILED runs count as censored in time-to-target; RUNNING and KILLED runs are "
                 "left out of every figure.")
        doc.table(["run", "status", "method", "reason"], rows)

    def _image(self, doc: Doc, name: str, png: bytes, alt: str) -> None:
        self.images[name] = png
        doc.image(name, png, alt)


# ------------------------------------------------------------------------------ writing

def _write(doc: Doc, images: dict[str, bytes], leaderboard: dict, out: Path
           ) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    for name, png in images.items():
        (out / name).write_bytes(png)
    md, page = out / "report.md", out / "report.html"
    md.write_text(doc.to_markdown(), encoding="utf-8")
    page.write_text(doc.to_html(), encoding="utf-8")
    LB.write(leaderboard, out / "leaderboard.json")
    return md, page


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    """report.md, report.html, the plots and leaderboard.json in `out`."""
    doc = report.build()
    return _write(doc, report.images, report.document(), out)


def merged_report(files: list[Path], out: Path) -> tuple[Path, Path]:
    """`commsgd-report --merge a.json b.json`: one leaderboard from several leaderboard.json
    files (e.g. the halves of a sweep run on two machines), written as a report of its
    leaderboard sections and a merged leaderboard.json. Raises ProtocolError on input it cannot
    combine (the message names the file and what differs)."""
    docs = []
    for f in files:
        try:
            docs.append((str(f), json.loads(Path(f).read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError) as exc:
            raise tuning.ProtocolError(f"--merge: cannot read {f}: {exc}") from exc
    merged = LB.merge(docs)
    boards = LB.boards_of(merged, "merged")
    doc = Doc("commsgd leaderboard (merged)")
    doc.para(f"Merged {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from "
             f"{', '.join(f'`{f}`' for f in files)}; their sources: "
             + "; ".join(f"`{s.get('tracking_uri', '?')}` ({', '.join(s.get('experiments', []))})"
                         for s in merged["sources"]) + ".")
    how_to_read(doc, merged["n_boot"])
    images: dict[str, bytes] = {}

    def image(d: Doc, name: str, png: bytes, alt: str) -> None:
        images[name] = png
        d.image(name, png, alt)
    board_sections(doc, boards, image)
    return _write(doc, images, merged, out)


def log_summary_run(tracking_uri: str, experiment: str, out: Path,
                    experiments: list[str]) -> str:
    """Log the report files as artifacts of a summary run in `experiment`, tagged so that
    load_runs leaves it out of later analyses."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = client.create_run(exp.experiment_id, run_name=f"report-{stamp}",
                            tags={REPORT_TAG: "true",
                                  "commsgd.report.experiments": ",".join(experiments)})
    try:
        client.log_artifacts(run.info.run_id, str(out))
        client.set_terminated(run.info.run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    return run.info.run_id


def build_report(tracking_uri: str, experiments: list[str], out: Path, *,
                 targets: list[float] | None = None, n_boot: int = rates.N_BOOT,
                 rank_by: str = "bits", tune_by: str | None = None,
                 log_run: bool = True) -> tuple[Path, Path, str | None]:
    runset = load_runs(tracking_uri, experiments)
    report = Report(runset, targets=targets, n_boot=n_boot, rank_by=rank_by, tune_by=tune_by)
    md, page = write_report(report, Path(out))
    run_id = log_summary_run(tracking_uri, experiments[0], Path(out), experiments) \
        if log_run else None
    return md, page, run_id


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="commsgd-report",
        description="Leaderboards, fitted rates and theory-vs-measurement from commsgd runs.")
    ap.add_argument("--tracking-uri", default=None,
                    help="MLflow tracking URI (default: sqlite:///$PWD/mlruns.db)")
    ap.add_argument("--experiment", action="append", default=None,
                    help="experiment name; repeat for several (default: logreg)")
    ap.add_argument("--out", default="reports/latest",
                    help="output directory: new, empty, or a previous report's (replaced)")
    ap.add_argument("--force", action="store_true",
                    help="write into a non-empty --out that holds no report (its files stay)")
    ap.add_argument("--target", type=float, action="append", default=None,
                    help="a relative target r, ε = r·(f(x0) − f*); repeat for several. "
                         "Replaces the levels the runs declare (leaderboard.targets; default "
                         f"{', '.join(f'{v:g}' for v in tuning.DEFAULT_LEVELS)})")
    ap.add_argument("--rank-by", choices=LB.RANK_COSTS, default="bits",
                    help="the cost whose intervals rank methods (default: bits)")
    ap.add_argument("--tune-by", choices=TUNE_COSTS, default=None,
                    help="the cost a tuned sweep's choice minimises on its tuning seeds "
                         "(default: what the runs declare, leaderboard.tune_by)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="merge leaderboard.json files into one leaderboard in --out "
                         "(reads no MLflow store)")
    ap.add_argument("--n-boot", type=int, default=rates.N_BOOT,
                    help=f"bootstrap resamples (default {rates.N_BOOT}; at least 1000)")
    ap.add_argument("--no-log", action="store_true",
                    help="do not log the report as a summary run in MLflow")
    args = ap.parse_args(argv)
    if args.n_boot < 1000:
        ap.error(f"--n-boot={args.n_boot}: at least 1000 resamples (docs/theory.md §8)")
    for t in args.target or []:
        if not 0 < t < 1:
            ap.error(f"--target={t}: a relative level in (0, 1), e.g. 1e-4")
    if args.merge:
        try:
            md, page = merged_report([Path(f) for f in args.merge], Path(args.out))
        except tuning.ProtocolError as exc:
            print(f"commsgd-report: {exc}", file=sys.stderr)
            return 2
        print(f"commsgd-report: merged {len(args.merge)} files into {md}, {page} and "
              f"{Path(args.out) / 'leaderboard.json'}")
        return 0
    uri = args.tracking_uri or default_uri()
    experiments = args.experiment or ["logreg"]
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        # MLflow would create an empty store there; a missing file is a wrong directory
        print(f"commsgd-report: no MLflow store at {uri[len('sqlite:///'):]} (run commsgd-run "
              f"there first, or pass --tracking-uri)", file=sys.stderr)
        return 2
    out = Path(args.out)
    problem = report_out.check_out(out, force=args.force)
    if problem:
        print(f"commsgd-report: {problem}", file=sys.stderr)
        return 2
    try:
        # built in a staging directory: the summary run gets the report's files only
        with report_out.staged(out) as (staging, replaced):
            md, page, run_id = build_report(uri, experiments, staging, targets=args.target,
                                            n_boot=args.n_boot, rank_by=args.rank_by,
                                            tune_by=args.tune_by, log_run=not args.no_log)
    except (LookupError, tuning.ProtocolError) as exc:
        print(f"commsgd-report: {exc}", file=sys.stderr)
        return 2
    md, page = out / md.name, out / page.name
    if replaced:
        print(f"commsgd-report: replaced the previous report in {out} ({len(replaced)} files)")
    print(f"commsgd-report: wrote {md}, {page} and {out / 'leaderboard.json'}")
    if run_id:
        print(f"  logged as run {run_id} (tag {REPORT_TAG}=true) in experiment "
              f"'{experiments[0]}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
