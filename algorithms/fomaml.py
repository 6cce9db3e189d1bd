"""First-order MAML (Finn et al. 2017, section 5.2; Reptile paper section 2).

Adapt phi on the task's inner minibatches, reaching W; the meta-gradient is the
gradient of the loss on the final ("tail" / query) minibatch at W, treating W as a
constant in phi. Where the tail comes from (shared with the inner minibatches or
held out) is the run's `tail` setting, applied by the harness when it draws the
episodes (Reptile paper section 6.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.func import grad_and_value

from .base import MetaStep, query_meta_step
from .inner import Params, State, TaskLoss, adapt

if TYPE_CHECKING:
    from bench.config import Config
    from bench.episodes import Episode


def _task(loss, opt, params, state, xs, ys, qx, qy):
    w, final, losses = adapt(loss, opt, params, state, xs, ys)
    grads, query_loss = grad_and_value(loss)(w, qx, qy)
    return grads, final, torch.cat([losses, query_loss[None]])


def fomaml(loss: TaskLoss, params: Params, inner_state: State, episodes: "Episode",
           cfg: "Config") -> MetaStep:
    """One FOMAML meta-step: the mean over tasks of the query gradient at the adapted weights."""
    return query_meta_step(_task, loss, params, inner_state, episodes, cfg)
