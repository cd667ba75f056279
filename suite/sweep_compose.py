"""Each job of a sweep composed once, not twice.

Hydra's basic sweeper composes every job's config before it launches a batch
(`Sweeper.validate_batch_is_legal`: a config that cannot be composed stops the sweep before
any job has run), and the launcher then composes each of them again to run it
(`ConfigLoader.load_sweep_config`). Composition is the slowest thing Hydra does per job (the
defaults tree, every config file merged: ~0.1-0.3 s on a 2-core machine), so a short run paid
it twice.

`ComposedOnce` keeps the configs the validation composed and hands each one to the launcher's
call with the same arguments (the same master config, the same overrides). Nothing else
changes: it is the config Hydra composed, by Hydra's own code, from the same files, working
directory and environment, a moment earlier; a job that was not validated first is composed
as before. Each kept config is given out once, so the launcher's changes to it (hydra.job.id,
...) never reach another job. The sweeper is hydra_plugins/commsgd_sweep/reusing_sweeper.py.
"""

from __future__ import annotations

import functools


class ComposedOnce:
    def __init__(self, loader):
        self.compose = loader.load_sweep_config
        self.kept: dict[tuple, object] = {}

        @functools.wraps(self.compose)
        def load_sweep_config(master_config, sweep_overrides):
            found = self.kept.pop((id(master_config), tuple(sweep_overrides)), None)
            return found if found is not None else self.compose(master_config,
                                                                list(sweep_overrides))

        loader.load_sweep_config = load_sweep_config

    def validate(self, master_config, batch) -> None:
        """What `Sweeper.validate_batch_is_legal` does (compose every job of the batch, so
        that a bad one stops the sweep before any runs), keeping what it composed."""
        for overrides in batch:
            self.kept[id(master_config), tuple(overrides)] = self.compose(master_config,
                                                                          list(overrides))
