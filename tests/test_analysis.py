"""The analysis package: rate fitters on synthetic curves with known answers, censoring, the
MLflow reader on stores holding failed, running and summary runs, and theorem predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import rates
from analysis.runs import load_runs, parse_value
from tests.fakes import fake_run as _fake_run

# --------------------------------------------------------------------------- synthetic curves

def geometric_seeds(rng, *, S=10, n=100, every=5, rho=0.97, C=1.0, F=0.0, noise=0.2,
                    seed_sd=0.3):
    """S seeds of f_s(k) = C·ρ^k·a_s·u_{s,k} + F·v_{s,k}: a_s a persistent per-seed factor and
    u, v per-step factors, all log-normal with mean 1. So the expected curve E f(k) = F + C·ρ^k
    exactly: the truth the fitters must recover, with seed-to-seed and step-to-step noise."""
    steps = np.arange(n) * every
    a = rng.lognormal(-seed_sd**2 / 2, seed_sd, size=(S, 1))
    u = rng.lognormal(-noise**2 / 2, noise, size=(S, n))
    v = rng.lognormal(-noise**2 / 2, noise, size=(S, n))
    return steps, C * rho**steps * a * u + F * v


# Coverage of a nominal 95% interval over 100 independent trials. The count is Binomial(100, p):
# at p = 0.95 its standard deviation is 2.2, so 88 is three deviations below. The percentile
# bootstrap over S = 10 seeds also under-covers slightly by construction (it resamples from the
# empirical distribution, whose variance is (S−1)/S of the true one, and its percentiles are
# those of a skewed small-sample distribution): the actual coverage is about 91-93%. We assert
# ≥ 85/100, a failure only if the interval is systematically too narrow or biased (a broken
# fitter covers far less: a bias of one interval half-width already drops coverage to ~50%).
MIN_COVERED = 85


def test_linear_rate_interval_covers_the_true_rate_in_most_of_100_trials():
    rho = 0.97
    covered = 0
    for trial in range(100):
        steps, Y = geometric_seeds(np.random.default_rng(trial), rho=rho)
        fit = rates.linear_rate(steps, Y, n_boot=1000, seed=trial)
        covered += fit.rho.contains(rho)
    print(f"linear rate: true ρ inside the 95% CI in {covered}/100 trials")
    assert covered >= MIN_COVERED, covered


def test_joint_floor_interval_covers_the_true_floor_in_most_of_100_trials():
    F = 1e-4
    covered = 0
    for trial in range(100):
        steps, Y = geometric_seeds(np.random.default_rng(1000 + trial), rho=0.95, F=F, n=80)
        fit = rates.joint_floor(steps, Y, n_boot=1000, seed=trial, grid_size=160)
        covered += fit.F.contains(F)
    print(f"joint floor: true F inside the 95% CI in {covered}/100 trials")
    assert covered >= MIN_COVERED, covered


def test_noiseless_geometric_curve_gives_the_exact_rate_and_the_documented_window():
    steps = np.arange(0, 1000, 10)
    m = 0.9**steps * 2.0 + 0.0
    fit = rates.linear_rate(steps, m[None], f_star=0.0)
    assert fit.rho.value == pytest.approx(0.9, rel=1e-12)
    # k0: the first step with gap < 0.1 × initial (0.9^k < 0.1 → k > 21.9 → 30);
    # k1: the last step with gap > 1e-12 × initial (0.9^k > 1e-12 → k < 262.3 → 260)
    assert fit.window == (30, 260)


def test_window_stops_at_ten_times_the_floor_and_at_float64_noise():
    steps = np.arange(0, 400, 2)
    m = 0.95**steps + 1e-3
    i0, i1 = rates.rate_window(steps, m, floor=1e-3)
    assert m[i1] > 1e-2 >= m[i1 + 1]
    # with |f*| = 1e10, 100·eps·|f*| ≈ 2.2e-4 is the limit: points below it are rounding noise
    i0, i1 = rates.rate_window(steps, 0.95**steps, f_star=1e10)
    assert 0.95 ** steps[i1] > 100 * rates.EPS * 1e10 >= 0.95 ** steps[i1 + 1]


def test_tail_plateau_test_tells_floors_from_decay():
    rng = np.random.default_rng(0)
    steps, flat = geometric_seeds(rng, rho=0.9, F=1e-3, n=200)
    assert rates.tail_floor(steps, flat).plateau
    _, linear = geometric_seeds(rng, rho=0.98, n=200)
    assert not rates.tail_floor(steps, linear).plateau
    power = 1.0 / (1.0 + steps[None, :]) * rng.lognormal(0, 0.05, size=(5, len(steps)))
    assert not rates.tail_floor(steps, power).plateau
    tf = rates.tail_floor(steps, flat)
    assert tf.floor.value == pytest.approx(1e-3, rel=0.05)


def test_power_law_recovers_the_exponent_beside_a_higher_order_term():
    rng = np.random.default_rng(3)
    T = np.geomspace(10, 10_000, 25)
    truth = 5.0 / T + 5.0 / T**2  # p = 1 asymptotically, a T^-2 term at small T
    covered = 0
    for trial in range(100):
        Y = truth * rng.lognormal(-0.02, 0.2, size=(8, len(T)))
        fit = rates.power_law(T, Y, n_boot=1000, seed=trial)
        covered += fit.p.contains(1.0)
    print(f"power law: p = 1 inside the 95% CI in {covered}/100 trials")
    # over the upper half (T ≥ 316) the T^-2 term is < 0.3% of the total: p̂'s bias is far
    # below its interval's half-width
    assert covered >= MIN_COVERED


# ------------------------------------------------------------------------------ censoring

def test_a_run_that_never_reaches_the_target_is_censored_not_dropped():
    steps = np.array([0, 10, 20, 30, 40])
    Y = np.array([[1.0, 0.5, 0.05, 0.01, 0.001],   # reaches 0.02 at step 30
                  [1.0, 0.3, 0.01, 0.001, 1e-4],   # at step 20
                  [1.0, 0.9, 0.8, 0.7, 0.6],       # never
                  [1.0, 0.2, np.nan, np.nan, np.nan]])  # diverged before reaching
    bits = np.cumsum(np.ones_like(Y), axis=1) * 100
    out = rates.time_to_target(steps, Y, 0.02, {"bits": bits})
    it = out.iterations
    assert (it.reached, it.total) == (2, 4)  # the two failures stay in the denominator
    assert list(out.per_seed["iterations"]) == [30, 20, math.inf, math.inf]
    # lower median of {20, 30, ∞, ∞}: the 2nd smallest, 30; dropping the censored runs would
    # have given the median of {20, 30} = 20 or 25, an optimistic answer
    assert it.median.value == 30
    assert out.bits.median.value == 400
    assert it.median.hi == math.inf  # half the seeds never reach: the interval is honest
    # with only one seed of four reaching, the method has "not reached" ε
    worse = rates.time_to_target(steps, Y[[0, 2, 3, 3]], 0.02)
    assert worse.iterations.median.value == math.inf and worse.iterations.reached == 1


def test_speedup_of_ideal_curves_is_linear_and_censoring_shows():
    steps = np.arange(1, 2001, dtype=float)
    rng = np.random.default_rng(1)

    def curves(K, S=6):
        return steps, (1.0 / (K * steps)) * rng.lognormal(-0.005, 0.1, size=(S, len(steps)))

    sp = rates.speedup({K: curves(K) for K in (1, 2, 4, 8)}, eps=1e-3, n_boot=1000)
    assert sp.T[1] == pytest.approx(1000, rel=0.1)
    assert sp.S[8].value == pytest.approx(8, rel=0.15)
    assert sp.beta.lo <= 1.0 <= sp.beta.hi
    assert sp.efficiency[8].value == pytest.approx(sp.S[8].value / 8)
    # a K whose curve never reaches ε: speedup 0 there, and β̂ has no finite lower bound
    stalled = {1: curves(1), 2: curves(2), 4: (steps, np.full((6, len(steps)), 1.0))}
    sp = rates.speedup(stalled, eps=1e-3, n_boot=1000)
    assert sp.T[4] == math.inf and sp.S[4].value == 0 and sp.beta.lo == -math.inf


# ------------------------------------------------------------------------------ reading MLflow

def test_parse_value_restores_the_logged_python_values():
    assert parse_value("None") is None and parse_value("True") is True
    assert parse_value("8") == 8 and parse_value("0.05") == 0.05
    assert parse_value("[0.5, 0.75]") == [0.5, 0.75]
    assert parse_value("theory") == "theory" and parse_value("full") == "full"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (creating an MLflow SQLite schema takes seconds); the tests
    only read it."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("exp", artifact_location=(tmp_path / "art").as_uri())
    client.create_experiment("empty")
    ids = {
        "a": _fake_run(client, exp, seed=0, status="FINISHED", n_steps=100),
        "b": _fake_run(client, exp, seed=1, status="FINISHED", n_steps=100),
        "failed": _fake_run(client, exp, seed=2, status="FAILED", n_steps=30,
                            tags={"diverged": "true", "failure": "diverged at step 30"}),
        "running": _fake_run(client, exp, seed=3, status="RUNNING", n_steps=0,
                             constants=False),
        "killed": _fake_run(client, exp, seed=4, status="KILLED", n_steps=20),
        "other": _fake_run(client, exp, seed=0, status="FINISHED", n_steps=100,
                           params={"lr": "0.25", "lr.resolved": "0.25"}),
        "summary": _fake_run(client, exp, seed=0, status="FINISHED", n_steps=0,
                             tags={"commsgd.report": "true"}, constants=False),
    }
    # an `ef_delay` experiment (the preset's name) with a stochastic-looking 1/t decay: SGD and
    # EF-top-k share it, top-k without EF stalls 10× higher, delayed SGD lags early then merges
    ef = client.create_experiment("ef_delay")
    methods = {
        "sgd": ({"algorithm.name": "sgd"}, lambda t, s: (1 + 0.1 * s) / (1 + t)),
        "ef": ({"algorithm.name": "ef_sgd", "compressor.name": "topk",
                "algorithm.error_feedback": "True"}, lambda t, s: (1.05 + 0.1 * s) / (1 + t)),
        "noef": ({"algorithm.name": "ef_sgd", "compressor.name": "topk",
                  "algorithm.error_feedback": "False"},
                 lambda t, s: 10 * (1 + 0.1 * s) / (1 + 0.1 * t) ** 0.5 / 3),
        "delay": ({"algorithm.name": "delayed_sgd", "algorithm.delay": "8"},
                  lambda t, s: (1 + 0.1 * s) / (1 + t) * (1 + 8 / (1 + t))),
    }
    for params, curve in methods.values():
        for seed in range(3):
            _fake_run(client, ef, seed=seed, status="FINISHED", n_steps=300, curve=curve,
                      params={"lr_schedule": "decaying", **params})
    return uri, ids


def test_load_runs_keeps_failed_and_running_runs_and_leaves_summary_runs_out(store):
    uri, ids = store
    rs = load_runs(uri, ["exp"])
    assert rs.excluded_summary_runs == 1
    assert set(rs.runs["run_id"]) == {ids[k] for k in ("a", "b", "failed", "running", "killed",
                                                       "other")}
    by_id = rs.runs.set_index("run_id")
    assert by_id.loc[ids["failed"], "status"] == "FAILED"
    assert by_id.loc[ids["failed"], "tags.diverged"] == "true"
    assert by_id.loc[ids["a"], "const.L"] == 1.0 and by_id.loc[ids["a"], "seed"] == 0
    # seeds of one configuration share a group; another step size is another group/method
    assert by_id.loc[ids["a"], "group"] == by_id.loc[ids["b"], "group"] \
        == by_id.loc[ids["failed"], "group"]
    assert by_id.loc[ids["other"], "group"] != by_id.loc[ids["a"], "group"]
    assert by_id.loc[ids["other"], "problem"] == by_id.loc[ids["a"], "problem"]
    assert by_id.loc[ids["other"], "method"] == "sgd/identity lr=0.25"
    # usable: ended runs only (RUNNING is in flight, KILLED was stopped by hand)
    assert set(rs.usable()["run_id"]) == {ids[k] for k in ("a", "b", "failed", "other")}
    h = rs.history
    assert set(h.columns) == {"run_id", "key", "step", "value"}
    sub = h[(h.run_id == ids["failed"]) & (h.key == "train/suboptimality")]
    assert list(sub.step) == [0, 10, 20, 30]
    assert set(h[h.run_id == ids["running"]].step) == {0}  # in flight: what it has so far


def test_load_runs_pages_through_search_results(store, monkeypatch):
    import analysis.runs as runs_mod

    uri, _ = store
    monkeypatch.setattr(runs_mod, "PAGE_SIZE", 2)
    assert len(load_runs(uri, "exp").runs) == 6


def test_unknown_experiment_is_a_clear_error(store):
    uri, _ = store
    with pytest.raises(LookupError, match="nope"):
        load_runs(uri, ["nope"])


def test_groups_censor_the_failed_seed_and_predictions_come_from_the_theorem(store):
    from analysis import groups, theory
    from suite.algorithms import REGISTRY

    uri, ids = store
    gs = {g.run_ids[0]: g for g in groups.build_groups(load_runs(uri, ["exp"]), n_boot=1000)}
    g = gs[ids["a"]]
    assert g.n_seeds == 3 and len(g.finished.run_ids) == 2 and g.diverged == 1
    eps = 0.9**50 * 1.5  # reached by the finished seeds at step 50, never by the failed one
    tt = groups.target_costs(g, eps, n_boot=1000)
    assert (tt.iterations.reached, tt.iterations.total) == (2, 3)
    pred = theory.predict(g)
    expected = REGISTRY["sgd"].theorem(g.constants, workers=2, batch_size=None, omega=0.0,
                                       delta=None, lr=0.5)
    assert pred.theorem == expected and pred.omega == 0.0
    cmp_ = theory.compare(g)
    # f − f* = 0.9^k: ρ̂ = 0.9 exactly, faster than the bound 1 − γμ = 0.95
    assert g.rate.rho.value == pytest.approx(0.9, rel=1e-6)
    assert cmp_.rate_bound == pytest.approx(0.95) and cmp_.rate_holds
    assert cmp_.tightness == pytest.approx(math.log(0.9) / math.log(0.95), rel=1e-6)


def test_an_experiment_without_runs_gives_empty_frames_and_a_report(store):
    from analysis.report import Report

    uri, _ = store
    rs = load_runs(uri, ["empty"])
    assert rs.runs.empty and rs.history.empty and rs.usable().empty
    text = Report(rs, n_boot=1000).build().to_markdown()
    assert "Runs: 0 (none)" in text and "**not run**" in text


def test_claims_read_their_presets_runs_and_say_not_run_otherwise(store):
    from analysis import claims, groups, theory

    uri, _ = store
    gs = groups.build_groups(load_runs(uri, ["ef_delay"]), n_boot=1000)
    verdicts = {c.number: c for c in claims.evaluate(gs, {g.group: theory.compare(g)
                                                          for g in gs})}
    assert {verdicts[n].verdict for n in (1, 2, 3)} == {"not run"}
    assert verdicts[4].verdict == "supported", verdicts[4].evidence
    assert verdicts[5].verdict == "supported", verdicts[5].evidence
    assert any("no EF" in e and "tail error / SGD's" in e for e in verdicts[5].evidence)
    # the same curves with the no-EF run matching SGD: "can fail" is then not shown
    for g in gs:
        if g.params.get("algorithm.error_feedback") is False:
            g.ended = next(h for h in gs if h.params["algorithm.name"] == "sgd").ended
    assert claims.claim_ef_needed(gs).verdict == "partly supported"
