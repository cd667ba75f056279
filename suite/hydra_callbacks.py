"""Hydra callbacks. `PrepareTrackingStore` runs once in the launching process before a sweep's
jobs start: it creates the MLflow store and experiment, so that parallel jobs (joblib, SLURM)
never race to create an SQLite schema or the same experiment."""

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
        from mlflow.tracking import MlflowClient

        from suite.tracking import (
            check_reachable,
            default_uri,
            get_or_create_experiment,
            local_artifact_root,
        )

        uri = config.tracking.uri or default_uri(Path.cwd())
        check_reachable(uri)
        name = config.tracking.experiment or config.task.name
        get_or_create_experiment(MlflowClient(tracking_uri=uri), name, local_artifact_root(uri))
