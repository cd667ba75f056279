"""What /proc says about a process (Linux): its state and its start time."""

from __future__ import annotations

from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, pgrp, session, ..., starttime is index
    19), or None when there is no such process (or no /proc). The command name, field 2, is in
    parentheses and may hold spaces: the split starts after it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def state(pid: int) -> str | None:
    """R, S, D, T (stopped), t (traced), Z (zombie), ...; None when there is no process."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def start_ticks(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (with the pid, it names one
    process: pids are reused, start times on one boot are not)."""
    fields = stat_fields(pid)
    return fields[19] if fields else None
