"""Step-size schedules γ_t, all starting from γ_0 = lr (a number, or the theorem's step size).

- constant:       γ_t = lr
- decaying:       γ_t = lr · b/(b + t)              (γ_t = a/(b + t) with a = lr·b; b = lr_offset)
- warmup_cosine:  linear warm-up over `warmup_steps`, then cosine decay to 0 at T (Goyal et al.
                  2017; Loshchilov & Hutter 2017), the usual CIFAR recipe
- step:           γ_t = lr · lr_gamma^(number of milestones ≤ t); milestones are fractions of T
                  (0.5, 0.75 as in the ResNet papers)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

SCHEDULES = ("constant", "decaying", "warmup_cosine", "step")


def make_schedule(name: str, lr0: float, *, steps: int, offset: float = 100.0,
                  warmup_steps: int = 0, milestones=(0.5, 0.75),
                  gamma: float = 0.1) -> Callable[[int], float]:
    if name == "constant":
        return lambda t: lr0
    if name == "decaying":
        return lambda t: lr0 * offset / (offset + t)
    if name == "warmup_cosine":
        def warmup_cosine(t: int) -> float:
            if t < warmup_steps:
                return lr0 * (t + 1) / warmup_steps
            progress = (t - warmup_steps) / max(1, steps - warmup_steps)
            return lr0 * 0.5 * (1.0 + math.cos(math.pi * progress))
        return warmup_cosine
    if name == "step":
        bounds = sorted(int(round(m * steps)) for m in milestones)
        return lambda t: lr0 * gamma ** bisect.bisect_right(bounds, t)
    raise ValueError(f"lr_schedule={name!r}: allowed values are {', '.join(SCHEDULES)}")
