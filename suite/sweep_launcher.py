"""The parallel sweep launcher (`hydra/launcher=parallel`): Hydra's joblib launcher, with jobs
that end when the sweep ends. The launcher class is
`hydra_plugins.commsgd_sweep.guarded_joblib_launcher.GuardedJoblibLauncher` (Hydra instantiates
launchers from its `hydra_plugins` package only); what it does is here.

Hydra's joblib launcher runs each job in a loky worker process. As it comes, an interrupted
sweep loses runs two ways:
- Ctrl-C, `kill -TERM` or `kill -9` of the launcher: on an exception joblib kills the workers'
  whole process trees with SIGKILL at once, tracking writers included, in the middle of closing
  their runs, which stay RUNNING; and a launcher that dies without that leaves its workers (and
  their writers) running the jobs already handed to them, so that an immediate `resume=true`
  starts the same configs a second time.
- a worker takes its next job however the last one ended.

Here:
- every worker ends with the launcher: the kernel sends it SIGTERM when the launcher dies
  (PR_SET_PDEATHSIG, Linux) and a watchdog thread does the same where that is missing. SIGTERM
  in a worker ends its job's run KILLED with its artifacts (suite.signals); a worker whose
  launcher is gone then exits;
- Ctrl-C or SIGTERM to the launcher passes SIGTERM on to every worker and waits (up to
  STOP_GRACE_S) until every job has closed its run, and only then lets joblib stop the workers.
  Until then no worker may exit: loky takes one worker's exit for a crash and SIGKILLs the
  others' process trees, runs half-closed. So a stopped worker stays, refuses any further job,
  and says when its job is over by removing its entry (a file named by its pid) from a
  directory the launcher watches.

Whatever still escapes (SIGKILL of the whole process group) leaves a RUNNING run whose owner
process is gone: the next sweep or `resume=true` closes it and continues it
(suite.sweep_guard), never runs its config twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from suite.procinfo import state
from suite.signals import TERMINATED_CODE, Terminated

log = logging.getLogger("commsgd.sweep")

STOP_GRACE_S = 90.0  # a worker's time to close its run (the writer's last delivery) and exit
PR_SET_PDEATHSIG = 1
_INTERRUPT_CODE = 128 + signal.SIGINT


# -- the launcher's side ------------------------------------------------------------------
def _loky_workers() -> list:
    """The live worker processes of joblib's (reusable) loky executor."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    processes = getattr(executor, "_processes", None) or {}
    return [p for p in list(processes.values()) if p.exitcode is None]


def _alive(pid: int) -> bool:
    return state(pid) not in (None, "Z", "X", "x")


def busy_jobs(busy_dir: Path) -> list[int]:
    """Pids of workers whose job has not ended (a worker that died is not waited for)."""
    pids = [int(p.name) for p in Path(busy_dir).iterdir() if p.name.isdigit()]
    return [pid for pid in pids if _alive(pid)]


def stop_workers(busy_dir: Path, grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM every worker and wait up to grace_s for every job to close its run; the pids
    of the workers whose job is still not over."""
    for p in _loky_workers():
        try:
            os.kill(p.pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while busy_jobs(busy_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    return busy_jobs(busy_dir)


class workers_stopped_first:
    """While the sweep runs, Ctrl-C and SIGTERM to the launcher stop the jobs gracefully
    before joblib's own abort (SIGKILL of the workers' process trees) takes over."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.busy_dir = Path(tempfile.mkdtemp(prefix="commsgd-sweep-"))
        self._main = threading.current_thread() is threading.main_thread()
        if self._main:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        if self._main:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
        shutil.rmtree(self.busy_dir, ignore_errors=True)
        return False

    def _handle(self, signum, frame):
        for s in self.SIGNALS:  # one stop at a time: a second Ctrl-C waits for this one
            signal.signal(s, signal.SIG_IGN)
        name = signal.Signals(signum).name
        print(f"commsgd: sweep interrupted ({name}): stopping its jobs, each closes its run "
              f"KILLED (up to {STOP_GRACE_S:g} s)", file=sys.stderr, flush=True)
        left = stop_workers(self.busy_dir)
        if left:
            print(f"commsgd: jobs still running after {STOP_GRACE_S:g} s (pids "
                  f"{' '.join(map(str, left))}) are killed; a later sweep closes their runs",
                  file=sys.stderr, flush=True)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated()


# -- the worker's side ----------------------------------------------------------------------
_launcher: int | None = None  # the pid of this worker's launcher, once armed
_in_job = False
_stopping = False  # a stop was asked: no further job starts in this worker


class GuardedJob:
    """The sweep's task function as a worker runs it: armed to die with the launcher, marked
    busy (a file named by its pid in `busy_dir`) while its job runs, and refusing jobs once the
    sweep is stopping. The launcher sets busy_dir before the jobs are sent."""

    def __init__(self, task_function):
        self.task_function = task_function
        self.busy_dir: str | None = None

    def __call__(self, cfg):
        global _in_job, _stopping
        arm_worker()
        if _stopping:
            raise Terminated("terminated (SIGTERM): the sweep was stopped before this job")
        marker = Path(self.busy_dir) / str(os.getpid()) if self.busy_dir else None
        if marker is not None:
            marker.touch()
        _in_job = True
        try:
            return self.task_function(cfg)
        except (KeyboardInterrupt, Terminated) as exc:
            _stopping = True  # its run is closed KILLED; this worker takes no next job
            if not _launcher_alive():
                _leave(TERMINATED_CODE if isinstance(exc, Terminated) else _INTERRUPT_CODE)
            raise
        finally:
            _in_job = False
            if marker is not None:
                marker.unlink(missing_ok=True)


def _launcher_alive() -> bool:
    return _launcher is None or os.getppid() == _launcher


def arm_worker() -> None:
    """Once per worker: SIGTERM when the launcher (this process's parent) dies; SIGTERM ends
    the job's run KILLED, or (between jobs) the worker whose launcher is gone."""
    global _launcher
    if _launcher is not None:
        return
    _launcher = launcher = os.getppid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below still applies
    signal.signal(signal.SIGTERM, _worker_sigterm)
    if os.getppid() != launcher:
        _leave(TERMINATED_CODE)  # the launcher died before the death signal was armed

    def watchdog():
        while os.getppid() == launcher:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watchdog, name="commsgd-launcher-watchdog", daemon=True).start()


def _worker_sigterm(signum, frame):
    global _stopping
    _stopping = True
    if _in_job:
        raise Terminated("terminated (SIGTERM): the sweep was stopped")
    if not _launcher_alive():
        _leave(TERMINATED_CODE)
    # between jobs, with the launcher there: stay (an exit would make loky kill the other
    # workers mid-close); joblib stops this worker once every run is closed


def _leave(code: int) -> None:
    """End the worker now: its run is closed (or it had none), and its launcher is gone."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
