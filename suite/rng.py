"""Per-worker random streams.

Every worker owns one `torch.Generator`, seeded from (run seed, stream name, global worker id).
Because the stream belongs to the *worker* and not to the process, a worker draws the same numbers
whether the simulated backend holds all K workers in one process or torch.distributed spreads them
over ranks; that is what makes the simulated and distributed runs produce identical iterates.

Drawing is the only per-worker loop in the suite: one generator call per worker fills that
worker's row of a preallocated [w, ...] buffer, and everything downstream is batched.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, stream: str, worker: int) -> int:
    """A 63-bit seed for `stream` of `worker`, stable across Python versions and processes."""
    digest = hashlib.blake2b(f"{seed}/{stream}/{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class WorkerStreams:
    """One generator per held worker, for one named purpose (sampling, compression, ...)."""

    def __init__(self, seed: int, stream: str, worker_ids: list[int], device="cpu"):
        self.worker_ids = list(worker_ids)
        self.device = torch.device(device)
        self.generators = []
        for k in self.worker_ids:
            g = torch.Generator(device=self.device)
            g.manual_seed(derive_seed(seed, stream, k))
            self.generators.append(g)

    def __len__(self) -> int:
        return len(self.generators)

    def uniform(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        """U[0, 1) draws of shape [w, *shape], row k from worker k's own stream."""
        out = torch.empty((len(self), *shape), dtype=dtype, device=self.device)
        for row, g in zip(out, self.generators, strict=True):
            row.uniform_(0.0, 1.0, generator=g)
        return out

    def normal(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        """Standard normal draws of shape [w, *shape], one stream per worker."""
        out = torch.empty((len(self), *shape), dtype=dtype, device=self.device)
        for row, g in zip(out, self.generators, strict=True):
            row.normal_(0.0, 1.0, generator=g)
        return out

    def get_state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def set_state(self, states: list[torch.Tensor]) -> None:
        if len(states) != len(self.generators):
            raise ValueError(
                f"checkpoint holds {len(states)} generator states, this process holds "
                f"{len(self.generators)} workers"
            )
        for g, s in zip(self.generators, states, strict=True):
            g.set_state(s)
