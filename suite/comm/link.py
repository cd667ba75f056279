"""The collectives a scheme may use, over all K workers, whichever process holds them.

A `Link` is handed to every `Uplink.up` and `Downlink.down` call. It wraps the backend (the
simulated one holds all K workers, so each collective is a reduction over the worker axis; the
distributed one runs torch.distributed collectives), times every collective as communication
("comm") and carries the random streams:

    link.gather(compressor, payload, decoded) -> [K, d]   all K decoded messages, global order:
        simulated, `decoded` itself (no bytes are made); distributed, the held workers'
        `compressor.encode(payload)` bytes are all-gathered and decoded (two all_gathers:
        sizes, then bytes), so every rank holds the same [K, d] tensor the simulation holds.
        With `sample` (a round of partial participation, `link.sample`): the m sampled
        workers' messages only, [m, d] in global order; the others send empty messages
    link.all_reduce(t, op) -> [...]   t: [w, ...]; op: sum | mean | max | min over all K
        workers. With hardware.dense_collective=all_gather the rows are gathered and reduced
        in global order (bit-identical to the simulation); with all_reduce (the default), the
        partial reductions of each rank are all-reduced (sum and mean: another summation
        order, ~1 rounding per addition). `counted=False` for control data whose bits the
        scheme already counts inside its messages (TernGrad's shared scale).
    link.exchange(msgs) -> list[bytes]   all K workers' raw messages, global order
    link.streams   per-worker private streams (suite.rng.WorkerStreams: `uniform`, `normal`)
    link.shared    one stream drawn identically on every rank (suite.rng.SharedStream): shared
                   seeds, coins, client samples; `link.shared.common_uniform(*shape)`
    link.server    the down-link's stream: one row, identical on every rank
    link.sample    this round's participants (suite/comm/participation.py: Sample), set by the
                   channel for one `up` call of a round with partial participation, else None

Every process must call the same collectives in the same order (as with any collective code).
"""

from __future__ import annotations

import torch

from suite.backends.simulated import REDUCE

REDUCE_OPS = tuple(REDUCE)  # sum, mean, max, min


class Link:
    __slots__ = ("backend", "num_workers", "worker_ids", "device", "dense_collective",
                 "streams", "shared", "server", "sample", "_comm")

    def __init__(self, backend, stopwatch, streams, shared, server):
        self.backend = backend
        self.num_workers = backend.num_workers
        self.worker_ids = tuple(backend.worker_ids)
        self.device = backend.device
        self.dense_collective = getattr(backend, "dense_collective", "all_reduce")
        self.streams, self.shared, self.server = streams, shared, server
        self.sample = None  # the round's participants, while the channel runs a sampled round
        self._comm = stopwatch.time("comm")

    def gather(self, compressor, payload, decoded: torch.Tensor, sample=None) -> torch.Tensor:
        with self._comm:
            if sample is None:  # the hot path: the backends' signature before sampling
                return self.backend.gather_messages(compressor, payload, decoded)
            return self.backend.gather_messages(compressor, payload, decoded, sample)

    def all_reduce(self, t: torch.Tensor, op: str = "sum", *, counted: bool = True
                   ) -> torch.Tensor:
        with self._comm:
            try:
                return self.backend.all_reduce(t, op, counted=counted)
            except KeyError:
                if op in REDUCE_OPS:
                    raise
                raise ValueError(f"link.all_reduce: op={op!r}; allowed: "
                                 f"{', '.join(REDUCE_OPS)}") from None

    def exchange(self, msgs: list[bytes]) -> list[bytes]:
        with self._comm:
            return self.backend.exchange(msgs)
