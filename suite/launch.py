"""Running a job on its hardware: in this process, as one torch.distributed rank, or by
starting hardware.world_size ranks on this host and supervising them.

    execute_job(cfg, ...)
      simulated hardware (cpu, gpu)        runner.execute in this process
      multi_* under torchrun (RANK set)    this process is one rank (run_as_rank)
      multi_* otherwise                    spawn world_size ranks (torch.multiprocessing), each
                                           run_as_rank; wait; return rank 0's result

Only rank 0 records the run in MLflow (the runner gives the other ranks a NullTracker). The
launcher's own duties are the ones no rank can do for itself:

- Refuse a job that cannot run (workers not divisible by world_size, ...) before starting any.
- Serve the rendezvous store (as torchrun's agent does), bound before the ranks start.
- With hardware.link.rate or .delay, serve it and start the ranks inside a network namespace
  whose loopback is shaped so (suite/links.py, suite/netns.py), the launcher itself staying
  on the host's network; the kernel frees the namespace with the last of them.
- When a rank fails, give the others the process-group timeout (plus a short grace) to notice
  and exit on their own, so that rank 0 can close its run; then stop the rest (SIGTERM, then
  SIGKILL). Report which rank failed first and why, and make sure the MLflow run ends FAILED
  even when rank 0 died before it could say so.
- Children exit when the launcher dies: the kernel sends them SIGTERM (PR_SET_PDEATHSIG, Linux)
  and a watchdog thread ends them if the launcher has gone for longer than the timeout.
"""

from __future__ import annotations

import base64
import json
import math
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import wait as wait_for_exit
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from suite import links
from suite.errors import USER_ERRORS, ConfigError, UserError

MASTER_ADDR = "127.0.0.1"
# After a rank fails, the others get the process-group timeout plus this to exit by themselves
# (a collective with a dead peer raises at once with gloo; at the latest at the timeout).
GRACE_S = 10.0
# Between SIGTERM and SIGKILL when ranks must be stopped.
TERM_WAIT_S = 5.0


class RankTerminated(BaseException):
    """SIGTERM in a rank: raised so that the run is closed (FAILED) on the way out.
    A BaseException, so that no `except Exception` on the way swallows it."""


# -- entry point --------------------------------------------------------------------------------
def is_distributed(cfg: DictConfig) -> bool:
    return bool(cfg.hardware.get("backend"))


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_primary() -> bool:
    """Whether this process speaks for the job (prints the summary): not a torchrun rank > 0."""
    return int(os.environ.get("RANK", "0")) == 0


def execute_job(cfg: DictConfig, *, launch_dir: Path, output_dir: Path,
                sweep_id: str | None = None):
    """Run one job on its hardware; returns the runner's RunResult (rank 0's, when spawned)."""
    _check_link(cfg)
    if not is_distributed(cfg):
        _start_tracking_writer(cfg, launch_dir)  # before torch is imported: see the function
        from suite.runner import execute

        return execute(cfg, launch_dir=launch_dir, output_dir=output_dir, sweep_id=sweep_id)
    check_job(cfg)
    if under_torchrun():
        with _sigterm_raises():
            return run_as_rank(cfg, launch_dir=launch_dir, output_dir=output_dir,
                               sweep_id=sweep_id)
    return spawn(cfg, launch_dir=launch_dir, output_dir=output_dir, sweep_id=sweep_id)


def run_as_rank(cfg: DictConfig, *, launch_dir: Path, output_dir: Path,
                sweep_id: str | None, announce=None):
    """This process as one rank of the job (RANK, WORLD_SIZE, MASTER_* in the environment).

    `announce(tracker)` is called on rank 0 once its run is recorded. Every rank then meets the
    others at `setup_barrier`: creating the MLflow run can take longer than the process-group
    timeout on a busy machine, and the other ranks would time out in their first collective.
    """
    from suite.backends import make_backend
    from suite.hardware import select_device
    from suite.runner import execute

    hw = OmegaConf.to_container(cfg.hardware, resolve=True)
    backend = make_backend(hw, cfg.workers, select_device(hw))

    def on_start(tracker):
        if announce is not None and backend.rank == 0:
            announce(tracker)
        backend.setup_barrier()

    return execute(cfg, launch_dir=launch_dir, output_dir=output_dir, sweep_id=sweep_id,
                   backend=backend, on_start=on_start)


