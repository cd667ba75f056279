"""The one training loop: build the run from its config, step, evaluate, log. Read top to bottom.

    setup   task, compressor, backend, channel, algorithm, step size, tracker
    loop    for t in 0..T−1: state ← algorithm.step(state, t, γ_t); every eval_every steps,
            evaluate off the clock, log in batches, stop if the loss diverged
    finish  artifacts (curves table, plots, config) and a terminal run status, whatever happened
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import suite
from suite import artifacts, checkpoint
from suite.algorithms import Context, build_algorithm, get_spec
from suite.algorithms.bidirectional import downlink_constants, run_theorem
from suite.backends import make_backend
from suite.comm import Channel
from suite.comm.downlinks import DEFAULT as DEFAULT_DOWNLINK
from suite.comm.downlinks import downlink_scheme, is_dense
from suite.compressors import REGISTRY as COMPRESSORS
from suite.compressors import build_compressor
from suite.config import ConfigError, bind, check_root, flatten, group_kwargs, resolved_dict
from suite.hardware import select_device
from suite.plugins import TASKS
from suite.rng import SharedStream, WorkerStreams
from suite.schedules import make_schedule
from suite.timing import Stopwatch
from suite.tracking import NullTracker, check_reachable, default_uri

# Keys that change where and how a run is recorded, never what it computes.
UNHASHED_KEYS = ("tracking", "progress", "hydra", "resume", "checkpoint_every",
                 "checkpoint_path")


class Diverged(RuntimeError):
    """The loss became NaN/inf or exceeded divergence_threshold × its initial value."""


@dataclass
class RunResult:
    status: str
    final: dict[str, float]
    run_id: str | None
    tracking_uri: str | None
    experiment: str | None
    history: list = field(default_factory=list)
    reason: str | None = None
    params: torch.Tensor | None = None  # the final point, for tests and notebooks


def config_hash(cfg: DictConfig) -> str:
    """Stable hash of the resolved config minus tracking keys: equal hashes, equal runs."""
    d = {k: v for k, v in resolved_dict(cfg).items() if k not in UNHASHED_KEYS}
    if d.get("downlink") == DEFAULT_DOWNLINK:
        # the uncompressed broadcast every run had before the `downlink` group existed: runs
        # recorded then keep their hash (resume=true still finds them)
        del d["downlink"]
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Run:
    """Everything a run is made of, built and checked before the first step."""

    def __init__(self, cfg: DictConfig, *, backend=None):
        check_root(cfg)
        self.cfg = cfg
        hw = OmegaConf.to_container(cfg.hardware, resolve=True)
        self.device = select_device(hw)
        K = cfg.workers
        self.backend = backend or make_backend(hw, K, self.device)

        task_name, task_kwargs = group_kwargs(cfg, "task")
        if task_name not in TASKS:
            raise ConfigError(f"task={task_name!r} is not known; allowed: {TASKS.allowed()}")
        factory = TASKS[task_name]
        bind(factory, "task", task_name, task_kwargs, fixed=("workers", "worker_ids", "device"))
        try:
            self.task = factory(workers=K, worker_ids=self.backend.worker_ids,
                                device=self.device, **task_kwargs)
        except ValueError as exc:
            # tasks know nothing of the suite: their ValueErrors name the task key; make them
            # configuration errors so the command line prints one clear line
            raise ConfigError(str(exc)) from exc
        if cfg.lr == "theory" and not {"L", "mu"} <= self.task.constants.keys():
            # every theorem's step size is a function of L and μ; a network task has neither
            raise ConfigError(
                f"lr=theory needs the task constants L and mu, which task={task_name} does not "
                f"know; set lr to a number")

        self.batch_size = None if cfg.batch_size == "full" else int(cfg.batch_size)
        smallest = int(min(self.task.shard_sizes))
        if self.batch_size is not None and self.batch_size > smallest:
            raise ConfigError(
                f"batch_size={self.batch_size} is larger than the smallest worker shard "
                f"({smallest} samples with task.split={cfg.task.split}, workers={K}); "
                f"allowed: 1..{smallest} or `full`"
            )

        comp_name, comp_kwargs = group_kwargs(cfg, "compressor")
        if comp_name not in COMPRESSORS:
            raise ConfigError(
                f"compressor={comp_name!r} is not known; allowed: {COMPRESSORS.allowed()}"
            )
        bind(COMPRESSORS[comp_name], "compressor", comp_name, comp_kwargs)
        self.compressor = build_compressor(comp_name, **comp_kwargs)
        if getattr(self.compressor, "check_dim", None) is not None:
            self.compressor.check_dim(self.task.dim)

        # the server's broadcast: an option of the compressors (suite/comm/downlinks.py)
        down_name, down_kwargs = group_kwargs(cfg, "downlink")
        if down_name not in COMPRESSORS:
            raise ConfigError(
                f"downlink={down_name!r} is not known; allowed: {COMPRESSORS.allowed()}")
        bind(COMPRESSORS[down_name], "downlink", down_name, down_kwargs)
        self.downlink = downlink_scheme(build_compressor(down_name, **down_kwargs), down_name)
        if self.downlink.check_dim is not None:
            self.downlink.check_dim(self.task.dim)

        self.stopwatch = Stopwatch(self.device)
        ids = self.backend.worker_ids
        self.sample_streams = SharedStream(cfg.seed, "sampling", ids, K, self.device)
        self.compress_streams = WorkerStreams(cfg.seed, "compression", ids, self.device)
        self.channel = Channel(self.backend, self.compressor, self.compress_streams,
                               self.stopwatch, downlink=self.downlink, seed=cfg.seed,
                               shapes=getattr(self.task, "param_shapes", None))
        ctx = Context(self.task, self.channel, self.sample_streams, self.batch_size,
                      self.stopwatch)

        self.algo_name, algo_kwargs = group_kwargs(cfg, "algorithm")
        spec = get_spec(self.algo_name)
        bind(spec.build, "algorithm", self.algo_name, algo_kwargs)
        self.algorithm = build_algorithm(self.algo_name, ctx, **algo_kwargs)
        self.algo_kwargs = algo_kwargs

        d = self.task.dim
        omega = self.compressor.omega(d) if self.compressor.unbiased else None
        delta = self.compressor.delta(d) if self.compressor.delta is not None else None
        theorem_args = dict(workers=K, batch_size=self.batch_size, omega=omega, delta=delta,
                            **algo_kwargs)
        # the theorem at the step size in use: lr=theory asks it for its largest one
        lr_arg = None if cfg.lr == "theory" else float(cfg.lr)
        self.theorem = None
        if {"L", "mu"} <= self.task.constants.keys():
            down = None if is_dense(self.downlink) else \
                downlink_constants(down_name, down_kwargs, d)
            self.theorem = run_theorem(spec, self.task.constants, downlink=down, lr=lr_arg,
                                       **theorem_args)
        if lr_arg is None:
            if not math.isfinite(self.theorem.lr_max):
                raise ConfigError(
                    f"lr=theory: no theorem admits a step size for algorithm={self.algo_name} "
                    f"with compressor={comp_name}, downlink={down_name} "
                    f"({self.theorem.source}); set lr to a number")
            lr_arg = self.theorem.lr_max
        self.lr0 = lr_arg
        self.schedule = make_schedule(
            cfg.lr_schedule, self.lr0, steps=cfg.steps, offset=float(cfg.lr_offset),
            warmup_steps=cfg.warmup_steps, milestones=tuple(cfg.lr_milestones),
            gamma=float(cfg.lr_gamma))

    def evaluate(self, state) -> dict[str, float]:
        metrics = self.task.evaluate(self.algorithm.params(state))
        metrics.update(self.channel.totals())
        return metrics


def _make_tracker(cfg: DictConfig, run: Run, launch_dir: Path, out_dir: Path,
                  sweep_id: str | None, resume_run_id: str | None = None):
    tracking = OmegaConf.to_container(cfg.tracking, resolve=True)
    if tracking["name"] == "none" or run.backend.rank != 0:
        return NullTracker()
    if tracking["name"] != "mlflow":
        raise ConfigError(f"tracking={tracking['name']!r}: allowed values are mlflow, none")
    comp = cfg.compressor.name
    tags = {
        "commsgd.version": suite.__version__,
        "git.sha": git_sha(),
        "hardware": cfg.hardware.name,
        "torch.version": torch.__version__,
        "config_hash": config_hash(cfg),
        "algorithm": run.algo_name,
        "compressor": comp,
        "task": cfg.task.name,
    }
    if sweep_id:
        tags["sweep.id"] = sweep_id
    params = flatten({k: v for k, v in resolved_dict(cfg).items() if k != "hydra"})
    params["lr.resolved"] = run.lr0
    # writer=process (the default): the store calls run in a forked writer process, so that
    # training never waits on them; inline: in this process (suite/tracking_writer.py)
    from suite.tracking_writer import open_tracker

    return open_tracker(
        tracking.get("writer", "process"),
        uri=tracking_uri(cfg, launch_dir),
        experiment=tracking["experiment"] or cfg.task.name,
        run_name=tracking["run_name"] or f"{run.algo_name}-{comp}-K{cfg.workers}-s{cfg.seed}",
        params=params, tags=tags, flush_every=int(tracking.get("flush_every", 5000)),
        fallback_dir=out_dir, resume_run_id=resume_run_id,
        delivery_timeout_s=float(tracking.get("delivery_timeout_s", 30.0)),
    )


def tracking_uri(cfg: DictConfig, launch_dir: Path) -> str | None:
    if cfg.tracking.name != "mlflow":
        return None
    return cfg.tracking.uri or default_uri(launch_dir)


def finished_run_with_same_config(cfg: DictConfig, launch_dir: Path) -> str | None:
    """The id of a FINISHED run of this exact config in the store, if there is one."""
    uri = tracking_uri(cfg, launch_dir)
    if uri is None:
        return None
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment or cfg.task.name)
    if exp is None:
        return None
    found = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.config_hash = '{config_hash(cfg)}' and "
                      f"attributes.status = 'FINISHED'",
        max_results=1)
    return found[0].info.run_id if found else None


def execute(cfg: DictConfig, *, launch_dir: Path | None = None, output_dir: Path | None = None,
            sweep_id: str | None = None, backend=None, on_start=None) -> RunResult:
    """Build, run and record one job. Raises on a bad config before any run is recorded.

    resume=true skips a job whose config already has a FINISHED run in the store, and
    continues an interrupted one from its checkpoint; checkpoint_path=FILE restarts from FILE.
    `on_start(tracker)`, if given, is called once the run is recorded, before the first step:
    the distributed launcher learns the run's id from it, to mark the run FAILED if a rank
    dies without doing so itself.
    """
    check_root(cfg)
    launch_dir = Path(launch_dir or Path.cwd())
    digest = config_hash(cfg)
    if cfg.resume:
        done = finished_run_with_same_config(cfg, launch_dir)
        if done is not None:
            return RunResult("SKIPPED", {}, done, tracking_uri(cfg, launch_dir),
                             cfg.tracking.get("experiment") or cfg.task.name,
                             reason=f"config_hash {digest} already FINISHED as run {done}")
    ckpt_path = checkpoint.default_path(launch_dir, digest)
    restored = None
    if cfg.checkpoint_path is not None:
        restored = checkpoint.load(Path(cfg.checkpoint_path), config_hash=digest)
    elif cfg.resume and ckpt_path.is_file():
        restored = checkpoint.load(ckpt_path, config_hash=digest)

    run = Run(cfg, backend=backend)
    out_dir = Path(output_dir or tempfile.mkdtemp(prefix="commsgd-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = _make_tracker(cfg, run, launch_dir, out_dir, sweep_id,
                            resume_run_id=_reopenable(restored, cfg, launch_dir))

    status, reason, state, final = "FAILED", None, None, {}
    try:
        if on_start is not None:
            on_start(tracker)
        if restored is None:
            tracker.log_constants(run.task.constants)
        saver = None
        if cfg.checkpoint_every:
            saver = lambda **kw: checkpoint.save(  # noqa: E731
                ckpt_path, run=run, run_id=tracker.run_id, config_hash=digest, **kw)
        state, final = _loop(cfg, run, tracker, restored=restored, save=saver)
        status = "FINISHED"
    except Diverged as exc:
        reason = str(exc)
        tracker.set_tags({"diverged": "true"})
    except KeyboardInterrupt:
        status, reason = "KILLED", "interrupted (KeyboardInterrupt)"
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _finish(cfg, run, tracker, out_dir, status, reason)
    # Built after _finish, not inside the try: reading tracker.run_id waits for the writer
    # process to have created the run, which in a fresh process (still importing MLflow) is
    # better hidden behind the plots than waited for before them.
    return RunResult(status, final, tracker.run_id, tracker.uri, tracker.experiment_name,
                     tracker.history, reason,
                     params=run.algorithm.params(state) if status == "FINISHED" else None)


def _reopenable(restored, cfg, launch_dir) -> str | None:
    """A restarted run continues its MLflow run when the store still holds it."""
    if restored is None or restored.get("run_id") is None or tracking_uri(cfg, launch_dir) is None:
        return None
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=tracking_uri(cfg, launch_dir)).get_run(restored["run_id"])
        return restored["run_id"]
    except Exception:
        return None


def _loop(cfg: DictConfig, run: Run, tracker, *, restored=None, save=None):
    algo, steps, every = run.algorithm, cfg.steps, cfg.eval_every
    if restored is None:
        state, start, wall = algo.init(run.task.x0()), 0, 0.0
        metrics = run.evaluate(state)
        initial_loss = metrics["train/loss"]
        tracker.log_metrics(metrics | _times(run, 0.0), step=0)
    else:
        state = checkpoint.restore(restored, run)
        start, wall, initial_loss = restored["step"], restored["wall"], restored["initial_loss"]
        # no evaluation here: it would consume a task's running train-loss sums, so the next
        # logged train/loss would differ from the uninterrupted run's
        metrics = {} if start < steps else run.evaluate(state)
    bar = _progress(cfg, run, start)
    lr_log: dict[int, float] = {}
    fail_at = int(os.environ.get("COMMSGD_TEST_FAIL_AT_STEP", -1))  # test hook: a crash
    for t in range(start, steps):
        if t == fail_at:
            raise RuntimeError(f"COMMSGD_TEST_FAIL_AT_STEP={fail_at}: simulated crash")
        lr = run.schedule(t)
        started = time.perf_counter()
        state = algo.step(state, t, lr)
        run.stopwatch.sync()
        wall += time.perf_counter() - started
        lr_log[t] = lr
        if (t + 1) % every == 0 or t + 1 == steps:
            # evaluation and logging happen off the clock
            for s, v in lr_log.items():
                tracker.log_metrics({"train/lr": v}, step=s)
            lr_log.clear()
            metrics = run.evaluate(state)
            tracker.log_metrics(metrics | _times(run, wall), step=t + 1)
            _check_divergence(metrics, initial_loss, cfg.divergence_threshold, t + 1)
            if bar is not None:
                bar.update(t + 1 - bar.n)
                bar.set_postfix(_postfix(metrics), refresh=False)
        if save is not None and (t + 1) % cfg.checkpoint_every == 0 and t + 1 < steps:
            for s, v in lr_log.items():
                tracker.log_metrics({"train/lr": v}, step=s)
            lr_log.clear()
            save(state=state, step=t + 1, wall=wall, initial_loss=initial_loss)
    if bar is not None:
        bar.close()
    return state, metrics | _times(run, wall)


def _times(run: Run, wall: float) -> dict[str, float]:
    """Cumulative seconds per part of the step, the slowest rank's (one collective)."""
    totals = run.stopwatch.totals
    slowest = run.backend.max_over_ranks(
        [totals["compute"], totals["compress"], totals["comm"], wall])
    return dict(zip(("time/compute_s", "time/compress_s", "time/comm_s", "time/wall_s"),
                    slowest, strict=True))


