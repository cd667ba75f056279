"""The tracking writer process (tracking.writer=process, the default): the same runs in the
store as the synchronous tracker, and no run left RUNNING or value lost when either process
dies."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import suite.runner
import suite.tracking_writer as writer_module
from suite.runner import execute
from suite.tracking import MlflowTracker, TrackingDeliveryError
from suite.tracking_writer import ORPHANED, BackgroundTracker, open_tracker
from tests.conftest import ROOT, make_cfg

FAST = ("task.l2=0.01", "workers=2", "eval_every=10")

needs_fork = pytest.mark.skipif(not writer_module.fork_available(),
                                reason="the writer process needs fork (Linux)")


def client_for(directory: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlruns.db'}")


def only_run(client: MlflowClient, experiment: str = "logreg"):
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return run


def histories(client: MlflowClient, run) -> dict[str, list[tuple[int, float | None]]]:
    """Every metric's (step, value) pairs; timings only by step (they differ run to run)."""
    return {key: sorted((m.step, None if key.startswith("time/") else m.value)
                        for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


@pytest.fixture
def trackers(monkeypatch):
    """The trackers the runner opens, to find the writer's pid."""
    opened = []

    def recording(*args, **kwargs):
        tracker = open_tracker(*args, **kwargs)
        opened.append(tracker)
        return tracker

    monkeypatch.setattr(writer_module, "open_tracker", recording)
    return opened


def gone(pid: int) -> bool:
    """No such process, or a zombie (it holds nothing any more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] == "Z"
    except FileNotFoundError:
        return True


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@needs_fork
def test_process_and_inline_writers_store_the_same_run(tmp_path, trackers):
    """Metric histories (keys, steps, values), params, tags and artifacts are the same
    whichever process writes them; the writer has exited when the run returns."""
    stored = {}
    for writer in ("process", "inline"):
        cfg = make_cfg("tracking=mlflow", f"tracking.writer={writer}", "tracking.plot=true",
                       "steps=300", *FAST)
        result = execute(cfg, launch_dir=tmp_path / writer, output_dir=tmp_path / writer / "o")
        assert result.status == "FINISHED"
        client = client_for(tmp_path / writer)
        run = only_run(client)
        assert run.info.status == "FINISHED" and run.info.run_id == result.run_id
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "curves.csv", "convergence.png"} <= artifacts
        stored[writer] = (histories(client, run), run, result)
    (proc_hist, proc_run, proc_result), (inline_hist, inline_run, inline_result) = (
        stored["process"], stored["inline"])
    assert len(proc_hist["train/lr"]) == 300 and len(proc_hist["train/loss"]) == 31
    assert proc_hist == inline_hist
    untimed = lambda history: [(k, v, s) for k, v, s in history if not k.startswith("time/")]  # noqa: E731
    assert untimed(proc_result.history) == untimed(inline_result.history)
    differ = {"tracking.writer"}
    assert ({k: v for k, v in proc_run.data.params.items() if k not in differ}
            == {k: v for k, v in inline_run.data.params.items() if k not in differ})
    assert proc_run.data.tags["config_hash"] == inline_run.data.tags["config_hash"]
    (background, inline) = trackers
    assert isinstance(background, BackgroundTracker) and isinstance(inline, MlflowTracker)
    assert background.finish_wait_s is not None


@needs_fork
def test_one_writer_serves_the_runs_of_a_process(tmp_path, trackers):
    """The writer waits for the next run rather than exiting (a fork and its copy-on-write
    cost once per process, not once per run); one that died is replaced."""
    for i in range(3):
        cfg = make_cfg("tracking=mlflow", "steps=30", f"seed={i}", *FAST)
        assert execute(cfg, launch_dir=tmp_path).status == "FINISHED"
        if i == 1:
            os.kill(trackers[1].pid, signal.SIGKILL)
            wait_for(lambda: gone(trackers[1].pid), 10, "the writer survived SIGKILL")
    first, second, third = (t.pid for t in trackers)
    assert first == second != third
    assert not gone(third)
    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("logreg").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        assert len(client.get_metric_history(r.info.run_id, "train/lr")) == 30


@needs_fork
def test_a_kept_writer_works_in_each_run_s_directory(tmp_path, monkeypatch, trackers):
    """A relative store path means the working directory of the run, not of the run that
    started the writer. (Each run its own file: MLflow caches a store per URI, so one relative
    URI used from two directories in one process is not supported, inline or not.)"""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        cfg = make_cfg("tracking=mlflow", f"tracking.uri=sqlite:///{name}.db", "steps=20", *FAST)
        assert execute(cfg, launch_dir=tmp_path / name).status == "FINISHED"
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / name / name}.db")
        assert only_run(client).info.status == "FINISHED"
    assert trackers[0].pid == trackers[1].pid
    assert not (tmp_path / "a" / "b.db").exists()


def test_inline_is_used_where_fork_is_not_available(monkeypatch, tmp_path):
    monkeypatch.setattr(writer_module, "fork_available", lambda: False)
    tracker = open_tracker("process", uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
                           experiment="x", run_name="r", params={}, tags={})
    assert type(tracker) is MlflowTracker
    tracker.finish("FINISHED")


@needs_fork
def test_keyboard_interrupt_ends_the_run_killed(tmp_path, monkeypatch):
    """Ctrl-C in the training loop: the run is closed KILLED, with what it logged so far."""
    calls = []

    def interrupt(metrics, *args):
        calls.append(1)
        if len(calls) == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(suite.runner, "_check_divergence", interrupt)
    cfg = make_cfg("tracking=mlflow", "steps=100000", *FAST)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, launch_dir=tmp_path, output_dir=tmp_path / "out")
    client = client_for(tmp_path)
    run = only_run(client)
    assert run.info.status == "KILLED"
    assert "interrupted" in run.data.tags["failure"]
    lr = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/lr"))
    assert lr == list(range(200))  # 20 evaluations of 10 steps each, every value delivered


# Steps of ~1 ms: a fresh process's writer starts a few seconds late (it imports MLflow and
# creates the store while training goes on), and the default job's ~9,000 values/s would give
# it a backlog of some 40,000 values to store before it could close the run.
SLOW = ("task.dataset=synthetic", "task.n_samples=10000", "task.dim=200", "batch_size=full")


def start_cli(directory: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "suite", "steps=100000000", *FAST, *SLOW,
                             "progress=false", *args], cwd=directory, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(directory / "stderr", "w"),
                            **kwargs)


def wait_until_logging(proc: subprocess.Popen, directory: Path) -> None:
    """Until the writer has delivered some train/loss values of the running run."""
    def logged():
        assert proc.poll() is None, (directory / "stderr").read_text()[-3000:]
        try:
            with sqlite3.connect(directory / "mlruns.db") as con:
                return con.execute("select count(*) from metrics where key='train/loss'"
                                   ).fetchone()[0] > 2
        except sqlite3.Error:  # not created yet
            return False

    wait_for(logged, 120, "the run never logged its first metrics")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(") ", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@needs_fork
def test_ctrl_c_to_the_process_group_ends_the_run_killed(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group, the writer included: the
    writer ignores it, and the training process closes the run KILLED through it."""
    proc = start_cli(tmp_path, start_new_session=True)
    try:
        wait_until_logging(proc, tmp_path)
        (writer,) = children_of(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        wait_for(lambda: gone(writer), 30, "the writer did not exit")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    run = only_run(client_for(tmp_path))
    assert run.info.status == "KILLED"
    assert "interrupted" in run.data.tags["failure"]


@needs_fork
def test_sigkill_of_the_training_process_leaves_the_run_failed(tmp_path):
    """The training process dies without a word: its writer delivers what it received and
    closes the run FAILED within seconds; no run is left RUNNING."""
    proc = start_cli(tmp_path)
    try:
        wait_until_logging(proc, tmp_path)
        (writer,) = children_of(proc.pid)
        proc.kill()  # SIGKILL, the training process only
        proc.wait(timeout=30)
        killed = time.monotonic()
        client = client_for(tmp_path)
        # under a second here; a loaded machine's writer may have a backlog to store first,
        # and it retries a locked store for up to tracking.delivery_timeout_s (30 s)
        wait_for(lambda: only_run(client).info.status != "RUNNING", 60,
                 "the run is still RUNNING")
        print(f"closed {time.monotonic() - killed:.1f} s after the kill")
        wait_for(lambda: gone(writer), 30, "the writer did not exit")
    finally:
        if proc.poll() is None:
            proc.kill()
    run = only_run(client)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == ORPHANED
    loss = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    lr = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/lr"))
    assert len(loss) > 2 and loss == list(range(0, 10 * len(loss), 10))
    assert lr == list(range(len(lr)))  # what was delivered has no gap


@needs_fork
def test_a_dead_writer_loses_nothing(tmp_path, monkeypatch, trackers):
    """Kill the writer mid-run: training goes on, the run ends with TrackingDeliveryError
    naming a fallback file, and replaying that file completes the run: the same histories as
    a run that was never disturbed, its artifacts, FINISHED."""
    steps = 1000
    evaluations = []

    def kill_the_writer(metrics, initial, threshold, step):
        evaluations.append(step)
        if step == 500:
            assert trackers[0].run_id  # the run exists (a fresh store takes a while)
            os.kill(trackers[0].pid, signal.SIGKILL)
            wait_for(lambda: gone(trackers[0].pid), 10, "the writer survived SIGKILL")

    monkeypatch.setattr(suite.runner, "_check_divergence", kill_the_writer)
    args = ("tracking=mlflow", "tracking.plot=true", f"steps={steps}", *FAST)
    with pytest.raises(TrackingDeliveryError, match="nothing is lost") as info:
        execute(make_cfg(*args), launch_dir=tmp_path / "killed", output_dir=tmp_path / "out")
    assert evaluations[-1] == steps  # training went on to the end
    client = client_for(tmp_path / "killed")
    run = only_run(client)
    assert run.info.status == "RUNNING"  # until the fallback file is replayed
    fallback = tmp_path / "out" / f"unsent-metrics-{run.info.run_id}.jsonl"
    assert str(fallback) in str(info.value)
    header = json.loads(fallback.read_text().splitlines()[0])
    assert header["status"] == "FINISHED" and header["run_id"] == run.info.run_id

    replayed = subprocess.run([sys.executable, "-m", "suite.tracking", "replay", str(fallback)],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert replayed.returncode == 0, replayed.stderr
    run = only_run(client)
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "curves.csv", "convergence.png"} <= artifacts

    monkeypatch.undo()
    execute(make_cfg(*args), launch_dir=tmp_path / "reference")
    reference = client_for(tmp_path / "reference")
    assert histories(client, run) == histories(reference, only_run(reference))


@needs_fork
def test_a_crash_with_a_dead_writer_raises_the_crash_and_logs_the_fallback(
        tmp_path, monkeypatch, caplog, trackers):
    """What stopped the run is what the caller sees: a crash after the writer died raises the
    crash, not the delivery error, which the log states with the file holding the values."""
    def kill_the_writer(metrics, initial, threshold, step):
        if step == 500:
            assert trackers[0].run_id
            os.kill(trackers[0].pid, signal.SIGKILL)
            wait_for(lambda: gone(trackers[0].pid), 10, "the writer survived SIGKILL")

    monkeypatch.setattr(suite.runner, "_check_divergence", kill_the_writer)
    monkeypatch.setenv("COMMSGD_TEST_FAIL_AT_STEP", "700")
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(make_cfg("tracking=mlflow", "steps=1000", *FAST), launch_dir=tmp_path,
                output_dir=tmp_path / "out")
    (fallback,) = (tmp_path / "out").glob("unsent-metrics-*.jsonl")
    assert str(fallback) in caplog.text and "nothing is lost" in caplog.text
    header = json.loads(fallback.read_text().splitlines()[0])
    assert header["status"] == "FAILED" and "simulated crash" in header["reason"]


@needs_fork
def test_a_store_that_cannot_be_written_stops_the_run_early(tmp_path):
    """The writer cannot create the run: its error is raised in the training process at its
    next log call, not after training; the same error as the synchronous tracker's."""
    (tmp_path / "file").write_text("not a directory")
    uri = f"sqlite:///{tmp_path / 'file' / 'mlruns.db'}"
    errors = {}
    for writer in ("inline", "process"):
        cfg = make_cfg("tracking=mlflow", f"tracking.uri={uri}", f"tracking.writer={writer}",
                       "steps=1000000", *FAST)
        start = time.monotonic()
        with pytest.raises(Exception) as info:  # noqa: B017 - compared between the writers
            execute(cfg, launch_dir=tmp_path, output_dir=tmp_path / "out")
        assert time.monotonic() - start < 60  # a million steps would take many minutes
        errors[writer] = info.value
    assert type(errors["process"]) is type(errors["inline"])
    assert str(errors["process"]) == str(errors["inline"])


@needs_fork
def test_a_writer_that_hangs_is_stopped_and_its_stacks_say_where(tmp_path, monkeypatch, caplog):
    """A writer that stops answering (a lock it inherited held through fork, a store that
    never returns) is killed after the wait, the training process gets TrackingDeliveryError,
    and the log shows the writer's thread stacks: the one thing that explains such a hang."""
    import threading

    def hang_in_the_store(self, patient=True):
        threading.Event().wait()  # never set: blocked like a thread on an orphaned lock

    writer_module._take_writer().close()  # a writer forked below, with the patched flush
    monkeypatch.setattr(MlflowTracker, "flush", hang_in_the_store)
    tracker = BackgroundTracker(uri=f"sqlite:///{tmp_path / 'mlruns.db'}", experiment="hang",
                                run_name="hang", params={}, tags={}, delivery_timeout_s=1.0,
                                fallback_dir=tmp_path)
    assert tracker.run_id  # the run is created (that does not flush)
    monkeypatch.setattr(writer_module, "READY_TIMEOUT_S", 0.5)
    tracker.log_metrics({"train/loss": 1.0}, step=0)
    with pytest.raises(TrackingDeliveryError, match="did not answer"):
        tracker.flush()
    assert "hang_in_the_store" in caplog.text and "its threads were" in caplog.text
    wait_for(lambda: gone(tracker.pid), 10, "the hung writer was not killed")
    assert not writer_module._stacks_path(tracker.pid).exists()


@needs_fork
def test_a_writer_forked_while_mlflow_telemetry_holds_its_lock_still_delivers(
        tmp_path, monkeypatch):
    """fork copies a lock held by another thread, and nobody in the child will release it.
    MLflow's usage telemetry (on unless the user opts out) takes its locks in consumer threads
    and at every create_run and log_batch: forked at the wrong moment, a writer would wait on
    them forever. Here a thread holds them across the fork, every time."""
    import threading

    import mlflow.telemetry.client as telemetry
    import mlflow.telemetry.utils as telemetry_utils

    monkeypatch.setattr(telemetry_utils, "_IS_IN_CI_ENV_OR_TESTING", False)  # as for a user
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    client = telemetry.TelemetryClient.__new__(telemetry.TelemetryClient)
    client.__dict__.update(config=None, _is_active=True, _is_stopped=False,
                           _pending_records=[], _batch_size=10**9, _lock=threading.RLock(),
                           _batch_lock=threading.Lock())
    monkeypatch.setattr(telemetry, "_MLFLOW_TELEMETRY_CLIENT", client)
    assert not telemetry_utils.is_telemetry_disabled()

    held, release = threading.Event(), threading.Event()

    def hold_the_locks():
        with client._batch_lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold_the_locks, daemon=True)
    holder.start()
    held.wait()
    writer_module._take_writer().close()  # the writer below is forked now, locks held
    try:
        tracker = BackgroundTracker(uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
                                    experiment="telemetry", run_name="telemetry", params={},
                                    tags={}, delivery_timeout_s=60.0, fallback_dir=tmp_path)
        for step in range(3):
            tracker.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        tracker.finish("FINISHED")
    finally:
        release.set()
        holder.join()
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}").get_run(
        tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["train/loss"] == pytest.approx(1.0 / 3)


@needs_fork
@pytest.mark.parametrize("request_kind", ["flush", "finish"])
def test_a_reply_that_arrives_with_its_request_is_not_lost(tmp_path, monkeypatch, request_kind):
    """The writer may answer a flush or a close before the call that sent it starts waiting:
    `_send` takes the replies already in the pipe. That reply must still end the wait (it was
    dropped once: a checkpoint's flush then hung for delivery_timeout_s + READY_TIMEOUT_S and
    the writer was declared lost). Made certain here: after each request the pump waits until
    the writer's whole answer is in the pipe."""
    import select

    tracker = BackgroundTracker(uri=f"sqlite:///{tmp_path / 'mlruns.db'}", experiment="race",
                                run_name="race", params={}, tags={}, delivery_timeout_s=1.0,
                                fallback_dir=tmp_path)
    assert tracker.run_id
    tracker.log_metrics({"train/loss": 1.0}, step=0)
    pump, frame = BackgroundTracker._pump, writer_module._frame
    framed: list[str] = []  # the kind of the last message put on the pipe

    def frame_and_note(msg):
        framed[:] = [msg[0]]
        return frame(msg)

    def pump_then_wait_for_the_answer(self):
        pump(self)
        if not self._out and framed == [request_kind]:  # the request itself is sent
            framed.clear()
            poller = select.poll()
            poller.register(self._r, select.POLLIN)
            assert poller.poll(10_000), "the writer did not answer in 10 s"
            time.sleep(0.5)  # its whole answer (an ack, then the reply) is in the pipe

    monkeypatch.setattr(writer_module, "_frame", frame_and_note)
    monkeypatch.setattr(BackgroundTracker, "_pump", pump_then_wait_for_the_answer)
    monkeypatch.setattr(writer_module, "READY_TIMEOUT_S", 5.0)
    started = time.monotonic()
    if request_kind == "flush":
        tracker.flush()
        tracker.finish("FINISHED")
    else:
        tracker.finish("FINISHED")
    assert time.monotonic() - started < 5.0  # answered, not timed out
    assert not gone(tracker.pid)  # not stopped as a writer that does not answer
    assert not list(tmp_path.glob("unsent-metrics-*"))  # nothing left undelivered
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}").get_run(
        tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["train/loss"] == 1.0


