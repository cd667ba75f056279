"""The report's claims of the federated methods (analysis/claims.py; docs/theory.md §15, §16):
read from their presets' runs (fake MLflow runs with known curves), supported when the curves
show the claim, not supported when they show the opposite, "not run" without runs."""

from __future__ import annotations

import pytest

from tests.test_analysis import _fake_run

FLOOR = 1e-3


def _scaffold(t, s):
    return 0.9 ** t * (1 + 0.01 * s)  # linear to precision: 2e-14 at t = 300


def _fedavg(t, s):
    return FLOOR * (1 + 0.01 * s) + 0.9 ** t  # flat at the drift floor


def _fast(t, s):
    return 0.8 ** t * (1 + 0.01 * s)  # 1e-4 of F0 by t = 50: 5 rounds of H = 10


def _slow(t, s):
    return 0.95 ** t * (1 + 0.01 * s)  # 0.95^180 < 1e-4 (logged every 10 steps): 18 rounds


NESTEROV = {"algorithm.server_lr": "0.7", "algorithm.server_momentum": "0.9",
            "algorithm.nesterov": "True"}
AVERAGING = {"algorithm.server_lr": "1.0", "algorithm.server_momentum": "0.0",
             "algorithm.nesterov": "False"}


def _store(tmp_path, scaffold_curves, diloco_curves):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    svf = client.create_experiment("scaffold_vs_fedavg")
    common = {"batch_size": "full", "algorithm.local_steps": "10", "task.split": "by_label",
              "algorithm.participation": "1.0", "workers": "8"}
    for alg, curve in scaffold_curves.items():
        for seed in range(3):
            _fake_run(client, svf, seed=seed, status="FINISHED", n_steps=300, curve=curve,
                      params={**common, "algorithm.name": alg})
    dl = client.create_experiment("diloco")
    common = {"batch_size": "4", "algorithm.local_steps": "10", "algorithm.name": "fedavg",
              "workers": "8"}
    for outer, curve in diloco_curves:
        for seed in range(3):
            _fake_run(client, dl, seed=seed, status="FINISHED", n_steps=300, curve=curve,
                      params={**common, **outer})
    return uri


def _claims(uri, *experiments):
    from analysis import claims, groups, theory
    from analysis.runs import load_runs

    gs = groups.build_groups(load_runs(uri, list(experiments)), n_boot=200)
    return {c.number: c for c in claims.evaluate(gs, {g.group: theory.compare(g) for g in gs})}


@pytest.mark.parametrize("shown", [True, False])
def test_the_claims_follow_the_curves(tmp_path, shown):
    scaffold = {"scaffold": _scaffold, "fedavg": _fedavg} if shown else \
        {"scaffold": _fedavg, "fedavg": _fedavg}
    diloco = [(NESTEROV, _fast), (AVERAGING, _slow)] if shown else \
        [(NESTEROV, _slow), (AVERAGING, _fast)]
    got = _claims(_store(tmp_path, scaffold, diloco), "scaffold_vs_fedavg", "diloco")
    expected = "supported" if shown else "not supported"
    assert got[16].verdict == expected, got[16].evidence
    assert got[15].verdict == expected, got[15].evidence
    if shown:
        assert "plateau at" in got[16].evidence[0]
        # rounds = iterations / H, per seed: 5 (t = 50) against 18 (t = 180)
        assert "Nesterov [5, 5, 5] vs averaging [18, 18, 18]" in got[15].evidence[0], \
            got[15].evidence


def test_without_their_runs_the_claims_are_not_run(tmp_path):
    uri = _store(tmp_path, {}, [])
    got = _claims(uri, "scaffold_vs_fedavg", "diloco")
    assert got[15].verdict == got[16].verdict == "not run"
