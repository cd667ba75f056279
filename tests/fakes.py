"""Fake commsgd runs written straight into an MLflow store: what the runner logs (params, task
constants, metric histories, status), without running anything, for the analysis tests."""

from __future__ import annotations

import time

BASE_PARAMS = {"algorithm.name": "sgd", "compressor.name": "identity", "compressor.width": "32",
               "workers": "2", "batch_size": "full", "lr": "0.5", "lr.resolved": "0.5",
               "lr_schedule": "constant", "task.name": "logreg", "task.dataset": "synthetic",
               "task.split": "iid", "steps": "100", "tracking.uri": "None",
               "progress": "False"}
CONSTANTS = {"L": 1.0, "L_max": 1.5, "mu": 0.1, "f_star": 0.3, "zeta_sq": 0.01, "sigma_sq": 0.2,
             "dim": 5, "n": 100}


def fake_run(client, exp_id, *, seed, status, n_steps, params=None, tags=None, constants=True,
             curve=None, every=10, bits_per_step=160.0, wall_per_step=None, extra=None,
             suboptimality=True):
    """One run of `n_steps` logged every `every` steps: train/suboptimality = curve(t, seed)
    (default 0.9^t·(1 + 0.01·seed)), comm/bits_up = bits_per_step·t and, if given,
    time/wall_s = wall_per_step·t and each metric of `extra` (name -> f(t, seed), replacing
    the default comm/bits_up where it names it); params are BASE_PARAMS updated by `params`
    (a value None: without that key). suboptimality=False: no train/suboptimality, as a task
    without a known f* (a network) logs."""
    from mlflow.entities import Metric, Param

    run = client.create_run(exp_id, run_name=f"r{seed}-{status}", tags=tags or {})
    base = {k: v for k, v in (BASE_PARAMS | {"seed": str(seed)} | (params or {})).items()
            if v is not None}  # a key given as None is left out
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in base.items()])
    now = int(time.time() * 1000)
    ms = []
    if constants:
        ms += [Metric(f"task/{k}", v, now, 0) for k, v in CONSTANTS.items()]
    for t in range(0, n_steps + 1, every):
        value = curve(t, seed) if curve else 0.9**t * (1 + 0.01 * seed)
        if suboptimality:
            ms.append(Metric("train/suboptimality", value, now, t))
        if "comm/bits_up" not in (extra or {}):
            ms.append(Metric("comm/bits_up", bits_per_step * t, now, t))
        if wall_per_step is not None:
            ms.append(Metric("time/wall_s", wall_per_step * t, now, t))
        ms += [Metric(k, float(f(t, seed)), now, t) for k, f in (extra or {}).items()]
    for i in range(0, len(ms), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run.info.run_id, metrics=ms[i:i + 1000])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id
