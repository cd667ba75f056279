"""What the engine needs from a problem. Tasks know nothing of algorithms.

A task holds the data of the workers this process owns (`worker_ids`, a subset of range(K)) and
returns their gradients as one [w, d] tensor over the flat parameter vector.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Task(Protocol):
    name: str
    dim: int
    num_workers: int
    worker_ids: list[int]
    dtype: torch.dtype
    device: torch.device
    # Constants logged once as task/<key>: L, L_max, mu, f_star, zeta_sq, sigma_sq, dim, n.
    constants: dict[str, float]

    def x0(self) -> torch.Tensor: ...

    def sample_batch(self, streams, batch_size: int | None): ...

    def grads(self, x: torch.Tensor, batch) -> torch.Tensor:
        """Gradients of the held workers' local objectives, [w, d]; x is [d] or [w, d]."""

    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        """train/loss, train/suboptimality, train/grad_norm_sq, test/loss, test/accuracy."""
