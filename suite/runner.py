"""The one training loop: build the run from its config, step, evaluate, log. Read top to bottom.

    setup   task, compressor, backend, channel, algorithm, step size, tracker
    loop    for t in 0..T−1: state ← algorithm.step(state, t, γ_t); every eval_every steps,
            evaluate off the clock, log in batches, stop if the loss diverged
    finish  artifacts (curves table, config, a plot if tracking.plot) and a terminal run status,
            whatever happened
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
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
from suite import artifacts, checkpoint, links, provenance, stores, sweep_guard, yaml_text
from suite.algorithms import Context, build_algorithm, get_spec
from suite.algorithms.bidirectional import downlink_constants, run_theorem
from suite.backends import make_backend
from suite.comm import Channel
from suite.comm.downlinks import DEFAULT as DEFAULT_DOWNLINK
from suite.comm.downlinks import downlink_scheme, is_dense
from suite.compressors import REGISTRY as COMPRESSORS
from suite.compressors import build_compressor
from suite.compressors.base import MessageRangeError
from suite.config import ConfigError, bind, check_root, flatten, group_kwargs, resolved_dict
from suite.hardware import select_device
from suite.plugins import TASKS
from suite.rng import SharedStream, WorkerStreams
from suite.schedules import make_schedule
from suite.signals import Terminated, stop_signals
from suite.timing import Stopwatch
from suite.tracking import NullTracker, TrackingDeliveryError, retry, tracking_uri

log = logging.getLogger("commsgd")

# Keys that change where and how a run is recorded, never what it computes.
UNHASHED_KEYS = ("tracking", "progress", "hydra", "resume", "checkpoint_every",
                 "checkpoint_path", "leaderboard")


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
    experiment_id: str | None = None


def config_hash(cfg: DictConfig) -> str:
    """Stable hash of the resolved config minus tracking keys: equal hashes, equal runs."""
    d = {k: v for k, v in resolved_dict(cfg).items() if k not in UNHASHED_KEYS}
    if d.get("downlink") == DEFAULT_DOWNLINK:
        # the uncompressed broadcast every run had before the `downlink` group existed: runs
        # recorded then keep their hash (resume=true still finds them)
        del d["downlink"]
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """The commit of this checkout, once per process: the code a process runs is the code it
    imported, whatever is committed while a sweep goes on."""
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
        # the link the ranks run on (hardware.link.*), for the projected time of the
        # collectives; None on the plain loopback and in the simulator
        spec = links.link_spec(hw)
        self.link = spec.model() if spec is not None else None
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
        if spec.check_steps is not None:
            spec.check_steps(cfg.steps, **algo_kwargs)
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
                # the down-link is named only where it is not the plain dense broadcast
                down_said = "" if is_dense(self.downlink) else f" and downlink={down_name}"
                raise ConfigError(
                    f"lr=theory: no theorem admits a step size for algorithm={self.algo_name} "
                    f"with compressor={comp_name}{down_said} ({self.theorem.source}); set lr "
                    f"to a number")
            lr_arg = self.theorem.lr_max
        self.lr0 = lr_arg
        self.schedule = make_schedule(
            cfg.lr_schedule, self.lr0, steps=cfg.steps, offset=float(cfg.lr_offset),
            warmup_steps=cfg.warmup_steps, milestones=tuple(cfg.lr_milestones),
            gamma=float(cfg.lr_gamma))

    def evaluate(self, state) -> dict[str, float]:
        # evaluation's collectives (the model average, the bit totals) are not the step's
        with self.backend.ledger.paused():
            metrics = self.task.evaluate(self.algorithm.params(state))
            metrics.update(self.channel.totals())
        metrics.update(self.backend.ledger.metrics())
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
        # the ranks the collectives in comm/<kind>_* ran over (or would, one worker per rank)
        "comm.ranks": str(run.backend.ledger.ranks),
    }
    if sweep_id:
        tags["sweep.id"] = sweep_id
    tags.update(sweep_guard.owner_tags())  # which process writes it (suite/sweep_guard.py)
    tags.update(provenance.tags())  # the command line, the job's overrides, the user
    params = flatten({k: v for k, v in resolved_dict(cfg).items() if k != "hydra"})
    params["lr.resolved"] = run.lr0
    # The task's constants (L, μ, f*, ζ*², ...) are facts about the run, one value each: params
    # `task/<name>`, not one-point metric charts. (The analysis also reads the metrics older
    # runs logged them as.)
    params.update({f"task/{k}": v for k, v in run.task.constants.items()})
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


def _previous(cfg: DictConfig, uri: str, digest: str) -> sweep_guard.Previous:
    """resume=true: what the store's earlier runs of this config say (suite.sweep_guard)."""
    client = stores.client(uri)
    exp = retry(lambda: client.get_experiment_by_name(_experiment(cfg)), "get_experiment")
    if exp is None:
        return sweep_guard.Previous()
    return retry(lambda: sweep_guard.previous_run(client, exp.experiment_id, digest),
                 "search_runs")


