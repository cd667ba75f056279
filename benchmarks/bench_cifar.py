"""Images per second per worker for ResNet-20 on CIFAR-shaped batches: the suite's per-worker
gradients (vmap and loop) beside the plain PyTorch training loop a user would otherwise write.

    .venv/bin/python benchmarks/bench_cifar.py              # about 2 minutes on 2 vCPUs
    .venv/bin/python benchmarks/bench_cifar.py --rounds 2   # a quick look

Every row does the same work per worker and step on the same fixed batch of b images: forward,
backward, and an SGD update with weight decay 5e-4.

- plain loop: an nn.Module with nn.BatchNorm2d, `loss.backward()`, `optimizer.step()`; at K = 4,
  four such models stepped one after another in a Python loop.
- suite: `task.grads(x, batch)` (the flat-vector torch.func gradient, weight decay, the BN
  running statistics update) and x ← x − γ·mean_k g_k. `vmap` is the default mode (at K = 1 it
  takes the single-worker path: vmap over one worker only adds its batching rules' cost, shown
  in the row "vmap forced, K = 1"); `loop` is `task.grad_mode=loop`. "shared x" is a [d] model
  (SGD, EF-SGD, DIANA, ...), "per-worker x" a [K, d] one (Local SGD).
- suite, full step: `algorithm.step` of `algorithm=sgd` as the runner calls it, which adds
  sampling, augmentation on the [K, b] batch, and the channel (float32 wire).

The rate is images per second of the process's CPU time per worker, best of `--rounds`
round-robin rounds (every row once per round), one torch thread: the development machine is
shared with other jobs, and CPU time, with a single thread, is what moves least under load.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import compose, table

from suite.runner import Run
from tasks.resnet import resnet20

LR, WEIGHT_DECAY = 0.05, 5e-4


def plain_loop(K: int, batch):
    models = [resnet20() for _ in range(K)]
    opts = [torch.optim.SGD(m.parameters(), lr=LR, weight_decay=WEIGHT_DECAY) for m in models]

    def step():
        for k in range(K):
            opts[k].zero_grad(set_to_none=True)
            F.cross_entropy(models[k](batch.images[k]), batch.labels[k]).backward()
            opts[k].step()
    return step


def suite_grads(run: Run, batch, *, per_worker: bool, mode: str, force_vmap=False):
    task = run.task
    x = [task.x0().expand(task.num_workers, -1).clone() if per_worker else task.x0()]

    def step():
        task.grad_mode = mode  # rows share a task: set the mode on every call
        if force_vmap:  # what vmap over one worker would cost, bypassed in task.grads
            g = task._vmapped(x[0].expand(1, -1), batch.images, batch.labels)[0]
            g = g + task.weight_decay * x[0]
        else:
            g = task.grads(x[0], batch)
        x[0] = x[0] - LR * (g if per_worker else g.mean(0))
    return step


def full_step(run: Run):
    state = [run.algorithm.init(run.task.x0())]

    def step():
        state[0] = run.algorithm.step(state[0], 0, LR)
    return step


def make_run(K: int, b: int) -> Run:
    return Run(compose("task=cifar10_resnet", "task.dataset=fake", f"task.fake_size={64 * K}",
                       f"workers={K}", f"batch_size={b}", f"lr={LR}",
                       f"task.weight_decay={WEIGHT_DECAY}"))


def cpu_rate(fn, steps: int) -> float:
    start = time.process_time()
    for _ in range(steps):
        fn()
    return steps / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="images per worker and step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per row and round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b = args.batch

    rows: list[tuple[str, int, object]] = []
    for K in (1, 4):
        run = make_run(K, b)
        batch = run.task.sample_batch(run.sample_streams, b)
        rows.append(("plain loop (nn.Module, backward, optimizer.step)", K, plain_loop(K, batch)))
        if K == 1:
            rows.append(("suite (single-worker path)", K,
                         suite_grads(run, batch, per_worker=False, mode="vmap")))
            rows.append(("suite, vmap forced, K = 1", K,
                         suite_grads(run, batch, per_worker=False, mode="vmap",
                                     force_vmap=True)))
        else:
            rows.append(("suite vmap, shared x", K,
                         suite_grads(run, batch, per_worker=False, mode="vmap")))
            rows.append(("suite vmap, per-worker x", K,
                         suite_grads(run, batch, per_worker=True, mode="vmap")))
            rows.append(("suite loop, shared x", K,
                         suite_grads(run, batch, per_worker=False, mode="loop")))
        rows.append(("suite, full step (sample + augment + grads + channel)", K,
                     full_step(make_run(K, b))))

    for _, _, fn in rows:  # warm-up: allocator, oneDNN primitive caches
        fn()
    best = [0.0] * len(rows)
    for _ in range(args.rounds):
        for i, (_, _, fn) in enumerate(rows):
            best[i] = max(best[i], cpu_rate(fn, args.steps))

    base = {K: best[i] for i, (name, K, _) in enumerate(rows) if name.startswith("plain")}
    out = [[name, K, f"{rate * b:.0f}", f"{rate / base[K]:.2f}"]
           for (name, K, _), rate in zip(rows, best, strict=True)]
    print(f"ResNet-20, b = {b} images per worker, {args.threads} torch thread(s), "
          f"torch {torch.__version__}; images per CPU-second per worker, best of "
          f"{args.rounds} rounds of {args.steps} steps")
    print(table(["", "K", "img/s/worker", "vs plain loop"], out))


if __name__ == "__main__":
    main()
