"""Backends supply the collective operations over the worker axis.

The simulated backend holds all K workers in one process (w = K); the distributed backend
(torch.distributed) holds K / world_size of them per rank. Algorithms never know which one runs.
"""

from .simulated import SimulatedBackend

__all__ = ["SimulatedBackend"]
