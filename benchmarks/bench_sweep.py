"""What a sweep costs beyond its compute: per-run overhead, start-up latency, tracking.

    .venv/bin/python benchmarks/bench_sweep.py            # everything (~5 min on 2 cores)
    .venv/bin/python benchmarks/bench_sweep.py --quick    # a subset of each preset's jobs
    .venv/bin/python benchmarks/bench_sweep.py --only a,b # some parts only (a, b, c, d, e)

Every part runs the suite as a user does, `commsgd-run ...` in a fresh process, and prints its
figure beside the target it is held to (issue #14):

(a) per-run overhead of a sweep with the basic launcher, MLflow tracking into a fresh SQLite
    store: (sweep wall − process start − Σ runs' time/wall_s) / runs. "Process start" is the
    time from launching the command until the sweeper writes the sweep's multirun.yaml (the
    imports, Hydra's first composition, the store's preparation); everything after it is
    spent on the jobs. Before it reports, the script checks that every run is FINISHED in the
    store with its params, tags, metrics and artifacts (config.yaml, curves.csv). Without
    --quick it also runs the --quick subset, for each run's marginal overhead (part_a).
(b) `commsgd-run --help` and one shell-completion request (what a Tab press runs).
(c) a `tracking=none steps=1` run against `python -c "import torch"`.
(d) tracking's share of the default job, in a warm process and from a fresh interpreter
    (benchmarks/bench_simulator.py part 2).
(e) the same 4-job sweep with the basic launcher and with hydra/launcher=parallel (joblib,
    n_jobs=2).

Timings are the best of a few repeats (the least disturbed by other processes on the machine).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, table

CLI = str(Path(sys.executable).with_name("commsgd-run"))
ENV = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")

# Subsets of each preset's grid for --quick (command-line sweeps replace the preset's own).
PRESETS = {
    "local_sgd_speedup": ["workers=1,4,16", "algorithm.local_steps=1,8", "seed=0"],
    "diana_vs_quantized": ["+experiment/dvq_methods=diana_l2,dqgd_l2,qsgd,terngrad",
                           "seed=0"],
}
# What every run logs and the script checks is there.
ARTIFACTS = ("config.yaml", "curves.csv")
METRICS = ("train/loss", "train/lr", "comm/bits_up", "time/wall_s")


def _run(args: list[str], cwd: Path, env: dict | None = None) -> float:
    """Seconds the command took; fails loudly when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def _best(args: list[str], cwd: Path, repeats: int, env: dict | None = None) -> float:
    return min(_run(args, cwd, env) for _ in range(repeats))


def _check_store(db: Path, artifacts: Path, runs: int) -> list[float]:
    """Every run FINISHED with what it logs today; the runs' time/wall_s."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT run_uuid, status FROM runs").fetchall()
        if len(rows) != runs or any(status != "FINISHED" for _, status in rows):
            raise RuntimeError(f"expected {runs} FINISHED runs in {db}, found {rows}")
        walls = []
        for run_id, _ in rows:
            keys = {k for (k,) in con.execute(
                "SELECT DISTINCT key FROM metrics WHERE run_uuid = ?", (run_id,))}
            params = con.execute("SELECT COUNT(*) FROM params WHERE run_uuid = ?",
                                 (run_id,)).fetchone()[0]
            tags = {k for (k,) in con.execute("SELECT key FROM tags WHERE run_uuid = ?",
                                              (run_id,))}
            missing = [m for m in METRICS if m not in keys]
            if missing or params == 0 or "config_hash" not in tags:
                raise RuntimeError(f"run {run_id}: missing metrics {missing}, {params} params, "
                                   f"tags {sorted(tags)}")
            files = {p.name for p in artifacts.rglob(f"{run_id}/artifacts/*")}
            if not set(ARTIFACTS) <= files:
                raise RuntimeError(f"run {run_id}: artifacts {sorted(files)}, expected "
                                   f"{ARTIFACTS}")
            walls.append(con.execute(
                "SELECT value FROM latest_metrics WHERE run_uuid = ? AND key = 'time/wall_s'",
                (run_id,)).fetchone()[0])
        return walls
    finally:
        con.close()


def sweep_overhead(preset: str, quick: bool, launcher: list[str] = ()) -> dict:
    """One sweep of a preset into a fresh SQLite store: its wall time, process start, the
    runs' own time/wall_s and the per-run overhead."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sweep_dir = tmp / "sweep"
        args = [CLI, f"experiment={preset}", f"hydra.sweep.dir={sweep_dir}",
                f"tracking.uri=sqlite:///{tmp / 'mlruns.db'}", *launcher,
                *(PRESETS[preset] if quick else [])]
        launched = time.time()
        wall = _run(args, tmp)
        start = (sweep_dir / "multirun.yaml").stat().st_mtime - launched
        runs = len([p for p in sweep_dir.iterdir() if p.name.isdigit()])
        walls = _check_store(tmp / "mlruns.db", tmp / "mlartifacts", runs)
    return {"wall": wall, "start": start, "runs": runs, "compute": sum(walls),
            "overhead": (wall - start - sum(walls)) / runs}


