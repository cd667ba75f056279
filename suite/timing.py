"""Cumulative timers for the three parts of a step: compute, compress, communicate.

On a GPU the timer synchronises the device before reading the clock, otherwise it would time
only the kernel launches. Evaluation and logging are never inside a timer.

    with stopwatch.time("compute"):
        ...

The timer is a small class rather than a `contextlib.contextmanager` generator: a step enters
three or four of them, and the generator machinery costs about a microsecond more each. One
timer object serves each part, so a part cannot be nested in itself (no step does that).
"""

from __future__ import annotations

import time

import torch

PARTS = ("compute", "compress", "comm")


class _Timer:
    __slots__ = ("stopwatch", "part", "start")

    def __init__(self, stopwatch: Stopwatch, part: str):
        self.stopwatch, self.part = stopwatch, part

    def __enter__(self):
        self.stopwatch.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.stopwatch.sync()
        self.stopwatch.totals[self.part] += time.perf_counter() - self.start
        return False


class Stopwatch:
    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.totals = dict.fromkeys(PARTS, 0.0)
        self._timers = {part: _Timer(self, part) for part in PARTS}

    def time(self, part: str) -> _Timer:
        """A context manager adding the time spent inside it to `totals[part]`."""
        try:
            return self._timers[part]
        except KeyError:
            raise ValueError(f"unknown timer {part!r}; allowed: {', '.join(PARTS)}") from None
