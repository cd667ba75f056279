"""Run tracking: MLflow (batched, retried, never losing data) or nothing.

One tracker per run. Metrics are buffered in memory and written with `log_batch` in chunks of
at most 1000 values (MLflow's per-call limit), never one call per metric per step. Only rank 0
of a distributed job creates a tracker; the other ranks get a `NullTracker`.

Failure handling, because sweeps of hundreds of runs meet locked databases and servers that go
away:
- an `http(s)://` tracking server is probed before the run starts; unreachable, the run fails
  fast with a message that says how to start one;
- every store call is retried with exponential backoff (SQLite's "database is locked" under a
  parallel sweep, a server restarting);
- a flush that still fails keeps its metrics in the buffer and the run goes on; at the end the
  tracker tries again for `delivery_timeout_s`, and whatever it still cannot deliver is written
  to a local fallback file (JSON lines) that `python -m suite.tracking replay FILE` sends later.
  The run then ends with an error that says how many values are in that file.

A run always ends in a terminal status: FINISHED, FAILED (tag `failure` holds the reason,
`diverged=true` when it diverged) or KILLED (Ctrl-C); never left RUNNING.

`MlflowTracker` below is the synchronous tracker: every store call runs in the calling
process. The runner's default (tracking.writer=process) runs it in a writer child process
instead, so that the training process never waits on the store: `suite/tracking_writer.py`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from suite.errors import TrackingDeliveryError, TrackingUnavailable

__all__ = ["TrackingDeliveryError", "TrackingUnavailable"]  # defined in suite.errors

log = logging.getLogger("commsgd.tracking")

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
# Opening a store locked by another writer: 0.2 s doubling, ~100 s in all before giving up.
OPEN_ATTEMPTS = 10
# Tags that describe how an attempt of a run ended; a continued run drops them (it ends anew).
STALE_TAGS = ("failure", "diverged", "distributed.failed_rank")


class NullTracker:
    """tracking=none: keeps the history in memory for the summary, writes nothing."""

    uri = None
    experiment_name = None
    experiment_id = None
    run_id = None

    def __init__(self):
        self.history: list[tuple[str, float, int]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.history.extend((k, float(v), step) for k, v in metrics.items())

    def log_series(self, key: str, values: dict[int, float]) -> None:
        """One metric at many steps ({step: value}, in step order): what `log_metrics` of
        each would do, in one call (train/lr, logged every step, goes this way)."""
        self.history.extend((key, float(v), step) for step, v in values.items())

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


# Where `make mlflow-ui` serves a local store's UI.
LOCAL_UI = "http://127.0.0.1:5000"
# MLflow 3's UI shows every experiment as a GenAI one (overview, traces) unless told otherwise;
# this query selects its "machine learning" view, whose experiment page is the runs table.
ML_VIEW = "workflowType=machine_learning"


def ui_base(uri: str, local_ui: str = LOCAL_UI) -> str:
    """The UI that shows a store: a tracking server serves its own; a local store is shown by
    `mlflow ui` (make mlflow-ui) at local_ui."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else local_ui


def run_url(uri: str, experiment_id: str, run_id: str, local_ui: str = LOCAL_UI) -> str:
    """The run's own page in the MLflow UI (MLflow 3.x's route /experiments/<id>/runs/<run>)."""
    return f"{ui_base(uri, local_ui)}/#/experiments/{experiment_id}/runs/{run_id}"


def runs_table_url(uri: str, experiment_id: str, local_ui: str = LOCAL_UI) -> str:
    """An experiment's table of runs in the MLflow UI."""
    return f"{ui_base(uri, local_ui)}/#/experiments/{experiment_id}/runs?{ML_VIEW}"


