"""First-order MAML (Finn et al. 2017, section 5.2; Reptile paper section 2).

Adapt phi on the task's inner minibatches, reaching W; the meta-gradient is the
gradient of the loss on the final ("tail" / query) minibatch at W, treating W as a
constant in phi. Where the tail comes from (shared with the inner minibatches or
held out) is the run's `tail` setting, applied by the harness when it draws the
episodes (Reptile paper section 6.3).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from torch.func import grad_and_value

from .base import MetaStep, inner_optimizer
from .inner import Params, State, TaskLoss, adapt, map_tasks

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
    xs, ys = episodes.inner_data()
    grads, carried, losses = map_tasks(
        partial(_task, loss, inner_optimizer(cfg)), params, inner_state,
        (xs, ys, episodes.query_x, episodes.query_y),
        batched=cfg.batched, chain_state=cfg.inner_state == "carry")
    return MetaStep(grad={k: g.mean(0) for k, g in grads.items()}, inner_state=carried,
                    logs={"loss": losses[:, -1].mean(), "first_loss": losses[:, 0].mean()})