def _check_divergence(metrics, initial_loss, threshold, step):
    loss = metrics["train/loss"]
    if not math.isfinite(loss):
        raise Diverged(f"diverged at step {step}: train/loss is {loss}")
    if loss > threshold * max(initial_loss, 1e-12):
        raise Diverged(
            f"diverged at step {step}: train/loss {loss:.4g} exceeds divergence_threshold "
            f"({threshold:g}) × initial loss {initial_loss:.4g}; try a smaller lr"
        )


def _progress(cfg, run, start: int = 0):
    if not cfg.progress or run.backend.rank != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=f"{run.algo_name}/{cfg.compressor.name}",
                unit="it", dynamic_ncols=True, leave=False)


def _postfix(m: dict) -> dict:
    out = {"loss": f"{m['train/loss']:.4g}"}
    if "train/suboptimality" in m:
        out["subopt"] = f"{m['train/suboptimality']:.3g}"
    out["Mbit_up"] = f"{m['comm/bits_up'] / 1e6:.3g}"
    return out


def _finish(cfg, run: Run, tracker, out_dir: Path, status: str, reason: str | None):
    """Artifacts and the terminal status, whatever happened in the loop: no data is lost."""
    if run.backend.rank != 0:
        # Only rank 0 records a distributed run; the other ranks would write the same files
        # (into the same Hydra directory, under torchrun) for nobody to read.
        tracker.finish(status, reason)
        return
    try:
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        tracker.log_artifact(out_dir / "config.yaml")
        frame = artifacts.history_frame(tracker.history)
        if not frame.empty:
            tracker.log_artifact(artifacts.write_curves(frame, out_dir))
            title = f"{run.algo_name} / {cfg.compressor.name}, K={cfg.workers}, seed={cfg.seed}"
            plot = artifacts.plot_convergence(frame, out_dir, title)
            if plot is not None:
                tracker.log_artifact(plot)
    finally:
        tracker.finish(status, reason)
