"""The communication protocol: schemes as small frozen records of pure functions.

A *scheme* says how a message crosses the network: what each worker sends, which collective
carries it, how the server aggregates what arrives, what per-worker state it keeps and how many
bits it costs. In the optax style, a factory closes over the hyper-parameters and returns a
record; the state is an explicit value that the channel (suite/comm/channel.py) holds between
rounds and that checkpoints save.

Up-link (workers → server), `Uplink`:

    state = scheme.init(env)                     # env: Env (d, dtype, device, held workers, seed)
    sent  = scheme.up(x, state, link)            # x: [w, d], one row per held worker
    sent.own        [w, d]  each held worker's message as the server decodes it
    sent.aggregate  [d]     the server's aggregate of all K workers' messages
    sent.state              the new state
    sent.bits               bits each held worker put on the wire: an int (the same for every
                            worker) or a [w] int64 tensor
    sent.entropy_bits       an entropy-coded size, where the scheme declares one (else = bits)

    (`up` returns a `Sent`; a plain tuple of its five fields in its order does too: the
    channel unpacks it by position, and the adapter returns plain tuples on the hot path)

Down-link (server → every worker), `Downlink`:

    state = scheme.init(env)
    got   = scheme.down(v, state, link)          # v: [d], the server's vector
    got.value [d] what every worker reconstructs;  got.state;  got.bits (an int: the broadcast's
    size, which every worker receives)

Where the server is: nowhere in particular. Every process computes the same aggregate (the
collectives give every rank the same data), so the "server" runs replicated, and a down-link
scheme runs on every rank with randomness drawn identically everywhere (`link.server`).

The collective is the scheme's choice, through the `Link` it is handed (suite/comm/link.py):
`link.gather(compressor, payload, decoded)` ships encoded bytes and returns all K decoded
messages [K, d] in global worker order (then any aggregate: `.mean(0)`, the sign of the sum,
a median); `link.all_reduce(t, op)` reduces a dense [w, ...] tensor over all K workers (a
linear code: rand-k with a shared seed, PowerSGD's P and Q); `link.exchange(msgs)` moves raw
bytes. Randomness: `link.streams` (one private stream per worker, suite.rng.WorkerStreams),
`link.shared` (one stream drawn identically on every rank: a shared seed, a coin, a sample of
clients) and `link.server` (the down-link's stream, one row, identical on every rank).

Partial participation: in a round where only some workers take part, the channel hands the
round's sample to the scheme as `link.sample` (suite/comm/participation.py; None otherwise);
a scheme with `participation=True` counts 0 bits for the others and aggregates over the
sampled rows only.

State: `CommState(workers, server)`. `workers` holds tensors whose first dimension is w, row i
belonging to global worker `env.worker_ids[i]`: under torch.distributed each rank holds its
rows of the [K, ...] tensor the simulated backend holds, so a scheme that initialises and
updates its rows from the worker's own data and its own stream is identical across process
layouts. `server` holds what every rank keeps identically (a down-link shift, a round counter).
A stateless scheme keeps `CommState((), ())`.

Kinds. `kind`, `omega` and `delta` are what algorithms admit schemes by and what theorems read
(docs/theory.md §1): "unbiased" with ω(d), "contractive" with δ(d), or a name of the scheme's
own (a sign vote, a low-rank code) that no ω/δ-based algorithm admits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch


class Env(NamedTuple):
    """What a scheme's `init` is told about the messages it will carry."""

    d: int  # message dimension
    dtype: torch.dtype  # the messages' dtype (the task's)
    device: torch.device
    worker_ids: tuple[int, ...]  # global ids of the held workers, in row order
    num_workers: int  # K, over all processes
    seed: int  # the run's seed, to derive per-worker or shared seeds (suite.rng.derive_seed)
    # The shapes the flat vector is made of (a network's parameter tensors, in order), where
    # the task declares them (`task.param_shapes`) and the message is the model's size; None
    # otherwise. A low-rank scheme views each tensor as a matrix.
    shapes: tuple[tuple[int, ...], ...] | None = None


class CommState(NamedTuple):
    """A scheme's state: per-worker rows and the replicated server part."""

    workers: Any = ()  # tensors [w, ...] (any NamedTuple/tuple of them)
    server: Any = ()  # tensors identical on every rank


STATELESS = CommState((), ())


class Sent(NamedTuple):
    """What one up-link round produced."""

    own: torch.Tensor  # [w, d]
    aggregate: torch.Tensor  # [d]
    state: CommState
    bits: int | torch.Tensor  # per held worker: an int, or [w] int64
    entropy_bits: int | torch.Tensor | None = None


class Received(NamedTuple):
    """What one down-link broadcast produced."""

    value: torch.Tensor  # [d]
    state: CommState
    bits: int  # the size of the broadcast message, received by every worker


@dataclass(frozen=True)
class Uplink:
    """Workers → server. See the module docstring for the contract of `init` and `up`."""

    name: str
    kind: str
    omega: Callable[[int], float] | None
    delta: Callable[[int], float] | None
    init: Callable[[Env], CommState]
    up: Callable[[torch.Tensor, CommState, Any], Sent]
    # Refuses a dimension the hyper-parameters cannot serve (raise CompressorError).
    check_dim: Callable[[int], None] | None = None
    data_dependent: str | None = None
    hyperparams: tuple = ()
    # The stateless compressor this scheme adapts (suite/comm/adapter.py), or None.
    compressor: Any = None
    # Whether `up` honours `link.sample` (partial participation, suite/comm/participation.py):
    # bits 0 and no part in the aggregate for the workers not sampled. A scheme that does not
    # is refused in a round with a sample.
    participation: bool = False

    @property
    def unbiased(self) -> bool:
        return self.kind == "unbiased"

    @property
    def is_identity(self) -> bool:
        return self.compressor is not None and self.compressor.is_identity


@dataclass(frozen=True)
class Downlink:
    """Server → every worker. See the module docstring for the contract of `init` and `down`."""

    name: str
    kind: str
    omega: Callable[[int], float] | None
    delta: Callable[[int], float] | None
    init: Callable[[Env], CommState]
    down: Callable[[torch.Tensor, CommState, Any], Received]
    check_dim: Callable[[int], None] | None = None
    hyperparams: tuple = ()
    compressor: Any = None

    @property
    def unbiased(self) -> bool:
        return self.kind == "unbiased"


def stateless(env: Env) -> CommState:
    """`init` of a scheme that keeps no state."""
    return STATELESS
