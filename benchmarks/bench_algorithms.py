"""Iterations per second of each algorithm, relative to plain parallel SGD.

    .venv/bin/python benchmarks/bench_algorithms.py [--quick]

Problem: logistic regression, synthetic, d = 300, K = 16 workers, b = 16 (n = 64 per worker),
the simulated backend, one torch thread. Each row is `algorithm.step` as the runner calls it
(sampling, batched gradients, compression and bit accounting through the channel); evaluation
is not timed. Rates are iterations per second of *process CPU time* (time.process_time): on a
shared machine wall-clock rates moved by ±30% between runs as other jobs came and went, while
one thread's own CPU time does not count the time the scheduler gives to others. The cases are
timed round-robin, `--repeats` rounds, and each keeps its best round. "up bits/it" is the
mean up-link bits per worker per iteration, from the channel's own counters ("down bits/it"
the same for the broadcast). DQGD uses full
local gradients (64 samples a worker, not 16), which is part of its cost; so does MARINA, whose
up bits per iteration vary with its coin (the mean over the timed iterations). PowerSGD views
the 300-vector as one 17×18 matrix (docs/theory.md §12).
FedAvg and SCAFFOLD
with participation p < 1 still draw (and discard) the minibatches of the workers not sampled
(docs/theory.md §15), so their step costs as much as with everyone.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import compose, table

from suite.runner import Run

K, D, B = 16, 300, 16
PROBLEM = ("task.dataset=synthetic", f"task.n_samples={K * 64}", f"task.dim={D}",
           f"workers={K}", f"batch_size={B}", "lr=0.05", "hardware.threads=1")
TOP1 = ("compressor=topk", "compressor.ratio=0.01")
CASES = [
    ("sgd", "identity", ("algorithm=sgd",)),
    ("ef_sgd", "identity", ("algorithm=ef_sgd",)),
    ("ef_sgd", "topk 1%", ("algorithm=ef_sgd", *TOP1)),
    ("ef_sgd (no EF)", "topk 1%", ("algorithm=ef_sgd", *TOP1, "algorithm.error_feedback=false")),
    ("ef_sgd", "sign", ("algorithm=ef_sgd", "compressor=sign")),
    ("delayed_sgd τ=8", "identity", ("algorithm=delayed_sgd", "algorithm.delay=8")),
    ("delayed_sgd random ≤8", "identity",
     ("algorithm=delayed_sgd", "algorithm.mode=random", "algorithm.max_delay=8")),
    ("local_sgd H=1", "identity", ("algorithm=local_sgd", "algorithm.local_steps=1")),
    ("local_sgd H=8", "identity", ("algorithm=local_sgd", "algorithm.local_steps=8")),
    ("local_sgd H=8 weighted", "identity",
     ("algorithm=local_sgd", "algorithm.local_steps=8", "algorithm.output=weighted")),
    ("diana", "quant_p (p=2)", ("algorithm=diana", "compressor=quant_p")),
    ("diana", "quant_p (p=inf, blocks of 30)",
     ("algorithm=diana", "compressor=quant_p", "compressor.p=inf", "compressor.block_size=30")),
    ("qsgd", "qsgd (s=4)", ("algorithm=qsgd", "compressor=qsgd")),
    ("terngrad", "terngrad", ("algorithm=terngrad", "compressor=terngrad")),
    ("dqgd (full gradients)", "quant_p (p=2)",
     ("algorithm=dqgd", "compressor=quant_p", "batch_size=full")),
    ("ef21 (EF21-SGD)", "topk 1%", ("algorithm=ef21", *TOP1)),
    ("marina (full gradients)", "randk 1% (p = 1/(ω+1))",
     ("algorithm=marina", "compressor=randk", "compressor.ratio=0.01", "batch_size=full")),
    ("ef_sgd", "powersgd r=2 (17×18 view)", ("algorithm=ef_sgd", "compressor=powersgd")),
    ("majority_vote", "(signs, 1 bit each way)", ("algorithm=majority_vote",)),
    ("majority_vote β=0.9 (Signum)", "(signs, 1 bit each way)",
     ("algorithm=majority_vote", "algorithm.momentum=0.9")),
    ("sgd, downlink=topk 1% (EF21-P)", "identity", ("downlink=topk", "downlink.ratio=0.01")),
    ("fedavg H=8", "identity", ("algorithm=fedavg", "algorithm.local_steps=8")),
    ("fedavg H=8 p=0.5 Nesterov (DiLoCo)", "identity",
     ("algorithm=fedavg", "algorithm.local_steps=8", "algorithm.participation=0.5",
      "algorithm.server_lr=0.7", "algorithm.server_momentum=0.9", "algorithm.nesterov=true")),
    ("scaffold H=8", "identity", ("algorithm=scaffold", "algorithm.local_steps=8")),
    ("scaffold H=8 p=0.5", "identity",
     ("algorithm=scaffold", "algorithm.local_steps=8", "algorithm.participation=0.5")),
]


class Case:
    """One built run, stepped on from where the previous timing left it."""

    def __init__(self, overrides: tuple):
        self.run = Run(compose(*PROBLEM, *overrides))
        self.state = self.run.algorithm.init(self.run.task.x0())
        self.t = 0
        self.steps(20)  # warm-up: first-call allocations and caches

    def steps(self, m: int) -> None:
        step, s = self.run.algorithm.step, self.state
        for t in range(self.t, self.t + m):
            s = step(s, t, 0.05)
        self.state, self.t = s, self.t + m

    def bits_per_iteration(self, direction: str = "up") -> float:
        return self.run.channel.totals()[f"comm/bits_{direction}"] / self.t


def cpu_rate(fn, iterations: int) -> float:
    """Iterations per second of this process's CPU time (one thread: the step's own cost)."""
    start = time.process_time()
    fn(iterations)
    return iterations / (time.process_time() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    iterations = 200 if args.quick else 1000
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; K={K}, d={D}, b={B}, {iterations} "
          f"iterations, best of {args.repeats} round-robin rounds, CPU time\n")
    cases = [Case(overrides) for _, _, overrides in CASES]
    rates = [0.0] * len(cases)
    for _ in range(args.repeats):
        for i, case in enumerate(cases):
            rates[i] = max(rates[i], cpu_rate(case.steps, iterations))
    rows = []
    for (name, comp, _), case, rate in zip(CASES, cases, rates, strict=True):
        rows.append([name, comp, f"{rate:,.0f}", f"{rates[0] / rate:.2f}",
                     f"{case.bits_per_iteration():,.0f}",
                     f"{case.bits_per_iteration('down'):,.0f}"])
    print(table(["algorithm", "compressor", "it/s", "time vs sgd", "up bits/it",
                 "down bits/it"], rows))


if __name__ == "__main__":
    main()
