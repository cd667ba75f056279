"""Problems: data, models, losses, gradients and constants. Knows nothing of algorithms.

Each task is a factory `Task(workers=, worker_ids=, device=, **task keys)` (tasks/base.py),
registered as an entry point of the group `commsgd.tasks` in pyproject.toml
(suite/plugins.py reads them); importing this package imports no task module.
"""
