"""Leaderboards (docs/analysis.md): the tuning protocol on held-out seeds, several targets with
the summary rank and its ties, leaderboard.json against its schema and `--merge`, the presets'
tuned variants, the leaderboard config keys and the figures' text layout.

The runs are synthetic, written straight into MLflow stores (tests/fakes.py): f − f* = ρ^t·u_s
with a per-(method, step size) contraction ρ and a per-seed factor u_s, so that which step size
is best, and where each method stalls, is known by construction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from analysis import leaderboard as LB
from analysis import plots
from analysis.report import Report, main
from analysis.runs import load_runs
from tests.conftest import CONF, ROOT, make_cfg, run_cli
from tests.fakes import fake_run

SCHEMA = ROOT / "docs" / "leaderboard.schema.json"
LEVELS = [1e-2, 1e-4, 1e-8]
TUNING_SEEDS, HELD_OUT = (10, 11, 12), (0, 1, 2)
STEPS = 300
# contraction per step of f − f* by method and step size; None: diverges (a FAILED run)
RHO = {
    "alpha": {"theory": 0.95, "0.1": 0.98, "0.3": 0.94, "1.0": None},
    "beta": {"theory": 0.999, "0.1": 0.97, "0.3": 0.90, "1.0": None},
}
METHOD_PARAMS = {
    "alpha": {"algorithm.name": "sgd", "compressor.name": "identity"},
    "beta": {"algorithm.name": "ef_sgd", "compressor.name": "topk"},
}
THEORY_LR = {"alpha": "0.3", "beta": "0.001"}  # what lr=theory resolved to


def seed_factor(seed: int) -> float:
    return 1.0 + 0.05 * ((seed % 3) - 1)  # 0.95, 1, 1.05: seeds differ, F0 = 1 for every run


def curve_of(rho):
    return lambda t, s: rho**t * (seed_factor(s) if t else 1.0)


def write_run(client, exp, method, lr, seed, *, tuned: bool, named: bool):
    rho = RHO[method][lr]
    params = METHOD_PARAMS[method] | {
        "lr": lr, "lr.resolved": THEORY_LR[method] if lr == "theory" else lr,
        "steps": str(STEPS), "leaderboard.targets": str(LEVELS),
        "leaderboard.tuning_seeds": str(list(TUNING_SEEDS)) if tuned else "[]",
        "leaderboard.tune_keys": "['lr']", "leaderboard.tune_by": "iterations",
        "leaderboard.tune_target": "None",
        "leaderboard.name": method if named else "None"}
    if rho is None:  # diverges: grows until the runner stops it at step 30
        return fake_run(client, exp, seed=seed, status="FAILED", n_steps=30, params=params,
                        curve=lambda t, s: 1.5**t, bits_per_step=100.0, wall_per_step=0.01,
                        tags={"diverged": "true", "failure": "diverged at step 30"})
    return fake_run(client, exp, seed=seed, status="FINISHED", n_steps=STEPS, params=params,
                    curve=curve_of(rho), bits_per_step=100.0, wall_per_step=0.01)


def write_store(path: Path, keep=lambda experiment, method, lr: True) -> str:
    """The synthetic sweep: `syn` (every method at lr=theory, seeds 0-2, no short names) and
    `syn_tuned` (every method × lr grid × tuning and held-out seeds, named), restricted to the
    (experiment, method, lr) that `keep` accepts."""
    uri = f"sqlite:///{path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    art = (path / "art").as_uri()
    exps = {e: client.create_experiment(e, artifact_location=f"{art}/{e}")
            for e in ("syn", "syn_tuned")}
    for method in RHO:
        if keep("syn", method, "theory"):
            for seed in HELD_OUT:
                write_run(client, exps["syn"], method, "theory", seed, tuned=False,
                          named=False)
        for lr in RHO[method]:
            if keep("syn_tuned", method, lr):
                for seed in TUNING_SEEDS + HELD_OUT:
                    write_run(client, exps["syn_tuned"], method, lr, seed, tuned=True,
                              named=True)
    return uri


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    path = tmp_path_factory.mktemp("whole")
    uri = write_store(path)
    # a third experiment for the ties: a and b differ by less than their seeds do, c is slower
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("ties", artifact_location=(path / "art" / "ties").as_uri())
    for name, rho in (("a", 0.95), ("b", 0.951), ("c", 0.97)):
        for seed in range(6):
            u = 1 + 0.6 * (seed - 2.5) / 2.5  # 0.4 … 1.6: hitting times spread ±10 steps
            fake_run(client, exp, seed=seed, status="FINISHED", n_steps=200, every=1,
                     params={"leaderboard.name": name, "lr": str(rho),
                             "leaderboard.targets": "[0.01]"},
                     curve=lambda t, s, rho=rho, u=u: rho**t * (u if t else 1.0),
                     bits_per_step=100.0)
    return uri, path


def report_of(uri, experiments, **kw) -> Report:
    return Report(load_runs(uri, experiments), n_boot=1000, **kw)


def board(report: Report, experiment: str) -> LB.Board:
    (b,) = [b for b in report.boards if b.experiment == experiment]
    return b


# ------------------------------------------------------------------------------ tuning

def independent_choice(uri: str, method: str) -> str:
    """The lr the protocol must choose for `method`, from the raw MLflow histories of the tuning
    seeds only: the deepest level that at least 2 of the 3 tuning seeds reach, then the lower
    median (2nd smallest of 3) first step reaching it."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("syn_tuned")
    best = None
    for lr in RHO[method]:
        runs = client.search_runs(
            [exp.experiment_id],
            f"params.`leaderboard.name` = '{method}' and params.lr = '{lr}'")
        hits = {level: [] for level in LEVELS}
        for r in runs:
            if int(r.data.params["seed"]) not in TUNING_SEEDS:
                continue
            h = sorted(client.get_metric_history(r.info.run_id, "train/suboptimality"),
                       key=lambda m: m.step)
            F0 = h[0].value
            for level in LEVELS:
                steps = [m.step for m in h if m.value <= level * F0]
                hits[level].append(steps[0] if steps else math.inf)
        assert all(len(v) == 3 for v in hits.values())
        depth = max((i for i, level in enumerate(LEVELS)
                     if sum(math.isfinite(x) for x in hits[LEVELS[i]]) >= 2), default=-1)
        cost = sorted(hits[LEVELS[depth]])[1] if depth >= 0 else math.inf
        key = (-depth, cost)
        if best is None or key < best[0]:
            best = (key, lr)
    return best[1]