def print_links(uri: str, local_ui: str = LOCAL_UI) -> int:
    """One line per experiment of the store with a link to its runs table; the number shown."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        print(f"no runs yet in {uri}; after `commsgd-run`, each experiment's runs table is at "
              f"{ui_base(uri, local_ui)}/#/experiments/<id>/runs?{ML_VIEW}")
        return 0
    client = MlflowClient(tracking_uri=uri)
    experiments = [e for e in client.search_experiments()
                   if client.search_runs([e.experiment_id], max_results=1)]
    for e in experiments:
        print(f"runs of experiment {e.name!r}: {runs_table_url(uri, e.experiment_id, local_ui)}")
    return len(experiments)


def check_reachable(uri: str, timeout_s: float = 5.0, attempts: int = 3) -> None:
    """Fail fast when an MLflow server does not answer: MLflow's own client would retry for
    minutes before saying anything. A refused connection fails at once; a server that is
    there but slow to answer (busy with a sweep's other jobs) is asked up to `attempts` times
    before it is called unreachable."""
    if not uri.startswith(("http://", "https://")):
        return
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                if resp.status == 200:
                    return
                problem = f"HTTP {resp.status}"
                break
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            problem = str(reason)
            if not isinstance(reason, TimeoutError) or attempt == attempts:
                break
            log.warning("tracking server %s did not answer within %.0f s (attempt %d of %d); "
                        "asking again", uri, timeout_s, attempt, attempts)
    raise TrackingUnavailable(
        f"tracking.uri={uri} is unreachable ({problem}). Start a server with `make "
        f"mlflow-server` (see README), or log locally with tracking.uri=sqlite:///$PWD/mlruns.db"
        f", or run without tracking: tracking=none"
    )


class shielded:
    """Hold back Ctrl-C (SIGINT) and SIGTERM while a store call runs, and deliver them right
    after it. An interrupt inside an SQLite write can leave the database locked by a dead
    transaction, and the run could then not be closed: it would stay RUNNING."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.active = threading.current_thread() is threading.main_thread()
        self.caught: list[int] = []
        if self.active:
            self.previous = {s: signal.signal(s, lambda sig, frame: self.caught.append(sig))
                             for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        if not self.active:
            return False
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        for sig in self.caught[:1]:
            signal.raise_signal(sig)  # now, with the original handler back in place
        return False


def retry(fn, what: str, *, attempts: int = 6, first_delay: float = 0.2):
    """Call fn(), retrying with exponential backoff on store errors (locks, restarts)."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            with shielded():
                return fn()
        except TrackingUnavailable:
            raise  # a store that refuses (a bad URI, no server): waiting will not help
        except Exception as exc:  # MLflow wraps SQLAlchemy and HTTP errors in many types
            if attempt == attempts - 1:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay *= 2


def tracking_uri(cfg, launch_dir: Path) -> str | None:
    """The store a job's config names: tracking.uri, or the default store beside the launch
    directory (default_uri); None for tracking=none. Read without torch: the job's launcher
    asks it before the runner is imported (suite.launch)."""
    tracking = cfg.get("tracking") or {}
    if tracking.get("name") != "mlflow":
        return None
    return tracking.get("uri") or default_uri(Path(launch_dir))


def open_client(uri: str, *, attempts: int = OPEN_ATTEMPTS):
    """An MlflowClient on a ready store. Creating the client opens the store (MLflow reads its
    schema then), so it is retried like every store call: a store locked by another writer is
    waited for (OPEN_ATTEMPTS), not a traceback. A new local SQLite store's schema is created
    first, once, under a lock (suite.stores.prepare). attempts=1: one try, silent, that raises
    what failed (the tracking writer's preload, which the run's own open repeats)."""
    from mlflow.tracking import MlflowClient

    from suite.stores import prepare

    def open_store():
        prepare(uri)
        return MlflowClient(tracking_uri=uri)

    return retry(open_store, "open the tracking store", attempts=attempts)


def get_or_create_experiment(client, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, creating it if needed. Jobs of a parallel sweep may race to create
    it (the sweep callback creates it first, but a job may come alone): the loser's create
    fails, and it then finds the winner's."""
    for attempt in range(6):
        exp = retry(lambda: client.get_experiment_by_name(name), "get_experiment_by_name")
        if exp is not None:
            return exp.experiment_id
        try:
            location = None if artifact_root is None else (artifact_root / name).as_uri()
            return client.create_experiment(name, artifact_location=location)
        except Exception:
            time.sleep(0.2 * (attempt + 1))
    raise TrackingUnavailable(f"could not create or find the MLflow experiment {name!r}")


def local_artifact_root(uri: str) -> Path | None:
    """A local SQLite store keeps its artifacts beside the database; a server has its own."""
    if uri.startswith("sqlite:///"):
        # absolute: a relative store path (sqlite:///mlruns.db) is relative to the working
        # directory, and MLflow wants the artifact location as a file:// URI
        return Path(uri[len("sqlite:///"):]).absolute().parent / "mlartifacts"
    return None


class MlflowTracker(NullTracker):
    def __init__(self, *, uri: str, experiment: str, run_name: str, params: dict,
                 tags: dict[str, str], flush_every: int = 5000,
                 fallback_dir: Path | None = None, delivery_timeout_s: float = 30.0,
                 resume_run_id: str | None = None):
        super().__init__()

        check_reachable(uri)
        if uri.startswith(("http://", "https://")):
            # MLflow's HTTP client retries a failed request up to 7 times with exponential
            # backoff (minutes) inside every call; this tracker does its own retrying and must
            # not block training that long, so it asks for fewer, shorter tries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri, self.experiment_name = uri, experiment
        self.client = open_client(uri)
        # a local SQLite store takes metric values in plain SQL, ~10x cheaper than the ORM of
        # MLflow's log_batch (suite/sqlite_metrics.py); other stores get the client's
        from suite.sqlite_metrics import for_uri

        fast = for_uri(uri)
        self._log_metric_batch = fast.log_batch if fast else (
            lambda run_id, metrics: self.client.log_batch(run_id, metrics=metrics))
        self.flush_every = flush_every
        self.fallback_dir = Path(fallback_dir or Path.cwd())
        self.delivery_timeout_s = delivery_timeout_s
        self._buffer: list = []
        self._skip_through: dict[str, int] = {}
        self.experiment_id = get_or_create_experiment(self.client, experiment,
                                                      local_artifact_root(uri))
        if resume_run_id is not None:
            self._reopen(resume_run_id, tags)
        else:
            run = retry(lambda: self.client.create_run(self.experiment_id, run_name=run_name,
                                                       tags=tags), "create_run")
            self.run_id = run.info.run_id
            self._log_params(params)

    def _reopen(self, run_id: str, tags: dict[str, str]) -> None:
        """Continue a run restarted from its checkpoint, or from step 0 (suite.sweep_guard).
        What it logged after the checkpoint will be logged again: drop values at steps the
        store already holds, key by key (each key's stored history is a prefix of what the
        run logs: values are delivered in the order they are logged). The tags of its last
        attempt's ending (`failure`, `diverged`) go: this attempt will say how it ends."""
        self.run_id = run_id
        run = retry(lambda: self.client.get_run(run_id), "get_run")
        for key in STALE_TAGS:
            if key in run.data.tags:
                retry(lambda key=key: self.client.delete_tag(run_id, key), f"delete tag {key}")
        retry(lambda: self.client.update_run(run_id, status="RUNNING"), "update_run")
        self.set_tags(tags)  # this process owns it now (suite.sweep_guard)
        for key in run.data.metrics:
            history = retry(lambda key=key: self.client.get_metric_history(run_id, key),
                            "get_metric_history")
            self._skip_through[key] = max((m.step for m in history), default=-1)

    def _log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = items[i: i + MAX_PARAMS_PER_BATCH]
            retry(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk),
                  "log params")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        metrics = unlogged(self._skip_through, metrics, step)
        if not metrics:
            return
        super().log_metrics(metrics, step)
        now = int(time.time() * 1000)
        self.log_rows([(k, float(v), now, step) for k, v in metrics.items()])
        if len(self._buffer) >= self.flush_every:
            self.flush(patient=False)

    def log_series(self, key: str, values: dict[int, float]) -> None:
        for step, value in values.items():
            self.log_metrics({key: value}, step)

    def log_rows(self, rows) -> None:
        """Buffer (key, value, timestamp_ms, step) rows stamped elsewhere (the writer process
        receives them from the training process); no history, no flush."""
        from mlflow.entities import Metric

        self._buffer.extend(Metric(k, v, ts, step) for k, v, ts, step in rows)

    @property
    def pending(self) -> int:
        """Metric values buffered and not yet delivered."""
        return len(self._buffer)

    def flush(self, patient: bool = True) -> None:
        """Deliver the buffer. Mid-run (patient=False) one failed try keeps the buffer for the
        next flush, so a store outage never stops training."""
        while self._buffer:
            chunk = self._buffer[:MAX_METRICS_PER_BATCH]
            try:
                if patient:
                    retry(lambda chunk=chunk: self._log_metric_batch(self.run_id, chunk),
                          "log_batch")
                else:
                    with shielded():
                        self._log_metric_batch(self.run_id, chunk)
            except Exception as exc:
                if patient:
                    raise
                log.warning("metrics kept in memory: delivery failed (%s)", exc)
                return
            del self._buffer[: len(chunk)]

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        retry(lambda: self.client.log_batch(self.run_id, tags=items), "set tags")

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path=subdir),
              f"log artifact {Path(path).name}")

    def finish(self, status: str, reason: str | None = None) -> None:
        deadline = time.monotonic() + self.delivery_timeout_s
        delay, last_error = 0.5, None
        while True:
            try:
                self.flush(patient=False)
                if self._buffer:
                    raise RuntimeError("store refused the metrics")
                if reason:
                    self.set_tags({"failure": reason})
                with shielded():
                    self.client.set_terminated(self.run_id, status=status)
                return
            except Exception as exc:
                last_error = exc
                if time.monotonic() + delay > deadline:
                    break
                time.sleep(delay)
                delay = min(2 * delay, 5.0)
        path = self._write_fallback(status, reason)
        raise TrackingDeliveryError(
            f"could not deliver {len(self._buffer)} metric values of run {self.run_id} to "
            f"{self.uri} ({last_error}); nothing is lost: they are saved in {path}. Send them "
            f"when the store is back with: python -m suite.tracking replay {path}"
        )

    def _write_fallback(self, status: str, reason: str | None) -> Path:
        return write_fallback(self.fallback_dir, self.run_id, self.uri, status, reason,
                              [(m.key, m.value, m.timestamp, m.step) for m in self._buffer])


