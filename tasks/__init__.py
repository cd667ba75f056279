"""Problems: data, models, losses, gradients and constants. Knows nothing of algorithms."""

from tasks.logreg import LogisticRegression

# name -> factory(workers=, worker_ids=, device=, **task keys)
TASKS = {"logreg": LogisticRegression}