def test_tuning_ranks_first_a_method_that_is_best_only_after_tuning(whole):
    uri, _ = whole
    report = report_of(uri, ["syn", "syn_tuned"])
    untuned, tuned = board(report, "syn"), board(report, "syn_tuned")
    assert not untuned.tuned and tuned.tuned
    # at lr=theory beta crawls (ρ = 0.999) and alpha reaches 1e-4: alpha first
    assert [e.name for e in untuned.entries] == ["sgd/identity", "ef_sgd/topk"]
    assert [e.rank for e in untuned.entries] == [1, 2]
    # tuned, beta at lr = 0.3 (ρ = 0.9) reaches 1e-8, alpha's best (0.3: ρ = 0.94) only 1e-4
    assert [e.name for e in tuned.entries] == ["beta", "alpha"]
    assert [e.rank for e in tuned.entries] == [1, 2]
    assert tuned.summary_level == 1e-8 and untuned.summary_level == 1e-4
    for e in tuned.entries:
        assert e.hyperparameters == {"lr": independent_choice(uri, e.name)}
        # the budget: every grid point is a trial; tuning and evaluation seeds are disjoint
        assert len(e.trials) == len(RHO[e.name])
        assert sorted(e.seeds_tuning) == list(TUNING_SEEDS)
        assert sorted(e.seeds_evaluation) == list(HELD_OUT)
    assert {e.name: e.hyperparameters["lr"] for e in tuned.entries} == {"alpha": "0.3",
                                                                          "beta": "0.3"}
    # every section sees only held-out seeds of the chosen trials
    tuned_groups = [g for g in report.groups if g.experiment == "syn_tuned"]
    assert len(tuned_groups) == 2
    assert all(sorted(g.seeds) == list(HELD_OUT) for g in tuned_groups)
    assert all(g.params["lr"] == 0.3 for g in tuned_groups)
    text = report.build().to_markdown()
    assert "## Tuning" in text and "**Tuned** over `lr` on the tuning seeds [10, 11, 12]" in text
    assert "budget: 4 trials per method" in text and "**Untuned**" in text


