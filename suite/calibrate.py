"""`commsgd-calibrate`: fit the cost model's α and β (suite/costmodel.py) on shaped links.

    commsgd-calibrate                                  # 100mbit and 1gbit, 2 ranks (~1 minute)
    commsgd-calibrate --rate 200mbit --world-size 4 --reps 7

For each rate, W ranks in a fresh network namespace whose loopback is shaped to it (as
`hardware.link.rate` runs a job: suite/netns.py) time all_reduce and all_gather of float32
tensors over a ladder of sizes, from 1 KB to what the link carries in LONGEST_S. One sample is
the median over `--reps` of the collective's time from a barrier on the rank that finished
last (a collective can return on one rank while that rank's own bytes are still on the way
to another). α and β are fitted to all samples of the rate (costmodel.fit: β on the large
ones, α on the small), and the table sets each sample beside the fitted model; the median
time of a barrier alone (two messages a rank) is recorded beside them, as a check on α.

The fit is printed, written as JSON (--out), and logged to MLflow (experiment `calibration`
unless --experiment says otherwise, tag commsgd.calibration=true), where `commsgd-report`
finds the latest and states its constants and errors in its projection section.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from suite import costmodel, links
from suite.config import ConfigError

LONGEST_S = 0.25  # the largest message takes about this long on the link
SMALLEST_BYTES = 1024
SIZES_PER_RATE = 8
CALIBRATION_TAG = "commsgd.calibration"
KINDS = ("all_reduce", "all_gather")
ERROR_KEYS = ("median_rel_error", "max_rel_error", "bandwidth_median_rel_error",
              "bandwidth_max_rel_error")
DEFAULT_RATES = ("100mbit", "1gbit")


def size_ladder(rate_bps: float, count: int = SIZES_PER_RATE) -> list[int]:
    """Geometric sizes (multiples of 4 bytes: float32 tensors) from SMALLEST_BYTES to what the
    link carries in LONGEST_S."""
    largest = max(SMALLEST_BYTES * 4, int(rate_bps / 8 * LONGEST_S))
    ratio = (largest / SMALLEST_BYTES) ** (1 / (count - 1))
    return [4 * round(SMALLEST_BYTES * ratio ** i / 4) for i in range(count)]


def _rank(rank: int, world_size: int, port: int, sizes: list[int], reps: int,
          out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      TORCHELASTIC_USE_AGENT_STORE="True")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, init_method="env://",
                            timeout=timedelta(seconds=120))

    def timed(fn) -> float:
        """fn's time on the rank that finished last, from a barrier: a collective can return
        on one rank while its own bytes are still on the way to another, so the last rank's
        time is the collective's."""
        dist.barrier()
        start = time.perf_counter()
        fn()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        return float(elapsed)

    for _ in range(3):  # warm-up: connections, buffers
        timed(lambda: None)
    barrier = statistics.median(timed(dist.barrier) for _ in range(max(reps, 5)))
    samples = []
    for nbytes in sizes:
        x = torch.ones(nbytes // 4)
        parts = [torch.empty_like(x) for _ in range(world_size)]
        ops = {"all_reduce": lambda x=x: dist.all_reduce(x),
               "all_gather": lambda x=x, parts=parts: dist.all_gather(parts, x)}
        for kind in KINDS:
            ops[kind]()  # warm-up at this size
            t = statistics.median(timed(ops[kind]) for _ in range(reps))
            samples.append({"kind": kind, "bytes": nbytes, "seconds": t})
    if rank == 0:
        Path(out).write_text(json.dumps({"barrier_s": barrier, "samples": samples}))
    dist.destroy_process_group()


def run_shaped(spec: links.LinkSpec, target, args: tuple, world_size: int,
               timeout_s: float = 900) -> None:
    """target(rank, world_size, port, *args) on `world_size` ranks (spawned) in a fresh
    network namespace shaped as `spec` says, the rendezvous store in there too; waits."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    ns = links.open_namespace(spec)
    try:
        with ns.entered():
            store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                                  timeout=timedelta(seconds=120))
            ctx = mp.start_processes(target, args=(world_size, store.port, *args),
                                     nprocs=world_size, join=False, start_method="spawn")
        try:
            deadline = time.monotonic() + timeout_s
            while not ctx.join(timeout=5):  # a rank that raised raises here
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the ranks did not finish within {timeout_s:g} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            del store
    finally:
        ns.close()


def measure(rate: str, *, world_size: int, mtu: int, reps: int,
            sizes: list[int] | None = None) -> dict:
    """The samples of one rate (ranks in a shaped namespace), with their fit."""
    spec = links.link_spec({"link": {"rate": rate, "mtu": mtu}})
    sizes = sizes or size_ladder(spec.rate_bps)
    out = Path(tempfile.mkdtemp(prefix="commsgd-calibrate-")) / "samples.json"
    run_shaped(spec, _rank, (sizes, reps, str(out)), world_size)
    data = json.loads(out.read_text())
    f = costmodel.fit([(s["kind"], s["bytes"], world_size, s["seconds"])
                       for s in data["samples"]], shared=True)
    for s in data["samples"]:
        s["model_s"] = f.predict(s["kind"], s["bytes"], world_size, shared=True)
        s["bandwidth_side"] = f.bandwidth_side(s["kind"], s["bytes"], world_size, shared=True)
    nominal = costmodel.Link.shaped_loopback(spec.rate_bps, alpha_s=0.0, mtu=mtu)
    return {
        "rate": rate, "rate_bps": spec.rate_bps, "world_size": world_size, "mtu": mtu,
        "reps": reps, "barrier_s": data["barrier_s"], "samples": data["samples"],
        "alpha_s": f.alpha_s, "bytes_per_s": f.bytes_per_s,
        "beta_over_rate": f.bytes_per_s * 8 / spec.rate_bps,
        "framing_model": nominal.bytes_per_s * 8 / spec.rate_bps,
        **{key: getattr(f, key) for key in ERROR_KEYS},
    }


def summary(results: list[dict]) -> dict:
    """Errors over the samples of every rate, and the median α."""
    errors, bound = [], []
    for r in results:
        for s in r["samples"]:
            e = abs(s["model_s"] - s["seconds"]) / s["seconds"]
            errors.append(e)
            if s["bandwidth_side"]:
                bound.append(e)
    return {"median_rel_error": statistics.median(errors), "max_rel_error": max(errors),
            "bandwidth_median_rel_error": statistics.median(bound) if bound else math.nan,
            "bandwidth_max_rel_error": max(bound) if bound else math.nan,
            "alpha_s": statistics.median(r["alpha_s"] for r in results)}


def render(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(
            f"\n{r['rate']} shaped loopback, {r['world_size']} ranks, MTU {r['mtu']}, median "
            f"of {r['reps']}: α = {r['alpha_s'] * 1e6:.0f} µs, β = {r['bytes_per_s'] / 1e6:.3f} "
            f"MB/s = {r['beta_over_rate']:.3f} × rate (framing model: {r['framing_model']:.3f}),"
            f" |model − measured| / measured: median {r['median_rel_error']:.1%}, max "
            f"{r['max_rel_error']:.1%}; bandwidth side (*, β fitted there): median "
            f"{r['bandwidth_median_rel_error']:.1%}, max {r['bandwidth_max_rel_error']:.1%}")
        lines.append("| collective | bytes / rank | measured ms | model ms | model / measured |")
        lines.append("|---|---|---|---|---|")
        for s in r["samples"]:
            star = " *" if s["bandwidth_side"] else ""
            lines.append(f"| {s['kind']}{star} | {s['bytes']:,} | {s['seconds'] * 1e3:.2f} | "
                         f"{s['model_s'] * 1e3:.2f} | {s['model_s'] / s['seconds']:.2f} |")
    return "\n".join(lines)


def log_run(uri: str, experiment: str, results: list[dict], path: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=f"calibration-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={CALIBRATION_TAG: "true"})
    rid = run.info.run_id
    try:
        first = results[0]
        for key in ("world_size", "mtu", "reps"):
            client.log_param(rid, key, first[key])
        client.log_param(rid, "rates", ",".join(r["rate"] for r in results))
        for r in results:
            for key in ("alpha_s", "bytes_per_s", "beta_over_rate", *ERROR_KEYS):
                client.log_metric(rid, f"calibration/{r['rate']}/{key}", r[key])
        for key, value in summary(results).items():
            client.log_metric(rid, f"calibration/{key}", value)
        client.log_artifact(rid, str(path))
        client.set_terminated(rid, "FINISHED")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return rid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="commsgd-calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--rate", action="append", default=None,
                    help=f"a link rate, e.g. 100mbit; repeat for several (default: "
                         f"{', '.join(DEFAULT_RATES)})")
    ap.add_argument("--world-size", type=int, default=2, help="ranks (default 2)")
    ap.add_argument("--mtu", type=int, default=costmodel.DEFAULT_MTU)
    ap.add_argument("--reps", type=int, default=7, help="repetitions per sample (median)")
    ap.add_argument("--out", default="calibration.json", help="the JSON written")
    ap.add_argument("--tracking-uri", default=None,
                    help="MLflow tracking URI (default: sqlite:///$PWD/mlruns.db)")
    ap.add_argument("--experiment", default=costmodel.CALIBRATION_EXPERIMENT)
    ap.add_argument("--no-log", action="store_true", help="do not log the fit to MLflow")
    args = ap.parse_args(argv)
    if args.world_size < 2:
        ap.error(f"--world-size={args.world_size}: at least 2 ranks (a collective of one "
                 "rank sends nothing)")
    if args.reps < 1:
        ap.error(f"--reps={args.reps}: at least 1")
    rates = args.rate or list(DEFAULT_RATES)
    try:
        for rate in rates:  # every rate checked before the first is measured
            spec = links.link_spec({"link": {"rate": rate, "mtu": args.mtu}})
            if spec is None:
                raise ConfigError(f"--rate={rate!r}: a rate such as 100mbit")
        results = []
        for rate in rates:
            print(f"commsgd-calibrate: {rate} ...", file=sys.stderr, flush=True)
            results.append(measure(rate, world_size=args.world_size, mtu=args.mtu,
                                   reps=args.reps))
    except ConfigError as exc:
        print(f"commsgd-calibrate: {str(exc).replace('hardware.link.', '--')}",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.write_text(json.dumps({"results": results, "summary": summary(results)}, indent=1))
    print(render(results))
    s = summary(results)
    print(f"\nall rates: |model − measured| / measured median {s['median_rel_error']:.1%}, "
          f"max {s['max_rel_error']:.1%}; wrote {out}")
    if not args.no_log:
        from suite.tracking import default_uri

        uri = args.tracking_uri or default_uri(Path.cwd())
        rid = log_run(uri, args.experiment, results, out)
        print(f"logged to {uri}, experiment '{args.experiment}', run {rid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
