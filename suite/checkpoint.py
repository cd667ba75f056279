"""Checkpoints: everything a run needs to continue as if it had never stopped.

A checkpoint holds the step, the algorithm's explicit state (parameters, error memories, DIANA
shifts, delay queues, local models), every per-worker generator's state, the channel's bit
counters, its schemes' states (per lane) and shared streams, the timers, the backend's
collective ledger, the task's own state where it has one (a network's BatchNorm statistics),
and the MLflow run id. Restoring it and running on gives the same metrics and, on the CPU,
bit-identical parameters.

Where: `checkpoints/<config_hash>.pt` in the launch directory, so that `resume=true` finds the
checkpoint of an interrupted job of a sweep without being told; or any file given as
`checkpoint_path`. Written to a temporary name and renamed, so a crash mid-write never leaves a
truncated checkpoint under the real name.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from suite.config import ConfigError

FORMAT_VERSION = 3  # 2: one shared sampling stream (suite.rng.SharedStream); 3: scheme states
# Format 2 differs only by holding no scheme states: every scheme then was a stateless
# compressor, whose restored run is the same without them.
READABLE_FORMATS = (2, 3)


def default_path(launch_dir: Path, config_hash: str) -> Path:
    return Path(launch_dir) / "checkpoints" / f"{config_hash}.pt"


def save(path: Path, *, run, state, step: int, wall: float, initial_loss: float,
         run_id: str | None, config_hash: str) -> None:
    channel = run.channel
    payload = {
        "format": FORMAT_VERSION,
        "config_hash": config_hash,
        "step": step,
        "algorithm": run.algo_name,
        "state": state,
        "sample_streams": run.sample_streams.get_state(),
        "compress_streams": run.compress_streams.get_state(),
        "channel": channel.counters() | {"rounds": channel.rounds},
        "comm": channel.scheme_state(),
        "stopwatch": dict(run.stopwatch.totals),
        "ledger": run.backend.ledger.state(),
        "wall": wall,
        "initial_loss": initial_loss,
        "run_id": run_id,
        "task_state": run.task.state_dict() if hasattr(run.task, "state_dict") else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: Path, *, config_hash: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint_path={str(path)!r}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(f"checkpoint_path={str(path)!r} is not a readable checkpoint "
                          f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
        raise ConfigError(f"checkpoint_path={str(path)!r} is not a commsgd checkpoint "
                          f"(format {FORMAT_VERSION})")
    if payload["config_hash"] != config_hash:
        raise ConfigError(
            f"checkpoint_path={str(path)!r} belongs to a run with config_hash "
            f"{payload['config_hash']}, not this config ({config_hash}); restart with the "
            f"config it was written for"
        )
    return payload


def restore(payload: dict, run):
    """Put the run back where the checkpoint left it; returns the algorithm state."""
    device = run.device
    run.sample_streams.set_state(payload["sample_streams"])
    run.compress_streams.set_state(payload["compress_streams"])
    ch = payload["channel"]
    run.channel.load_counters(ch)
    run.channel.rounds = ch["rounds"]
    if payload.get("comm") is not None:
        comm = payload["comm"]
        lanes = {name: _to_device(states, device) for name, states in comm["lanes"].items()}
        run.channel.load_scheme_state(comm | {"lanes": lanes})
    run.stopwatch.totals.update(payload["stopwatch"])
    if "ledger" in payload:  # older checkpoints have none: the ledger restarts from zero
        run.backend.ledger.load(payload["ledger"])
    if payload.get("task_state") is not None:
        run.task.load_state_dict(payload["task_state"])
    return _to_device(payload["state"], device)


def _to_device(state, device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(_to_device(v, device) for v in state))
    if isinstance(state, (list, tuple)):
        return type(state)(_to_device(v, device) for v in state)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    return state
