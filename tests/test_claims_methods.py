"""The report's claims of the methods of docs/theory.md §10–§14 (analysis/claims.py, claims
10–14): read from their presets' runs (fake MLflow runs with known curves and bit counts),
supported when the runs show the claim, not supported when they show the opposite, "not run"
without runs, and PowerSGD's inconclusive on FakeData whatever its curves."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fakes import CONSTANTS
from tests.fakes import fake_run as _fake_run

D = int(CONSTANTS["dim"])  # 5: every fake run's d
FLOOR = 1e-3
SEEDS = range(3)
STEPS = 300


def _exact(t, s):
    return 0.9 ** t * (1 + 0.01 * s)  # linear to precision: 2e-14 at t = 300; 1e-8 at t = 180


def _floor(t, s):
    return FLOOR * (1 + 0.01 * s) + 0.9 ** t  # flat at 1e-3 from t ≈ 70


# MARINA on d = 5 with rand-1: ω = 4, p = 1/(ω + 1) = 0.2, bits(Q) = 32 + ⌈log₂5⌉ = 35, a
# dense round 32·5 = 160. Predicted mean after round 0: 0.2·160 + 0.8·35 = 60 bits.
RANDK = {"compressor.name": "randk", "compressor.k": "1", "compressor.ratio": "None",
         "compressor.scaled": "True", "compressor.width": None}
DENSE, BQ, P = 32 * D, 32 + 3, 0.2


def _coin_bits(p: float):
    """Cumulative up-link bits of a MARINA run whose coin falls with probability p each round
    after round 0 (seeded per run seed): round 0 dense, then 32d or bits(Q)."""
    sizes = {s: np.concatenate([[DENSE], np.where(
        np.random.default_rng(100 + s).random(STEPS) < p, DENSE, BQ)]) for s in SEEDS}
    return lambda t, s: float(sizes[s][:t].sum())


# PowerSGD on CIFAR (fake curves): the same accuracy curve per step for all, 0.92 from t = 150,
# so the bits to it scale with the bits per step.
def _accuracy(t, s):
    return min(0.95, 0.1 + 0.0055 * t) - 0.001 * s


TOPK = {"algorithm.name": "ef_sgd", "compressor.name": "topk", "compressor.k": "1",
        "compressor.ratio": "None", "compressor.width": None}
POWERSGD = {"algorithm.name": "ef_sgd", "compressor.name": "powersgd", "compressor.rank": "2",
            "compressor.width": None}
TOPK_DOWN = {"downlink.name": "topk", "downlink.k": "1", "downlink.ratio": "None"}
TOPK_DOWN_BITS = 32 + 3  # one top-1 message of d = 5


def _per_step(bits):
    return lambda t, s: bits * t


def _write(client, name, methods, *, common=None):
    exp = client.create_experiment(name)
    for params, curve, bits, extra in methods:
        for seed in SEEDS:
            _fake_run(client, exp, seed=seed, status="FINISHED", n_steps=STEPS, curve=curve,
                      bits_per_step=bits, extra=extra,
                      params={**(common or {}), **params})


def _store(tmp_path, shown: bool, cifar: str = "cifar10"):
    """All five presets' runs in one store (one store per case: creating one costs seconds).
    shown: the curves and counts the claims predict; otherwise the opposite."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    full = {"batch_size": "full", "task.split": "by_label", "workers": "8", "lr": "0.03"}
    _write(client, "ef21_vs_ef", [
        ({**TOPK, "algorithm.name": "ef21"}, _exact if shown else _floor, 48, None),
        ({"algorithm.name": "ef_sgd", **TOPK}, _floor, 48, None)], common=full)
    # MARINA: the runs' coin falls with p = 0.2 as predicted, or the count forgets the coin
    # (bits(Q) every round after round 0: 35 bits against 60, 25 bits off, many standard errors)
    bits = _coin_bits(P if shown else 0.0)
    _write(client, "marina_vs_diana", [
        ({"algorithm.name": "marina", "algorithm.p": "None", **RANDK}, _exact if shown else
         _floor, None, {"comm/bits_up": bits}),
        ({"algorithm.name": "diana", **RANDK}, _exact, BQ, None)], common=full)
    cifar_params = {"task.name": "cifar10_resnet", "task.dataset": cifar, "batch_size": "16",
                    "workers": "4", "lr": "0.05", "steps": str(STEPS)}
    acc = {"test/accuracy": _accuracy}
    _write(client, "powersgd_vs_topk", [
        (POWERSGD, None, 100 if shown else 1000, acc),
        (TOPK, None, 1000 if shown else 100, acc),
        ({"algorithm.name": "sgd", "compressor.name": "identity"}, None, 5000, acc)],
        common=cifar_params)
    iid = {"batch_size": "32", "task.split": "iid", "workers": "8", "lr_schedule": "decaying"}
    # majority vote: d bits a step each way and SGD's curve (32× fewer bits to any target), or
    # a vote that stalls above SGD's target and counts 2 bits a coordinate
    vote_bits = D if shown else 2 * D
    _write(client, "majority_vote_vs_sgd", [
        ({"algorithm.name": "majority_vote", "lr": "0.003"}, _exact if shown else _floor,
         vote_bits, {"comm/bits_down": _per_step(vote_bits)}),
        ({"algorithm.name": "sgd", "lr": "0.5"}, _exact, DENSE,
         {"comm/bits_down": _per_step(DENSE)})], common=iid)
    # the down-link: top-1 (35 bits a broadcast) on the dense run's curve, or a top-1 run that
    # stalls and is counted as dense
    down_bits = TOPK_DOWN_BITS if shown else DENSE
    rounds = {"comm/rounds": lambda t, s: t}
    _write(client, "ef21p_downlink", [
        (TOPK_DOWN, _exact if shown else _floor, DENSE,
         {"comm/bits_down": _per_step(down_bits), **rounds}),
        ({"downlink.name": "identity", "downlink.width": "32"}, _exact, DENSE,
         {"comm/bits_down": _per_step(DENSE), **rounds})], common=full | {"lr": "0.2"})
    return uri


