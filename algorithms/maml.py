"""Second-order MAML (Finn et al. 2017, Algorithm 2).

The meta-loss of a task is the query loss at the adapted weights W(phi), where W is
reached by the inner optimizer (SGD or Adam) on the task's inner minibatches; the
meta-gradient differentiates through every inner step (torch.func.grad of a
function that itself takes gradients), batched over tasks with vmap like the others.
It is returned times inner_lr, on the scale of one inner step like the other
algorithms' meta-gradients (see `base`); with the MAML paper's Adam outer optimizer
that scale makes no difference.
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
    def meta_loss(p):
        w, final, losses = adapt(loss, opt, p, state, xs, ys)
        query_loss = loss(w, qx, qy)
        return query_loss, (final, torch.cat([losses, query_loss[None]]))

    grads, (_, (final, losses)) = grad_and_value(meta_loss, has_aux=True)(params)
    return {k: opt.lr * g for k, g in grads.items()}, final, losses


def maml(loss: TaskLoss, params: Params, inner_state: State, episodes: "Episode",
         cfg: "Config") -> MetaStep:
    """One MAML meta-step: inner_lr times the mean over tasks of d(query loss at W(phi)) / d(phi)."""
    return query_meta_step(_task, loss, params, inner_state, episodes, cfg)
