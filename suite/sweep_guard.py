"""One MLflow run per config, whatever happened to the processes that ran it.

A run records which process owns it (tags `commsgd.host`, `commsgd.pid`, `commsgd.pid_start`:
the process's start time in clock ticks since boot, and `commsgd.boot_id`), so that anyone on
the same host can tell a run that is being written from one whose process is gone (killed with
SIGKILL together with its tracking writer, a machine that rebooted): the pid alone would not
do, since pids are reused.

`resume=true` uses that to keep one run per config_hash:

    a FINISHED run                        skip the job
    a RUNNING run whose owner is alive    skip the job (it is being run; never start it twice)
    a RUNNING run whose owner is gone     close it KILLED, with the reason, and continue it
    a KILLED or FAILED run                continue it, in the same MLflow run

Continuing a run starts from its checkpoint when one belongs to it, else from step 0; the
values the store already holds are not logged again (suite.tracking: each key's history is a
prefix of what the run logs, and a run is a pure function of its config). A sweep's launching
process also closes the stale RUNNING runs of its experiment before the jobs start
(suite.hydra_callbacks).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from suite.procinfo import start_ticks

log = logging.getLogger("commsgd.sweep_guard")

HOST, PID, PID_START, BOOT_ID = ("commsgd.host", "commsgd.pid", "commsgd.pid_start",
                                 "commsgd.boot_id")
OWNER_TAGS = (HOST, PID, PID_START, BOOT_ID)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """The tags that name this process (or `pid`) as a run's owner."""
    pid = os.getpid() if pid is None else pid
    return {HOST: socket.gethostname(), PID: str(pid), PID_START: str(start_ticks(pid)),
            BOOT_ID: _boot_id()}


def owner_state(tags: dict[str, str]) -> str:
    """'alive', 'gone', 'elsewhere' (another host: cannot be checked from here) or 'unknown'
    (a run written before runs named their owner)."""
    if PID not in tags:
        return "unknown"
    if tags.get(HOST) != socket.gethostname():
        return "elsewhere"
    if tags.get(BOOT_ID) != _boot_id():
        return "gone"  # the machine rebooted since
    start = start_ticks(int(tags[PID]))
    return "alive" if start is not None and start == tags.get(PID_START) else "gone"


def describe_owner(tags: dict[str, str]) -> str:
    return f"pid {tags.get(PID, '?')} on host {tags.get(HOST, '?')}"


def close_if_stale(client, run) -> bool:
    """Close a RUNNING run whose owner process is gone as KILLED, saying so; True if it did."""
    if run.info.status != "RUNNING" or owner_state(run.data.tags) != "gone":
        return False
    reason = (f"its process ({describe_owner(run.data.tags)}) is gone without closing the run "
              "(killed together with its tracking writer); closed by a later commsgd")
    client.set_tag(run.info.run_id, "failure", reason)
    client.set_terminated(run.info.run_id, status="KILLED")
    log.warning("run %s: %s", run.info.run_id, reason)
    return True


def close_stale_runs(client, experiment_id: str) -> int:
    """Close every stale RUNNING run of an experiment (see close_if_stale); how many."""
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                 max_results=10_000)
    return sum(close_if_stale(client, run) for run in running)


@dataclass
class Previous:
    """What resume=true does with a config: skip it (`skip` says why) or continue run_id."""

    skip: str | None = None
    run_id: str | None = None


def previous_run(client, experiment_id: str, digest: str) -> Previous:
    """The config's earlier runs decide: see the table in the module docstring."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.config_hash = '{digest}'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    closed = {run.info.run_id for run in runs if close_if_stale(client, run)}
    for run in runs:
        if run.info.status == "FINISHED":
            return Previous(skip=f"config_hash {digest} already FINISHED as run "
                                 f"{run.info.run_id}", run_id=run.info.run_id)
    for run in runs:
        if run.info.status != "RUNNING" or run.info.run_id in closed:
            continue
        state = owner_state(run.data.tags)
        where = {"alive": f"by {describe_owner(run.data.tags)}",
                 "elsewhere": f"by {describe_owner(run.data.tags)}, which cannot be checked "
                              "from this host"}.get(state, "by a process it does not name "
                                                           "(an older commsgd)")
        return Previous(skip=(
            f"config_hash {digest} is RUNNING as run {run.info.run_id} {where}; not started "
            f"twice (if nothing runs it, mark it KILLED in the MLflow UI and resume again)"),
            run_id=run.info.run_id)
    return Previous(run_id=runs[0].info.run_id if runs else None)