def _set_history(runset, run_ids, fn):
    h = runset.history
    rows = h["run_id"].isin(run_ids) & (h["key"] == "train/suboptimality")
    h.loc[rows, "value"] = [fn(step) for step in h.loc[rows, "step"]]


def test_no_held_out_run_influences_the_choice_and_the_tuning_runs_do(whole):
    uri, _ = whole
    rs = load_runs(uri, ["syn_tuned"])
    before = Report(rs, n_boot=1000)
    chosen = {k: s.chosen.hyperparameters for k, s in before.selections.items()}
    runs = rs.runs
    beta = runs["short_name"] == "beta"
    held = runs["role"] == "evaluation"
    # held-out seeds: the chosen trial made slow, every other trial made to converge at once
    fast = list(runs.loc[beta & held & (runs["params.lr"] != "0.3"), "run_id"])
    slow = list(runs.loc[beta & held & (runs["params.lr"] == "0.3"), "run_id"])
    _set_history(rs, fast, lambda t: 1.0 if t == 0 else 1e-14)
    _set_history(rs, slow, lambda t: 0.99**t)
    after = Report(rs, n_boot=1000)
    assert {k: s.chosen.hyperparameters for k, s in after.selections.items()} == chosen
    # ... while the leaderboard, which reads exactly those held-out runs, did change
    b = board(after, "syn_tuned")
    assert [e.name for e in b.entries] == ["alpha", "beta"]
    assert next(e for e in b.entries if e.name == "beta").depth is None
    # the control: tuning seeds do decide. beta's lr = 0.1 converging at once on them wins
    tune_01 = list(runs.loc[beta & ~held & (runs["params.lr"] == "0.1"), "run_id"])
    _set_history(rs, tune_01, lambda t: 1.0 if t == 0 else 1e-14)
    control = Report(rs, n_boot=1000)
    beta_groups = set(runs.loc[beta, "group"])
    picks = [s.chosen.hyperparameters for s in control.selections.values()
             if s.chosen.group in beta_groups]
    assert picks == [{"lr": "0.1"}]


def test_a_diverged_trial_is_censored_and_never_chosen(whole):
    uri, _ = whole
    tuned = board(report_of(uri, ["syn_tuned"]), "syn_tuned")
    for e in tuned.entries:
        diverged = next(t for t in e.trials if t.hyperparameters == {"lr": "1.0"})
        assert diverged.depth is None and diverged.cost == math.inf
        assert diverged.final == math.inf  # FAILED seeds: +∞, not their last value


# ------------------------------------------------------------------------------ targets, ties

def test_every_target_is_reported_with_depth_and_floor(whole):
    uri, _ = whole
    b = board(report_of(uri, ["syn"]), "syn")
    assert b.levels == tuple(LEVELS) and b.F0 == 1.0
    alpha = b.entries[0]
    for at in alpha.targets:
        # ρ^t·u_s ≤ r first at the logged step ≥ log(r/u_s)/log ρ; lower median over 3 seeds
        hits = sorted(math.ceil(math.log(at.level / seed_factor(s)) / math.log(0.95) / 10) * 10
                      for s in HELD_OUT)
        expected = hits[1] if hits[1] <= STEPS else math.inf
        assert at.iterations.value == expected, at
        assert at.bits.value == (100.0 * expected if math.isfinite(expected) else math.inf)
    assert alpha.depth == 1e-4  # 0.95^300 ≈ 2e-7 > 1e-8
    assert alpha.floor is not None and not alpha.floor.plateau  # still decaying: no floor
    assert alpha.floor.value > alpha.final


def test_overlapping_intervals_share_a_rank(whole):
    uri, _ = whole
    b = board(report_of(uri, ["ties"]), "ties")
    by = {e.name: e.at(1e-2).bits for e in b.entries}
    a, bb, c = by["a"], by["b"], by["c"]
    assert a.lo <= bb.hi and bb.lo <= a.hi  # a and b overlap
    assert c.lo > max(a.hi, bb.hi)  # c is separated from both
    ranks = {e.name: e.rank for e in b.entries}
    assert ranks["a"] == ranks["b"] == 1 and ranks["c"] == 3


