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
  in a worker ends its job's run KILLED with its artifacts (suite.signals), and the worker then
  exits instead of taking the next job; between jobs it exits at once;
- Ctrl-C or SIGTERM to the launcher first passes SIGTERM on to every worker and waits up to
  STOP_GRACE_S for them to close their runs and exit; only then does joblib stop what is left.

Whatever still escapes (SIGKILL of the whole process group) leaves a RUNNING run whose owner
process is gone: the next sweep or `resume=true` closes it and continues it
(suite.sweep_guard), never runs its config twice.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import wait

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


def stop_workers(grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM every worker and wait up to grace_s for all of them to exit; the pids of those
    still there."""
    workers = _loky_workers()
    for p in workers:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except OSError:
            pass
    pending = {p.sentinel: p for p in workers}
    deadline = time.monotonic() + grace_s
    while pending and time.monotonic() < deadline:
        for sentinel in wait(list(pending), timeout=max(0.0, deadline - time.monotonic())):
            pending.pop(sentinel)
    return [p.pid for p in pending.values()]


class workers_stopped_first:
    """While the sweep runs, Ctrl-C and SIGTERM to the launcher stop the workers gracefully
    before joblib's own abort (SIGKILL of their process trees) takes over."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self._main = threading.current_thread() is threading.main_thread()
        if self._main:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        if self._main:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
        return False

    def _handle(self, signum, frame):
        for s in self.SIGNALS:  # one stop at a time: a second Ctrl-C waits for this one
            signal.signal(s, signal.SIG_IGN)
        name = signal.Signals(signum).name
        print(f"commsgd: sweep interrupted ({name}): stopping its jobs, each closes its run "
              f"KILLED (up to {STOP_GRACE_S:g} s)", file=sys.stderr, flush=True)
        left = stop_workers()
        if left:
            print(f"commsgd: jobs still running after {STOP_GRACE_S:g} s (pids "
                  f"{' '.join(map(str, left))}) are killed; a later sweep closes their runs",
                  file=sys.stderr, flush=True)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated()


# -- the worker's side ----------------------------------------------------------------------
_armed = False
_in_job = False


class GuardedJob:
    """The sweep's task function as a worker runs it: armed to die with the launcher, and
    leaving the worker after a job that was interrupted."""

    def __init__(self, task_function):
        self.task_function = task_function

    def __call__(self, cfg):
        global _in_job
        arm_worker()
        _in_job = True
        try:
            return self.task_function(cfg)
        except KeyboardInterrupt:
            _leave(_INTERRUPT_CODE)  # the run is closed KILLED; take no next job
        except Terminated:
            _leave(TERMINATED_CODE)
        finally:
            _in_job = False


def arm_worker() -> None:
    """Once per worker: SIGTERM when the launcher (this process's parent) dies, and SIGTERM
    ends the job's run KILLED (in a job) or the worker (between jobs)."""
    global _armed
    if _armed:
        return
    _armed = True
    launcher = os.getppid()
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
    if _in_job:
        raise Terminated("terminated (SIGTERM): the sweep was stopped")
    _leave(TERMINATED_CODE)


def _leave(code: int) -> None:
    """End the worker now: its run is closed (or it had none), and loky must not hand it the
    next job."""
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
