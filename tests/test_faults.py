"""Faults a scheduler, a disk and colleagues inflict, each met as the README promises.

1-5 with real processes and signals: interrupted parallel sweeps (Ctrl-C to the process group,
SIGTERM or SIGKILL of the launcher), a job SIGKILLed with its tracking writer, resume after
each (one run per config, its history complete), a checkpoint from another store, runs started
at once into a new SQLite store or into a locked one, SIGTERM to a single run, a full run
directory, a store whose creation was cut short. 6-9 with crafted files: a checkpoint that would
run code, experiment names that are paths, `commsgd-report --out` into a file, a foreign or an
old report's directory, LIBSVM files corrupt or short.

Every process a test starts runs in a session of its own; the test waits (bounded) for the
session to empty and asserts that no process of it is left (reparented writers and workers
included: they keep the session id), and a finalizer SIGKILLs whatever a failed test left.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from suite.procinfo import stat_fields
from tests.conftest import ROOT, make_cfg, run_cli

# small and fast: 20 synthetic features, no progress bar
BASE = ("task.dataset=synthetic", "task.dim=20", "progress=false", "workers=2")
WAIT_S = 240  # the longest any wait here may take on a busy machine


# -- processes ---------------------------------------------------------------------------------
def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of a session, wherever they were reparented."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields and int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry))
    return found


def opened_by(sid: int, path: Path) -> bool:
    """Whether a process of the session has `path` open."""
    for pid in session_members(sid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    return True
            except OSError:
                pass
    return False


def wait_until(condition, timeout_s: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Procs:
    """Commands started in sessions of their own, ended and checked for orphans."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str, cwd: Path, env: dict | None = None, limit_file_kb=None,
              name: str = "cmd") -> subprocess.Popen:
        def child():
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's `&` would ignore it
            if limit_file_kb is not None:
                size = limit_file_kb * 1024
                resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

        environment = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                           **(env or {}))
        out = open(cwd / f"{name}.out", "w")
        err = open(cwd / f"{name}.err", "w")
        proc = subprocess.Popen([sys.executable, "-m", "suite", *args], cwd=cwd,
                                env=environment, stdout=out, stderr=err,
                                start_new_session=True, preexec_fn=child)
        out.close()
        err.close()
        proc.out, proc.err = cwd / f"{name}.out", cwd / f"{name}.err"
        self.started.append(proc)
        return proc

    def wait_all_gone(self, proc, timeout_s: float = WAIT_S) -> None:
        """The command and every process of its session have exited."""
        wait_until(lambda: proc.poll() is not None and not session_members(proc.pid),
                   timeout_s, f"every process of session {proc.pid} to exit")
        assert session_members(proc.pid) == []

    def close(self) -> None:
        for proc in self.started:
            for pid in session_members(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.close()


# -- the store, read with sqlite3 (no MLflow client in the way of what is on disk) ------------
def query(db: Path, sql: str, *args):
    try:
        with sqlite3.connect(db, timeout=30) as con:
            return con.execute(sql, args).fetchall()
    except sqlite3.Error:
        return []  # not created yet


def runs_by_status(db: Path) -> dict[str, int]:
    return dict(query(db, "select status, count(*) from runs group by status"))


def tags(db: Path, run_id: str) -> dict[str, str]:
    return dict(query(db, "select key, value from tags where run_uuid = ?", run_id))


def steps(db: Path, run_id: str, key: str) -> list[int]:
    return sorted(s for (s,) in query(db, "select step from metrics where run_uuid = ? and "
                                          "key = ?", run_id, key))


def artifacts(db: Path, run_id: str) -> set[str]:
    ((uri,),) = query(db, "select artifact_uri from runs where run_uuid = ?", run_id)
    root = Path(uri.removeprefix("file://"))
    return {p.name for p in root.glob("*")} if root.is_dir() else set()


def training(db: Path, n: int = 1, before_step: int | None = None) -> list[str]:
    """Ids of RUNNING runs that have logged a train/loss after step 0 (in the loop), and none
    at or past before_step if given, once there are n of them."""
    found = [r for r, last in query(
        db, "select r.run_uuid, max(m.step) from runs r join metrics m on m.run_uuid = "
            "r.run_uuid where r.status = 'RUNNING' and m.key = 'train/loss' "
            "group by r.run_uuid having max(m.step) > 0")
        if before_step is None or last < before_step]
    return found if len(found) >= n else []


def run_ids(db: Path) -> dict[str, tuple[str, str]]:
    """run id -> (config_hash, status)."""
    rows = query(db, "select r.run_uuid, t.value, r.status from runs r join tags t on "
                     "t.run_uuid = r.run_uuid where t.key = 'config_hash'")
    return {r: (h, s) for r, h, s in rows}


def assert_complete(db: Path, run_id: str, n_steps: int, every: int) -> None:
    """Every value the run should hold, each once: train/loss at 0, every, ..., n_steps;
    train/lr at 0..n_steps-1; the task constants (params task/<name>, logged once)."""
    assert steps(db, run_id, "train/loss") == list(range(0, n_steps + 1, every))
    assert steps(db, run_id, "train/lr") == list(range(n_steps))
    assert len(query(db, "select value from params where run_uuid = ? and key = 'task/L'",
                     run_id)) == 1


# == 1. interrupted parallel sweeps ==
SWEEP = ("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1,2,3", *BASE)


@pytest.mark.slow
@pytest.mark.parametrize("how", [
    # Ctrl-C reaches every process of the group while the launcher passes SIGTERM on to its
    # workers: two signals per worker (test_a_second_signal_... reproduces that in one process)
    "ctrl_c_to_the_group",
    "sigterm_to_the_launcher"])
def test_an_interrupted_parallel_sweep_closes_every_run_killed_and_leaves_no_process(
        tmp_path, procs, how):
    db = tmp_path / "mlruns.db"
    sweep = procs.start(*SWEEP, "steps=100000000", "eval_every=1000", "tracking.plot=true",
                        f"tracking.uri=sqlite:///{db}", cwd=tmp_path)
    wait_until(lambda: training(db, 2), WAIT_S, "two jobs in their training loops")
    if how == "ctrl_c_to_the_group":
        os.killpg(sweep.pid, signal.SIGINT)
    else:
        os.kill(sweep.pid, signal.SIGTERM)
    procs.wait_all_gone(sweep)
    assert sweep.returncode != 0
    assert runs_by_status(db) == {"KILLED": 2}  # nothing RUNNING, no further job started
    for run_id in run_ids(db):
        assert "interrupted" in tags(db, run_id)["failure"] or \
            "SIGTERM" in tags(db, run_id)["failure"]
        assert {"config.yaml", "curves.csv", "convergence.png"} <= artifacts(db, run_id)


@pytest.mark.slow
def test_sigkill_of_the_launcher_ends_its_workers_and_resume_runs_each_config_once(
        tmp_path, procs):
    db = tmp_path / "mlruns.db"
    # The two jobs seen training must still be training when the kill arrives, however busy
    # the machine. What the store shows lags the loop by the writer's backlog, unbounded on a
    # loaded machine; a checkpoint every 2000 steps bounds it: each waits until the store
    # holds every value logged before it. A job whose store shows no loss past step 10000 is
    # then at most at step 14000 of 20000 (seconds of work left); and the writer delivers
    # every 100 values, not only at the close.
    job = ("steps=20000", "eval_every=500", "checkpoint_every=2000", "tracking.plot=true",
           "tracking.flush_every=100", f"tracking.uri=sqlite:///{db}")
    sweep = procs.start(*SWEEP, *job, cwd=tmp_path)
    wait_until(lambda: training(db, 2, before_step=10000), WAIT_S,
               "two jobs in the first half of their training loops")
    os.kill(sweep.pid, signal.SIGKILL)  # the launcher gets no chance to stop anything
    procs.wait_all_gone(sweep)  # its workers and their writers followed it
    before = run_ids(db)
    assert "RUNNING" not in runs_by_status(db)
    assert "KILLED" in runs_by_status(db)
    for run_id, (_, status) in before.items():
        if status == "KILLED":  # closed by its worker, with its files, once the launcher died
            assert "SIGTERM" in tags(db, run_id)["failure"]
            assert {"config.yaml", "curves.csv", "convergence.png"} <= artifacts(db, run_id)

    resumed = procs.start(*SWEEP, *job, "resume=true", cwd=tmp_path, name="resume")
    procs.wait_all_gone(resumed)
    assert resumed.returncode == 0, resumed.err.read_text()[-3000:]
    after = run_ids(db)
    assert len(after) == 4  # one run per config: the killed ones continued, not duplicated
    assert len({h for h, _ in after.values()}) == 4
    assert {s for _, s in after.values()} == {"FINISHED"}
    assert set(before) <= set(after)
    for run_id in after:
        assert_complete(db, run_id, 20000, 500)
        assert "failure" not in tags(db, run_id)


# == 1. a job SIGKILLed with its writer; a job still running ==
SINGLE = (*BASE, "eval_every=100")


@pytest.mark.slow
def test_resume_closes_a_run_whose_processes_are_gone_and_continues_it(tmp_path, procs):
    db = tmp_path / "mlruns.db"
    # long enough (seconds) to be seen in its loop before it ends, however busy the machine,
    # and delivering its values to the store as it goes (not only when it closes)
    job = (*SINGLE, "steps=20000", "tracking.flush_every=100", f"tracking.uri=sqlite:///{db}")
    first = procs.start(*job, cwd=tmp_path)
    (run_id,) = wait_until(lambda: training(db), WAIT_S, "the run in its training loop")
    os.killpg(first.pid, signal.SIGKILL)  # the training process and its tracking writer
    procs.wait_all_gone(first)
    assert runs_by_status(db) == {"RUNNING": 1}  # what nobody closes: the fault itself

    second = procs.start(*job, "resume=true", cwd=tmp_path, name="resume")
    procs.wait_all_gone(second)
    assert second.returncode == 0, second.err.read_text()[-3000:]
    assert list(run_ids(db)) == [run_id]  # the same run, closed then continued
    assert runs_by_status(db) == {"FINISHED": 1}
    assert_complete(db, run_id, 20000, 100)
    assert "failure" not in tags(db, run_id)


@pytest.mark.slow
def test_resume_never_starts_a_config_that_is_running(tmp_path, procs):
    db = tmp_path / "mlruns.db"
    job = (*SINGLE, "steps=100000000", f"tracking.uri=sqlite:///{db}")
    first = procs.start(*job, cwd=tmp_path)
    (run_id,) = wait_until(lambda: training(db), WAIT_S, "the run in its training loop")
    again = run_cli(*job, "resume=true", cwd=tmp_path)
    assert f"is RUNNING as run {run_id} by pid {first.pid}" in again.stdout
    assert list(run_ids(db)) == [run_id]
    first.send_signal(signal.SIGINT)
    procs.wait_all_gone(first)
    assert runs_by_status(db) == {"KILLED": 1}


# == 2. a checkpoint belongs to one run in one store ==
def test_a_checkpoint_from_another_store_is_ignored_and_the_run_has_its_whole_history(
        tmp_path):
    a, b, c = (tmp_path / f"{x}.db" for x in "abc")
    run_cli(*BASE, "steps=50", "eval_every=10", "checkpoint_every=10",
            f"tracking.uri=sqlite:///{a}", cwd=tmp_path)
    (ckpt,) = (tmp_path / "checkpoints").glob("*.pt")
    other = run_cli(*BASE, "steps=50", "eval_every=10", "resume=true",
                    f"tracking.uri=sqlite:///{b}", cwd=tmp_path)
    assert "ignoring" in other.stdout + other.stderr and str(a) in other.stdout + other.stderr
    ((run_id, _),) = run_ids(b).items()
    assert runs_by_status(b) == {"FINISHED": 1}
    assert_complete(b, run_id, 50, 10)  # not 1 of 6 losses, 10 of 50 step sizes
    explicit = run_cli(*BASE, "steps=50", "eval_every=10", f"checkpoint_path={ckpt}",
                       f"tracking.uri=sqlite:///{c}", cwd=tmp_path, check=False)
    assert explicit.returncode == 2
    assert "belongs to run" in explicit.stderr and "Traceback" not in explicit.stderr
    assert not run_ids(c)


def test_a_continued_run_ends_without_its_last_attempts_failure_tags(tmp_path, monkeypatch):
    """Crash at step 30 with checkpoints every 10, resume: the same run, FINISHED, complete,
    and no `failure` tag left from the crash."""
    from suite.runner import execute

    cfg = ("steps=60", "eval_every=10", "checkpoint_every=10", "resume=true", "tracking=mlflow",
           "task.l2=0.01", "workers=2")
    monkeypatch.setenv("COMMSGD_TEST_FAIL_AT_STEP", "30")
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(make_cfg(*cfg), launch_dir=tmp_path)
    monkeypatch.delenv("COMMSGD_TEST_FAIL_AT_STEP")
    db = tmp_path / "mlruns.db"
    ((crashed, _),) = run_ids(db).items()
    assert "simulated crash" in tags(db, crashed)["failure"]
    result = execute(make_cfg(*cfg), launch_dir=tmp_path)
    assert result.status == "FINISHED" and result.run_id == crashed
    assert "failure" not in tags(db, crashed)
    assert_complete(db, crashed, 60, 10)


# == 3. concurrent starts, a locked store ==
@pytest.mark.slow
def test_runs_started_at_once_into_a_new_sqlite_store_all_finish(tmp_path, procs):
    db = tmp_path / "new" / "mlruns.db"
    db.parent.mkdir()
    started = [procs.start(*SINGLE, "steps=100", f"seed={s}", f"tracking.uri=sqlite:///{db}",
                           cwd=tmp_path, name=f"s{s}") for s in range(4)]
    for p in started:
        procs.wait_all_gone(p)
    assert [p.returncode for p in started] == [0, 0, 0, 0], [
        p.err.read_text()[-2000:] for p in started if p.returncode]
    assert runs_by_status(db) == {"FINISHED": 4}


@pytest.mark.slow
def test_a_store_locked_when_a_run_starts_costs_a_wait_not_the_run(tmp_path, procs):
    db = tmp_path / "mlruns.db"
    run_cli(*SINGLE, "steps=10", f"tracking.uri=sqlite:///{db}", cwd=tmp_path)  # the store
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # no reader, no writer until released
    try:
        job = procs.start(*SINGLE, "steps=10", "seed=1", f"tracking.uri=sqlite:///{db}",
                          cwd=tmp_path)
        wait_until(lambda: opened_by(job.pid, db) or job.poll() is not None, WAIT_S,
                   "the run to open the store")
        time.sleep(20)  # longer than MLflow's own waits: it used to give up within ~13 s
        assert job.poll() is None, job.err.read_text()[-3000:]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    procs.wait_all_gone(job)
    assert job.returncode == 0, job.err.read_text()[-3000:]
    assert runs_by_status(db) == {"FINISHED": 2}


# == 4. SIGTERM to a single run ==
@pytest.mark.slow
def test_sigterm_ends_a_single_run_killed_with_its_artifacts(tmp_path, procs):
    db = tmp_path / "mlruns.db"
    job = procs.start(*SINGLE, "steps=100000000", "tracking.plot=true",
                      f"tracking.uri=sqlite:///{db}", cwd=tmp_path)
    (run_id,) = wait_until(lambda: training(db), WAIT_S, "the run in its training loop")
    job.send_signal(signal.SIGTERM)  # what `timeout` and schedulers send
    procs.wait_all_gone(job)
    assert job.returncode == 128 + signal.SIGTERM
    err = job.err.read_text()
    assert "terminated (SIGTERM): the run is closed KILLED" in err and "Traceback" not in err
    assert runs_by_status(db) == {"KILLED": 1}
    assert tags(db, run_id)["failure"] == "terminated (SIGTERM)"
    assert {"config.yaml", "curves.csv", "convergence.png"} <= artifacts(db, run_id)


# == 4. two signals at once (a sweep's Ctrl-C reaches a worker with its launcher's SIGTERM) ==
TWO_SIGNALS = """
import os, signal, sys
from pathlib import Path
from suite import runner
from tests.conftest import make_cfg

real_step = runner._step

def step(algo, state, t, lr):
    if t == 50:  # both pending at once: Python runs SIGINT's handler, SIGTERM's at its next check
        both = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, both)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, both)
    return real_step(algo, state, t, lr)

runner._step = step
cfg = make_cfg(*sys.argv[2:])
runner.execute(cfg, launch_dir=Path.cwd(), output_dir=Path(sys.argv[1]))
"""


@pytest.mark.slow
def test_a_second_signal_on_the_way_to_closing_the_run_waits_for_the_close(tmp_path):
    db, out = tmp_path / "mlruns.db", tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", TWO_SIGNALS, str(out), *BASE, "steps=1000", "eval_every=10",
         "tracking=mlflow", "tracking.plot=true", f"tracking.uri=sqlite:///{db}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode != 0, proc.stderr[-3000:]  # stopped, by the first signal
    assert runs_by_status(db) == {"KILLED": 1}, proc.stderr[-3000:]
    (run_id,) = run_ids(db)
    assert tags(db, run_id)["failure"] == "interrupted (KeyboardInterrupt)"
    assert {"config.yaml", "curves.csv", "convergence.png"} <= artifacts(db, run_id)
    assert {"config.yaml", "curves.csv", "convergence.png"} <= {p.name for p in out.iterdir()}
    assert steps(db, run_id, "train/loss")[-1] == 50  # the history up to the stop


# == 5. full disks ==
@pytest.mark.slow
def test_a_full_run_directory_fails_the_run_with_the_reason(tmp_path, procs):
    db, out = tmp_path / "mlruns.db", tmp_path / "out"
    out.mkdir()
    (out / "curves.csv").symlink_to("/dev/full")  # every write there: ENOSPC, from the kernel
    job = procs.start(*SINGLE, "steps=100", f"hydra.run.dir={out}",
                      f"tracking.uri=sqlite:///{db}", cwd=tmp_path)
    procs.wait_all_gone(job)
    assert job.returncode == 1
    said = job.out.read_text()
    assert "run failed (could not write the run's files" in said, said
    assert "No space left on device" in said
    assert "Traceback" not in job.err.read_text()
    ((run_id, _),) = run_ids(db).items()
    assert runs_by_status(db) == {"FAILED": 1}  # not FINISHED without its curves
    assert "No space left on device" in tags(db, run_id)["failure"]
    assert_complete(db, run_id, 100, 100)  # the metrics are all there


@pytest.mark.slow
def test_a_store_whose_creation_is_cut_short_is_not_left_half_made(tmp_path, procs):
    """A file-size limit (RLIMIT_FSIZE: EFBIG, as a full disk's ENOSPC) stops the schema's
    creation half-way: the run is refused in one line, nothing is left under the store's name,
    and the next run creates the store and finishes."""
    db = tmp_path / "mlruns.db"
    job = procs.start(*SINGLE, "steps=20", f"tracking.uri=sqlite:///{db}", cwd=tmp_path,
                      limit_file_kb=128)
    procs.wait_all_gone(job)
    assert job.returncode == 2, job.err.read_text()[-3000:]
    err = job.err.read_text()
    assert "could not be created" in err and "nothing was left" in err
    assert "Traceback" not in err
    assert not db.exists() or db.stat().st_size == 0
    again = run_cli(*SINGLE, "steps=20", f"tracking.uri=sqlite:///{db}", cwd=tmp_path)
    assert "run finished" in again.stdout
    assert runs_by_status(db) == {"FINISHED": 1}


def test_a_half_created_store_is_explained_in_one_line(tmp_path):
    """What an older version (or MLflow alone) left when its creation was cut short: the
    tables, no schema version."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    db = tmp_path / "half.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    InitialBase.metadata.create_all(engine)
    engine.dispose()
    proc = run_cli(*SINGLE, "steps=5", f"tracking.uri=sqlite:///{db}", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert "is a half-created MLflow store" in proc.stderr and "Traceback" not in proc.stderr


# == 6. a checkpoint that would run code ==
class _Planted:
    """Unpickling this calls os.system: what a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 3, "step": 1, "payload": _Planted(marker)}, path)


