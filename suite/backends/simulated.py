"""All K workers in one process: every collective is a reduction over dimension 0."""

from __future__ import annotations

import torch


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

    def mean_of_messages(self, compressor, payload, decoded: torch.Tensor) -> torch.Tensor:
        """Mean of every worker's decoded message. In one process the decoded [K, d] batch is
        already here; the distributed backend ships `compressor.encode(payload)` instead."""
        return decoded.mean(0)

    def max_over_ranks(self, values: list[float]) -> list[float]:
        return [float(v) for v in values]

    def barrier(self) -> None:
        pass
