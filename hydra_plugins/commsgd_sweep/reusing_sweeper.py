"""`hydra/sweeper=commsgd` (the default): Hydra's basic sweeper, composing each job's config
once instead of twice (suite/sweep_compose.py says how). Here because Hydra instantiates
sweepers from its `hydra_plugins` package only."""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class ReusingBasicSweeper(BasicSweeper):
    def setup(self, *, hydra_context, task_function, config) -> None:
        from suite.sweep_compose import ComposedOnce

        self.composed = ComposedOnce(hydra_context.config_loader)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch) -> None:
        self.composed.validate(self.config, batch)
