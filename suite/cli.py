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
from omegaconf import DictConfig

from suite.errors import USER_ERRORS, one_line
from suite.launch import execute_job, is_primary

# The package's own config files (suite/conf: in a checkout a link to the repository's conf/,
# in an installed package a copy of it), so commsgd-run composes the same config anywhere.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")
log = logging.getLogger("commsgd")


def summary(result, cfg) -> str:
    lines = [f"commsgd: run {result.status.lower()}"
             + (f" ({result.reason})" if result.reason else "")]
    shown = ("train/loss", "train/suboptimality", "test/accuracy", "comm/bits_up",
             "comm/bits_down", "time/wall_s")
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
    return "\n".join(lines)


def run_job(cfg: DictConfig, *, launch_dir: Path, output_dir: Path | None = None,
            sweep_id: str | None = None) -> tuple[int, object]:
    """One job as the command line runs it: (exit status, RunResult or None).

    0: finished or skipped; 1: the run failed (diverged); 2: refused with a one-line message
    that names what to fix. In a sweep, the app turns 2 into an exception and 1 into "go on".
    """
    try:
        # simulated hardware runs here; multi_* starts hardware.world_size ranks (or, under
        # torchrun, is one of them): suite/launch.py
        result = execute_job(cfg, launch_dir=launch_dir, output_dir=output_dir,
                             sweep_id=sweep_id)
    except USER_ERRORS as exc:
        # a bad config is refused before any run is recorded
        print(one_line(exc), file=sys.stderr)
        return 2, exc
    if result.status == "SKIPPED":
        print(f"commsgd: skipped: {result.reason}")
        return 0, result
    if is_primary():
        print(summary(result, cfg))
    return (0 if result.status == "FINISHED" else 1), result


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    code, result = run_job(cfg, launch_dir=Path(hc.runtime.cwd),
                           output_dir=Path(hc.runtime.output_dir),
                           sweep_id=hc.sweep.dir if multirun else None)
    if code == 2:
        if multirun:
            raise result  # a bad config in a sweep stops the sweep
        sys.exit(2)
    if code == 1:
        if not multirun:
            sys.exit(1)  # a failed single run is a failed command; a sweep goes on
        return None
    final = getattr(result, "final", {}) or {}
    return final.get("train/suboptimality", final.get("train/loss"))


class _one_line_composition_errors:
    """Hydra reports a refused composition itself (hydra._internal.utils.run_and_report:
    several lines, exit 1). Where the suite can say it in one line (a key a group option does
    not have: suite.config.refused_override) it does, with exit code 2, as for its own checks;
    any other error goes to Hydra's report unchanged."""

    def __enter__(self):
        import hydra._internal.utils as hydra_utils
        from hydra.errors import ConfigCompositionException

        from suite.config import refused_override

        self._utils, self._original = hydra_utils, hydra_utils.run_and_report
        original = self._original

        def run_and_report(func):
            def guarded():
                try:
                    return func()
                except ConfigCompositionException as exc:
                    refused = refused_override(exc)
                    if refused is None:
                        raise
                    print(one_line(refused), file=sys.stderr)
                    sys.exit(2)

            return original(guarded)

        hydra_utils.run_and_report = run_and_report
        return self

    def __exit__(self, *exc):
        self._utils.run_and_report = self._original
        return False


def main() -> None:
    with _one_line_composition_errors():
        app()


if __name__ == "__main__":
    main()