def _start_tracking_writer(cfg: DictConfig, launch_dir: Path) -> None:
    """A job tracked by the writer process (tracking=mlflow, tracking.writer=process) starts
    its writer first, so that MLflow's import and the store's opening there overlap with this
    process importing torch and building the task (suite.tracking_writer.prestart). A bad
    tracking config is left to the runner, which says what is wrong."""
    from suite.tracking import tracking_uri

    uri = tracking_uri(cfg, launch_dir)  # None: not tracked by MLflow
    if uri is None or (cfg.get("tracking") or {}).get("writer", "process") != "process":
        return
    from suite.tracking_writer import prestart

    prestart(uri)


def _check_link(cfg: DictConfig) -> None:
    """hardware.link.* (suite/links.py): refused here what cannot work, before anything runs."""
    tracking = cfg.get("tracking") or {}
    uri = tracking.get("uri") if tracking.get("name") == "mlflow" else None
    links.check_job(OmegaConf.to_container(cfg.hardware, resolve=True), tracking_uri=uri,
                    distributed=is_distributed(cfg), under_torchrun=under_torchrun())


def check_job(cfg: DictConfig) -> None:
    """What can be refused before any rank starts."""
    from suite.backends.distributed import check_hardware

    check_hardware(OmegaConf.to_container(cfg.hardware, resolve=True), cfg.workers)
    # Checkpoints hold one process's workers; a rank's file would clobber the others'.
    if cfg.get("checkpoint_every") or cfg.get("checkpoint_path") or cfg.get("resume"):
        raise ConfigError(
            f"hardware={cfg.hardware.name}: resume, checkpoint_every and checkpoint_path are "
            "not supported on distributed hardware yet (each rank holds different workers' "
            "state); unset them or use hardware=cpu")


# -- the launching process ----------------------------------------------------------------------
def host_store(port: int | None, timeout_s: float):
    """The job's rendezvous store, served by the launcher as torchrun's agent serves it.

    Binding here, on port 0 when no port is given, takes a free port atomically (a port found
    free and bound later by rank 0 can be taken in between), and a port in use is refused
    before any rank starts. The ranks connect as clients (TORCHELASTIC_USE_AGENT_STORE).
    """
    from datetime import timedelta

    import torch.distributed as dist

    try:
        return dist.TCPStore(MASTER_ADDR, port or 0, is_master=True, wait_for_workers=False,
                             timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, OSError) as exc:
        raise ConfigError(f"hardware.master_port={port}: cannot listen on {MASTER_ADDR}:{port} "
                          f"({exc}); set another port, or null for a free one") from exc


