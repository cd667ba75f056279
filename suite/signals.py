"""SIGTERM ends a run as Ctrl-C does: KILLED, with its artifacts, never a crash.

`timeout`, schedulers (SLURM before a job's time limit, Kubernetes) and a sweep's launcher
stop a process with SIGTERM, whose default action ends it on the spot: no artifacts, and the
run left for its tracking writer to close as FAILED ("the training process exited ..."). While
a run executes, `sigterm_raises` turns SIGTERM into `Terminated`, which the runner handles like
KeyboardInterrupt: the loop stops, the curves and plots are written and logged, and the run is
closed KILLED with the reason. Terminated is a SystemExit with code 143 (128 + SIGTERM, what a
shell reports for a process SIGTERM ended), so that once the run is closed the process exits
with that code and no traceback.
"""

from __future__ import annotations

import signal
import threading

TERMINATED_CODE = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """SIGTERM arrived while a run was executing."""

    def __init__(self, message: str = "terminated (SIGTERM)"):
        super().__init__(TERMINATED_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


def raise_terminated(signum, frame):
    raise Terminated()


class sigterm_raises:
    """SIGTERM raises Terminated inside the block, in the main thread, unless the process has
    its own SIGTERM handler already (a distributed rank's, a sweep worker's): that one stays."""

    def __enter__(self):
        self._installed = (threading.current_thread() is threading.main_thread()
                           and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
        if self._installed:
            signal.signal(signal.SIGTERM, raise_terminated)
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return False
