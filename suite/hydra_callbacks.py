"""Hydra callbacks. `PrepareTrackingStore` runs once in the launching process before a sweep's
jobs start: it checks the tracking URI, creates the MLflow store (under a lock, suite.stores)
and the experiment, so that parallel jobs (joblib, SLURM) never race to create an SQLite schema
or the same experiment, and it closes the experiment's RUNNING runs whose process is gone (an
earlier sweep killed with its tracking writers, suite.sweep_guard): no run stays RUNNING."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class PrepareTrackingStore(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # under torchrun every rank runs this callback; only one may create the store
        if config.tracking.name != "mlflow" or int(os.environ.get("RANK", "0")) != 0:
            return
        from suite.stores import client as store_client
        from suite.sweep_guard import close_stale_runs
        from suite.tracking import (
            get_or_create_experiment,
            local_artifact_root,
            retry,
            tracking_uri,
        )

        uri = tracking_uri(config, Path.cwd())
        client = store_client(uri)
        name = config.tracking.experiment or config.task.name
        experiment_id = get_or_create_experiment(client, name, local_artifact_root(uri))
        retry(lambda: close_stale_runs(client, experiment_id), "close stale runs")