def spawn(cfg: DictConfig, *, launch_dir: Path, output_dir: Path, sweep_id: str | None):
    """Start hardware.world_size ranks on this host, wait for them, return rank 0's result."""
    import torch.multiprocessing as mp

    hw = cfg.hardware
    world_size, timeout_s = int(hw.world_size), float(hw.timeout_s)
    if hw.backend == "nccl":
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ConfigError(f"hardware={hw.name} needs GPUs and torch sees none on this host "
                              f"(torch {torch.__version__}); use hardware=multi_cpu")
        if world_size > gpus:  # NCCL refuses two ranks on one GPU
            raise ConfigError(f"hardware={hw.name}: hardware.world_size={world_size} ranks need "
                              f"one GPU each and this host has {gpus}; use at most {gpus}, or "
                              "torchrun across hosts (docs/distributed.md)")
    # hardware.link.*: the store and the ranks in a network namespace with a shaped loopback,
    # made here (or refused, saying what the machine lacks) before anything starts
    shaped = links.open_namespace(links.link_spec(OmegaConf.to_container(hw, resolve=True)))
    with links.entered(shaped):
        store = host_store(hw.master_port, timeout_s)
    port = store.port
    report_dir = Path(tempfile.mkdtemp(prefix="commsgd-launch-"))
    spec = {
        "cfg": OmegaConf.to_container(cfg, resolve=True),
        "launch_dir": str(launch_dir), "output_dir": str(output_dir), "sweep_id": sweep_id,
        "world_size": world_size, "port": port, "timeout_s": timeout_s,
        "report_dir": str(report_dir), "parent_pid": os.getpid(),
    }
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(rank, spec), name=f"commsgd-rank{rank}",
                         daemon=True) for rank in range(world_size)]
    try:
        if shaped is not None:
            print(f"commsgd: the ranks run in network namespace {shaped.name}, its loopback "
                  f"shaped: {shaped.description}", file=sys.stderr, flush=True)
        with _standard_start_method(), links.entered(shaped):
            for p in procs:
                p.start()
        print(f"commsgd: started {world_size} ranks ({hw.backend} on {MASTER_ADDR}:{port}), "
              f"pids {' '.join(str(p.pid) for p in procs)}", file=sys.stderr, flush=True)
        try:
            failed, stopped, frozen = _supervise(procs, timeout_s, report_dir)
        except KeyboardInterrupt:
            # Pass Ctrl-C on (a terminal sends it to every rank already, `kill -INT` to the
            # launcher does not) and give rank 0 a moment to close its run as KILLED.
            for p in procs:
                if p.is_alive():
                    os.kill(p.pid, signal.SIGINT)
            _wait_all(procs, GRACE_S)
            _stop(procs)
            _close_run(report_dir, "KILLED", "interrupted (KeyboardInterrupt)", None)
            raise
        return _outcome(procs, failed, stopped, report_dir, timeout_s, frozen)
    finally:
        _stop(procs)
        shutil.rmtree(report_dir, ignore_errors=True)
        # the store's socket and server thread, and the descriptor, are what is left of the
        # namespace once the ranks are gone; a raised exception's frame would keep the store
        del store
        links.close(shaped)


class _standard_start_method:
    """A spawned child re-applies the parent's *global* start method. Inside a joblib/loky
    worker (hydra/launcher=parallel) that is 'loky', which a fresh child cannot resolve; make
    it 'spawn' while the ranks start, then put it back."""

    def __enter__(self):
        import multiprocessing

        self._previous = multiprocessing.get_start_method(allow_none=True)
        self._swap = self._previous not in (None, "spawn", "fork", "forkserver")
        if self._swap:
            multiprocessing.set_start_method("spawn", force=True)

    def __exit__(self, *exc):
        if self._swap:
            import multiprocessing

            multiprocessing.set_start_method(self._previous, force=True)
        return False


def _is_frozen(pid: int) -> bool:
    """Whether a process is stopped (SIGSTOP, SIGTSTP, a debugger): state T or t. A stopped
    rank fails nothing itself; the others time out waiting for it."""
    from suite.procinfo import state

    return state(pid) in ("T", "t")


def _supervise(procs, timeout_s: float, report_dir: Path
               ) -> tuple[list[int], list[int], list[int]]:
    """Wait for every rank. Returns (ranks that exited non-zero, in the order they did; ranks
    still running at the deadline, which starts at the first failure; ranks found stopped
    when the first failed or at the deadline, the likely cause)."""
    pending = {p.sentinel: rank for rank, p in enumerate(procs)}
    failed: list[int] = []
    frozen: list[int] = []
    deadline = None
    while pending:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = wait_for_exit(list(pending), timeout=timeout)
        if not ready:
            break  # past the deadline
        batch = [pending.pop(sentinel) for sentinel in ready]
        for rank in batch:
            procs[rank].join()
        # Ranks that exited together: the one that died without a report (os._exit, a signal)
        # or raised first is more likely the cause than the ones whose collectives then broke.
        batch_failed = sorted((r for r in batch if procs[r].exitcode != 0),
                              key=lambda r: _failure_time(report_dir, r))
        failed.extend(batch_failed)
        if batch_failed and deadline is None:
            deadline = time.monotonic() + timeout_s + GRACE_S
            frozen = [r for r in sorted(pending.values()) if _is_frozen(procs[r].pid)]
    stopped = sorted(pending.values())
    frozen = frozen or [r for r in stopped if _is_frozen(procs[r].pid)]
    _stop([procs[r] for r in stopped])
    return failed, stopped, frozen


def _failure_time(report_dir: Path, rank: int) -> float:
    report = _read(report_dir / f"rank{rank}.json")
    if report is None or "error" not in report:
        return -math.inf
    return report["error"]["time"]


