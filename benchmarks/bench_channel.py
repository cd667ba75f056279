"""What the channel's protocol machinery costs on top of the work every channel must do.

    .venv/bin/python benchmarks/bench_channel.py

One up-link round and one broadcast, as one SGD step makes them, for the identity compressor
(the float32 wire) and top-k, at K = 1, 16, 64 workers, d = 300, float64 messages:

- "channel": `channel.send_up(x)` + `channel.broadcast(v)` (suite/comm/channel.py: the
  adapter, the link's timed collective, the state, the exact bit counters);
- "bare": the same arithmetic written inline — compress, decompress, mean over the worker
  axis, the float32 broadcast, no timers, no counters: what a channel cannot avoid doing.

Both run interleaved in one process, in blocks of 100 rounds, 400 blocks each; the minimum
over blocks is reported, because on a shared machine the minimum is the cost without
interference (the mean measures the other processes). "overhead" is channel − bare.

    .venv/bin/python benchmarks/bench_channel.py --against DIR

also compares with the channel of another checkout, DIR/suite/comm.py (the channel before the
protocol, e.g. `git archive f20153c | tar -x -C DIR`), loaded beside this one: one send_up +
broadcast of the identity compressor, and one whole SGD step of bench_simulator's job (the
same Run, its algorithm built once on each channel), alternated, minimum over blocks.
"""

from __future__ import annotations

import time

import torch

from suite.backends import SimulatedBackend
from suite.comm import Channel
from suite.compressors import build_compressor
from suite.rng import WorkerStreams
from suite.timing import Stopwatch

BLOCK, BLOCKS, D = 100, 400, 300


def _table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _min_per_call(funcs: dict, block: int, blocks: int) -> dict:
    """Minimum over alternated blocks of each function's time per call, in µs."""
    best = dict.fromkeys(funcs, float("inf"))
    for i in range(blocks):
        for key in (list(funcs) if i % 2 else list(funcs)[::-1]):  # no first-mover bias
            f = funcs[key]
            t0 = time.perf_counter()
            for _ in range(block):
                f()
            best[key] = min(best[key], (time.perf_counter() - t0) / block * 1e6)
    return best


def against(directory: str) -> str:
    """This channel against DIR/suite/comm.py's, per round and per whole SGD step."""
    import importlib.util
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import compose


    spec = importlib.util.spec_from_file_location("old_comm", Path(directory) / "suite/comm.py")
    old_comm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old_comm)

    class OldBackend(SimulatedBackend):  # the backend method the old channel called
        def mean_of_messages(self, compressor, payload, decoded):
            return decoded.mean(0)

    return _table(["K", "round, old µs", "round, new µs", "new/old", "step, old it/s",
                   "step, new it/s", "new/old time"],
                  [_against_row(K, compose, old_comm.Channel, OldBackend) for K in (1, 16, 64)])


def _against_row(K, compose, OldChannel, OldBackend) -> list:
    from suite.algorithms import Context, sgd
    from suite.runner import Run

    run = Run(compose("task.dataset=synthetic", f"task.n_samples={K * 64}", "task.dim=300",
                      "batch_size=16", f"workers={K}", "lr=0.05"))
    old = OldChannel(OldBackend(K), run.compressor, WorkerStreams(0, "compression", range(K)),
                     run.stopwatch)
    x = torch.randn(K, D, dtype=torch.float64)
    rounds = _min_per_call({"old": lambda: (old.send_up(x), old.broadcast(x[0])),
                            "new": lambda: (run.channel.send_up(x), run.channel.broadcast(x[0]))},
                           BLOCK, BLOCKS)
    algos = {"old": sgd.build(Context(run.task, old, run.sample_streams, run.batch_size,
                                      run.stopwatch)), "new": run.algorithm}
    states = {k: [a.init(run.task.x0()), 0] for k, a in algos.items()}

    def stepper(key):
        def step():
            s = states[key]
            s[0] = algos[key].step(s[0], s[1], 0.05)
            s[1] += 1
        return step

    steps = _min_per_call({k: stepper(k) for k in algos}, 20, 300)
    return [K, f"{rounds['old']:.2f}", f"{rounds['new']:.2f}",
            f"{rounds['new'] / rounds['old']:.3f}", f"{1e6 / steps['old']:,.0f}",
            f"{1e6 / steps['new']:,.0f}", f"{steps['new'] / steps['old']:.3f}"]





def _row(name: str, c, K: int) -> list:
    x = torch.randn(K, D, dtype=torch.float64)
    backend = SimulatedBackend(K)
    channel = Channel(backend, c, WorkerStreams(0, "compression", range(K)),
                      Stopwatch(backend.device))
    streams = WorkerStreams(0, "compression", range(K))

    def with_channel():
        channel.send_up(x)
        channel.broadcast(x[0])

    def bare():
        mean = c.decompress(c.compress(x, streams)).mean(0)
        mean.to(torch.float32).to(mean.dtype)

    best = _min_per_call({"channel": with_channel, "bare": bare}, BLOCK, BLOCKS)
    return [name, K, f"{best['channel']:.2f}", f"{best['bare']:.2f}",
            f"{best['channel'] - best['bare']:.2f}", f"{best['channel'] / best['bare']:.2f}x"]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="DIR", help="a checkout with suite/comm.py")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.against:
        print(against(args.against))
        print()
    rows = [_row(name, build_compressor(name, **hp), K)
            for name, hp in (("identity", {}), ("topk", {"ratio": 0.1})) for K in (1, 16, 64)]
    print(f"torch {torch.__version__}, 1 thread, d = {D}, min over {BLOCKS} blocks of {BLOCK}\n")
    print(_table(["compressor", "K", "channel µs", "bare µs", "overhead µs", "channel/bare"],
                 rows))


if __name__ == "__main__":
    main()
