"""The tracking writer: MLflow store calls in a child process, off the training process.

Why. MLflow's SQLAlchemy store costs about 65 µs of Python per metric value in `log_batch`
(the ORM), plus fixed costs per run (create_run, params, tags, artifacts, set_terminated): the
default 2000-step job spent as long writing its ~5,200 values as it spent training. That work
cannot be made cheaper through MLflow's public API, so it is moved off the training process:

- a child process, not a thread: the store's work is Python code that holds the GIL, and a
  writer thread would take the GIL from the training loop (itself Python-bound for small
  models) about as often as the synchronous calls did. A process has its own interpreter and
  runs on another core;
- started with fork (POSIX, Linux): the child inherits the modules already imported (torch,
  this suite, and MLflow and SQLAlchemy once a run or a sweep callback has used them) and is
  ready in milliseconds; a spawned child would spend ~1.8 s importing MLflow again. Where
  MLflow is not imported yet (a fresh `commsgd-run`), the job forks the writer before the
  runner imports torch (`prestart`): the child imports MLflow and opens the store while the
  training process imports torch and builds the task, and the training process never imports
  MLflow at all; it waits for the writer only if it asks for the run's id (or finishes)
  before that is over. It is a plain
  `os.fork()` (what multiprocessing's "fork" start method does), not a
  `multiprocessing.Process`: the distributed launcher's ranks are daemonic processes, to which
  multiprocessing refuses children, and multiprocessing's exit handler would join or terminate
  the writer when the training process exits, before it could close the run;
- SQLite forbids using a connection across fork: the child drops the stores and engines (and
  HTTP sessions) MLflow cached in the parent, unused, and opens its own.

Protocol. `BackgroundTracker` is the training process's side, with the interface the runner
uses (`log_metrics`, `set_tags`, `log_artifact`, `flush`, `finish`, `run_id`,
`history`). It keeps the history itself, stamps each value when it is logged, and sends values
in chunks of SEND_EVERY over a pipe that it writes without ever blocking (what the pipe cannot
take yet waits in memory). The child runs the synchronous `MlflowTracker`, with its retries,
shielding and fallback file; it reads the pipe in a thread of its own, so that the pipe is
drained while the store is slow, and writes as it goes, in batches of up to WRITE_AT values
(sooner when the run pauses or ends), acknowledging how many values it has delivered.

One writer per process, not per run: after `finish` it waits for the process's next run (a
sweep's next job, the next benchmark repeat). Forking a process that holds torch and MLflow
costs ~15 ms, and while the two share their memory pages copy-on-write every page the training
process writes to is copied, ~40 ms more over a short job; a writer kept between runs pays
both once per process. Each run sends it its working directory and environment; its log
messages (retries, failures) go where the process's logging went when it was started.

Failures:
- the child cannot create the run (a store that cannot be written): the error is sent back and
  raised in the training process at its next `log_metrics`, so the run stops at once;
- `finish` waits for the child to deliver the rest and close the run; what the store refuses
  lands in the fallback file (`python -m suite.tracking replay FILE`), as before;
- the training process dies without `finish` (SIGKILL, os._exit): the child reads EOF,
  delivers what it received and closes the run FAILED ("the training process exited without
  closing the run"); it ignores SIGINT and SIGTERM, because Ctrl-C reaches the whole process
  group and it is the training process that decides the run's status;
- the child dies: training goes on; at `finish` every value the child did not acknowledge is
  written to the fallback file (with the run's tags and artifacts), TrackingDeliveryError
  names it, and the next run starts a new writer.

Where fork is not available (not Linux), `open_tracker` returns the synchronous MlflowTracker.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import logging
import os
import pickle
import queue
import select
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

from suite.tracking import (
    MlflowTracker,
    TrackingDeliveryError,
    TrackingUnavailable,
    check_reachable,
    retry,
    shielded,
    unlogged,
    write_fallback,
)

log = logging.getLogger("commsgd.tracking")

WRITERS = ("process", "inline")
SEND_EVERY = 500  # values the training process gathers before one message to the writer
WRITE_AT = 1000  # values the writer gathers for one log_batch while messages keep coming
IDLE_S = 0.2  # ... or fewer, once no message came for this long
READY_TIMEOUT_S = 300.0  # creating the run: retries against a locked or restarting store
ORPHANED = "the training process exited without closing the run"

_HEADER = struct.Struct("!Q")
_EOF = ("eof",)
# What the child dropped from MLflow's caches, kept referenced so that the parent's SQLite
# connections and sockets are never even closed from the child (os._exit frees nothing).
_INHERITED: list = []


def fork_available() -> bool:
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def open_tracker(writer: str = "process", **kwargs):
    """The run's MLflow tracker: its store calls in a writer process (`process`, where fork is
    available), or in this process (`inline`, the synchronous MlflowTracker)."""
    if writer not in WRITERS:
        raise ValueError(f"writer={writer!r}: allowed values are {', '.join(WRITERS)}")
    if writer == "process" and fork_available():
        return BackgroundTracker(**kwargs)
    return MlflowTracker(**kwargs)


# -- framing: 8-byte length, then a pickle ----------------------------------------------------
def _frame(msg) -> bytes:
    payload = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_message(fd: int):
    (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    return pickle.loads(_read_exact(fd, n))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class WriterTraceback(Exception):
    """The traceback of an error raised in the writer process (the cause of the re-raised
    error in the training process)."""

    def __str__(self) -> str:
        return "in the tracking writer process:\n" + self.args[0]


def _portable(exc: BaseException) -> tuple[BaseException, str]:
    """(the exception itself when it survives pickling, else a RuntimeError saying what it was;
    its traceback as text)."""
    tb = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc, tb


def _local(error: tuple[BaseException, str] | None) -> BaseException | None:
    if error is None:
        return None
    exc, tb = error
    exc.__cause__ = WriterTraceback(tb)
    return exc


class BackgroundTracker:
    """The training process's side of the writer: same interface as MlflowTracker, and no call
    waits on the store except `flush`, `finish` and the first read of `run_id` (which waits for
    the run to be created)."""

    def __init__(self, *, uri: str, experiment: str, run_name: str, params: dict,
                 tags: dict[str, str], flush_every: int = 5000,
                 fallback_dir: Path | None = None, delivery_timeout_s: float = 30.0,
                 resume_run_id: str | None = None):
        check_reachable(uri)  # fail fast, with the same message, before anything starts
        self.uri, self.experiment_name = uri, experiment
        self.history: list[tuple[str, float, int]] = []
        self.fallback_dir = Path(fallback_dir or Path.cwd()).absolute()
        self.delivery_timeout_s = delivery_timeout_s
        self.finish_wait_s: float | None = None  # how long `finish` waited for the writer
        self._eager = flush_every >= WRITE_AT
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._skip_through: dict[str, int] = {}
        self._pending: list[tuple] = []  # values not sent yet
        self._unacked: list[tuple] = []  # values sent, not yet reported delivered
        self._acked = 0  # values the writer reported delivered (it counts the ones it skips)
        self._sent_tags: dict[str, str] = {}
        self._sent_artifacts: list[list] = []
        self._out = bytearray()  # framed messages the pipe has not taken yet
        self._error: BaseException | None = None  # the writer could not start the run
        self._error_raised = False
        self._gone: str | None = None  # why the writer is no longer there
        self._done = False
        self._reply = None

        self._writer = _take_writer()
        self.pid, self._w, self._r = self._writer.pid, self._writer.w, self._writer.r
        self._poller = select.poll()
        self._poller.register(self._r, select.POLLIN)
        # params and tags as the plain strings the store keeps (MlflowTracker logs str(value)):
        # a value of a library's type (a NumPy or torch scalar, torch.__version__'s str
        # subclass) would make the writer import that library to unpickle it (torch: ~1.2 s,
        # while the run waits), and a writer started ahead of the run (`prestart`) has none
        params = {k: str(v) for k, v in params.items()}
        tags = {k: str(v) for k, v in tags.items()}
        kwargs = dict(uri=uri, experiment=experiment, run_name=run_name, params=params,
                      tags=tags, flush_every=flush_every, fallback_dir=self.fallback_dir,
                      delivery_timeout_s=delivery_timeout_s, resume_run_id=resume_run_id)
        # the writer may have been started by an earlier run: it works where this run works
        self._send(("open", kwargs, os.getcwd(), dict(os.environ)))
        if resume_run_id is not None:
            # the resumed run's store holds values this process will log again; which ones
            # is known once the writer has reopened it
            self._wait_ready()

    # -- the interface the runner uses ------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        if self._run_id is None and not self._error_raised:
            self._wait_ready()
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        """The MLflow experiment's id, known once the writer has created the run."""
        return self._experiment_id if self.run_id is not None else None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._poller.poll(0) or self._error is not None:  # about 1 µs when nothing waits
            self._poll()
        if self._skip_through:
            metrics = unlogged(self._skip_through, metrics, step)
            if not metrics:
                return
        now = int(time.time() * 1000)
        for k, v in metrics.items():
            v = float(v)
            self.history.append((k, v, step))
            self._pending.append((k, v, now, step))
        if len(self._pending) >= SEND_EVERY:
            self._send_pending()

    def log_series(self, key: str, values: dict[int, float]) -> None:
        """`log_metrics({key: value}, step)` for each (step, value), at a fraction of the cost:
        one poll and one timestamp for them all (the training loop logs train/lr this way,
        a value per step)."""
        if self._skip_through:  # a resumed run: what the store holds already is not sent
            for step, value in values.items():
                self.log_metrics({key: value}, step)
            return
        if self._poller.poll(0) or self._error is not None:
            self._poll()
        now = int(time.time() * 1000)
        rows = [(key, float(v), step) for step, v in values.items()]
        self.history.extend(rows)
        self._pending.extend((k, v, now, step) for k, v, step in rows)
        if len(self._pending) >= SEND_EVERY:
            self._send_pending()

    def set_tags(self, tags: dict[str, str]) -> None:
        tags = {k: str(v) for k, v in tags.items()}
        self._sent_tags.update(tags)
        self._send(("tags", tags))

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        path = str(Path(path).resolve())
        self._sent_artifacts.append([path, subdir])
        self._send(("artifact", path, subdir))

    def flush(self) -> None:
        """Wait until the writer has delivered every value logged so far."""
        self._send(("flush",))
        reply = self._await({"flushed"}, self.delivery_timeout_s + READY_TIMEOUT_S)
        self._poll()  # the writer's own error, if it could not create the run
        if reply is None:
            raise TrackingDeliveryError(
                f"the tracking writer (pid {self.pid}) is gone ({self._gone}); the values it "
                f"did not deliver are kept and saved to a fallback file when the run finishes")
        if reply[1] is not None:
            raise reply[1]

    def finish(self, status: str, reason: str | None = None) -> None:
        """Close the run: the writer delivers what is left (retrying for delivery_timeout_s,
        then saving it to a fallback file) and sets the terminal status; its errors are raised
        here, with the messages the synchronous tracker gives. Inside `closes_pipelined()` (a
        sweep's jobs in one process) the close is sent and its confirmation awaited later:
        `wait_for_closes`."""
        if self._done or self._error_raised:
            return
        self._done = True
        self._send(("finish", status, reason))
        if _pipelined and self._error is None and self._gone is None:
            _closing.append((self, status, reason))
            return
        self._confirm_close(status, reason)

    def _confirm_close(self, status: str, reason: str | None) -> None:
        """Wait for the writer's reply to `finish` and act on it (see `finish`)."""
        started = time.perf_counter()
        try:
            reply = self._await({"finished"}, self.delivery_timeout_s + READY_TIMEOUT_S)
        finally:
            self.finish_wait_s = time.perf_counter() - started
            log.debug("finish waited %.0f ms for the tracking writer", 1e3 * self.finish_wait_s)
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            self._release()
            raise self._error
        if reply is None:  # the writer died, or hangs: keep what it did not acknowledge
            raise self._deliver_locally(status, reason)
        self._release(reusable=True)  # the run is closed, the writer waits for the next
        if reply[1] is not None:
            raise reply[1]

    # -- the pipe -----------------------------------------------------------------------------
    def _send_pending(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        self._unacked.extend(rows)
        self._send(("metrics", rows))

    def _send(self, msg) -> None:
        if msg[0] in ("flush", "finish") or (msg[0] != "metrics" and self._eager):
            # The last values (fewer than SEND_EVERY) go with the first tag or artifact, once
            # training is over, so that the writer stores them while this process makes its
            # plots. Unless tracking.flush_every asks for batches smaller than MLflow's largest:
            # then they go with the end of the run, as the synchronous tracker delivers its
            # last ones (fewer than flush_every) in `finish`.
            self._send_pending()
        if self._gone is not None:
            return
        if msg[0] in ("flush", "finish"):
            # from here the writer's next reply is this request's, and may come before the
            # caller waits for it (the _poll below takes it): `_await` keeps what came
            self._reply = None
        self._out += _frame(msg)
        self._pump()
        self._poll()

    def _pump(self) -> None:
        """Write what the pipe takes now; the rest waits for the next call (never blocks)."""
        # shielded: an interrupt between the write and the bookkeeping would send bytes twice
        with shielded():
            while self._out:
                try:
                    n = os.write(self._w, self._out)
                except BlockingIOError:
                    return
                except OSError as exc:  # BrokenPipeError: the writer is gone
                    self._lost(f"the pipe to it broke: {exc}")
                    return
                del self._out[:n]

    def _poll(self) -> None:
        """Take the writer's messages that are waiting (cheap when there are none); raise the
        error that kept it from creating the run."""
        while self._gone is None and self._error is None and self._poller.poll(0):
            self._receive()
        if self._out and self._gone is None:
            self._pump()
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            self._release()
            raise self._error

    def _receive(self) -> None:
        try:
            msg = _read_message(self._r)
        except (EOFError, OSError) as exc:
            self._lost("it exited" if isinstance(exc, EOFError) else str(exc))
            return
        kind = msg[0]
        if kind == "ready":
            self._run_id, self._skip_through, self._experiment_id = msg[1], msg[2], msg[3]
        elif kind == "ack":
            delivered = msg[1]
            del self._unacked[: delivered - self._acked]
            self._acked = delivered
        elif kind == "error":
            self._error = _local(msg[1])
        else:  # a reply to flush or finish: (kind, the writer's error or None)
            self._reply = (kind, _local(msg[1]))

    def _await(self, kinds: set[str], timeout_s: float):
        """Send what is queued and wait for the writer's reply of one of `kinds`, the reply to
        the last request `_send` sent, which may have come already (None when the writer is
        gone, or does not answer in timeout_s: then it is stopped)."""
        deadline = time.monotonic() + timeout_s
        while self._gone is None and self._error is None:
            if self._reply is not None and self._reply[0] in kinds:
                reply, self._reply = self._reply, None
                return reply
            left = deadline - time.monotonic()
            if left <= 0:
                self._lost(f"it did not answer in {timeout_s:.0f} s")
                self._kill(hung=True)
                break
            poller = select.poll()
            poller.register(self._r, select.POLLIN)
            if self._out:
                poller.register(self._w, select.POLLOUT)
            for fd, _ in poller.poll(min(left, 1.0) * 1000):
                if fd == self._r:
                    self._receive()
                elif self._gone is None:
                    self._pump()
        return None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self._run_id is None and self._gone is None and self._error is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill(hung=True)
                self._error = TrackingUnavailable(
                    f"the tracking writer (pid {self.pid}) did not create the MLflow run in "
                    f"{self.experiment_name!r} at {self.uri} within {READY_TIMEOUT_S:.0f} s; "
                    f"is the store locked or overloaded? tracking.writer=inline writes from "
                    f"the training process instead")
                break
            if self._poller.poll(min(left, 1.0) * 1000):
                self._receive()
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            self._release()
            raise self._error
        if self._run_id is None:
            self._error_raised = True
            self._release()
            raise TrackingUnavailable(
                f"the tracking writer (pid {self.pid}) exited before it created the MLflow run "
                f"at {self.uri} ({self._gone}); see the messages above")

    def _lost(self, why: str) -> None:
        if self._gone is None:
            self._gone = why
            log.warning("the tracking writer (pid %s) is gone (%s); metric values are kept in "
                        "memory for the fallback file", self.pid, why)

    def _deliver_locally(self, status: str, reason: str | None) -> Exception:
        """The writer died: save every value it did not report delivered, with the tags and
        artifacts sent to it (replaying them twice does no harm)."""
        self._release()
        self._unacked.extend(self._pending)
        self._pending = []
        if self._run_id is None:
            return TrackingDeliveryError(
                f"the tracking writer (pid {self.pid}) is gone ({self._gone}) before it created "
                f"the MLflow run; no run was recorded (the curves are in {self.fallback_dir})")
        path = write_fallback(self.fallback_dir, self._run_id, self.uri, status, reason,
                              self._unacked, tags=self._sent_tags or None,
                              artifacts=self._sent_artifacts or None)
        return TrackingDeliveryError(
            f"could not deliver {len(self._unacked)} metric values of run {self._run_id} to "
            f"{self.uri} (the tracking writer, pid {self.pid}, is gone: {self._gone}); nothing "
            f"is lost: they are saved in {path}. Send them when the store is back with: "
            f"python -m suite.tracking replay {path}")

    def _kill(self, hung: bool = False) -> None:
        """Stop the writer. One that hangs is first asked where its threads are: what it waits
        for (a lock, the store) is the one thing that explains the hang afterwards."""
        if hung:
            stacks = _stacks_of(self.pid)
            if stacks:
                log.warning("the tracking writer (pid %s) did not answer; its threads were:\n%s",
                            self.pid, stacks)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        _forget_stacks(self.pid)

    def _release(self, reusable: bool = False) -> None:
        """Done with the writer: back to the pool when it closed the run and waits for the
        next (reusable), else closed (it reads EOF, closes an open run FAILED, and exits)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._poller.unregister(self._r)
        self._w = self._r = None
        self._gone = self._gone or "finished"
        if reusable and not self._out:
            _give_back(writer)
        else:
            writer.close()

    def __del__(self):
        # dropped without `finish`: the writer reads EOF and closes the run FAILED
        if getattr(self, "_writer", None) is not None:
            self._release()


class _Writer:
    """A writer process, and this process's ends of the pipes to and from it.

    One writer serves the runs of a process one after another (a sweep, a benchmark): the fork
    costs ~15 ms for a process holding torch and MLflow, and for as long as the two processes
    share their pages copy-on-write, every page this one writes to is copied (~40 ms more over
    a short job). A writer kept for the next run pays both once per process, not once per run.
    """

    def __init__(self, preload: str | None = None):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        sys.stdout.flush()  # the child must not write the parent's buffered output again
        sys.stderr.flush()
        # A full garbage collection here while the pages are shared would write to every
        # object's header: a copy of each page of the heap (hundreds of ms for the ~1 GB of
        # a process with torch and MLflow). Objects older than the fork are kept out of the
        # collector's sight until the first run ends (`thaw`; gc.freeze is O(1)), so that
        # no such copy is made in the middle of that run.
        self._froze = gc.get_freeze_count() == 0
        if self._froze:
            gc.freeze()
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork in a process with threads (a progress bar's
            # monitor, a rank's watchdogs): a lock another thread held at the fork would stay
            # locked in the child. The writer takes none of those threads' locks; logging's
            # and the import system's are reset at fork.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the writer: never returns
            code = 1
            try:
                os.close(to_child_w)
                os.close(from_child_r)
                code = _writer_main(to_child_r, from_child_w, os.getppid(), preload)
            finally:
                _forget_stacks(os.getpid())
                os._exit(code)
        os.close(to_child_r)
        os.close(from_child_w)
        os.set_blocking(to_child_w, False)
        self.pid, self.w, self.r, self.owner = pid, to_child_w, from_child_r, os.getpid()

    def thaw(self) -> None:
        if self._froze:
            gc.unfreeze()
            self._froze = False

    def reusable(self) -> bool:
        """Started by this process (not inherited through a fork), and silent since its last
        run ended: no EOF, no stray message."""
        if self.r is None or self.owner != os.getpid():
            return False
        poller = select.poll()
        poller.register(self.r, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        """Close the pipes (the writer reads EOF) and collect its exit status in a thread:
        tearing down its copy of this process's address space takes it ~20 ms."""
        if self.r is None:
            return
        for fd in (self.w, self.r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.w = self.r = None
        self.thaw()
        threading.Thread(target=_wait_for_exit, args=(self.pid,), daemon=True,
                         name="commsgd-tracking-reaper").start()


_idle: _Writer | None = None  # a writer waiting for this process's next run
_idle_lock = threading.Lock()

# Pipelined closes. Closing a run is the writer's work (the last values, the artifacts, the
# terminal status: ~20-40 ms of SQLite transactions per run); the training process only has to
# have *sent* the close: from then on the writer closes the run even if this process dies (it
# reads the close before the EOF). So in a sweep whose jobs run one after another in this
# process, `finish` returns once the close is sent, and the next job's composition and set-up
# overlap with the writer's work on the other core. The close is confirmed (and its errors
# raised, with the messages `finish` gives) before the writer serves the next run, and when the
# sweep ends: no run is reported before its close is confirmed, none is left unconfirmed.
_pipelined = False
_closing: list[tuple[BackgroundTracker, str, str | None]] = []  # sent, not yet confirmed


@contextlib.contextmanager
def closes_pipelined():
    """Within the block, BackgroundTracker.finish returns once the close is sent; leaving it
    confirms every close (raising the first error, or logging it if the block is left by an
    exception of its own, which stays the one raised)."""
    global _pipelined
    _pipelined = True
    try:
        yield
    except BaseException:
        _pipelined = False
        try:
            wait_for_closes()
        except Exception as exc:  # noqa: BLE001 - the block's own exception is the one to see
            log.error("commsgd: %s", exc)
        raise
    _pipelined = False
    wait_for_closes()


def wait_for_closes() -> None:
    """Confirm every close that `finish` sent and did not wait for: each run's writer reply,
    its errors raised as `finish` raises them (the first; the others are logged)."""
    first = None
    while _closing:
        tracker, status, reason = _closing.pop(0)
        try:
            tracker._confirm_close(status, reason)
        except Exception as exc:  # noqa: BLE001 - every close is confirmed before raising
            if first is None:
                first = exc
            else:
                log.error("commsgd: %s", exc)
    if first is not None:
        raise first


def prestart(uri: str | None) -> None:
    """Start this process's writer now, ahead of its first run, and have it open the store at
    `uri` while this process sets the run up.

    Why. A run started from the shell imports torch and builds its task (~2-3 s) before it
    opens its tracker; a writer forked only then imports MLflow and opens the store (another
    ~2-3 s: `import mlflow` alone is ~2 s) while the run trains, and a short run then waits
    for it at its close. Started first, the writer does that work on the other core while this
    process imports torch, and it is forked from a process that holds neither torch nor the
    task (a smaller fork). It says nothing until the run opens (`_take_writer` takes it like
    any idle writer); what it could not open is tried again, and reported, when the run opens.
    Nothing to do where fork is unavailable, or where this process has a writer already:
    waiting for the next run, or still closing the last (a sweep's pipelined close), which
    the run takes once the close is confirmed.
    """
    if not fork_available() or _closing:
        return
    with _idle_lock:
        if _idle is not None:
            return
    # frozen objects stay frozen until its first run ends: no thaw here
    _give_back(_Writer(preload=uri), thaw=False)


def _take_writer() -> _Writer:
    global _idle
    wait_for_closes()  # the last run's writer goes back to the pool once its close is confirmed
    with _idle_lock:
        writer, _idle = _idle, None
    if writer is not None:
        if writer.reusable():
            return writer
        if writer.owner == os.getpid():
            writer.close()
    return _Writer()


def _give_back(writer: _Writer, *, thaw: bool = True) -> None:
    """`writer` becomes this process's idle writer, for its next run; closed if there is one."""
    global _idle
    if thaw:
        writer.thaw()
    with _idle_lock:
        if _idle is None:
            _idle = writer
            return
    writer.close()  # another run's writer is waiting already


def _stacks_path(pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"commsgd-tracking-writer-{pid}.stacks"


def _stacks_of(pid: int, wait_s: float = 2.0) -> str:
    """The Python stacks of every thread of writer `pid`, which dumps them on SIGUSR1
    (faulthandler: it works while the writer's threads are blocked, even on a lock)."""
    path = _stacks_path(pid)
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return ""
    deadline, text = time.monotonic() + wait_s, ""
    while time.monotonic() < deadline:  # until the dump has stopped growing
        time.sleep(0.2)
        try:
            now = path.read_text()
        except OSError:
            return ""
        if now and now == text:
            break
        text = now
    return text.strip()


def _forget_stacks(pid: int) -> None:
    try:
        _stacks_path(pid).unlink()
    except OSError:
        pass


def _wait_for_exit(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    _forget_stacks(pid)  # a writer that was killed did not remove it


# -- the writer process -----------------------------------------------------------------------
def _forget_inherited_stores() -> None:
    """Drop MLflow's cached stores, SQLAlchemy engines and HTTP sessions inherited from the
    parent: SQLite forbids using a connection across fork, and a pooled socket would be shared
    with the parent. Guarded: a future MLflow without these caches needs nothing done."""
    from importlib import import_module

    for module, cls in (("mlflow.tracking._tracking_service.registry", "TrackingStoreRegistry"),
                        ("mlflow.tracking._model_registry.registry", "ModelRegistryStoreRegistry")):
        cached = getattr(getattr(sys.modules.get(module), cls, None),
                         "_get_store_with_resolved_uri", None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()
    for module in ("mlflow.store.tracking.sqlalchemy_store",
                   "mlflow.store.model_registry.sqlalchemy_store",
                   "mlflow.store.jobs.sqlalchemy_store"):
        mod = sys.modules.get(module)
        for cls in vars(mod).values() if mod is not None else ():
            engines = isinstance(cls, type) and cls.__dict__.get("_engine_map")
            if isinstance(engines, dict):
                _INHERITED.append(dict(engines))
                cls._engine_map = {}
                cls._engine_map_lock = threading.Lock()
    if "mlflow.utils.request_utils" in sys.modules:
        sessions = getattr(import_module("mlflow.utils.request_utils"),
                           "_cached_get_request_session", None)
        if hasattr(sessions, "cache_clear"):
            sessions.cache_clear()


def _drop_inherited_telemetry() -> None:
    """Drop MLflow's usage-telemetry client inherited from the parent. Its consumer threads
    did not survive fork, and one of them may have held the client's locks at that moment:
    MLflow records an event at every create_run and log_batch, and the writer's first one
    would then wait forever on a lock nobody will release. With no client, MLflow records
    nothing from this process; the parent's own telemetry is whatever its user configured."""
    telemetry = sys.modules.get("mlflow.telemetry.client")
    if telemetry is None or not hasattr(telemetry, "_MLFLOW_TELEMETRY_CLIENT"):
        return
    _INHERITED.append(telemetry._MLFLOW_TELEMETRY_CLIENT)  # never even finalized here
    telemetry._MLFLOW_TELEMETRY_CLIENT = None  # set directly: its lock may be held, too
    if hasattr(telemetry, "_client_lock"):
        telemetry._client_lock = threading.Lock()


def _writer_main(inbox_fd: int, reply_fd: int, parent_pid: int,
                 preload: str | None = None) -> int:
    """The child's body: the runs the training process opens, one after another, until it
    closes the pipe or exits (first opening the store at `preload`, see `prestart`). Returns
    the exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # where its threads are, on request of a training process that waited for it in vain
    stacks = open(_stacks_path(os.getpid()), "w")  # noqa: SIM115 - open for the process's life
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True, chain=False)
    # The inherited heap is the training process's: a full garbage collection here would walk
    # all of it (hundreds of ms, and a copy of every page it touches). None of it is the
    # writer's garbage: keep it out of the collector's sight (the parent froze it already,
    # unless someone else had frozen objects before).
    gc.freeze()
    _forget_inherited_stores()
    _drop_inherited_telemetry()

    def reply(msg) -> None:
        try:
            _write_all(reply_fd, _frame(msg))
        except OSError:
            pass  # the training process is gone; the run is closed regardless

    inbox: queue.SimpleQueue = queue.SimpleQueue()

    opened = False  # whether any run was opened through this writer

    def read() -> None:  # drains the pipe while the main thread waits on the store
        nonlocal opened
        while True:
            try:
                msg = _read_message(inbox_fd)
            except (EOFError, OSError):
                if not opened:
                    # no run to close: the training process is done before its first run
                    # (a config refused after `prestart`). Exit now, not once the main
                    # thread is through its preload (seconds), so that nothing waiting for
                    # this process's ends of the training process's stdout waits for it.
                    _forget_stacks(os.getpid())
                    os._exit(0)
                inbox.put(_EOF)
                return
            except Exception as exc:  # noqa: BLE001 - a garbled message: stop like at EOF
                log.error("tracking writer: unreadable message (%s)", exc)
                inbox.put(_EOF)
                return
            opened = opened or msg[0] == "open"
            inbox.put(msg)

    threading.Thread(target=read, name="commsgd-tracking-reader", daemon=True).start()
    if preload is not None:
        _preload(preload)
    while True:
        msg = _next_message(inbox, parent_pid)
        if msg[0] == "eof":
            return 0
        if msg[0] != "open":
            continue  # what a run whose opening failed sent before it knew
        _, kwargs, cwd, env = msg
        try:
            os.chdir(cwd)  # a relative sqlite:/// path means the same as in the run
        except OSError:
            pass
        if env != os.environ:
            os.environ.clear()
            os.environ.update(env)
        try:
            tracker = MlflowTracker(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            reply(("error", _portable(exc)))
            continue
        reply(("ready", tracker.run_id, dict(tracker._skip_through), tracker.experiment_id))
        if _serve(tracker, inbox, reply, parent_pid) == "eof":
            return 0


def _preload(uri: str) -> None:
    """Import MLflow's client and, for a local SQLite store named by an absolute path, create
    its schema and open it (MLflow keeps the opened store and its engine for the run's own
    open). One try, and silent: the run's open repeats what failed here, with its retries and
    its messages. A server is not contacted before the run asks for it, and a relative path is
    left to the run, which says in which directory it works."""
    try:
        import mlflow.tracking  # noqa: F401 - the import is the work

        from suite.stores import sqlite_path
        from suite.tracking import open_client

        path = sqlite_path(uri)
        if path is not None and path.is_absolute():
            open_client(uri, attempts=1)
    except Exception as exc:  # noqa: BLE001 - the run's own open says what is wrong
        log.debug("tracking writer: opening %s ahead of the run failed (%s)", uri, exc)


def _next_message(inbox, parent_pid: int, timeout_s: float | None = None):
    """The next message, or EOF also when the training process is gone while another process
    (one it forked) still holds the pipe open."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
        try:
            return inbox.get(timeout=max(0.0, wait))
        except queue.Empty:
            if os.getppid() != parent_pid:
                return _EOF
            if deadline is not None and time.monotonic() >= deadline:
                return None


def _serve(tracker: MlflowTracker, inbox, reply, parent_pid: int) -> str:
    """Execute the parent's calls. Metric values are written in batches of up to write_at
    (MLflow's per-call maximum, or tracking.flush_every if smaller: a batch costs ~6 ms plus
    ~65 µs per value, so large batches spare the CPU the training process may need), and
    sooner when the parent pauses (IDLE_S without a message) or reaches the end of its run
    (its first artifact, tag or flush): little is left for `finish` to wait for."""
    write_at = max(1, min(WRITE_AT, tracker.flush_every))
    received = acked = 0
    deferred: BaseException | None = None  # a failed tag or artifact, raised at finish
    retry_at, delay = 0.0, 0.5  # after a failed write, the next try waits
    last_message, urgent = time.monotonic(), False

    def ack() -> None:
        nonlocal acked
        delivered = received - tracker.pending
        if delivered != acked:
            reply(("ack", delivered))
            acked = delivered

    while True:
        pending = tracker.pending
        now = time.monotonic()
        write_from = retry_at if pending >= write_at or urgent else max(retry_at,
                                                                        last_message + IDLE_S)
        if pending and now >= write_from:
            tracker.flush(patient=False)  # one try; a failure keeps the values
            if tracker.pending:
                retry_at, delay = time.monotonic() + delay, min(2 * delay, 5.0)
            else:
                delay, urgent = 0.5, False
            ack()
            continue
        msg = _next_message(inbox, parent_pid, (write_from - now) if pending else None)
        if msg is None:
            continue  # time to write
        last_message = time.monotonic()
        urgent = urgent or msg[0] != "metrics"
        kind = msg[0]
        if kind == "metrics":  # a resumed run's repeated steps were dropped by the parent
            received += len(msg[1])
            tracker.log_rows(msg[1])
        elif kind in ("tags", "artifact"):
            try:
                if kind == "tags":
                    tracker.set_tags(msg[1])
                else:
                    tracker.log_artifact(Path(msg[1]), msg[2])
            except Exception as exc:  # noqa: BLE001
                log.error("tracking writer: %s failed: %s", kind, exc)
                deferred = deferred or exc
        elif kind == "flush":
            try:
                tracker.flush(patient=True)
                ack()
                reply(("flushed", None))
            except Exception as exc:  # noqa: BLE001
                reply(("flushed", _portable(exc)))
        elif kind == "finish":
            status, reason, outcome = msg[1], msg[2], None
            if deferred is not None and _store_answers(tracker.uri):
                # the store is there and refused the files (a full disk). A store that is gone
                # refused nothing: finish() below saves the run, status and all, to its
                # fallback file, and the files stay in the run's output directory. A run whose
                # files did not reach a store that answers did not finish well
                problem = (f"could not log the run's files to the store "
                           f"({type(deferred).__name__}: {deferred})")
                reason = f"{reason}; {problem}" if reason else problem
                status = "FAILED" if status == "FINISHED" else status
                outcome = TrackingDeliveryError(
                    f"{problem}; run {tracker.run_id} is marked {status}, its metrics are in "
                    f"the store")
            try:
                tracker.finish(status, reason)
                ack()
            except BaseException as exc:  # noqa: BLE001 - TrackingDeliveryError, the store's
                outcome = exc
            reply(("finished", None if outcome is None else _portable(outcome)))
            return "finished"
        elif kind == "eof":
            _close_orphaned(tracker)
            return "eof"


def _store_answers(uri: str) -> bool:
    """Whether the store at `uri` answers now (a local file store always does)."""
    from suite.tracking import TrackingUnavailable, check_reachable

    try:
        check_reachable(uri, timeout_s=2.0)
        return True
    except TrackingUnavailable:
        return False


def _close_orphaned(tracker: MlflowTracker) -> None:
    """The training process is gone without closing the run: deliver what was received and
    close it FAILED, unless someone (the distributed launcher) closed it already."""
    try:
        status = retry(lambda: tracker.client.get_run(tracker.run_id).info.status, "get_run",
                       attempts=3)
    except Exception:  # noqa: BLE001 - assume it is still open
        status = "RUNNING"
    try:
        if status == "RUNNING":
            tracker.finish("FAILED", ORPHANED)
        else:
            tracker.flush(patient=True)
    except Exception as exc:  # noqa: BLE001 - nobody is left to tell but the log
        log.error("tracking writer: could not close run %s: %s", tracker.run_id, exc)