@needs_fork
@pytest.mark.parametrize("entry", ["runner", "job"])
def test_pipelined_closes_are_confirmed_before_the_next_run_and_when_the_sweep_ends(
        tmp_path, trackers, entry):
    """In a sweep's block (`closes_pipelined`), `finish` returns once the close is sent; the
    next run's tracker confirms it before it takes the writer, and leaving the block confirms
    the last: every run FINISHED with all its values, one writer for all of them, also when
    each job starts its writer ahead of the run as the command line's jobs do (entry=job:
    the writer still closing the last run is the one the next run gets, none is forked)."""
    from suite.launch import execute_job

    run = {"runner": lambda cfg: execute(cfg, launch_dir=tmp_path),
           "job": lambda cfg: execute_job(cfg, launch_dir=tmp_path,
                                          output_dir=tmp_path / "jobs")}[entry]
    with writer_module.closes_pipelined():
        for i in range(3):
            cfg = make_cfg("tracking=mlflow", "steps=30", f"seed={i}", *FAST)
            assert run(cfg).status == "FINISHED"
            assert [t for t, _, _ in writer_module._closing] == [trackers[i]]  # sent only
            assert trackers[i].finish_wait_s is None
            if i:
                assert trackers[i - 1].finish_wait_s is not None  # confirmed by this run
    assert writer_module._closing == [] and trackers[2].finish_wait_s is not None
    assert len({t.pid for t in trackers}) == 1
    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("logreg").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        assert len(client.get_metric_history(r.info.run_id, "train/lr")) == 30
        assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"config.yaml",
                                                                            "curves.csv"}