def _wait_all(procs, seconds: float) -> None:
    end = time.monotonic() + seconds
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))


def _stop(procs) -> None:
    """SIGTERM every live rank, then SIGKILL what is left after TERM_WAIT_S."""
    live = [p for p in procs if p.pid is not None and p.is_alive()]
    for p in live:
        p.terminate()
    _wait_all(live, TERM_WAIT_S)
    for p in live:
        if p.is_alive():
            p.kill()
            p.join()


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _describe(rank: int, proc, report: dict | None) -> str:
    if report is not None and "error" in report:
        return f"rank {rank} (pid {proc.pid}): {report['error']['summary']}"
    code = proc.exitcode
    if code is not None and code < 0:
        how = f"killed by signal {signal.Signals(-code).name}"
    else:
        how = f"exited with code {code} without a Python exception (os._exit, a crash or OOM)"
    return f"rank {rank} (pid {proc.pid}): {how}"


def _outcome(procs, failed, stopped, report_dir: Path, timeout_s: float, frozen=()):
    from suite.runner import RunResult

    reports = [_read(report_dir / f"rank{r}.json") for r in range(len(procs))]
    started = _read(report_dir / "started.json")
    if not failed and not stopped:
        res = reports[0]["result"]
        return RunResult(res["status"], res["final"], res["run_id"], res["tracking_uri"],
                         res["experiment"], reason=res["reason"],
                         experiment_id=res.get("experiment_id"))
    first = reports[failed[0]] if failed else None
    if started is None and first and "error" in first and first["error"]["user_error"]:
        # refused (a bad config, an unreachable store) before a run was recorded; the other
        # ranks' errors are its consequences. Reported as the CLI reports any such error.
        raise _user_error(first["error"])
    parts = [f"rank {r} (pid {procs[r].pid}): stopped (SIGSTOP: process state T) while the "
             "others waited for it in a collective" for r in frozen]
    parts += [f"{_describe(r, procs[r], reports[r])}" for r in failed]
    parts += [f"rank {r} (pid {procs[r].pid}): still running {timeout_s + GRACE_S:g} s after "
              "the first failure; stopped" for r in stopped if r not in frozen]
    # a stopped rank raises nothing: the ranks whose collectives timed out waiting for it fail
    # first, but it is the cause
    culprit = frozen[0] if frozen else failed[0] if failed else stopped[0]
    reason = f"rank {culprit} failed first; " + "; ".join(parts)
    print(f"commsgd: distributed job failed: {reason}", file=sys.stderr, flush=True)
    _close_run(report_dir, "FAILED", reason, culprit)
    return RunResult("FAILED", {}, started and started["run_id"],
                     started and started["tracking_uri"], started and started["experiment"],
                     reason=reason)


def _error_report(exc: BaseException) -> dict:
    """What a rank says about the exception that ended it (rank<r>.json)."""
    user = isinstance(exc, USER_ERRORS)
    report = {"type": type(exc).__name__, "message": str(exc),
              "summary": f"{type(exc).__name__}: {exc}", "user_error": user,
              "time": time.time()}
    if user:  # the launcher raises this very exception again (`_user_error`)
        try:
            report["pickled"] = base64.b64encode(pickle.dumps(exc)).decode()
        except Exception:  # not picklable: the launcher raises a UserError with its text
            pass
    return report


def _user_error(error: dict) -> Exception:
    """The rank's own exception object, as it raised it (pickled by `_rank_main`)."""
    try:
        exc = pickle.loads(base64.b64decode(error["pickled"]))
    except Exception:  # a user error class whose pickling does not round-trip
        exc = None
    return exc if isinstance(exc, USER_ERRORS) else UserError(error["message"])


def _close_run(report_dir: Path, status: str, reason: str, failed_rank: int | None) -> None:
    """Mark rank 0's MLflow run with the job's outcome: a dead rank 0 cannot do it."""
    started = _read(report_dir / "started.json")
    if started is None or started.get("run_id") is None:
        return
    from mlflow.tracking import MlflowClient

    tags = {"failure": reason[:5000]}
    if failed_rank is not None:
        tags["distributed.failed_rank"] = str(failed_rank)
    try:
        client = MlflowClient(tracking_uri=started["tracking_uri"])
        for key, value in tags.items():
            client.set_tag(started["run_id"], key, value)
        client.set_terminated(started["run_id"], status=status)
    except Exception as exc:  # the job's own error is what matters; say this one beside it
        print(f"commsgd: could not mark run {started['run_id']} {status} in "
              f"{started['tracking_uri']}: {type(exc).__name__}: {exc}", file=sys.stderr)


