"""`hydra/launcher=parallel`: Hydra's joblib launcher whose jobs end when the sweep ends, and
whose interruption closes every run (suite/sweep_launcher.py says how). Here because Hydra
instantiates launchers from its `hydra_plugins` package only."""

from __future__ import annotations

try:
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
except ImportError:  # the `joblib` extra is not installed: no parallel launcher
    JoblibLauncher = None

if JoblibLauncher is not None:

    class GuardedJoblibLauncher(JoblibLauncher):
        def setup(self, *, hydra_context, task_function, config) -> None:
            from suite.sweep_launcher import GuardedJob

            super().setup(hydra_context=hydra_context, task_function=GuardedJob(task_function),
                          config=config)

        def launch(self, job_overrides, initial_job_idx):
            from suite.sweep_launcher import workers_stopped_first

            with workers_stopped_first() as guard:
                self.task_function.busy_dir = str(guard.busy_dir)  # sent with each job
                return super().launch(job_overrides, initial_job_idx)
