"""Ctrl-C and SIGTERM end a run KILLED, with its artifacts, never a crash and never half-closed.

`timeout`, schedulers (SLURM before a job's time limit, Kubernetes) and a sweep's launcher
stop a process with SIGTERM, whose default action ends it on the spot: no artifacts, and the
run left for its tracking writer to close as FAILED ("the training process exited ..."). While
a run executes, `stop_signals` turns the first SIGINT or SIGTERM into an exception (SIGTERM's
is `Terminated`), which the runner handles like KeyboardInterrupt: the loop stops, the curves
and plots are written and logged, and the run is closed KILLED with the reason. Terminated is
a SystemExit with code 143 (128 + SIGTERM, what a shell reports for a process SIGTERM ended),
so that once the run is closed the process exits with that code and no traceback.

Signals often come in pairs: Ctrl-C reaches every process of a sweep's group while its launcher
passes SIGTERM on to each worker; `timeout -k` and schedulers repeat theirs. A second exception
raised while the first is on its way to the code that closes the run would skip that code and
leave the run to be closed FAILED without its files. So only the first signal raises; every
later one, and every one that arrives once the runner says the run is closing, is held until
the block ends.
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


class stop_signals:
    """SIGINT and SIGTERM in the main thread while a run executes: the first one stops the
    run, the later ones wait for its close.

    The first signal goes to the handler the process had: Python's for SIGINT
    (KeyboardInterrupt), a distributed rank's or a sweep worker's for SIGTERM, or, where SIGTERM
    had its default action, `Terminated`. An ignored signal stays ignored (a background job's
    SIGINT). Once a signal has raised, or once the runner has set `closing` (the first thing it
    does when the run ends, however it ends), every further signal is held. On leaving the
    block, a held signal is delivered to the restored handler, unless a signal already stopped
    the run: that stop is what it asked for.

    `closing` is a plain attribute store, not a call, on purpose: CPython runs signal handlers
    at calls and backward jumps, and the store must happen before any of those can.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.closing = False
        self.stopped_by: int | None = None
        self.held: list[int] = []
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous in (signal.SIG_IGN, None):  # None: set outside Python; left alone
                    continue
                self._previous[sig] = previous
                signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame):
        if self.closing:
            self.held.append(signum)
            return
        self.closing, self.stopped_by = True, signum
        previous = self._previous[signum]
        if callable(previous):
            previous(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise Terminated()
        # the process's own handler chose not to stop (it returned): the run goes on
        self.closing, self.stopped_by = False, None

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        if self.held and self.stopped_by is None:
            signal.raise_signal(self.held[0])
        return False
