"""All K workers in one process: every collective is a reduction over dimension 0."""

from __future__ import annotations

import torch

# Reductions over the worker axis (dimension 0); the distributed backend reduces the same way
# within a rank, then across ranks.
REDUCE = {
    "sum": lambda x: x.sum(0),
    "mean": lambda x: x.mean(0),
    "max": lambda x: x.amax(0),
    "min": lambda x: x.amin(0),
}


class SimulatedBackend:
    name = "simulated"

    def __init__(self, num_workers: int, device="cpu"):
        self.num_workers = num_workers
        self.worker_ids = list(range(num_workers))
        self.device = torch.device(device)
        self.rank, self.world_size = 0, 1
        # Bytes handed to collectives; the simulated backend hands none (they are counted by the
        # compressor's accounting only), the distributed one counts real payloads here.
        self.wire_bytes = 0

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over all K workers of a [w, d] tensor."""
        return x.mean(0)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        """Max over all K workers of a [w] tensor."""
        return x.max()

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over all K workers of a [w, ...] tensor."""
        return x.sum(0)

    def all_reduce(self, x: torch.Tensor, op: str = "sum", *, counted: bool = True
                   ) -> torch.Tensor:
        """x [w, ...] reduced over all K workers by op (sum, mean, max, min)."""
        if op == "mean":  # the identity compressor's messages, every step: no table lookup
            return x.mean(0)
        return REDUCE[op](x)

    def gather_messages(self, compressor, payload, decoded: torch.Tensor, sample=None
                        ) -> torch.Tensor:
        """Every worker's decoded message [K, d] (with a `sample`, the sampled workers' [m, d],
        global order). In one process the decoded batch is already here; the distributed
        backend ships `compressor.encode(payload)` instead."""
        return decoded if sample is None else decoded[sample.mask]

    def exchange(self, msgs: list[bytes]) -> list[bytes]:
        """All K workers' messages: in one process, the ones given."""
        return list(msgs)

    def max_over_ranks(self, values: list[float]) -> list[float]:
        return [float(v) for v in values]

    def barrier(self) -> None:
        pass
