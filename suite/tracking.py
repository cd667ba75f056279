"""Run tracking: MLflow (batched writes) or nothing.

One tracker per run. Metrics are buffered in memory and written with `log_batch` in chunks of
at most 1000 values (MLflow's per-call limit), never one call per metric per step; a run of
2,000 steps with 15 metrics costs a few batched writes. Only rank 0 of a distributed job
creates a tracker; the other ranks get a `NullTracker`.

A run always ends in a terminal status: FINISHED, FAILED (tag `failure` holds the reason,
`diverged=true` when it diverged) or KILLED (Ctrl-C); never left RUNNING.
"""

from __future__ import annotations

import time
from pathlib import Path

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000


class NullTracker:
    """tracking=none: keeps the history in memory for the summary, writes nothing."""

    uri = None
    experiment_name = None
    run_id = None

    def __init__(self):
        self.history: list[tuple[str, float, int]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.history.extend((k, float(v), step) for k, v in metrics.items())

    def log_constants(self, constants: dict[str, float]) -> None:
        pass

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self, status: str, reason: str | None = None) -> None:
        pass


def default_uri(launch_dir: Path) -> str:
    return f"sqlite:///{Path(launch_dir).resolve() / 'mlruns.db'}"


def get_or_create_experiment(client, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, creating it if needed. Two jobs of a parallel sweep may race to
    create it: the loser's create fails, and it then finds the winner's."""
    from mlflow.exceptions import MlflowException

    for attempt in range(5):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            location = None if artifact_root is None else (artifact_root / name).as_uri()
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not create or find the MLflow experiment {name!r}")


class MlflowTracker(NullTracker):
    def __init__(self, *, uri: str, experiment: str, run_name: str, params: dict,
                 tags: dict[str, str], flush_every: int = 5000,
                 artifact_root: Path | None = None):
        super().__init__()
        from mlflow.tracking import MlflowClient

        self.uri, self.experiment_name = uri, experiment
        self.client = MlflowClient(tracking_uri=uri)
        self.flush_every = flush_every
        self._buffer: list = []
        # A local SQLite store keeps its artifacts beside the database; a server has its own.
        if artifact_root is None and uri.startswith("sqlite:///"):
            artifact_root = Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
        self.experiment_id = get_or_create_experiment(self.client, experiment, artifact_root)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self._log_params(params)

    def _log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i: i + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        super().log_metrics(metrics, step)
        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def log_constants(self, constants: dict[str, float]) -> None:
        self.log_metrics({f"task/{k}": v for k, v in constants.items()}, step=0)

    def flush(self) -> None:
        while self._buffer:
            chunk = self._buffer[:MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=chunk)
            del self._buffer[: len(chunk)]

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=subdir)

    def finish(self, status: str, reason: str | None = None) -> None:
        try:
            self.flush()
            if reason:
                self.set_tags({"failure": reason[:5000]})
        finally:
            self.client.set_terminated(self.run_id, status=status)
