"""Speed of the vectorised simulator against a plain per-worker Python loop, and the share of
the default job's wall time spent in tracking.

    .venv/bin/python benchmarks/bench_simulator.py

Part 1: parallel SGD on logistic regression (synthetic, d = 300, b = 16) for K = 1, 4, 16, 64.
"suite" is `algorithm.step` as the runner calls it (the shared sampling stream, batched
gradients over the [K, d] worker axis, compression through the channel, float32 wire, timers
and exact bit counts). "loop" computes the same update the way one would without the worker
axis: for each worker, its minibatch, its gradient, its float32 message; then the average. Both
run side by side in one process, and the script first checks that they produce the same
iterates. "gradients only" times the batched sampling and gradients alone: the memory-bound
floor of a vectorised step, so "gradients only/loop" is the most any vectorised step could gain
over the loop on this machine.

Part 2: the default job (`make run`'s config) with tracking=mlflow into a fresh SQLite store,
against the same job with tracking=none. The difference is what tracking costs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, best_rate, compose, table

from suite.runner import Run, execute


def loop_step_factory(run: Run):
    """One SGD step written as a per-worker Python loop over the same data and stream.

    It draws the step's sampling uniforms as the suite does (one [K, b] block from the shared
    sampling stream), so both compute the same iterates; then, worker by worker: its minibatch,
    its gradient, its float32 message; then the average and the float32 broadcast.
    """
    task = run.task
    gen = run.sample_streams.generator
    b = run.batch_size
    K = task.num_workers

    def step(x, lr):
        u_all = torch.empty(K, b, dtype=torch.float64).uniform_(0, 1, generator=gen)
        total = torch.zeros_like(x)
        for k in range(K):
            n_k = int(task.n_held[k])
            idx = (u_all[k] * n_k).long()
            A, y = task.A_shards[k, idx], task.b_shards[k, idx]
            coef = -y * torch.sigmoid(-y * (A @ x)) * (K * n_k / (task.n * b))
            g = A.T @ coef + task.l2 * x
            total += g.to(torch.float32).to(x.dtype)
        return x - lr * (total / K).to(torch.float32).to(x.dtype)

    return step


def _suite_runner(run: Run):
    state = [run.algorithm.init(run.task.x0())]

    def steps(m):
        s = state[0]
        for t in range(m):
            s = run.algorithm.step(s, t, 0.05)
        state[0] = s

    return steps


def _loop_runner(run: Run):
    loop, x = loop_step_factory(run), [run.task.x0()]

    def steps(m):
        for _ in range(m):
            x[0] = loop(x[0], 0.05)

    return steps


def _gradient_runner(run: Run):
    """Only the batched minibatch gradients (sampling, gather, two batched GEMVs): no channel,
    no timers, no update. What the step costs can never go below this."""
    task, streams, b, x = run.task, run.sample_streams, run.batch_size, run.task.x0()

    def steps(m):
        for _ in range(m):
            task.grads(x, task.sample_batch(streams, b))

    return steps


def check_same_iterates(K: int, steps: int = 20) -> None:
    """The loop computes what the suite computes: same iterates from the same stream."""
    def fresh():
        return Run(compose("task.dataset=synthetic", f"task.n_samples={K * 64}",
                           "task.dim=300", "batch_size=16", f"workers={K}", "lr=0.05"))
    run_a, run_b = fresh(), fresh()
    state, loop, x = run_a.algorithm.init(run_a.task.x0()), loop_step_factory(run_b), None
    x = run_b.task.x0()
    for t in range(steps):
        state = run_a.algorithm.step(state, t, 0.05)
        x = loop(x, 0.05)
    suite_x = run_a.algorithm.params(state)
    if not torch.allclose(suite_x, x, rtol=1e-12, atol=1e-15):
        raise AssertionError(f"K={K}: suite and loop iterates differ by "
                             f"{float((suite_x - x).abs().max()):.3g}")


def simulator_table(quick: bool) -> str:
    rows = []
    for K in (1, 4, 16, 64):
        check_same_iterates(K)
        cfg = compose("task.dataset=synthetic", f"task.n_samples={K * 64}", "task.dim=300",
                      "batch_size=16", f"workers={K}", "lr=0.05")
        run = Run(cfg)
        n = 200 if quick else 1000
        suite_steps, loop_steps = _suite_runner(run), _loop_runner(run)
        fast, slow = best_rate(suite_steps, n), best_rate(loop_steps, max(n // 4, 50))
        floor = best_rate(_gradient_runner(run), n)
        rows.append([K, f"{fast:,.0f}", f"{slow:,.0f}", f"{fast / slow:.1f}x",
                     f"{floor:,.0f}", f"{floor / slow:.1f}x", f"{floor / fast:.2f}"])
    k1 = float(rows[0][1].replace(",", ""))
    for r in rows:
        r.insert(4, f"{k1 / float(r[1].replace(',', '')):.2f}")
    return table(["K", "suite it/s", "loop it/s", "suite/loop", "time vs K=1",
                  "gradients only it/s", "gradients only/loop",
                  "suite step time / gradients-only time"], rows)


def _job_seconds(mode: str, store: Path, steps: int, writer: str = "process") -> float:
    cfg = compose(f"steps={steps}")
    if mode == "mlflow":
        cfg.tracking = compose("tracking=mlflow", f"tracking.writer={writer}").tracking
    start = time.perf_counter()
    result = execute(cfg, launch_dir=store)
    seconds = time.perf_counter() - start
    if result.status != "FINISHED":
        raise RuntimeError(f"benchmark job ended {result.status}: {result.reason}")
    return seconds


def tracking_seconds(repeats: int = 5, steps: int = 2000) -> dict:
    """The default job with and without tracking, alternated `repeats` times after one warm-up
    job of each kind (imports, matplotlib's font cache, the SQLite store's tables: one-time
    costs that any store already holding a run has paid). Best of the repeats for each:
    {(mode, writer): seconds}."""
    modes = (("none", "process"), ("mlflow", "process"), ("mlflow", "inline"))
    best = dict.fromkeys(modes, float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        for mode, writer in modes:
            _job_seconds(mode, store, 10, writer)
        for _ in range(repeats):
            for mode, writer in modes:
                best[mode, writer] = min(best[mode, writer],
                                         _job_seconds(mode, store, steps, writer))
    return best


def sweep_tracking_seconds(repeats: int = 3, jobs: int = 5, steps: int = 2000) -> dict:
    """A sweep's jobs as the basic launcher runs them, one process, one after another: `jobs`
    default jobs (seeds 0..jobs-1) with tracking=none, and the same with tracking=mlflow
    inside `closes_pipelined` (each run's close confirmed while the next is set up, the last
    when the block ends, inside the timing). Best of `repeats`: {mode: seconds per job}."""
    from suite.tracking_writer import closes_pipelined

    best = {"none": float("inf"), "mlflow": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        _job_seconds("mlflow", store, 10)  # the store's tables, the writer's fork
        for _ in range(repeats):
            for mode in best:
                cfgs = []
                for seed in range(jobs):
                    cfg = compose(f"steps={steps}", f"seed={seed}")
                    if mode == "mlflow":
                        cfg.tracking = compose("tracking=mlflow").tracking
                    cfgs.append(cfg)
                start = time.perf_counter()
                with closes_pipelined():
                    for cfg in cfgs:
                        result = execute(cfg, launch_dir=store)
                        if result.status != "FINISHED":
                            raise RuntimeError(f"benchmark job ended {result.status}")
                best[mode] = min(best[mode], (time.perf_counter() - start) / jobs)
    return best


def tracking_table(repeats: int = 5, steps: int = 2000) -> str:
    best = tracking_seconds(repeats, steps)
    none = best["none", "process"]
    rows = [["tracking=none", f"{none:.3f}", ""]]
    for writer in ("process", "inline"):
        t = best["mlflow", writer]
        rows.append([f"tracking=mlflow (SQLite), tracking.writer={writer}", f"{t:.3f}",
                     f"{100 * (t - none) / t:.1f}%"])
    sweep = sweep_tracking_seconds(steps=steps)
    rows.append(["a sweep's job, tracking=none (5 jobs in one process)", f"{sweep['none']:.3f}",
                 ""])
    rows.append(["a sweep's job, tracking=mlflow, closes pipelined", f"{sweep['mlflow']:.3f}",
                 f"{100 * (sweep['mlflow'] - sweep['none']) / sweep['mlflow']:.1f}%"])
    return table([f"default job ({steps} steps), best of {repeats}", "seconds",
                  "share of wall time in tracking"], rows)


def cli_seconds(repeats: int = 3, steps: int = 2000) -> dict:
    """The same job as a user starts it, `python -m suite ...` in a fresh interpreter: what
    tracking adds there includes importing MLflow and starting the writer, once per process.
    Best of `repeats` for each: {mode: seconds}."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    best = {"none": float("inf"), "mlflow": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(repeats + 1):  # the first round creates the store's tables
            for mode in best:
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "suite", f"steps={steps}", "progress=false",
                                f"tracking={mode}"], cwd=tmp, env=env, check=True,
                               capture_output=True)
                if attempt:
                    best[mode] = min(best[mode], time.perf_counter() - start)
    return best


def cli_table(repeats: int = 3, steps: int = 2000) -> str:
    best = cli_seconds(repeats, steps)
    share = 100 * (best["mlflow"] - best["none"]) / best["mlflow"]
    return table([f"`python -m suite steps={steps}`, best of {repeats}", "seconds",
                  "share of wall time in tracking"],
                 [["tracking=none", f"{best['none']:.2f}", ""],
                  ["tracking=mlflow (SQLite)", f"{best['mlflow']:.2f}", f"{share:.1f}%"]])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the comparison is of Python overhead, not of BLAS threading
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread\n")
    print(simulator_table(args.quick))
    print()
    print(tracking_table())
    print()
    print(cli_table())


if __name__ == "__main__":
    main()
