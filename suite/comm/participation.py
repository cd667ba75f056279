"""Partial participation (client sampling): which workers take part in an up-link round.

Federated methods (FedAvg, SCAFFOLD) let a fraction of the K workers work in each round. The
round's sample is drawn once, identically on every rank, from the channel's shared stream
(`ctx.channel.shared`, suite.rng.SharedStream), so every process layout samples the same
workers, and checkpoints carry the stream with the scheme states:

    mask = participation.draw(ctx.channel.shared, fraction)      # [K] bool, global order
    own, aggregate = ctx.channel.send_up(x, sampled=mask)

Only the sampled workers' messages cost bits and enter the aggregate: the channel hands the
round's `Sample` to the scheme as `link.sample` (None in a round everyone takes part in), and a
scheme that declares `Uplink.participation` (the adapter of every stateless compressor does)
sends an empty message and counts 0 bits for the others, and aggregates over the m sampled
rows (the mean of m decoded messages, not of K). `own` still holds every held row's decoded
message; what the algorithm does with the rows of workers that were not sampled is its own
business (FedAvg drops them, SCAFFOLD keeps their control variates as they were).

Sample size: m = max(1, ⌊fraction·K + 1/2⌋), exactly m workers per round, drawn uniformly
without replacement (the m smallest of K shared uniform draws): the sampling of Karimireddy et
al. 2020 (SCAFFOLD, arXiv:1910.06378, "S clients sampled uniformly") and of FedAvg's
C-fraction (McMahan et al. 2017, arXiv:1602.05629).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from suite.errors import ConfigurationError


class Sample(NamedTuple):
    """One round's participants, as a scheme sees them on `link.sample`."""

    mask: torch.Tensor  # [K] bool, global worker order, identical on every rank
    held: torch.Tensor  # [w] bool: mask at the held workers' ids (the rows of x)
    count: int  # m = mask.sum(): the aggregate is over m messages


def size(fraction: float, num_workers: int) -> int:
    """m = max(1, nearest integer to fraction·K), halves rounded up."""
    return max(1, min(num_workers, math.floor(fraction * num_workers + 0.5)))


def check_fraction(value, key: str = "algorithm.participation") -> float:
    """A participation fraction in (0, 1], or a one-line refusal naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigurationError(f"{key}={value!r}: must be a number in (0, 1] (the fraction "
                                 f"of workers sampled per round; 1: every worker)")
    return float(value)


def draw(shared, fraction: float) -> torch.Tensor:
    """The [K] bool mask of one round's m sampled workers, drawn from `shared` (one
    SharedStream draw of K uniforms, identical on every rank; ties are impossible in float64
    for practical purposes, and broken by index by the stable sort if they occur)."""
    K = shared.num_workers
    u = shared.common_uniform(K, dtype=torch.float64)
    chosen = torch.argsort(u, stable=True)[:size(fraction, K)]
    mask = torch.zeros(K, dtype=torch.bool, device=u.device)
    mask[chosen] = True
    return mask


__all__ = ["Sample", "size", "check_fraction", "draw"]
