"""Meta-learning algorithms as pure functions over parameter dicts (see `base`)."""

from .base import Algorithm, MetaStep, inner_optimizer
from .inner import InnerOptimizer, adapt, adapt_tasks
from .reptile import reptile

ALGORITHMS: dict[str, Algorithm] = {
    "reptile": reptile,
}

__all__ = ["ALGORITHMS", "Algorithm", "InnerOptimizer", "MetaStep", "adapt", "adapt_tasks",
           "inner_optimizer", "reptile"]