def unlogged(skip_through: dict[str, int], metrics: dict, step: int) -> dict:
    """The values a resumed run's store does not hold yet (see MlflowTracker._reopen)."""
    if not skip_through:
        return metrics
    return {k: v for k, v in metrics.items() if step > skip_through.get(k, -1)}


def write_fallback(directory: Path, run_id: str, uri: str, status: str, reason: str | None,
                   rows, *, tags: dict | None = None, artifacts: list | None = None) -> Path:
    """The fallback file `replay` reads: a JSON header (the run, its store, the status and
    reason to close it with; optionally tags and artifact files to log), then one JSON line
    [key, value, timestamp_ms, step] per metric value."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"unsent-metrics-{run_id}.jsonl"
    with path.open("w") as f:
        header = {"run_id": run_id, "uri": uri, "status": status, "reason": reason}
        if tags:
            header["tags"] = tags
        if artifacts:
            header["artifacts"] = artifacts
        f.write(json.dumps(header) + "\n")
        for row in rows:
            f.write(json.dumps(list(row)) + "\n")
    return path


def replay(path: Path, uri: str | None = None) -> int:
    """Send a fallback file's metrics (and tags and artifacts, when its header lists them) to
    the store and close its run; returns the number of metric values. Values the store already
    holds are not stored twice (MLflow skips exact duplicates)."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    lines = Path(path).read_text().splitlines()
    header = json.loads(lines[0])
    run_id = header["run_id"]
    client = MlflowClient(tracking_uri=uri or header["uri"])
    metrics = [Metric(k, v, ts, step) for k, v, ts, step in map(json.loads, lines[1:])]
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i: i + MAX_METRICS_PER_BATCH])
    tags = dict(header.get("tags") or {})
    if header.get("reason"):
        tags["failure"] = header["reason"]
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
    for file, subdir in header.get("artifacts") or []:
        if Path(file).is_file():
            client.log_artifact(run_id, file, artifact_path=subdir)
        else:
            log.warning("artifact %s is gone; not logged", file)
    client.set_terminated(run_id, status=header["status"])
    return len(metrics)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m suite.tracking")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="send a fallback file of unsent metrics")
    rp.add_argument("file", type=Path)
    rp.add_argument("--tracking-uri", default=None)
    lp = sub.add_parser("links", help="print each experiment's runs-table link in the MLflow UI")
    lp.add_argument("--tracking-uri", required=True)
    lp.add_argument("--ui", default=LOCAL_UI, help="where `mlflow ui` serves a local store")
    args = parser.parse_args(argv)
    if args.command == "links":
        print_links(args.tracking_uri, args.ui)
        return
    count = replay(args.file, args.tracking_uri)
    print(f"replayed {count} metric values from {args.file}")


if __name__ == "__main__":
    main()
