"""Cumulative timers for the three parts of a step: compute, compress, communicate.

On a GPU the timer synchronises the device before reading the clock, otherwise it would time
only the kernel launches. Evaluation and logging are never inside a timer.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class Stopwatch:
    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.totals = {"compute": 0.0, "compress": 0.0, "comm": 0.0}

    @contextmanager
    def time(self, part: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.totals[part] += time.perf_counter() - start
