"""Backends supply the collective operations over the worker axis.

The simulated backend holds all K workers in one process (w = K); the distributed backend
(torch.distributed) holds K / world_size of them per rank. Algorithms never know which one runs.
"""

from __future__ import annotations

from .simulated import SimulatedBackend


def make_backend(hardware: dict, workers: int, device):
    """The backend for a hardware option: distributed when the option names a torch.distributed
    backend (`hardware.backend`: gloo or nccl, as multi_cpu and multi_gpu do), else simulated.

    Called inside a rank: it joins the process group described by the environment (torchrun's
    or suite.launch's RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) unless one is already up.
    """
    if not hardware.get("backend"):
        return SimulatedBackend(workers, device)
    from .distributed import (
        SETUP_TIMEOUT_S,
        DistributedBackend,
        check_hardware,
        ensure_process_group,
    )

    check_hardware(hardware, workers)
    ensure_process_group(hardware)
    return DistributedBackend(workers, device,
                              dense_collective=hardware.get("dense_collective", "all_reduce"),
                              setup_timeout_s=max(SETUP_TIMEOUT_S, hardware["timeout_s"]))


__all__ = ["SimulatedBackend", "make_backend"]
