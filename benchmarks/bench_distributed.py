"""One step of each distributed exchange: gloo over loopback, 2 processes, one worker each.

    python benchmarks/bench_distributed.py               # d = 25M float32 (about 2 minutes)
    python benchmarks/bench_distributed.py --d 2500000   # 10x smaller

For every exchange the table gives what one rank does in one step, as DistributedBackend does
it: compress (the compressor's compress + encode to bytes; TernGrad's includes the shared-scale
all_reduce MAX), the collectives (all_reduce of float32 for the dense row; for the others the
all_gather of message sizes, then of the padded bytes) and decode (decode every worker's bytes,
decompress, average). Times are the slowest rank's, best of `--reps` after one warm-up. MB is
what one rank hands to the collectives (payload plus size header). Both ranks share this host's
cores, so compute and communication contend for the same CPUs, as they would on one node.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
from _common import table  # also puts the checkout on sys.path

WORLD = 2
EXCHANGES = [  # label, compressor name or None (dense), hyper-parameters
    ("all_reduce float32 (dense)", None, {}),
    ("top-1% (topk ratio=0.01)", "topk", {"ratio": 0.01}),
    ("qsgd levels=4", "qsgd", {"levels": 4}),
    ("terngrad", "terngrad", {}),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(backend, fn) -> float:
    """fn's time on the slowest rank (ranks start together)."""
    backend.barrier()
    t0 = time.perf_counter()
    out = fn()
    return backend.max_over_ranks([time.perf_counter() - t0])[0], out


def _rank(rank: int, port: int, d: int, reps: int) -> None:
    import torch.distributed as dist

    from suite.backends.distributed import DistributedBackend
    from suite.compressors import build_compressor
    from suite.rng import WorkerStreams

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two ranks, two cores
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    backend = DistributedBackend(WORLD, "cpu")
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(1, d, generator=gen)
    streams = WorkerStreams(0, "compression", backend.worker_ids)
    rows = []
    for label, name, hp in EXCHANGES:
        best = None
        for _ in range(reps + 1):  # the first is a warm-up
            sent = backend.wire_bytes + backend.wire_header_bytes + backend.wire_padding_bytes
            if name is None:
                t_c, t_d = 0.0, 0.0
                t_m, _ = _timed(backend, lambda: backend._all_reduce(x[0], dist.ReduceOp.SUM))
                sent_now = x[0].numel() * x.element_size()
            else:
                c = build_compressor(name, **hp)

                def compress(c=c):
                    if c.needs_shared_scale:
                        p = c.compress(x, streams, backend.max(c.local_scale(x)))
                    else:
                        p = c.compress(x, streams)
                    return c.encode(p)

                t_c, msgs = _timed(backend, compress)
                t_m, everyone = _timed(backend, lambda msgs=msgs: backend.exchange(msgs))
                t_d, _ = _timed(backend, lambda c=c, e=everyone: c.decompress(
                    c.decode(e, d, torch.float32, "cpu")).mean(0))
                sent_now = (backend.wire_bytes + backend.wire_header_bytes
                            + backend.wire_padding_bytes - sent)
            total = t_c + t_m + t_d
            if best is None or total < best[-1]:
                best = (t_c, t_m, t_d, total)
        rows.append((label, sent_now, *best))
    if rank == 0:
        dense = rows[0][-1]
        print(f"d = {d:,} float32 per worker, {WORLD} ranks (gloo, 127.0.0.1), "
              f"best of {reps}, torch {torch.__version__}\n")
        print(table(
            ["exchange", "MB sent / rank", "compress ms", "collectives ms", "decode ms",
             "step ms", "vs dense"],
            [[label, f"{sent / 1e6:.2f}", f"{tc * 1e3:.0f}", f"{tm * 1e3:.0f}",
              f"{td * 1e3:.0f}", f"{tot * 1e3:.0f}", f"{dense / tot:.2f}x"]
             for label, sent, tc, tm, td, tot in rows]))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=25_000_000, help="coordinates per worker")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (best is shown)")
    args = ap.parse_args()
    import torch.multiprocessing as mp

    mp.start_processes(_rank, args=(_free_port(), args.d, args.reps), nprocs=WORLD,
                       start_method="spawn")


if __name__ == "__main__":
    main()