def _entry(name, cost_by_level: dict, levels):
    targets = []
    for level in levels:
        v, lo, hi = cost_by_level.get(level, (math.inf, math.inf, math.inf))
        c = LB.Cost(v, lo, hi, 3 if math.isfinite(v) else 0, 3)
        targets.append(LB.AtTarget(level, level, c, c, c))
    return LB.Entry(name, name, name, {}, {}, [], [], [0, 1, 2], 1.0, targets, None, 0.0, {},
                    name=name)


def test_the_rank_rule_counts_the_methods_that_beat_each_one():
    from analysis.tuning import Protocol

    levels = (1e-2, 1e-4)

    def ranked(deep_hi):
        entries = [
            _entry("x", {1e-2: (2, 1, 3)}, levels),
            _entry("y", {1e-2: (3, 2, 5)}, levels),  # overlaps x
            _entry("z", {1e-2: (5, 4, 6)}, levels),  # overlaps y, not x: beaten by x alone
            _entry("deep", {1e-2: (9, 8, 10), 1e-4: (50, 40, deep_hi)}, levels),
            _entry("never", {}, levels),
        ]
        b = LB.Board("p", "e", "p", {}, "2", "full", levels, Protocol(levels), "bits", entries)
        LB.rank(b)
        return b

    b = ranked(math.inf)
    # 'deep' reaches 1e-4 where nobody else does, but its interval there reaches ∞: at 1e-4
    # nobody's interval lies entirely below another's, so it beats no one and no one beats it
    assert {e.name: e.rank for e in b.entries} == {"deep": 1, "x": 1, "y": 1, "z": 2,
                                                  "never": 1 + 3}
    assert b.summary_level == 1e-4
    assert [e.name for e in b.entries] == ["deep", "x", "y", "z", "never"]  # ties: deeper first
    # with a robust interval at 1e-4, reaching the deeper target beats every shallower method
    b = ranked(60)
    assert {e.name: e.rank for e in b.entries} == {"deep": 1, "x": 2, "y": 2, "z": 3,
                                                  "never": 5}


def test_profile_ratios_over_problems_with_zero_and_censored_costs():
    from analysis.tuning import Protocol

    levels = (1e-2,)

    def ranked(costs):
        b = LB.Board("p", "e", "p", {}, "2", "full", levels, Protocol(levels), "bits",
                     [_entry(n, {1e-2: c} if c else {}, levels) for n, c in costs.items()])
        LB.rank(b)
        return b

    boards = [ranked({"x": (4, 4, 4), "y": (8, 8, 8), "z": None}),
              ranked({"x": (0, 0, 0), "y": (0, 0, 0), "z": (5, 5, 5)}),  # nothing sent yet
              ranked({"x": None, "y": None, "z": None})]  # nobody reaches: left out
    ratios, used = LB.profile_ratios(boards)
    assert used == 2
    assert ratios == {"x": [1.0, 1.0], "y": [2.0, 1.0], "z": [math.inf, math.inf]}


# ------------------------------------------------------------------------------ the JSON file

def validate(doc: dict) -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)


@pytest.fixture(scope="module")
def halves(whole, tmp_path_factory):
    """The same sweep split over two stores as two machines would run it: A holds alpha and
    beta's trials lr = theory, 0.1; B beta's lr = 0.3, 1.0 (its best) and beta untuned."""
    a_path, b_path = tmp_path_factory.mktemp("half_a"), tmp_path_factory.mktemp("half_b")
    in_a = lambda exp, m, lr: m == "alpha" or (exp == "syn_tuned" and lr in ("theory", "0.1"))  # noqa: E731
    uri_a = write_store(a_path, in_a)
    uri_b = write_store(b_path, lambda exp, m, lr: not in_a(exp, m, lr))
    out = {}
    for name, uri in (("whole", whole[0]), ("a", uri_a), ("b", uri_b)):
        d = tmp_path_factory.mktemp(f"out_{name}")
        assert main(["--tracking-uri", uri, "--experiment", "syn", "--experiment", "syn_tuned",
                     "--out", str(d), "--n-boot", "1000", "--no-log"]) == 0
        out[name] = d
    return out


