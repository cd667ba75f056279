"""The algorithm interface and what every algorithm module carries.

An algorithm is built by a factory from its hyper-parameters and a `Context` (the task's
gradient oracle, the channel to the server, the constants). It keeps its state in an explicit
NamedTuple of tensors, so checkpoints and tests can see error memories, shifts and queues:

    state = algo.init(x0)
    state = algo.step(state, t, lr)     # one iteration
    x     = algo.params(state)          # the point the runner evaluates

A module is registered as an entry point of the group `commsgd.algorithms` (suite/plugins.py;
the suite's own in its pyproject.toml) and may set COMPRESSOR_KINDS, DEFAULT_COMPRESSOR and
FULL_GRADIENTS_ONLY beside `build`. Each module also carries its theorem as a pure function of
the task constants:

    theorem(constants, *, workers, batch_size, omega=..., lr=None, **hyper) -> Theorem

with the largest admissible step size (`lr=theory` uses it), and, where docs/theory.md gives them,
the linear contraction factor per step and the neighbourhood floor. The analysis package reads
these functions; nothing is written twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from suite.errors import ConfigurationError  # noqa: F401 (re-exported: algorithms raise it)


class Theorem(NamedTuple):
    """What a theorem predicts for one configuration (docs/theory.md, section given in `source`)."""

    lr_max: float  # the largest step size the theorem admits
    rate: float | None = None  # contraction factor per step of the bounded quantity
    floor: float | None = None  # neighbourhood floor of the bounded quantity
    quantity: str = "dist_sq"  # what is bounded: dist_sq = E‖x − x*‖², or subopt = E f − f*
    source: str = ""

    def floor_suboptimality(self, L: float) -> float | None:
        """A floor on f − f*: f − f* ≤ (L/2)‖x − x*‖² for an L-smooth f."""
        if self.floor is None:
            return None
        return self.floor * L / 2 if self.quantity == "dist_sq" else self.floor


@dataclass
class Context:
    """What an algorithm needs from the run, bound once at construction."""

    task: Any
    channel: Any
    sample_streams: Any
    batch_size: int | None  # None: full local gradients
    stopwatch: Any

    @property
    def workers(self) -> int:
        return self.task.num_workers

    def grads(self, x: torch.Tensor) -> torch.Tensor:
        """Each held worker's (minibatch) gradient at x ([d] shared or [w, d] per worker)."""
        with self.stopwatch.time("compute"):
            batch = self.task.sample_batch(self.sample_streams, self.batch_size)
            return self.task.grads(x, batch)


class AlgorithmSpec(NamedTuple):
    """What the registry knows of an algorithm option (suite/plugins.py reads it from the
    option's module: `build`, `theorem`, COMPRESSOR_KINDS, DEFAULT_COMPRESSOR,
    FULL_GRADIENTS_ONLY)."""

    build: Callable[..., Any]
    theorem: Callable[..., Theorem]
    # which compressor kinds the algorithm's analysis admits
    compressor_kinds: tuple[str, ...] = ("unbiased", "contractive")
    # the compressor `algorithm=<name>` selects (its generated config node overrides it)
    default_compressor: str = "identity"
    full_gradients_only: bool = False
    has_theorem: bool = True  # False: the module declares none (theorem() says so)
    entry: Any = None  # suite.plugins.Entry: where the option comes from


class Algorithm(NamedTuple):
    name: str
    init: Callable[[torch.Tensor], Any]
    step: Callable[[Any, int, float], Any]
    params: Callable[[Any], torch.Tensor]
