"""Checkpoints: everything a run needs to continue as if it had never stopped.

A checkpoint holds the step, the algorithm's explicit state (parameters, error memories, DIANA
shifts, delay queues, local models), every per-worker generator's state, the channel's bit
counters, its schemes' states (per lane) and shared streams, the timers, the backend's
collective ledger, the task's own state where it has one (a network's BatchNorm statistics),
and the MLflow run it belongs to: the run id and the store's URI. Restoring it and running on
gives the same metrics and, on the CPU,
bit-identical parameters.

Where: `checkpoints/<config_hash>.pt` in the launch directory, so that `resume=true` finds the
checkpoint of an interrupted job of a sweep without being told; or any file given as
`checkpoint_path`. Written to a temporary name and renamed, so a crash mid-write never leaves a
truncated checkpoint under the real name.

Safety. A checkpoint is read with `torch.load(weights_only=True)`: tensors, numbers, strings
and plain containers only, so a planted file cannot run code (a pickle may name any callable,
and `weights_only=False` would call it while loading). What that loader cannot carry is stored
in a plain form: the algorithm's state, a NamedTuple of tensors, as its field names and values,
rebuilt by the algorithm's own state class when it is restored (`restore`); the schemes' states
the same way, NamedTuples anywhere inside them rebuilt from the states a fresh run opens with.
"""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import torch

from suite.config import ConfigError

# 2: one shared sampling stream (suite.rng.SharedStream)
# 3: the schemes' states (the open protocol), pickled
# 4: safe to load (weights_only): the algorithm's and the schemes' states as field names and
#    tensors, and the MLflow store the run id belongs to
FORMAT_VERSION = 4


def default_path(launch_dir: Path, config_hash: str) -> Path:
    return Path(launch_dir) / "checkpoints" / f"{config_hash}.pt"


def _plain_state(state) -> dict:
    """A NamedTuple state as {"type": class name, "fields": [names], "values": [tensors]}."""
    if not (isinstance(state, tuple) and hasattr(state, "_fields")):
        raise TypeError(f"an algorithm state must be a NamedTuple, not {type(state).__name__}")
    return {"type": type(state).__name__, "fields": list(state._fields), "values": list(state)}


_NAMED = "__namedtuple__"