# -- one rank (a spawned child) -----------------------------------------------------------------
def _rank_main(rank: int, spec: dict) -> None:
    """The body of a spawned rank: join the group, run the job, report, exit."""
    _exit_with_parent(spec["parent_pid"], spec["timeout_s"])
    signal.signal(signal.SIGTERM, _raise_terminated)
    world_size = spec["world_size"]
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR=MASTER_ADDR,
                      MASTER_PORT=str(spec["port"]), TORCHELASTIC_USE_AGENT_STORE="True")
    report_dir = Path(spec["report_dir"])
    report: dict = {"rank": rank}
    code = 1
    try:
        import torch

        cfg = OmegaConf.create(spec["cfg"])
        if cfg.hardware.get("threads") is None:
            # the ranks share this host's cores; torch would give each of them all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        # ranks other than 0 record nothing (runner._finish); their directory is scratch
        out = Path(spec["output_dir"]) if rank == 0 else report_dir / f"rank{rank}"
        result = run_as_rank(cfg, launch_dir=Path(spec["launch_dir"]), output_dir=out,
                             sweep_id=spec["sweep_id"], announce=lambda tracker: _write(
                                 report_dir / "started.json", {
                                     "run_id": tracker.run_id, "tracking_uri": tracker.uri,
                                     "experiment": tracker.experiment_name}))
        report["result"] = {"status": result.status, "final": result.final,
                            "run_id": result.run_id, "tracking_uri": result.tracking_uri,
                            "experiment": result.experiment, "reason": result.reason,
                            "experiment_id": result.experiment_id}
        code = 0
    except BaseException as exc:  # noqa: B036 - report everything, then exit non-zero
        report["error"] = _error_report(exc)
        if not report["error"]["user_error"] and not isinstance(exc, KeyboardInterrupt):
            # Ctrl-C: the launcher says it
            print(f"[rank {rank}] {traceback.format_exc()}", file=sys.stderr, flush=True)
    _write(report_dir / f"rank{rank}.json", report)
    _leave(code)


def _leave(code: int) -> None:
    """Exit normally, so that multiprocessing's finalizers release what the rank holds (a
    progress bar's semaphore, say); but a process group with a dead peer can block in its
    teardown, so a watchdog ends the process regardless after TERM_WAIT_S."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the job is over: a stop may just kill
    sys.stdout.flush()
    sys.stderr.flush()

    def force():
        time.sleep(TERM_WAIT_S)
        os._exit(code)

    threading.Thread(target=force, name="commsgd-exit-watchdog", daemon=True).start()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(code)


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def _raise_terminated(signum, frame):
    raise RankTerminated("received SIGTERM: the launcher stopped this rank (another rank "
                         "failed) or the launcher itself exited")


def _exit_with_parent(parent_pid: int, timeout_s: float) -> None:
    """Make this rank end when the launcher dies, even if it is stuck in a collective."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the parent dies
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below still applies
    if os.getppid() != parent_pid:
        os._exit(1)  # the launcher died before we got here

    def watchdog():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        # SIGTERM gave the rank a chance to close its run; a rank blocked in a collective
        # could not take it, so end it once the collective would have timed out anyway.
        time.sleep(timeout_s + GRACE_S)
        os._exit(1)

    threading.Thread(target=watchdog, name="commsgd-parent-watchdog", daemon=True).start()


class _sigterm_raises:
    """Under torchrun, the agent stops the surviving ranks with SIGTERM when one fails: turn it
    into an exception so that rank 0 closes its run as FAILED instead of leaving it RUNNING."""

    def __enter__(self):
        self._main = threading.current_thread() is threading.main_thread()
        if self._main:
            self._previous = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, *exc):
        if self._main:
            signal.signal(signal.SIGTERM, self._previous)
        return False
