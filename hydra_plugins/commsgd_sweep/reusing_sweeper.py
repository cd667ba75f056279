"""`hydra/sweeper=commsgd` (the default): Hydra's basic sweeper, composing each job's config
once instead of twice (suite/sweep_compose.py says how), running each job of the basic
launcher with fewer copies of its config (suite/sweep_jobs.py), and printing one summary when
the sweep ends (suite/sweep_summary.py). Here because Hydra instantiates sweepers from its
`hydra_plugins` package only."""

from __future__ import annotations

import os

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobStatus


def _closes_pipelined(launch):
    """The launcher's `launch`, inside suite.tracking_writer.closes_pipelined (every run of the
    batch is closed and confirmed when it returns), each job run by suite.sweep_jobs.run_job
    (Hydra's run_job with fewer copies of the config)."""

    def launch_with_closes_pipelined(job_overrides, initial_job_idx):
        from suite.sweep_jobs import hydra_jobs_lighter
        from suite.tracking_writer import closes_pipelined

        with closes_pipelined(), hydra_jobs_lighter():
            return launch(job_overrides, initial_job_idx)

    return launch_with_closes_pipelined


class ReusingBasicSweeper(BasicSweeper):
    def setup(self, *, hydra_context, task_function, config) -> None:
        from suite.sweep_compose import ComposedOnce

        self.composed = ComposedOnce(hydra_context.config_loader)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if isinstance(self.launcher, BasicLauncher):
            # the jobs run one after another in this process: each run's close is confirmed
            # while the next job is composed and set up (suite/tracking_writer.py)
            self.launcher.launch = _closes_pipelined(self.launcher.launch)

    def validate_batch_is_legal(self, batch) -> None:
        self.composed.validate(self.config, batch)

    def sweep(self, arguments):
        """Hydra's sweep, then one summary of all its jobs (a job that raised stops the sweep
        with its own message before this: Hydra re-raises it)."""
        from suite.sweep_summary import sweep_summary

        returns = super().sweep(arguments)
        outcomes = [r._return_value for batch in returns for r in batch
                    if r.status == JobStatus.COMPLETED]
        sweep_dir = os.path.abspath(str(self.config.hydra.sweep.dir))
        print(sweep_summary(outcomes, sweep_dir), flush=True)
        return returns