def _plain_tree(tree):
    """`tree` with every NamedTuple inside it as {"__namedtuple__": name, "fields", "values"}:
    what `torch.load(weights_only=True)` can read back."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {_NAMED: type(tree).__name__, "fields": list(tree._fields),
                "values": [_plain_tree(v) for v in tree]}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_plain_tree(v) for v in tree)
    if isinstance(tree, dict):
        return {k: _plain_tree(v) for k, v in tree.items()}
    return tree


def _rebuilt_tree(plain, template):
    """Undo `_plain_tree`, each NamedTuple as the class the template (a fresh run's own
    state) holds in that place; where the template has none, a plain namedtuple."""
    if isinstance(plain, dict) and _NAMED in plain:
        cls = type(template) if (isinstance(template, tuple) and hasattr(template, "_fields")
                                 and list(template._fields) == plain["fields"]) else None
        inner = template if cls is not None else [None] * len(plain["values"])
        values = [_rebuilt_tree(v, t) for v, t in zip(plain["values"], inner, strict=True)]
        return (cls or namedtuple(plain[_NAMED], plain["fields"]))(*values)
    if isinstance(plain, (list, tuple)):
        inner = template if isinstance(template, (list, tuple)) and \
            len(template) == len(plain) else [None] * len(plain)
        return type(plain)(_rebuilt_tree(v, t) for v, t in zip(plain, inner, strict=True))
    if isinstance(plain, dict):
        inner = template if isinstance(template, dict) else {}
        return {k: _rebuilt_tree(v, inner.get(k)) for k, v in plain.items()}
    return plain


def save(path: Path, *, run, state, step: int, wall: float, initial_loss: float,
         run_id: str | None, config_hash: str, store_uri: str | None = None) -> None:
    channel = run.channel
    payload = {
        "format": FORMAT_VERSION,
        "config_hash": config_hash,
        "step": step,
        "algorithm": run.algo_name,
        "state": _plain_state(state),
        "sample_streams": run.sample_streams.get_state(),
        "compress_streams": run.compress_streams.get_state(),
        "channel": channel.counters() | {"rounds": channel.rounds},
        "comm": _plain_tree(channel.scheme_state()),
        "stopwatch": dict(run.stopwatch.totals),
        "ledger": run.backend.ledger.state(),
        "wall": wall,
        "initial_loss": initial_loss,
        "run_id": run_id,
        "store_uri": store_uri,
        "task_state": run.task.state_dict() if hasattr(run.task, "state_dict") else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects (module.name) a pickle in `path` would build: read, never called."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not even a torch file: the caller says so
        return []


def load(path: Path, *, config_hash: str) -> dict:
    """Read and check a checkpoint; its `state` is a NamedTuple (`restore` makes it the
    algorithm's own class). Refuses, naming the file: a missing file, one that is not a
    checkpoint or holds Python objects (never executed), an older format, another config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint_path={str(path)!r}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        names = _unsafe_globals(path)
        if names and all(n.startswith("suite.") for n in names):
            raise ConfigError(
                f"checkpoint_path={str(path)!r} was written by an older commsgd (checkpoint "
                f"format 3 or earlier, which stored Python objects); this version reads format "
                f"{FORMAT_VERSION} only: delete it, or run the job again without it") from exc
        if names:
            raise ConfigError(
                f"checkpoint_path={str(path)!r} is not a readable checkpoint: it holds Python "
                f"objects ({', '.join(sorted(names)[:5])}), which are never loaded (a "
                f"checkpoint holds tensors and numbers only)") from exc
        raise ConfigError(f"checkpoint_path={str(path)!r} is not a readable checkpoint "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    version = payload.get("format") if isinstance(payload, dict) else None
    if version != FORMAT_VERSION:
        older = isinstance(version, int) and version < FORMAT_VERSION
        raise ConfigError(
            f"checkpoint_path={str(path)!r} is not a commsgd checkpoint of format "
            f"{FORMAT_VERSION}" + (f" (it is format {version}, written by an older commsgd: "
                                   f"delete it, or run the job again without it)" if older else ""))
    if payload["config_hash"] != config_hash:
        raise ConfigError(
            f"checkpoint_path={str(path)!r} belongs to a run with config_hash "
            f"{payload['config_hash']}, not this config ({config_hash}); restart with the "
            f"config it was written for"
        )
    state = payload["state"]
    try:
        payload["state"] = namedtuple(state["type"], state["fields"])(*state["values"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint_path={str(path)!r}: its algorithm state is "
                          f"malformed ({exc})") from exc
    return payload


def restore(payload: dict, run):
    """Put the run back where the checkpoint left it; returns the algorithm state, an instance
    of the algorithm's own state class (its fields checked against the checkpoint's)."""
    device = run.device
    template = run.algorithm.init(run.task.x0())
    saved = payload["state"]
    if type(template).__name__ != type(saved).__name__ or template._fields != saved._fields:
        raise ConfigError(
            f"the checkpoint's algorithm state is {type(saved).__name__}{saved._fields}, and "
            f"algorithm={run.algo_name} keeps {type(template).__name__}{template._fields}; "
            f"restart with the algorithm it was written for")
    run.sample_streams.set_state(payload["sample_streams"])
    run.compress_streams.set_state(payload["compress_streams"])
    ch = payload["channel"]
    run.channel.load_counters(ch)
    run.channel.rounds = ch["rounds"]
    if payload.get("comm") is not None:
        comm = _rebuilt_tree(payload["comm"], run.channel.scheme_state())
        lanes = {name: _to_device(states, device) for name, states in comm["lanes"].items()}
        run.channel.load_scheme_state(comm | {"lanes": lanes})
    run.stopwatch.totals.update(payload["stopwatch"])
    if "ledger" in payload:  # older checkpoints have none: the ledger restarts from zero
        run.backend.ledger.load(payload["ledger"])
    if payload.get("task_state") is not None:
        run.task.load_state_dict(payload["task_state"])
    return type(template)(*(_to_device(v, device) for v in saved))


def _to_device(state, device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # a NamedTuple: by position
        return type(state)(*(_to_device(v, device) for v in state))
    if isinstance(state, (list, tuple)):
        return type(state)(_to_device(v, device) for v in state)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    return state