def part_a(quick: bool) -> str:
    """Beside the issue's figure, the marginal overhead of a run: the overhead that the
    preset's full sweep has beyond its --quick subset's, per run it has more. Costs that a
    sweep pays once after its process start (importing torch in the first job, the end of
    the sweep) are in the first figure, spread over the runs, and not in the second."""
    rows = []
    for preset in PRESETS:
        r = sweep_overhead(preset, quick)
        marginal = ""
        if not quick:
            sub = sweep_overhead(preset, True)
            total = lambda x: x["wall"] - x["start"] - x["compute"]  # noqa: E731
            marginal = f"{(total(r) - total(sub)) / (r['runs'] - sub['runs']):.3f}"
        rows.append([preset, r["runs"], f"{r['wall']:.1f}", f"{r['start']:.2f}",
                     f"{r['compute']:.2f}", f"{r['overhead']:.3f}", marginal, "0.050",
                     "met" if r["overhead"] <= 0.05 else "not met"])
    return table(["(a) sweep, basic launcher, SQLite", "runs", "wall s", "process start s",
                  "Σ time/wall_s", "overhead s/run", "marginal s/run", "target", ""], rows)


def part_b(repeats: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        helps = _best([CLI, "--help"], Path(tmp), repeats)
        env = dict(ENV, COMP_LINE="commsgd-run algorithm=", COMP_POINT="22")
        completion = _best([CLI, "-sc", "query=bash"], Path(tmp), repeats, env)
    return table([f"(b) start-up, best of {repeats}", "seconds", "target", ""],
                 [["commsgd-run --help", f"{helps:.2f}", "1.00",
                   "met" if helps <= 1.0 else "not met"],
                  ["completion (COMP_LINE='commsgd-run algorithm=')", f"{completion:.2f}",
                   "1.00", "met" if completion <= 1.0 else "not met"]])


def part_c(repeats: int) -> str:
    best = {"torch": float("inf"), "run": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cmds = {"torch": [sys.executable, "-c", "import torch"],
                "run": [CLI, "tracking=none", "steps=1", "progress=false",
                        f"hydra.run.dir={tmp / 'run'}"]}
        for _ in range(repeats):  # alternated, so that both see the same machine
            for name, cmd in cmds.items():
                best[name] = min(best[name], _run(cmd, tmp))
    extra = best["run"] - best["torch"]
    return table([f"(c) one-step run, best of {repeats}", "seconds", "run − torch",
                  "target", ""],
                 [['python -c "import torch"', f"{best['torch']:.2f}", "", "", ""],
                  ["commsgd-run tracking=none steps=1", f"{best['run']:.2f}", f"{extra:.2f}",
                   "1.00", "met" if extra <= 1.0 else "not met"]])


def part_d(quick: bool) -> str:
    import torch
    from bench_simulator import cli_seconds, sweep_tracking_seconds, tracking_seconds

    torch.set_num_threads(1)  # as bench_simulator measures it (and the presets run)
    steps = 2000
    warm = tracking_seconds(repeats=3 if quick else 5, steps=steps)
    sweep = sweep_tracking_seconds(repeats=2 if quick else 3, steps=steps)
    fresh = cli_seconds(repeats=2 if quick else 3, steps=steps)
    rows = []
    for what, none, mlflow, target in (
            ("warm process, one job, its close waited for", warm["none", "process"],
             warm["mlflow", "process"], 5),
            ("warm process, a sweep's job (closes pipelined)", sweep["none"], sweep["mlflow"],
             5),
            ("fresh interpreter (python -m suite)", fresh["none"], fresh["mlflow"], 10)):
        share = 100 * (mlflow - none) / mlflow
        rows.append([what, f"{none:.3f}", f"{mlflow:.3f}", f"{share:.1f}%", f"{target}%",
                     "met" if share <= target else "not met"])
    return table([f"(d) default job ({steps} steps)", "tracking=none s", "tracking=mlflow s",
                  "share in tracking", "target", ""], rows)


def part_e() -> str:
    """The basic launcher against joblib on a 4-job sweep (the preset's quick subset with
    four jobs): the parallel launcher must not be slower."""
    jobs = ["workers=1,16", "algorithm.local_steps=1,8", "seed=0"]
    saved = PRESETS["local_sgd_speedup"]
    PRESETS["local_sgd_speedup"] = jobs
    try:
        basic = sweep_overhead("local_sgd_speedup", True)
        par = sweep_overhead("local_sgd_speedup", True,
                             ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"])
    finally:
        PRESETS["local_sgd_speedup"] = saved
    return table(["(e) 4-job sweep", "wall s", "parallel/basic"],
                 [["basic launcher", f"{basic['wall']:.1f}", "1.00"],
                  ["hydra/launcher=parallel n_jobs=2", f"{par['wall']:.1f}",
                   f"{par['wall'] / basic['wall']:.2f}"]])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a subset of each preset's jobs, fewer repeats")
    parser.add_argument("--only", default="a,b,c,d,e",
                        help="comma-separated parts to run (a, b, c, d, e)")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    repeats = 3 if args.quick else 5
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    for name, fn in (("a", lambda: part_a(args.quick)), ("b", lambda: part_b(repeats)),
                     ("c", lambda: part_c(repeats)), ("d", lambda: part_d(args.quick)),
                     ("e", part_e)):
        if name in parts:
            print(fn(), flush=True)
            print(flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
