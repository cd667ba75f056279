"""`commsgd-run`: the Hydra entry point. One run, or a sweep with `-m`.

    commsgd-run algorithm=diana compressor=quant_p workers=8 batch_size=full steps=2000
    commsgd-run -m algorithm=sgd,ef_sgd compressor=topk seed=0,1,2
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from suite import cli_errors, cli_help, provenance
from suite.config import check_overrides, method_choice
from suite.errors import USER_ERRORS, one_line
from suite.launch import execute_job, is_primary
from suite.signals import Terminated
from suite.sweep_summary import JobOutcome, job_line
from suite.tracking import run_url

# The package's own config files (suite/conf: in a checkout a link to the repository's conf/,
# in an installed package a copy of it), so commsgd-run composes the same config anywhere.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")
log = logging.getLogger("commsgd")
cli_help.register()  # `--help` (conf/hydra/help/commsgd.yaml) asks for ${commsgd_help:}


def summary(result, cfg) -> str:
    lines = [f"commsgd: run {result.status.lower()}"
             + (f" ({result.reason})" if result.reason else "")]
    shown = ("train/loss", "train/suboptimality", "test/accuracy", "comm/bits_up",
             "comm/bits_up_total", "comm/bits_down", "time/wall_s")
    for key in shown:
        if key in result.final:
            lines.append(f"  {key:<22} {result.final[key]:.6g}")
    plot = Path(HydraConfig.get().runtime.output_dir) / "convergence.png" \
        if HydraConfig.initialized() else None
    if plot is not None and plot.exists():
        lines.append(f"  curves and plot in {plot.parent} (convergence.png, curves.csv)")
    if result.run_id:
        lines.append(f"  logged to {result.tracking_uri}")
        lines.append(f"  experiment '{result.experiment}', run {result.run_id}")
        if result.tracking_uri.startswith("sqlite:"):
            lines.append(f"  open it with: mlflow ui --backend-store-uri {result.tracking_uri}")
        if result.experiment_id is not None:
            page = run_url(result.tracking_uri, result.experiment_id, result.run_id)
            lines.append(f"  run page: {page}")
    return "\n".join(lines)


def run_job(cfg: DictConfig, *, launch_dir: Path, output_dir: Path | None = None,
            sweep_id: str | None = None, overrides=()) -> tuple[int, object]:
    """One job as the command line runs it: (exit status, RunResult or None).

    0: finished or skipped; 1: the run failed (diverged); 2: refused with a one-line message
    that names what to fix. In a sweep, the app turns 2 into an exception and 1 into "go on",
    and the job prints one line instead of the run's summary.
    """
    try:
        # simulated hardware runs here; multi_* starts hardware.world_size ranks (or, under
        # torchrun, is one of them): suite/launch.py
        check_overrides(list(overrides))
        result = execute_job(cfg, launch_dir=launch_dir, output_dir=output_dir,
                             sweep_id=sweep_id)
    except Terminated as exc:
        # SIGTERM (timeout, a scheduler, the sweep's launcher): the run is closed KILLED with
        # its artifacts; the process exits 143 without a traceback
        print(f"commsgd: {exc}: the run is closed KILLED", file=sys.stderr, flush=True)
        raise
    except USER_ERRORS as exc:
        # a bad config is refused before any run is recorded
        print(one_line(exc), file=sys.stderr)
        exc.commsgd_reported = True  # a sweep re-raises it: main() need not say it again
        return 2, exc
    if sweep_id is not None:
        # a sweep's job says one line; the sweep's end prints one summary (suite/sweep_summary)
        if is_primary():
            print(job_line(result), flush=True)
        return (0 if result.status in ("FINISHED", "SKIPPED") else 1), result
    if result.status == "SKIPPED":
        print(f"commsgd: skipped: {result.reason}")
        return 0, result
    if is_primary():
        print(summary(result, cfg))
    return (0 if result.status == "FINISHED" else 1), result


def name_method(cfg: DictConfig, choices: dict) -> None:
    """A preset's method file names the method in reports: leaderboard.name defaults to the
    option of the preset's method group (`+experiment/dvq_methods=dqgd_linf`). Set here, where
    Hydra's choices are known, so that the name travels with the config to every rank."""
    name = method_choice(choices)
    if name and cfg.get("leaderboard") is not None and cfg.leaderboard.get("name") is None:
        OmegaConf.update(cfg, "leaderboard.name", name)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> float | JobOutcome | None:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    name_method(cfg, dict(hc.runtime.choices))
    provenance.remember_overrides(list(hc.overrides.task))
    code, result = run_job(cfg, launch_dir=Path(hc.runtime.cwd),
                           output_dir=Path(hc.runtime.output_dir),
                           sweep_id=hc.sweep.dir if multirun else None,
                           overrides=hc.overrides.task)
    if code == 2:
        if multirun:
            raise result  # a bad config in a sweep stops the sweep
        sys.exit(2)
    if multirun:
        return JobOutcome(result)  # a failed run's job goes on to the next; its value is NaN
    if code == 1:
        sys.exit(1)  # a failed single run is a failed command
    final = getattr(result, "final", {}) or {}
    return final.get("train/suboptimality", final.get("train/loss"))


def main() -> None:
    """The console script: the app, with every mistake on the command line said in one line
    (exit 2) and Ctrl-C in one line (exit 130): suite/cli_errors.py."""
    provenance.remember_command()
    if cli_help.asks_for_help(sys.argv[1:]):
        with cli_help.one_repository_per_listing():
            sys.exit(cli_errors.run_app(app, USER_ERRORS))
    sys.exit(cli_errors.run_app(app, USER_ERRORS))


if __name__ == "__main__":
    main()