def _experiment(cfg: DictConfig) -> str:
    return cfg.tracking.get("experiment") or cfg.task.name


def execute(cfg: DictConfig, *, launch_dir: Path | None = None, output_dir: Path | None = None,
            sweep_id: str | None = None, backend=None, on_start=None) -> RunResult:
    """Build, run and record one job. Raises on a bad config before any run is recorded.

    resume=true keeps one MLflow run per config (suite.sweep_guard): it skips a job whose config
    has a FINISHED run, or a RUNNING one whose process is alive, and continues an interrupted
    one in the same MLflow run, from its checkpoint when it has one. checkpoint_path=FILE
    restarts from FILE. A checkpoint is used only with the run it belongs to (or with
    tracking=none): continuing it into another run would record a run without its first steps.
    Ctrl-C and SIGTERM end the run KILLED; a second one waits for the close (suite.signals).
    `on_start(tracker)`, if given, is called once the run is recorded, before the first step:
    the distributed launcher learns the run's id from it, to mark the run FAILED if a rank
    dies without doing so itself.
    """
    check_root(cfg)
    launch_dir = Path(launch_dir or Path.cwd())
    digest = config_hash(cfg)
    uri = tracking_uri(cfg, launch_dir)
    if uri is not None:
        if not cfg.tracking.uri:
            launch_dir.mkdir(parents=True, exist_ok=True)  # the default store's directory
        stores.check_uri(uri)
    previous = sweep_guard.Previous()
    if cfg.resume and uri is not None:
        previous = _previous(cfg, uri, digest)
        if previous.skip:
            return RunResult("SKIPPED", {}, previous.run_id, uri, _experiment(cfg),
                             reason=previous.skip)
    ckpt_path = checkpoint.default_path(launch_dir, digest)
    restored, resume_run_id = None, previous.run_id
    if cfg.checkpoint_path is not None:
        restored = checkpoint.load(Path(cfg.checkpoint_path), config_hash=digest)
    elif cfg.resume and ckpt_path.is_file():
        restored = checkpoint.load(ckpt_path, config_hash=digest)
    if restored is not None and uri is not None:
        if _in_store(uri, restored.get("run_id")):
            resume_run_id = restored["run_id"]
        else:
            problem = _foreign(restored, uri)
            if cfg.checkpoint_path is not None:
                raise ConfigError(f"checkpoint_path={str(cfg.checkpoint_path)!r} {problem}; "
                                  f"record into the store it belongs to (tracking.uri), or use "
                                  f"tracking=none")
            log.warning("commsgd: ignoring %s: it %s; starting from step 0", ckpt_path, problem)
            restored = None

    run = Run(cfg, backend=backend)
    out_dir = Path(output_dir or tempfile.mkdtemp(prefix="commsgd-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with stop_signals() as signals:
        tracker = _make_tracker(cfg, run, launch_dir, out_dir, sweep_id,
                                resume_run_id=resume_run_id)
        status, reason, state, final = "FAILED", None, None, {}
        ended_by = None  # the exception that ended the run, if one did
        try:
            if on_start is not None:
                on_start(tracker)
            saver = None
            if cfg.checkpoint_every:
                saver = _checkpointer(ckpt_path, run, tracker, digest, uri)
            state, final = _loop(cfg, run, tracker, restored=restored, save=saver)
            status = "FINISHED"
        except BaseException as exc:
            # first, before any call: from here a signal waits until the run is closed
            signals.closing = True
            ended_by, (status, reason) = exc, _ending(exc)
            if not isinstance(exc, Diverged):
                raise
            tracker.set_tags({"diverged": "true"})
        finally:
            signals.closing = True  # the same on the way out of a run that ended by itself
            try:
                status, reason = _finish(cfg, run, tracker, out_dir, status, reason)
            except TrackingDeliveryError as undelivered:
                if ended_by is None or isinstance(ended_by, Diverged):
                    raise
                # what stopped the run (a crash, Ctrl-C) is what the caller must see; the
                # store's trouble is said beside it, with the file that holds the values
                log.error("commsgd: %s", undelivered)
    # Built after _finish, not inside the try: reading tracker.run_id waits for the writer
    # process to have created the run, which in a fresh process (still importing MLflow) is
    # better hidden behind the plots than waited for before them.
    return RunResult(status, final, tracker.run_id, tracker.uri, tracker.experiment_name,
                     tracker.history, reason,
                     params=run.algorithm.params(state) if status == "FINISHED" else None,
                     experiment_id=tracker.experiment_id)


def _ending(exc: BaseException) -> tuple[str, str]:
    """(status, reason) of a run that an exception ended."""
    if isinstance(exc, Diverged):
        return "FAILED", str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", "interrupted (KeyboardInterrupt)"
    if isinstance(exc, Terminated):
        return "KILLED", str(exc)
    return "FAILED", f"{type(exc).__name__}: {exc}"


def _in_store(uri: str, run_id: str | None) -> bool:
    """Whether the store holds the run a checkpoint belongs to."""
    if run_id is None:
        return False
    client = stores.client(uri)
    try:
        client.get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 - MLflow's "run not found", whatever its class
        return False


def _foreign(restored: dict, uri: str) -> str:
    owner = restored.get("run_id")
    whose = (f"belongs to run {owner} of {restored.get('store_uri') or 'another store'}"
             if owner else "was written by a run recorded nowhere (tracking=none)")
    return (f"{whose}, which is not in {uri}: continuing from it here would record a run "
            f"without its first {restored['step']} steps")


def _checkpointer(path: Path, run: Run, tracker, digest: str, uri: str | None):
    """Save a checkpoint once the store has everything logged before it: a run continued
    from a checkpoint then has its whole history. A store that cannot confirm it now costs
    this checkpoint, not the run."""
    def save(**kw):
        try:
            tracker.flush()
        except Exception as exc:  # noqa: BLE001 - the run goes on; the next one may succeed
            log.warning("commsgd: checkpoint at step %d not saved: the store has not taken the "
                        "metrics logged before it (%s)", kw["step"], exc)
            return
        checkpoint.save(path, run=run, run_id=tracker.run_id, config_hash=digest,
                        store_uri=uri, **kw)

    return save


def _loop(cfg: DictConfig, run: Run, tracker, *, restored=None, save=None):
    algo, steps, every = run.algorithm, cfg.steps, cfg.eval_every
    # read once: a config lookup costs ~25 µs, and the loop would pay it at every evaluation
    threshold, checkpoint_every = cfg.divergence_threshold, cfg.checkpoint_every
    if restored is None:
        state, start, wall = algo.init(run.task.x0()), 0, 0.0
        metrics = run.evaluate(state)
        initial_loss = metrics["train/loss"]
        tracker.log_metrics(metrics | _times(run, 0.0, 0), step=0)
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
        state = _step(algo, state, t, lr)
        run.stopwatch.sync()
        wall += time.perf_counter() - started
        lr_log[t] = lr
        if (t + 1) % every == 0 or t + 1 == steps:
            # evaluation and logging happen off the clock
            tracker.log_series("train/lr", lr_log)
            lr_log.clear()
            metrics = run.evaluate(state)
            tracker.log_metrics(metrics | _times(run, wall, t + 1), step=t + 1)
            _check_divergence(metrics, initial_loss, threshold, t + 1)
            if bar is not None:
                bar.update(t + 1 - bar.n)
                bar.set_postfix(_postfix(metrics), refresh=False)
        if save is not None and (t + 1) % checkpoint_every == 0 and t + 1 < steps:
            tracker.log_series("train/lr", lr_log)
            lr_log.clear()
            save(state=state, step=t + 1, wall=wall, initial_loss=initial_loss)
    if bar is not None:
        bar.close()
    return state, metrics | _times(run, wall, steps)


def _step(algo, state, t: int, lr: float):
    """One iteration. A message that cannot be sent (NaN, inf, beyond the wire's range) after
    the first step means the iterate blew up: divergence, noticed by the compressor before the
    next evaluation would have noticed it in the loss. At t = 0 it is x0's own gradient, a
    property of the problem, and stays the compressor's error."""
    try:
        return algo.step(state, t, lr)
    except MessageRangeError as exc:
        if t == 0:
            raise
        raise Diverged(_diverged(t, f"the message could not be sent ({exc})")) from exc


def _diverged(step: int, what: str) -> str:
    return f"diverged at step {step}: {what}; try a smaller lr"


TIME_KEYS = ("time/compute_s", "time/compress_s", "time/comm_s", "time/wall_s")


def _times(run: Run, wall: float, steps: int) -> dict[str, float]:
    """Cumulative seconds per part of the step, the slowest rank's (one collective); on
    distributed hardware also the seconds per step in the step's collectives, measured and
    projected (suite/links.py)."""
    totals = run.stopwatch.totals
    extra = links.measured_values(run.backend)
    reduced = run.backend.max_over_ranks(
        [totals["compute"], totals["compress"], totals["comm"], wall, *extra])
    out = dict(zip(TIME_KEYS, reduced[:len(TIME_KEYS)], strict=True))
    out.update(links.step_metrics(run.backend, run.link, steps, reduced[len(TIME_KEYS):]))
    return out


def _check_divergence(metrics, initial_loss, threshold, step):
    loss = metrics["train/loss"]
    if not math.isfinite(loss):
        raise Diverged(_diverged(step, f"train/loss is {loss}"))
    if loss > threshold * max(initial_loss, 1e-12):
        raise Diverged(_diverged(
            step, f"train/loss {loss:.4g} exceeds divergence_threshold ({threshold:g}) × "
                  f"initial loss {initial_loss:.4g}"))


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
    """Artifacts and the terminal status, whatever happened in the loop: no data is lost.
    Returns the (status, reason) the run was closed with: a run whose files cannot be written
    (a full disk) is FAILED with that reason, its metrics in the store."""
    if run.backend.rank != 0:
        # Only rank 0 records a distributed run; the other ranks would write the same files
        # (into the same Hydra directory, under torchrun) for nobody to read.
        tracker.finish(status, reason)
        return status, reason
    try:
        try:
            (out_dir / "config.yaml").write_text(yaml_text.to_yaml(cfg))
            tracker.log_artifact(out_dir / "config.yaml")
            table = artifacts.curves(tracker.history)
            if not table.empty:
                tracker.log_artifact(artifacts.write_curves(table, out_dir))
            # a plot is a view, drawn by commsgd-report over the sweep; per run only if asked
            if not table.empty and cfg.tracking.get("plot", False):
                title = (f"{run.algo_name} / {cfg.compressor.name}, K={cfg.workers}, "
                         f"seed={cfg.seed}")
                plot = artifacts.plot_convergence(table, out_dir, title)
                if plot is not None:
                    tracker.log_artifact(plot)
        except Exception as exc:  # noqa: BLE001 - a full disk (OSError), a store refusing files
            problem = (f"could not write the run's files to {out_dir} "
                       f"({getattr(exc, 'strerror', None) or exc}); its metrics are in the store")
            log.error("commsgd: %s", problem)
            if status == "FINISHED":
                status, reason = "FAILED", problem
            else:
                reason = f"{reason}; {problem}" if reason else problem
    finally:
        tracker.finish(status, reason)
    return status, reason
