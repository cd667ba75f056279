"""A real MLflow tracking server on a loopback port: parallel sweeps, failing fast when it is
unreachable, and no metric lost when it goes away mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import suite.runner
from suite.runner import execute
from suite.tracking import TrackingDeliveryError, TrackingUnavailable
from tests.conftest import make_cfg, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path):
    """`mlflow server` on 127.0.0.1 with an SQLite backend store and an artifact root."""
    port = free_port()
    db = root / "server.db"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"),
        start_new_session=True)  # its own process group, so stopping it stops its workers
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")

    def stop():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def state() -> str:  # for a failing test's message
        log = (root / "server.log").read_text()[-1500:]
        return f"server exit status {proc.poll()}; its log ends: {log}"

    try:
        yield {"uri": uri, "db": db, "stop": stop, "state": state}
    finally:
        stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


@pytest.fixture
def own_server(tmp_path_factory):
    """A server for one test (one that stops it), started fresh: what earlier tests did to
    the module's server is not this test's subject."""
    with mlflow_server(tmp_path_factory.mktemp("own-mlflow-server")) as running:
        yield running


def test_parallel_sweep_against_the_server(server, tmp_path):
    run_cli("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1",
            "steps=30", "task.l2=0.01", "workers=2", "progress=false",
            f"tracking.uri={server['uri']}", "tracking.experiment=served", cwd=tmp_path,
            timeout=600)
    client = MlflowClient(tracking_uri=server["uri"])
    exp = client.get_experiment_by_name("served")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        assert len(client.get_metric_history(r.info.run_id, "train/lr")) == 30
        assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"config.yaml",
                                                                          "curves.csv"}
    assert not (tmp_path / "mlruns.db").exists()  # nothing went to a local store


def test_unreachable_server_fails_fast_with_a_clear_message(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.time()
    with pytest.raises(TrackingUnavailable, match="unreachable.*make mlflow-server"):
        execute(make_cfg("tracking=mlflow", f"tracking.uri={uri}", "steps=5"),
                launch_dir=tmp_path)
    assert time.time() - start < 20


def test_server_lost_mid_run_keeps_every_metric(own_server, tmp_path, monkeypatch):
    """Stop the server while a run logs to it: the run finishes its steps, keeps what it cannot
    deliver, saves it to a fallback file, and replaying that file into the store gives
    complete histories. The run waits halfway until the server is stopped: a short run on a
    fast machine (or a slow poll on a busy one) would otherwise be over, every value
    delivered, before the server goes."""
    steps = 1000
    server_stopped = threading.Event()
    real_step = suite.runner._step

    def step(algo, state, t, lr):
        if t == steps // 2:
            server_stopped.wait(timeout=150)
        return real_step(algo, state, t, lr)

    monkeypatch.setattr(suite.runner, "_step", step)
    cfg = make_cfg("tracking=mlflow", f"tracking.uri={own_server['uri']}",
                   "tracking.experiment=dropped", "tracking.flush_every=100",
                   "tracking.delivery_timeout_s=2", f"steps={steps}", "eval_every=10",
                   "batch_size=2", "workers=2", "task.l2=0.01")
    outcome = {}

    def job():
        try:
            outcome["result"] = execute(cfg, launch_dir=tmp_path, output_dir=tmp_path / "out")
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    worker = threading.Thread(target=job)
    worker.start()
    client = MlflowClient(tracking_uri=own_server["uri"])
    deadline = time.time() + 120
    run_id = None
    while time.time() < deadline and run_id is None:
        exp = client.get_experiment_by_name("dropped")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, "train/lr"):
            run_id = runs[0].info.run_id
        time.sleep(0.2)
    if run_id is None:
        server_stopped.set()  # let the run end before the test fails
    assert run_id is not None, ("the run never delivered its first batch", outcome,
                                own_server["state"]())
    own_server["stop"]()
    server_stopped.set()
    worker.join(timeout=300)
    assert isinstance(outcome.get("error"), TrackingDeliveryError), outcome
    message = str(outcome["error"])
    assert "nothing is lost" in message
    fallback = tmp_path / "out" / f"unsent-metrics-{run_id}.jsonl"
    assert fallback.exists() and str(fallback) in message
    lines = fallback.read_text().splitlines()
    assert json.loads(lines[0])["status"] == "FINISHED" and len(lines) > 1

    # the server's store is a plain SQLite file: replay the fallback straight into it
    replayed = subprocess.run(
        [sys.executable, "-m", "suite.tracking", "replay", str(fallback), "--tracking-uri",
         f"sqlite:///{own_server['db']}"], capture_output=True, text=True, timeout=120)
    assert replayed.returncode == 0, replayed.stderr
    store = MlflowClient(tracking_uri=f"sqlite:///{own_server['db']}")
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    lr_steps = sorted(m.step for m in store.get_metric_history(run_id, "train/lr"))
    assert lr_steps == list(range(steps))
    loss_steps = sorted(m.step for m in store.get_metric_history(run_id, "train/loss"))
    assert loss_steps == list(range(0, steps + 1, 10))


def test_a_slow_server_is_asked_again_and_a_silent_one_is_unreachable(caplog):
    """check_reachable: a server that does not answer its first /health within the timeout
    (busy) is asked again and passes when it answers; one that never answers is unreachable
    after `attempts` tries, the message saying it timed out."""
    from suite.tracking import check_reachable

    def serve(listener, silent_first: int, stop: threading.Event):
        held = []
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if len(held) < silent_first:
                held.append(conn)  # accepted, never answered
                continue
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
            conn.close()

    for silent_first, reachable in ((1, True), (10, False)):
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(listener, silent_first, stop), daemon=True)
        thread.start()
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        caplog.clear()
        try:
            if reachable:
                check_reachable(uri, timeout_s=0.5, attempts=3)
            else:
                with pytest.raises(TrackingUnavailable, match="unreachable.*timed out"):
                    check_reachable(uri, timeout_s=0.5, attempts=3)
        finally:
            stop.set()
            listener.close()
        asked_again = [r for r in caplog.records if "asking again" in r.getMessage()]
        assert len(asked_again) == (1 if reachable else 2)
