"""Problems: data, models, losses, gradients and constants. Knows nothing of algorithms."""

from tasks.cifar10 import Cifar10ResNet
from tasks.logreg import LogisticRegression

# name -> factory(workers=, worker_ids=, device=, **task keys)
TASKS = {"logreg": LogisticRegression, "cifar10_resnet": Cifar10ResNet}
