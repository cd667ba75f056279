"""`commsgd-report`: leaderboards, performance profiles, convergence plots, theory against
measurement and the papers' claims, from the runs of one or more MLflow experiments.

    commsgd-report --tracking-uri sqlite:///$PWD/mlruns.db --experiment diana_vs_quantized \
                   --experiment ef_delay --out reports/latest

writes OUT/report.md, OUT/report.html (standalone: plots embedded as data URIs) and OUT/*.png,
and logs them as artifacts of a summary run "report-<timestamp>" (tag commsgd.report=true) in
the first experiment; the runs reader leaves such summary runs out of every analysis.
The methods (target rule, fits, intervals, alpha-beta model, profiles) are stated in the report
itself and in docs/analysis.md; the fits are docs/theory.md §8's.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from suite import costmodel

from . import claims as claims_mod
from . import groups as G
from . import plots, rates
from . import projection as P
from .document import Doc
from .runs import REPORT_TAG, RunSet, load_runs
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


def slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "_" for ch in text.lower())
    return "_".join(p for p in out.split("_") if p)[:80]


# ------------------------------------------------------------------------------ the report

class Report:
    def __init__(self, runset: RunSet, *, target: float | None = None,
                 n_boot: int = rates.N_BOOT, alpha: float = G.ALPHA_S):
        self.runset = runset
        self.n_boot = n_boot
        self.alpha = alpha
        self.groups = G.build_groups(runset, n_boot=n_boot)
        self.comparisons = {g.group: compare(g) for g in self.groups}
        # one target per leaderboard: per problem (task, K, batch size)
        self.targets = {problem: G.choose_target(gs, target)
                        for problem, gs in G.by_problem(self.groups).items()}
        self.costs = {g.group: G.target_costs(g, self.targets[g.problem][0], n_boot=n_boot)
                      for g in self.groups}
        self.claims = claims_mod.evaluate(self.groups, self.comparisons)
        self.images: dict[str, bytes] = {}

    # -------------------------------------------------------------- sections
    def build(self) -> Doc:
        doc = Doc("commsgd report")
        self._header(doc)
        self._claims(doc)
        self._leaderboards(doc)
        self._profiles(doc)
        self._convergence(doc)
        self._theory(doc)
        self._speedup(doc)
        self._projection(doc)
        self._failures(doc)
        return doc

    def _header(self, doc: Doc) -> None:
        runs = self.runset.runs
        counts = runs["status"].value_counts().to_dict() if not runs.empty else {}
        status = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        shas = sorted(set(runs.get("tags.git.sha", []))) if not runs.empty else []
        versions = sorted(set(runs.get("tags.commsgd.version", []))) if not runs.empty else []
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        doc.para(f"Generated {stamp} from `{self.runset.tracking_uri}`, "
                 f"experiments: {', '.join(f'`{e}`' for e in self.runset.experiments)}.")
        doc.para(f"Runs: {len(runs)} ({status}); {len(self.groups)} configurations "
                 f"(groups of seeds); summary runs left out: "
                 f"{self.runset.excluded_summary_runs}. commsgd {', '.join(versions) or '?'}, "
                 f"git {', '.join(s[:10] for s in shas) or '?'}.")
        doc.heading("How to read this report")
        doc.bullets([
            "Every figure is over seeds: the point estimate comes from the seed-mean curve "
            "(theorems bound expectations) and the bracket is a 95% bootstrap interval over "
            f"seeds ({self.n_boot} resamples; docs/theory.md §8).",
            "Target ε per leaderboard (one problem: task, K, batch size): ε = r·F0, with "
            "F0 = f(x0) − f* the initial gap, and r the smallest of 1e-4, 1e-3, 1e-2, 1e-1 "
            "that at least one method reaches with at least half of its seeds (or the "
            "`--target` value).",
            "A seed that never reaches ε (or diverged) is censored, not dropped: it counts in "
            "the 'reached' denominator, the median over seeds is the lower median (finite only "
            "if at least half reached), and an interval bound of ∞ means the censoring reaches "
            "it.",
            "Bits are uplink bits per worker (`comm/bits_up`), the direction compressors act "
            "on; the projection below adds the downlink.",
            "Convergence bands span the seeds (min to max); the dotted line is ε.",
            "Methods: docs/analysis.md.",
        ])

    def _claims(self, doc: Doc) -> None:
        doc.heading("Claims of the papers (docs/theory.md §9)")
        doc.para("Each claim is checked on the runs of its experiment preset "
                 "(`commsgd-run experiment=<name>`); 'not run' means those runs are not in the "
                 "experiments read.")
        rows = [[c.number, c.text, f"`{c.experiment}`", f"**{c.verdict}**",
                 "; ".join(c.evidence) or "—"] for c in self.claims]
        doc.table(["#", "claim", "preset", "verdict", "evidence"], rows)

    def _leaderboards(self, doc: Doc) -> None:
        doc.heading("Leaderboards")
        doc.para("Methods ranked by uplink bits per worker to reach ε (median over seeds), "
                 "then by iterations. 'reached' is the number of seeds, of all that ended "
                 "(FINISHED or FAILED), that reached ε.")
        for gs in G.by_problem(self.groups).values():
            eps, r = self.targets[gs[0].problem]
            doc.heading(f"{gs[0].problem_label}", 3)
            doc.para(f"Target ε = {r:g}·F0 = {eps:.4g} (F0 = {gs[0].initial_gap:.4g}).")
            ranked = sorted(gs, key=lambda g: (self.costs[g.group].bits.median.value,
                                               self.costs[g.group].iterations.median.value))
            rows = []
            for i, g in enumerate(ranked, 1):
                c = self.costs[g.group]
                Y = g.finished[G.SUBOPT]
                final = float(np.mean(Y[:, -1])) if Y.size else math.nan
                rows.append([i, g.method, f"{c.iterations.reached}/{c.iterations.total}",
                             cens(c.bits), cens(c.iterations), cens(c.seconds), num(final)])
            doc.table(["rank", "method", "reached", "bits to ε [95% CI]",
                       "iterations to ε [95% CI]", "wall s to ε [95% CI]",
                       "final f − f* (mean)"], rows)

    def _profiles(self, doc: Doc) -> None:
        doc.heading("Performance profiles")
        doc.para("For each problem p and method m with bits-to-target c(p, m) (median over "
                 "seeds, +∞ if not reached), r(p, m) = c(p, m) / min over methods of c(p, ·). "
                 "A method's profile is ρ_m(τ) = fraction of the problems it ran on with "
                 "r(p, m) ≤ τ (AlgoPerf-style; Dolan & Moré 2002): ρ_m(1) is how often it was "
                 "best, the height at large τ how often it reached ε at all. Problems on which no "
                 "method reached ε are left out.")
        by_exp: dict[str, list] = {}
        for gs in G.by_problem(self.groups).values():
            by_exp.setdefault(gs[0].experiment, []).append(gs)
        for exp, problems in by_exp.items():
            ratios: dict[str, list] = {}
            used = 0
            for gs in problems:
                cost = {g.method: self.costs[g.group].bits.median.value for g in gs}
                best = min(cost.values())
                if not math.isfinite(best):
                    continue
                used += 1
                for m, v in cost.items():
                    ratios.setdefault(m, []).append(v / best)
            if not ratios:
                doc.para(f"`{exp}`: no method reached ε on any problem.")
                continue
            name = f"profile_{slug(exp)}.png"
            png = plots.profile({m: np.array(v) for m, v in ratios.items()},
                                f"{exp}: bits-to-target profile over {used} problem(s)")
            self._image(doc, name, png, f"performance profile {exp}")

    def _convergence(self, doc: Doc) -> None:
        doc.heading("Convergence")
        for gs in G.by_problem(self.groups).values():
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
                fl = g.floor
                if fl is None or not fl.floor.ok:
                    floor_txt = "n/a"
                else:
                    # the joint fit separates the transient from the floor where the tail is
                    # flat; otherwise the tail mean bounds the floor from above
                    joint = fl.plateau and g.joint is not None and g.joint.F.ok
                    src = g.joint.F if joint else fl.floor
                    kind = ("plateau, joint fit" if joint else "plateau, tail mean"
                            if fl.plateau else "still decaying, tail mean")
                    floor_txt = f"{ci(src)} ({kind})"
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

def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    doc = report.build()
    for name, png in report.images.items():
        (out / name).write_bytes(png)
    md, page = out / "report.md", out / "report.html"
    md.write_text(doc.to_markdown(), encoding="utf-8")
    page.write_text(doc.to_html(), encoding="utf-8")
    return md, page


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
                 target: float | None = None, n_boot: int = rates.N_BOOT,
                 log_run: bool = True) -> tuple[Path, Path, str | None]:
    runset = load_runs(tracking_uri, experiments)
    report = Report(runset, target=target, n_boot=n_boot)
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
    ap.add_argument("--out", default="reports/latest", help="output directory")
    ap.add_argument("--target", type=float, default=None,
                    help="relative target r: ε = r·(f(x0) − f*) for every task "
                         "(default: the 1e-4..1e-1 ladder rule)")
    ap.add_argument("--n-boot", type=int, default=rates.N_BOOT,
                    help=f"bootstrap resamples (default {rates.N_BOOT}; at least 1000)")
    ap.add_argument("--no-log", action="store_true",
                    help="do not log the report as a summary run in MLflow")
    args = ap.parse_args(argv)
    if args.n_boot < 1000:
        ap.error(f"--n-boot={args.n_boot}: at least 1000 resamples (docs/theory.md §8)")
    if args.target is not None and not 0 < args.target < 1:
        ap.error(f"--target={args.target}: a relative level in (0, 1), e.g. 1e-4")
    uri = args.tracking_uri or default_uri()
    experiments = args.experiment or ["logreg"]
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        # MLflow would create an empty store there; a missing file is a wrong directory
        print(f"commsgd-report: no MLflow store at {uri[len('sqlite:///'):]} (run commsgd-run "
              f"there first, or pass --tracking-uri)", file=sys.stderr)
        return 2
    try:
        md, page, run_id = build_report(uri, experiments, Path(args.out), target=args.target,
                                        n_boot=args.n_boot, log_run=not args.no_log)
    except LookupError as exc:
        print(f"commsgd-report: {exc}", file=sys.stderr)
        return 2
    print(f"commsgd-report: wrote {md} and {page}")
    if run_id:
        print(f"  logged as run {run_id} (tag {REPORT_TAG}=true) in experiment "
              f"'{experiments[0]}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
