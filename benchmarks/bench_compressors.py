"""Throughput of every compressor: compress+decompress and encode, against torch.clone.

    python benchmarks/bench_compressors.py           # [1, 25M] and [16, 1M] float32
    python benchmarks/bench_compressors.py --quick   # [1, 2.5M] and [16, 100k]
    python benchmarks/bench_compressors.py --shapes 16x300 --only qsgd,quant_p,terngrad
    python benchmarks/bench_compressors.py --powersgd-only --threads 1

Throughput is input bytes / seconds (best of `--reps` timed runs after one warm-up, so page
faults and allocator growth are not counted). The reference is `x.clone()` of the same tensor in
the same run: a read and a write of every byte, i.e. the memory bandwidth a compressor that
touches its input once could reach. The target is compress+decompress at >= 20% of it. Encode
(payload -> bytes) and decode (bytes -> payload) are timed once each, after a warm-up.

PowerSGD (a scheme with two all-reduces, not a stateless compressor) has a table of its own:
one up-link round through the channel (simulated backend: both all-reduces, the float32 wire,
the decoded messages and the aggregate) beside the bare GRACE-style arithmetic of rank-r
PowerSGD, per matrix two matmuls and a QR (P = MQ, P̂ = qr(mean P), Q = MᵀP̂, then P̂Qᵀ), on
ResNet-20's layer shapes and on a vector's n×m view (docs/theory.md §12).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a plain checkout too

from suite.comm.votes import SignCodec, Signs  # noqa: E402
from suite.compressors import build_compressor  # noqa: E402
from suite.rng import WorkerStreams  # noqa: E402

VARIANTS = [
    ("identity", {}),
    ("identity", {"width": 16}),
    ("qsgd", {"levels": 4}),
    ("qsgd", {"levels": 4, "bucket_size": 512}),
    ("terngrad", {}),
    ("terngrad", {"clip": 2.5}),
    ("quant_p", {"p": 2}),
    ("quant_p", {"p": "inf", "block_size": 512}),
    ("topk", {"ratio": 0.01}),
    ("randk", {"ratio": 0.01}),
    ("sign", {}),
    ("natural", {}),
]

TARGET = 0.20


def label(name: str, hp: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in hp.items())


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def best_time(fn, reps: int) -> float:
    fn()  # warm-up: first-touch page faults, allocator growth
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return max(min(times), 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10x smaller inputs")
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions (best is kept)")
    ap.add_argument("--no-encode", action="store_true", help="skip timing encode and decode")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall-clock time, or the process's CPU time (user + system, all "
                         "threads), which other jobs on a shared machine disturb less")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--shapes", default=None,
                    help="comma-separated WxD shapes instead of the defaults (e.g. 16x300, the "
                         "simulator's size, where fixed per-call costs dominate)")
    ap.add_argument("--only", default=None, help="comma-separated compressor names to time")
    ap.add_argument("--powersgd-only", action="store_true", help="only the PowerSGD table")
    args = ap.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.powersgd_only:
        bench_powersgd(max(3, args.reps), args.quick)
        return
    scale = 10 if args.quick else 1
    shapes = [(1, 25_000_000 // scale), (16, 1_000_000 // scale)]
    if args.shapes:
        shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    variants = VARIANTS if args.only is None else [
        v for v in VARIANTS if v[0] in args.only.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 input, "
          f"{args.clock} clock, best of {args.reps} after a warm-up")
    header = ("| compressor | shape | compress+decompress GB/s | ratio to clone | encode GB/s "
              "| decode GB/s | bits/coord | µs per call |")
    for w, d in shapes:
        x = torch.randn(w, d, generator=torch.Generator().manual_seed(0))
        nbytes = x.numel() * x.element_size()
        t_clone = best_time(lambda x=x: x.clone(), max(3, args.reps))
        clone_gbs = nbytes / t_clone / 1e9
        # The floor under every stochastic compressor: one float32 uniform per coordinate from
        # each worker's own generator (suite.rng), the way the compressors draw them.
        draw = WorkerStreams(0, "bench", list(range(w)))
        t_uniform = best_time(lambda d=d, s=draw: s.uniform(d), max(3, args.reps))
        print(f"\n[{w}, {d:_}]: torch.clone {clone_gbs:.2f} GB/s ({t_clone * 1e3:.1f} ms); "
              f"uniform draws alone {nbytes / t_uniform / 1e9:.2f} GB/s "
              f"({t_clone / t_uniform:.2f} of clone)\n")
        print(header)
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for name, hp in variants:
            c = build_compressor(name, **hp)
            streams = WorkerStreams(0, "bench", list(range(w)))

            def step(c=c, streams=streams, x=x):
                return c.decompress(c.compress(x, streams))

            t = best_time(step, args.reps)
            payload = c.compress(x, streams)
            bits = float(c.bits(payload).double().mean()) / d
            if args.no_encode:
                enc = dec = "-"
            else:
                msgs = c.encode(payload)
                t_enc = best_time(lambda c=c, p=payload: c.encode(p), 1)
                t_dec = best_time(lambda c=c, m=msgs, d=d: c.decode(m, d, torch.float32), 1)
                enc = f"{nbytes / t_enc / 1e9:.2f}"
                dec = f"{nbytes / t_dec / 1e9:.2f}"
            ratio = (nbytes / t / 1e9) / clone_gbs
            flag = "" if round(ratio, 2) >= TARGET else " (below 20%)"
            print(f"| {label(name, hp)} | [{w}, {d:_}] | {nbytes / t / 1e9:.2f} | "
                  f"{ratio:.2f}{flag} | {enc} | {dec} | {bits:.3f} | {t * 1e6:.1f} |", flush=True)
        for row in scheme_rows(x, clone_gbs, args):
            print(row, flush=True)
    bench_powersgd(max(3, args.reps), args.quick)



def scheme_rows(x: torch.Tensor, clone_gbs: float, args) -> list[str]:
    """The message arithmetic of the methods that are not a compressor option: majority vote's
    signs (suite/comm/votes.py: compress = the sign bits, decompress = ±1; encode = 1-bit
    packing) and EF21-P's down-link step with top-k 1% (suite/comm/downlinks.py: p = e + v,
    C(p), e ← p − C(p)) on each row as the one broadcast vector."""
    w, d = x.shape
    nbytes = x.numel() * x.element_size()
    rows = []

    def vote(x=x):
        return SignCodec.decompress(Signs(x < 0, x.dtype))

    t = best_time(vote, args.reps)
    payload = Signs(x < 0, x.dtype)
    if args.no_encode:
        enc = dec = "-"
    else:
        msgs = SignCodec.encode(payload)
        t_enc = best_time(lambda: SignCodec.encode(payload), 1)
        t_dec = best_time(lambda: SignCodec.decode(msgs, d, torch.float32), 1)
        enc, dec = f"{nbytes / t_enc / 1e9:.2f}", f"{nbytes / t_dec / 1e9:.2f}"
    rows.append(f"| majority vote signs | [{w}, {d:_}] | {nbytes / t / 1e9:.2f} | "
                f"{nbytes / t / 1e9 / clone_gbs:.2f} | {enc} | {dec} | 1.000 |")
    top = build_compressor("topk", ratio=0.01)
    streams = WorkerStreams(0, "bench", list(range(w)))
    e = torch.zeros_like(x)

    def ef21p(x=x, e=e):
        p = e + x
        sent = top.decompress(top.compress(p, streams))
        return p - sent

    t = best_time(ef21p, args.reps)
    bits = float(top.bits(top.compress(x, streams)).double().mean()) / d
    rows.append(f"| EF21-P step, topk ratio=0.01 | [{w}, {d:_}] | {nbytes / t / 1e9:.2f} | "
                f"{nbytes / t / 1e9 / clone_gbs:.2f} | - | - | {bits:.3f} |")
    return rows


def bench_powersgd(reps: int, quick: bool) -> None:
    """One PowerSGD round through the channel against the bare two matmuls and QR."""
    import math

    from suite.backends import SimulatedBackend
    from suite.comm import Channel
    from suite.compressors.powersgd import layout
    from suite.timing import Stopwatch
    from tasks.resnet import resnet20

    resnet = tuple(tuple(t.shape) for t in resnet20().parameters())
    vector_d = 100_000 if quick else 1_000_000
    cases = [("ResNet-20 layers", resnet, sum(math.prod(s) for s in resnet)),
             (f"vector d={vector_d:_}", None, vector_d)]
    print("\nPowerSGD: one up-link round, w = 16 workers, float32")
    print("| message | rank | matrices | channel round ms | bare matmuls+QR ms | ratio | "
          "bits/coord |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    w = 16
    for name, shapes, d in cases:
        x = torch.randn(w, d, generator=torch.Generator().manual_seed(0))
        for rank in (1, 4):
            backend = SimulatedBackend(w)
            ch = Channel(backend, build_compressor("powersgd", rank=rank),
                         WorkerStreams(0, "bench", backend.worker_ids),
                         Stopwatch(backend.device), seed=0, shapes=shapes)
            t_channel = best_time(lambda ch=ch, x=x: ch.send_up(x), reps)
            lay = layout(d, shapes, rank)
            # the bare arithmetic on the same matrices, gathered once outside the timing
            src = torch.cat([x, x.new_zeros(w, 1)], 1) if lay.padded else x
            mats = [src[:, b.index].view(w, b.count, b.rows, b.cols) for b in lay.blocks]
            qs = [torch.randn(b.count, b.cols, b.rank) for b in lay.blocks]

            def bare(mats=mats, qs=qs):
                for m, q in zip(mats, qs, strict=True):
                    p_hat = torch.linalg.qr((m @ q).mean(0)).Q
                    q_new = m.transpose(-1, -2) @ p_hat
                    p_hat @ q_new.transpose(-1, -2)

            t_bare = best_time(bare, reps)
            count = sum(b.count for b in lay.blocks)
            print(f"| {name} | {rank} | {count} | {t_channel * 1e3:.1f} | {t_bare * 1e3:.1f} | "
                  f"{t_channel / t_bare:.2f} | {lay.bits / d:.4f} |", flush=True)


if __name__ == "__main__":
    main()
