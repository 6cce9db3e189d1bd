"""Meta-learning algorithms as pure functions over parameter dicts (see `base`)."""

from .base import Algorithm, MetaStep, inner_optimizer
from .fomaml import fomaml
from .gradsum import gradsum, joint, parse_terms
from .inner import InnerOptimizer, adapt, adapt_tasks, adapt_with_grads, map_tasks
from .maml import maml
from .reptile import reptile

ALGORITHMS: dict[str, Algorithm] = {
    "reptile": reptile,
    "fomaml": fomaml,
    "maml": maml,
    "joint": joint,
    "gradsum": gradsum,
}

QUERY_ALGORITHMS = frozenset({"fomaml", "maml"})
"""Algorithms whose meta-gradient needs a query ("tail") minibatch per task."""

__all__ = ["ALGORITHMS", "QUERY_ALGORITHMS", "Algorithm", "InnerOptimizer", "MetaStep", "adapt",
           "adapt_tasks", "adapt_with_grads", "fomaml", "gradsum", "inner_optimizer", "joint",
           "map_tasks", "maml", "parse_terms", "reptile"]