@needs_fork
def test_a_writer_dead_before_confirming_a_pipelined_close_loses_nothing(
        tmp_path, monkeypatch, trackers):
    """The writer is stopped before it can read the close and killed after the run returned:
    the sweep's end raises TrackingDeliveryError naming the fallback file, which holds the
    run's FINISHED status, as a close waited for in `finish` does."""
    steps = 40

    def stop_the_writer(metrics, initial, threshold, step):
        if step == steps:
            assert trackers[0].run_id
            os.kill(trackers[0].pid, signal.SIGSTOP)

    monkeypatch.setattr(suite.runner, "_check_divergence", stop_the_writer)
    with pytest.raises(TrackingDeliveryError, match="nothing is lost") as info:
        with writer_module.closes_pipelined():
            result = execute(make_cfg("tracking=mlflow", f"steps={steps}", *FAST),
                             launch_dir=tmp_path, output_dir=tmp_path / "out")
            assert result.status == "FINISHED" and len(writer_module._closing) == 1
            os.kill(trackers[0].pid, signal.SIGKILL)
            wait_for(lambda: gone(trackers[0].pid), 10, "the writer survived SIGKILL")
    assert writer_module._closing == []
    fallback = tmp_path / "out" / f"unsent-metrics-{result.run_id}.jsonl"
    assert str(fallback) in str(info.value)
    header = json.loads(fallback.read_text().splitlines()[0])
    assert header["status"] == "FINISHED" and header["run_id"] == result.run_id


