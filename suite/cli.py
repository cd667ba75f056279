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

from suite.algorithms import ConfigurationError
from suite.compressors import CompressorError
from suite.config import ConfigError
from suite.tracking import TrackingDeliveryError, TrackingUnavailable
from tasks.libsvm import DatasetChecksumError, DatasetFormatError, DatasetUnavailableError

# Errors a user can fix from the message alone: printed as one line, no traceback.
USER_ERRORS = (ConfigError, ConfigurationError, CompressorError, TrackingUnavailable,
               TrackingDeliveryError, DatasetUnavailableError, DatasetChecksumError,
               DatasetFormatError)

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("commsgd")


def summary(result, cfg) -> str:
    lines = [f"commsgd: run {result.status.lower()}"
             + (f" ({result.reason})" if result.reason else "")]
    shown = ("train/loss", "train/suboptimality", "test/accuracy", "comm/bits_up",
             "comm/bits_down", "time/wall_s")
    for key in shown:
        if key in result.final:
            lines.append(f"  {key:<22} {result.final[key]:.6g}")
    if result.run_id:
        lines.append(f"  logged to {result.tracking_uri}")
        lines.append(f"  experiment '{result.experiment}', run {result.run_id}")
        if result.tracking_uri.startswith("sqlite:"):
            lines.append(f"  open it with: mlflow ui --backend-store-uri {result.tracking_uri}")
    return "\n".join(lines)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> float | None:
    from suite.runner import execute

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    sweep_id = hc.sweep.dir if multirun else None
    try:
        result = execute(cfg, launch_dir=Path(hc.runtime.cwd),
                         output_dir=Path(hc.runtime.output_dir), sweep_id=sweep_id)
    except USER_ERRORS as exc:
        # a bad config is refused before any run is recorded
        kind = "configuration error" if isinstance(exc, ValueError) else "error"
        print(f"commsgd: {kind}: {exc}", file=sys.stderr)
        if multirun:
            raise
        sys.exit(2)
    if result.status == "SKIPPED":
        print(f"commsgd: skipped: {result.reason}")
        return None
    print(summary(result, cfg))
    if result.status != "FINISHED":
        if not multirun:
            sys.exit(1)  # a failed single run is a failed command; a sweep goes on
        return None
    return result.final.get("train/suboptimality", result.final.get("train/loss"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