EXPERIMENTS = ("ef21_vs_ef", "marina_vs_diana", "powersgd_vs_topk", "majority_vote_vs_sgd",
               "ef21p_downlink")


def _claims(uri):
    from analysis import claims, groups, theory
    from analysis.runs import load_runs

    gs = groups.build_groups(load_runs(uri, list(EXPERIMENTS)), n_boot=200)
    return {c.number: c for c in claims.evaluate(gs, {g.group: theory.compare(g) for g in gs})}


@pytest.mark.parametrize("shown", [True, False])
def test_the_claims_follow_the_runs(tmp_path, shown):
    got = _claims(_store(tmp_path, shown))
    expected = "supported" if shown else "not supported"
    for n in (10, 11, 12, 13, 14):
        assert got[n].verdict == expected, (n, got[n].evidence)
    ev = {n: " | ".join(got[n].evidence) for n in got}
    if shown:
        assert "EF-SGD's plateau at" in ev[10] and "f − f* < 1e-8 from step 180" in ev[10]
        # the pooled mean of 3 × 299 simulated coin rounds, against 60 ± 5 standard errors:
        # 5·125·√(0.2·0.8/897) = 8.3 bits
        assert "= 60 ± 8.3 (5 standard errors over 897 coin rounds)" in ev[11], ev[11]
        # accuracy 0.94 from t = 160 (SGD reaches it; 0.95 is not on the ladder): 16,000
        # against 160,000 bits
        assert "test accuracy 0.94: PowerSGD [1.6e+04, 1.6e+04, 1.6e+04]" in ev[12], ev[12]
        # 0.9^t ≤ 1e-4·F0 first at t = 90: (5 + 5)·90 bits against (160 + 160)·90
        assert "bits up + down [900, 900, 900] vs SGD's [2.88e+04" in ev[13], ev[13]
        # the dense run reaches 1e-8·F0 at t = 180 (every seed: F0 differs by 1% per seed)
        assert "35 bits a broadcast (dense 160)" in ev[14], ev[14]
    else:
        assert "= 60 ± " in ev[11] and "up-link bits a round after round 0: 35 " in ev[11]
        assert "stalls" in ev[10] and "stalls" in ev[11]


def test_without_their_runs_the_claims_are_not_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    for name in EXPERIMENTS:
        MlflowClient(tracking_uri=uri).create_experiment(name)
    got = _claims(uri)
    assert all(got[n].verdict == "not run" for n in (10, 11, 12, 13, 14)), got


def test_powersgd_on_fakedata_cannot_decide_however_its_curves_look(tmp_path):
    """FakeData has random labels: even curves that would show the claim on CIFAR-10 leave it
    inconclusive, saying why; the other claims are unaffected."""
    got = _claims(_store(tmp_path, True, cifar="fake"))
    assert got[12].verdict == "inconclusive"
    assert "FakeData" in got[12].evidence[0] and "powersgd_vs_topk_full" in got[12].evidence[0]
    assert got[10].verdict == got[13].verdict == "supported"


def test_majority_vote_with_exact_bits_that_misses_sgds_target_is_mixed(tmp_path):
    """One check passes (1 bit a coordinate each way), the other fails (the vote stalls above
    SGD's target): neither supported nor refuted as a whole."""
    from mlflow.tracking import MlflowClient

    from analysis import claims, groups
    from analysis.runs import load_runs

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    _write(client, "majority_vote_vs_sgd", [
        ({"algorithm.name": "majority_vote"}, _floor, D, {"comm/bits_down": _per_step(D)}),
        ({"algorithm.name": "sgd"}, _exact, DENSE, {"comm/bits_down": _per_step(DENSE)})])
    gs = groups.build_groups(load_runs(uri, ["majority_vote_vs_sgd"]), n_boot=200)
    c = claims.claim_majority_vote_bits(gs)
    assert c.verdict == "mixed", c.evidence
    assert "bits up + down [—, —, —]" in c.evidence[0]


def test_reference_target_is_the_tightest_rung_the_reference_reaches():
    """0.9^t from F0 = 1 (logged every 10 steps to t = 100, last 2.7e-5): 1e-4 on the shallow
    ladder; on the deep ladder still 1e-4 (1e-6 is not reached); a curve that never gets below
    0.2 gets the shallowest rung."""
    from analysis import claims
    from analysis.groups import Curves, Group

    def group(values):
        steps = np.arange(0, 101, 10, dtype=float)
        Y = np.array([[values(t) for t in steps]] * 2)
        c = Curves(["a", "b"], steps, {"train/suboptimality": Y})
        return Group("g", "e", "t", "p", "p", "m", "m", {}, {}, ["a", "b"], {}, 0, c, c)

    fast = group(lambda t: 0.9 ** t)
    assert claims.reference_target([fast]) == (pytest.approx(1e-4), 1e-4)
    assert claims.reference_target([fast], claims.DEEP_LADDER)[1] == 1e-4
    slow = group(lambda t: 0.2 + 0.8 * 0.9 ** t)
    assert claims.reference_target([slow]) == (pytest.approx(0.1), 0.1)
