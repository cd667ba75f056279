"""Backends supply the collective operations over the worker axis.

The simulated backend holds all K workers in one process (w = K); the distributed backend
(torch.distributed) holds K / world_size of them per rank. Algorithms never know which one runs.
"""

from __future__ import annotations

from .simulated import SimulatedBackend


def make_backend(hardware: dict, workers: int, device):
    """The backend for a hardware option: simulated unless the hardware is distributed."""
    return SimulatedBackend(workers, device)


__all__ = ["SimulatedBackend", "make_backend"]