def test_leaderboard_json_validates_against_its_schema(halves):
    doc = json.loads((halves["whole"] / "leaderboard.json").read_text())
    validate(doc)
    assert {p["protocol"] for p in doc["problems"]} == {"tuned", "untuned"}
    tuned = next(p for p in doc["problems"] if p["protocol"] == "tuned")
    assert tuned["tuning"]["seeds"] == list(TUNING_SEEDS) and tuned["levels"] == LEVELS
    beta = next(m for m in tuned["methods"] if m["name"] == "beta")
    assert beta["hyperparameters"] == {"lr": "0.3"} and beta["config"]["lr"] == "0.3"
    assert beta["config"]["algorithm.name"] == "ef_sgd" and len(beta["trials"]) == 4
    at = {t["level"]: t for t in beta["targets"]}
    assert at[1e-8]["iterations"]["value"] == 180  # 0.9^t·u_s ≤ 1e-8: t = 175 → logged 180
    assert {"iterations", "bits", "seconds"} <= set(at[1e-8])
    # the report's own tables and the file agree
    md = (halves["whole"] / "report.md").read_text()
    assert "| 1 | beta | 4 | lr=0.3 |" in md
    # a broken document fails the schema: the validation can fail
    import jsonschema

    beta["rank"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_a_task_without_f_star_gets_a_report_a_loss_figure_and_a_valid_json(tmp_path):
    """A network's runs log no f − f* (f* is unknown): the report still builds, its
    convergence figure shows the training loss, and leaderboard.json holds null for F0 and the
    targets ε = r·F0 (JSON has no NaN) and validates against its schema."""
    from analysis.groups import build_groups

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("net")
    for lr in ("0.05", "0.1"):
        for seed in (0, 1):
            fake_run(client, exp, seed=seed, status="FINISHED", n_steps=50, constants=False,
                     suboptimality=False,
                     params={"task.name": "cifar10_resnet", "task.dataset": "fake", "lr": lr,
                             "lr.resolved": lr},
                     extra={"train/loss": lambda t, s: 2.3 * 0.99**t + 0.01 * s,
                            "test/accuracy": lambda t, s: 0.1 + 0.001 * t})
    out = tmp_path / "report"
    assert main(["--tracking-uri", uri, "--experiment", "net", "--out", str(out),
                 "--n-boot", "1000", "--no-log"]) == 0
    doc = json.loads((out / "leaderboard.json").read_text())
    validate(doc)
    assert [p["F0"] for p in doc["problems"]] == [None]
    groups = build_groups(load_runs(uri, ["net"]), fit=False)
    assert plots._plotted(groups)[0] == "train/loss"
    assert list(out.glob("convergence_*.png"))


def test_the_schema_lists_the_codes_costs(halves):
    from suite.config import TUNE_COSTS

    schema = json.loads(SCHEMA.read_text())
    problem = schema["$defs"]["problem"]["properties"]
    assert problem["rank_by"]["enum"] == list(LB.RANK_COSTS)
    assert problem["tuning"]["oneOf"][1]["properties"]["tune_by"]["enum"] == list(TUNE_COSTS)


def _problems(path: Path) -> list:
    return json.loads((path / "leaderboard.json").read_text())["problems"]


def test_merge_of_two_halves_equals_the_report_of_the_whole(halves, tmp_path):
    a, b = halves["a"] / "leaderboard.json", halves["b"] / "leaderboard.json"
    # each half on its own chose differently for beta: A could only pick among theory, 0.1
    half_a = next(p for p in _problems(halves["a"]) if p["protocol"] == "tuned")
    assert next(m for m in half_a["methods"]
                if m["name"] == "beta")["hyperparameters"] == {"lr": "0.1"}
    out = tmp_path / "merged"
    assert main(["--merge", str(a), str(b), "--out", str(out)]) == 0
    merged = json.loads((out / "leaderboard.json").read_text())
    validate(merged)
    assert merged["problems"] == _problems(halves["whole"])
    assert len(merged["sources"]) == 2
    # the merged report shows the same leaderboards as the whole one
    def section(path):
        text = path.read_text()
        return text[text.index("## Leaderboards"):text.index("## Performance profiles")]
    assert section(out / "report.md") == section(halves["whole"] / "report.md")
    html = (out / "report.html").read_text()
    assert "<table>" in html and "http" not in html.split("<body>", 1)[1]


def test_merge_refuses_a_configuration_found_in_two_files(halves, tmp_path, capsys):
    a = halves["a"] / "leaderboard.json"
    whole = halves["whole"] / "leaderboard.json"
    assert main(["--merge", str(whole), str(a), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "is in both" in err and str(a) in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    assert main(["--merge", str(bad), "--out", str(tmp_path / "m2")]) == 2
    assert "not a commsgd-leaderboard file" in capsys.readouterr().err


# ------------------------------------------------------------------------------ figures

def _texts(fig):
    """Every visible, non-empty text of a drawn figure with its extent in pixels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            # the ticks that are drawn: get_majorticklabels also lists those outside the view
            texts += [("tick", tick.label1) for tick in axis._update_ticks()]
        texts += [("label", t) for t in (ax.xaxis.label, ax.yaxis.label, ax.title)]
        if ax.get_legend():
            texts += [("legend", t) for t in ax.get_legend().get_texts()]
    for leg in fig.legends:
        texts += [("legend", t) for t in leg.get_texts()]
    if fig._suptitle is not None:
        texts.append(("label", fig._suptitle))
    out = []
    for kind, t in texts:
        if t.get_visible() and t.get_text().strip():
            out.append((kind, t, t.get_window_extent(renderer)))
    return out


def check_layout(fig, name: str) -> None:
    texts = _texts(fig)
    ticks = [x for x in texts if x[0] == "tick"]
    assert len(ticks) >= 4, name
    for i, (_, t1, b1) in enumerate(texts):
        for _, t2, b2 in texts[i + 1:]:
            overlap_w = min(b1.x1, b2.x1) - max(b1.x0, b2.x0)
            overlap_h = min(b1.y1, b2.y1) - max(b1.y0, b2.y0)
            assert not (overlap_w > 0.5 and overlap_h > 0.5), \
                f"{name}: '{t1.get_text()}' overlaps '{t2.get_text()}'"
    for kind, t, _ in texts:
        if kind == "legend":  # readable at 100%: at least 12 px tall
            assert t.get_fontsize() * fig.dpi / 72 >= 12, (name, t.get_fontsize(), fig.dpi)


def test_every_figure_of_the_report_has_readable_non_overlapping_text(whole, monkeypatch):
    uri, _ = whole
    seen = []
    real = plots._png

    def capture(fig):
        check_layout(fig, f"figure {len(seen)}")
        seen.append(fig)
        return real(fig)
    monkeypatch.setattr(plots, "_png", capture)
    report = report_of(uri, ["syn", "syn_tuned", "ties"])
    report.build()
    # convergence and cost-to-target per problem, and the untuned profile (2 problems)
    assert len(seen) == 2 * 3 + 1 == len(report.images)
    assert any(name.startswith("profile_untuned") for name in report.images)
    assert not any(name.startswith("profile_tuned") for name in report.images)


def test_bits_and_time_axes_use_engineering_ticks_even_for_large_counts():
    """Bits in the millions with many methods: the case whose integer labels ran together."""
    from analysis.groups import Curves, Group

    steps = np.arange(0, 20001, 100, dtype=float)
    groups = []
    for i in range(12):
        Y = (0.9995 - 1e-5 * i) ** steps[None, :] * np.ones((3, 1))
        values = {"train/suboptimality": Y,
                  "comm/bits_up": np.tile(steps * (200 + 30 * i), (3, 1)),
                  "time/wall_s": np.tile(steps * 0.003, (3, 1))}
        c = Curves(["r"] * 3, steps, values)
        groups.append(Group("g", "e", "t", "p", "p", f"method_with_a_long_name_{i}", "m", {},
                            {}, ["r"] * 3, {}, 0, c, c))
    fig = plots.convergence_figure(groups, "twelve methods, 20k steps", eps=1e-8)
    check_layout(fig, "convergence")
    bits_labels = [t.label1.get_text() for t in fig.axes[1].xaxis._update_ticks()
                   if t.label1.get_text()]
    assert bits_labels and all(s.endswith("bit") for s in bits_labels), bits_labels
    ratios = {f"m{i}": np.array([1.0 + i, 2.0, np.inf]) for i in range(20)}
    check_layout(plots.profile_figure(ratios, "profile"), "profile")
    series = {f"H={h}": ([1, 2, 4, 8, 16], [1, 1.9, 3.5, 6, 9], [0.9, 1.7, 3, 5, 8],
                        [1.1, 2.1, 4, 7, np.inf]) for h in (1, 2, 4, 8, 16, 32)}
    check_layout(plots.speedup_figure(series, "speedup"), "speedup")


# ------------------------------------------------------------------------------ presets, config

def _presets():
    return sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", [p for p in _presets() if not p.endswith("_tuned")])
def test_every_preset_has_a_tuned_variant_with_disjoint_seeds_and_a_grid(preset):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    assert f"{preset}_tuned" in _presets()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        base = compose(config_name="config", overrides=[f"experiment={preset}"],
                       return_hydra_config=True)
        cfg = compose(config_name="config", overrides=[f"experiment={preset}_tuned"],
                      return_hydra_config=True)
    assert list(base.leaderboard.tuning_seeds) == []  # the untuned preset stays untuned
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    seeds = [int(s) for s in str(params["seed"]).split(",")]
    tuning = list(cfg.leaderboard.tuning_seeds)
    held_out = [s for s in seeds if s not in tuning]
    assert tuning and set(tuning) <= set(seeds) and held_out
    # the held-out seeds are the untuned preset's own, so the two leaderboards compare
    assert held_out == [int(s) for s in str(OmegaConf.to_container(
        base.hydra.sweeper.params)["seed"]).split(",")]
    for key in cfg.leaderboard.tune_keys:
        assert len(str(params[key]).split(",")) >= 3, (key, params.get(key))
    # everything else is the untuned design
    for key in ("task", "workers", "batch_size", "steps", "lr_schedule"):
        assert OmegaConf.to_container(cfg)[key] == OmegaConf.to_container(base)[key], key


@pytest.mark.parametrize("override, expected", [
    ("leaderboard.targets=[0.5,2]", r"leaderboard.targets=\[0.5, 2\] .*each in \(0, 1\)"),
    ("leaderboard.tuning_seeds=[1,1]", r"leaderboard.tuning_seeds=\[1, 1\] .*distinct"),
    ("leaderboard.tune_keys=[workers]", r"leaderboard.tune_keys='workers' .*a method's key"),
    ("leaderboard.tune_keys=[algorithm.nope]", r"leaderboard.tune_keys='algorithm.nope' .*a key"),
    ("leaderboard.tune_by=seconds", r"leaderboard.tune_by='seconds' .*iterations, bits"),
    ("leaderboard.tune_target=3", r"leaderboard.tune_target=3 .*\(0, 1\)"),
])
def test_bad_leaderboard_keys_name_the_key_and_what_is_allowed(override, expected):
    from suite.config import ConfigError, check_root

    with pytest.raises(ConfigError, match=expected):
        check_root(make_cfg(override))


def test_a_presets_method_file_names_the_method(tmp_path):
    """commsgd-run sets leaderboard.name to the option of the preset's method group."""
    from suite.cli import name_method
    from suite.config import method_choice

    assert method_choice({"experiment/dvq_methods": "dqgd_linf", "algorithm": "dqgd"}) \
        == "dqgd_linf"
    assert method_choice({"algorithm": "dqgd"}) is None
    cfg = make_cfg("leaderboard.name=mine")
    name_method(cfg, {"experiment/dvq_methods": "dqgd_linf"})
    assert cfg.leaderboard.name == "mine"  # an explicit name wins
    run_cli("+experiment/dvq_methods=qsgd", "steps=20", "workers=2", "batch_size=full",
            "eval_every=10", "progress=false", "hardware.threads=1", cwd=tmp_path)
    runs = load_runs(f"sqlite:///{tmp_path / 'mlruns.db'}", ["logreg"]).runs
    assert list(runs["params.leaderboard.name"]) == ["qsgd"]
    assert list(runs["method"]) == ["qsgd"]


def test_a_speedup_series_joins_each_ks_own_tuned_step_size():
    """In a tuned sweep each K has its own chosen lr: the series is the method minus its tuned
    keys (method_id), not the full configuration."""
    from analysis import groups as G

    empty = G.Curves([], np.zeros(0), {})

    def group(K, lr, H):
        return G.Group(f"g{K}{lr}{H}", "e", "task", f"p{K}", "p", "m", f"key{lr}{H}",
                       {"workers": K, "batch_size": 1, "lr": lr}, {}, [], {}, 0, empty, empty,
                       method_id=f"H{H}")
    series = G.speedup_series([group(1, 0.1, 1), group(2, 0.25, 1), group(4, 0.5, 1),
                               group(1, 0.1, 8), group(2, 0.1, 8)])
    assert sorted((k[1], [g.workers for g in v]) for k, v in series.items()) == [
        ("H11", [1, 2, 4]), ("H81", [1, 2])]