# -- a writer started ahead of the run (suite.tracking_writer.prestart) --------------------------
AHEAD_OF_TORCH = r"""
import json, sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from suite.launch import execute_job
import suite.tracking_writer as w

out = Path(sys.argv[1])
with initialize_config_dir(config_dir=sys.argv[2], version_base="1.3"):
    cfg = compose(config_name="config", overrides=[
        "progress=false", "steps=40", "task.l2=0.01", "workers=2", "eval_every=10",
        f"tracking.uri=sqlite:///{out / 'mlruns.db'}"])
torch_before = "torch" in sys.modules
result = execute_job(cfg, launch_dir=out, output_dir=out / "job")
maps = Path(f"/proc/{w._idle.pid}/maps").read_text()  # the writer, waiting for the next run
print(json.dumps({"status": result.status, "run_id": result.run_id,
                  "torch_before": torch_before, "torch_here": "torch" in sys.modules,
                  "writer_maps_torch": "libtorch" in maps, "writer": w._idle.pid}))
"""


@needs_fork
def test_a_job_starts_its_writer_before_torch_and_the_writer_never_imports_it(tmp_path):
    """From a fresh interpreter (a run started from the shell) the writer is forked before the
    runner imports torch, so that its MLflow import overlaps with torch's; nothing the run sends
    it makes it import torch after all (its address space maps no libtorch), and the run is
    stored as any other."""
    proc = subprocess.run([sys.executable, "-c", AHEAD_OF_TORCH, str(tmp_path),
                           str(ROOT / "conf")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["status"] == "FINISHED"
    assert not seen["torch_before"] and seen["torch_here"]  # the runner did import torch
    assert not seen["writer_maps_torch"]
    run = client_for(tmp_path).get_run(seen["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["torch.version"] and run.data.params["steps"] == "40"
    assert len(client_for(tmp_path).get_metric_history(seen["run_id"], "train/lr")) == 40


@needs_fork
def test_a_writer_started_ahead_serves_the_run_as_a_writer_started_by_it(tmp_path, trackers):
    """prestart forks the writer the run then takes (one writer, not two), and the run it
    stores holds what the run would store with a writer forked at its opening."""
    results, pids = {}, {}
    for ahead in (False, True):
        writer_module._take_writer().close()  # no idle writer left over from earlier runs
        uri = f"sqlite:///{tmp_path / f'ahead-{ahead}.db'}"
        if ahead:
            writer_module.prestart(uri)
            pids["started"] = writer_module._idle.pid
        cfg = make_cfg("tracking=mlflow", f"tracking.uri={uri}", "steps=30", *FAST)
        results[ahead] = execute(cfg, launch_dir=tmp_path, output_dir=tmp_path / f"o{ahead}")
        assert results[ahead].status == "FINISHED"
    assert trackers[-1].pid == pids["started"]
    stored = {}
    for ahead in (False, True):
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / f'ahead-{ahead}.db'}")
        run = only_run(client)
        params = {k: v for k, v in run.data.params.items() if k != "tracking.uri"}
        stored[ahead] = (histories(client, run), params, run.info.status)
    assert stored[True] == stored[False]


@needs_fork
def test_a_store_that_fails_ahead_of_the_run_fails_the_run_with_the_same_error(tmp_path):
    """What the writer could not open ahead of the run it tries again when the run opens, and
    the run gets the error a writer forked at its opening gives."""
    (tmp_path / "file").write_text("not a directory")
    uri = f"sqlite:///{tmp_path / 'file' / 'mlruns.db'}"
    errors = {}
    for ahead in (False, True):
        writer_module._take_writer().close()
        if ahead:
            writer_module.prestart(uri)
        cfg = make_cfg("tracking=mlflow", f"tracking.uri={uri}", "steps=1000000", *FAST)
        with pytest.raises(Exception) as info:  # noqa: B017 - compared between the two
            execute(cfg, launch_dir=tmp_path, output_dir=tmp_path / "out")
        errors[ahead] = info.value
    assert type(errors[True]) is type(errors[False])
    assert str(errors[True]) == str(errors[False])


class _ModulesSeen(pickle.Unpickler):
    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.modules: set[str] = set()

    def find_class(self, module, name):
        self.modules.add(module.split(".")[0])
        return super().find_class(module, name)


@needs_fork
def test_what_a_run_sends_its_writer_needs_no_library_to_read(tmp_path, monkeypatch):
    """Every message to the writer unpickles with the standard library alone: a NumPy or torch
    scalar, or torch.__version__ (a str subclass), among the params, tags or values would make
    a writer started ahead of torch import it (seconds) before it could open the run."""
    sent = []
    frame = writer_module._frame
    monkeypatch.setattr(writer_module, "_frame", lambda msg: sent.append(frame(msg)) or sent[-1])
    cfg = make_cfg("tracking=mlflow", "steps=30", "algorithm=ef_sgd", "compressor=topk", *FAST)
    assert execute(cfg, launch_dir=tmp_path).status == "FINISHED"
    kinds, modules = set(), set()
    for framed in sent:
        reader = _ModulesSeen(framed[writer_module._HEADER.size:])
        kinds.add(reader.load()[0])
        modules |= reader.modules
    assert {"open", "metrics", "artifact", "finish"} <= kinds
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)


@needs_fork
def test_a_writer_started_ahead_of_a_run_that_never_opens_exits_with_its_process(
        tmp_path, monkeypatch):
    """A job refused after its writer was started (a bad value found while the run is set
    up) leaves a writer that never served a run: when the training process's ends of the
    pipes close, it exits at once, even in the middle of its preload (which here would take
    a minute), rather than keeping the process's stdout open for that long."""
    writer_module._take_writer().close()
    monkeypatch.setattr(writer_module, "_preload", lambda uri: time.sleep(60))
    writer_module.prestart(f"sqlite:///{tmp_path / 'mlruns.db'}")
    pid = writer_module._idle.pid
    time.sleep(0.5)  # the writer is in its preload now
    writer_module._take_writer().close()  # what the training process's exit does to the pipes
    wait_for(lambda: gone(pid), 10, "the writer outlived its training process's pipes")