def test_a_malicious_checkpoint_is_refused_without_running_its_code(tmp_path):
    from suite.runner import config_hash

    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Planted(marker)))  # the file would do it: the marker appears
    assert marker.exists()
    marker.unlink()
    overrides = (*SINGLE, "steps=20")
    planted = tmp_path / "checkpoints" / f"{config_hash(make_cfg(*overrides))}.pt"
    _plant(planted, marker)
    for extra in (("resume=true",), (f"checkpoint_path={planted}",)):
        proc = run_cli(*overrides, *extra, cwd=tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "is not a readable checkpoint: it holds Python objects" in proc.stderr
        assert "posix.system" in proc.stderr and "Traceback" not in proc.stderr
        assert not marker.exists()


def test_a_checkpoint_of_an_older_format_is_refused_clearly(tmp_path):
    from suite.algorithms.sgd import SGDState
    from suite.checkpoint import load

    old = tmp_path / "old.pt"
    torch.save({"format": 2, "config_hash": "x", "state": SGDState(torch.zeros(3),
                                                                   torch.zeros(3))}, old)
    from suite.config import ConfigError

    with pytest.raises(ConfigError, match="written by an older commsgd"):
        load(old, config_hash="x")


# == 7. experiment names that are paths ==
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute-experiment", ".."])
def test_an_experiment_name_that_is_a_path_writes_nothing(tmp_path, name):
    from suite.cli import run_job

    code, exc = run_job(make_cfg("tracking=mlflow", "steps=5", f"tracking.experiment='{name}'"),
                        launch_dir=tmp_path / "here")
    assert code == 2 and "tracking.experiment" in str(exc)
    assert not (tmp_path / "here").exists() and not Path("/tmp/absolute-experiment").exists()


# == 8. commsgd-report --out ==
@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report-store")
    run_cli("-m", "seed=0,1", "steps=30", "workers=2", "batch_size=full", "task.l2=0.1",
            "eval_every=10", "progress=false", cwd=tmp)
    return f"sqlite:///{tmp / 'mlruns.db'}"


def _report(uri, out, *extra):
    from analysis.report import main

    return main(["--tracking-uri", uri, "--out", str(out), "--n-boot", "1000", *extra])


def _uploaded(uri) -> set[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("logreg")
    (summary,) = client.search_runs([exp.experiment_id],
                                    filter_string="tags.`commsgd.report` = 'true'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
    return {a.path for a in client.list_artifacts(summary.info.run_id)}


def test_report_out_refuses_a_file_and_a_foreign_directory(small_store, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("mine")
    assert _report(small_store, target) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert target.read_text() == "mine"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "secret.env").write_text("TOKEN=1")
    assert _report(small_store, foreign) == 2
    err = capsys.readouterr().err
    assert "is not empty and holds no commsgd report" in err and "--force" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["secret.env"]


def test_report_uploads_its_own_files_only_and_replaces_its_previous_report(small_store,
                                                                            tmp_path, capsys):
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "secret.env").write_text("TOKEN=1")
    assert _report(small_store, out, "--force") == 0
    uploaded = _uploaded(small_store)
    assert "secret.env" not in uploaded and {"report.md", "report.html"} <= uploaded
    assert (out / "secret.env").read_text() == "TOKEN=1"  # left alone
    (out / "report.md").write_text("stale")
    capsys.readouterr()
    assert _report(small_store, out) == 0  # a previous report's directory: no --force needed
    assert "replaced the previous report" in capsys.readouterr().out
    assert (out / "report.md").read_text() != "stale"
    assert "secret.env" not in _uploaded(small_store)


# == 9. LIBSVM trust on first use ==
def test_a_corrupt_or_short_libsvm_file_is_never_trusted(tmp_path, monkeypatch):
    from tasks import libsvm

    monkeypatch.setenv("COMMSGD_DATA", str(tmp_path))
    cache = tmp_path / "libsvm"
    cache.mkdir()
    monkeypatch.setitem(libsvm.DATASETS, "toy", libsvm.DatasetSpec(libsvm.FileSpec("toy", 270), 4))
    sidecar = cache / "toy.sha256"
    (cache / "toy").write_bytes(b"+1 1:0.5 3:oops\n-1 2:1\n")  # does not parse
    with pytest.raises(libsvm.DatasetFormatError):
        libsvm.load_libsvm("toy", download=False)
    assert not sidecar.exists()  # the hash of a corrupt file is not recorded
    rows = b"".join(b"+1 1:%d\n-1 2:%d\n" % (i, i) for i in range(5)) + b"+1 3:1\n"  # 11 rows
    (cache / "toy").write_bytes(rows)
    with pytest.raises(libsvm.DatasetFormatError, match="parsed 11 samples, the LIBSVM site "
                                                        "states 270") as err:
        libsvm.load_libsvm("toy", download=False)
    assert "task.allow_row_mismatch=true" in str(err.value)
    assert not sidecar.exists()
    data = libsvm.load_libsvm("toy", download=False, allow_row_mismatch=True)
    assert data.X_train.shape == (11, 4)  # accepted as it is, when asked
    assert sidecar.exists()


def test_a_short_libsvm_file_is_refused_by_the_command_line_in_one_line(tmp_path):
    cache = tmp_path / "cache" / "libsvm"
    cache.mkdir(parents=True)
    (cache / "heart").write_bytes(b"".join(b"+1 1:%d\n-1 2:%d\n" % (i, i) for i in range(5))
                                  + b"+1 3:1\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), COMMSGD_DATA=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "suite", "task.dataset=heart", "steps=5",
                           "workers=2", "tracking=none", "progress=false"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "parsed 11 samples, the LIBSVM site states 270" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (cache / "heart.sha256").exists()


# == 1. the owner of a run, and a sweep that closes stale runs ==
def test_a_runs_owner_is_alive_only_while_its_own_process_runs():
    from suite.sweep_guard import PID_START, owner_state, owner_tags

    assert owner_state(owner_tags()) == "alive"
    assert owner_state(owner_tags() | {PID_START: "1"}) == "gone"  # the pid, reused by another
    assert owner_state(owner_tags() | {"commsgd.host": "elsewhere.example"}) == "elsewhere"
    assert owner_state({}) == "unknown"  # a run from before owners were recorded
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tags = owner_tags(child.pid)
        assert owner_state(tags) == "alive"
    finally:
        child.kill()
        child.wait(timeout=30)
    assert owner_state(tags) == "gone"


def test_a_sweep_closes_the_stale_running_runs_of_its_experiment(tmp_path):
    from mlflow.tracking import MlflowClient

    from suite.hydra_callbacks import PrepareTrackingStore
    from suite.sweep_guard import owner_tags

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = make_cfg("tracking=mlflow", f"tracking.uri={uri}")
    PrepareTrackingStore().on_multirun_start(cfg)  # the store and the experiment
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone_owner = owner_tags(child.pid)
    finally:
        child.kill()
        child.wait(timeout=30)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("logreg")
    stale = client.create_run(exp.experiment_id, tags=gone_owner).info.run_id
    live = client.create_run(exp.experiment_id, tags=owner_tags()).info.run_id
    PrepareTrackingStore().on_multirun_start(cfg)  # the next sweep starts
    closed = client.get_run(stale)
    assert closed.info.status == "KILLED"
    assert f"its process (pid {child.pid} on host" in closed.data.tags["failure"]
    assert client.get_run(live).info.status == "RUNNING"  # its process is this one: alive


# == 5. files the store refuses ==
def test_a_run_whose_files_the_store_refuses_ends_failed_with_the_reason(tmp_path):
    """The writer process could not log an artifact (here: a file that vanished; a full
    artifact disk alike): the run is FAILED, not FINISHED without its files, and the error
    says so in one line."""
    from suite.tracking import TrackingDeliveryError
    from suite.tracking_writer import BackgroundTracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracker = BackgroundTracker(uri=uri, experiment="logreg", run_name="r", params={},
                                tags={}, fallback_dir=tmp_path, delivery_timeout_s=5)
    tracker.log_metrics({"train/loss": 1.0}, step=0)
    tracker.log_artifact(tmp_path / "vanished.csv")
    with pytest.raises(TrackingDeliveryError, match="could not log the run's files"):
        tracker.finish("FINISHED")
    db = tmp_path / "mlruns.db"
    assert runs_by_status(db) == {"FAILED": 1}
    assert "could not log the run's files" in tags(db, tracker.run_id)["failure"]
    assert steps(db, tracker.run_id, "train/loss") == [0]


def test_resume_skips_a_config_running_on_another_host_and_says_so(tmp_path):
    """Its owner cannot be checked from here: never started twice."""
    from mlflow.tracking import MlflowClient

    from suite.runner import config_hash, execute
    from suite.sweep_guard import owner_tags

    overrides = ("tracking=mlflow", "steps=5", "resume=true", "task.l2=0.01", "workers=2")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = make_cfg(*overrides, f"tracking.uri={uri}")
    from suite.stores import client as store_client
    from suite.tracking import get_or_create_experiment

    client = store_client(uri)
    exp_id = get_or_create_experiment(client, "logreg", None)
    elsewhere = owner_tags() | {"commsgd.host": "node17.cluster", "config_hash": config_hash(cfg)}
    run_id = client.create_run(exp_id, tags=elsewhere).info.run_id
    result = execute(cfg, launch_dir=tmp_path)
    assert result.status == "SKIPPED" and result.run_id == run_id
    assert "on host node17.cluster, which cannot be checked from this host" in result.reason
    assert [r.info.run_id for r in MlflowClient(tracking_uri=uri).search_runs([exp_id])] == [
        run_id]
