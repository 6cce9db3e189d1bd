"""Second-order MAML (Finn et al. 2017, Algorithm 2).

The meta-loss of a task is the query loss at the adapted weights W(phi), where W is
reached by the inner optimizer (SGD or Adam) on the task's inner minibatches; the
meta-gradient differentiates through every inner step (torch.func.grad of a
function that itself takes gradients), batched over tasks with vmap like the others.
Like FOMAML's, it is returned as the inner optimizer's step on it, taken from the
state the inner steps reached (inner_lr times the gradient for SGD, Adam's normalised
step for Adam), on the scale of one inner step like the other algorithms'
meta-gradients (see `base`); so MAML and FOMAML differ exactly by the second-order
terms. With the MAML paper's SGD inner loop and Adam outer optimizer that scale
makes no difference.
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


def meta_gradient(loss, opt, params, state, xs, ys, qx, qy):
    """d(query loss at W(phi)) / d(phi) for one task; also the optimizer state the inner
    steps reached and the losses (inner steps, then the query)."""
    def meta_loss(p):
        w, final, losses = adapt(loss, opt, p, state, xs, ys)
        query_loss = loss(w, qx, qy)
        return query_loss, (final, torch.cat([losses, query_loss[None]]))

    grads, (_, (reached, losses)) = grad_and_value(meta_loss, has_aux=True)(params)
    return grads, reached, losses


def _task(loss, opt, params, state, xs, ys, qx, qy):
    grads, reached, losses = meta_gradient(loss, opt, params, state, xs, ys, qx, qy)
    stepped, final = opt.step(params, grads, reached)
    return {k: params[k] - stepped[k] for k in params}, final, losses


def maml(loss: TaskLoss, params: Params, inner_state: State, episodes: "Episode",
         cfg: "Config") -> MetaStep:
    """One MAML meta-step: the mean over tasks of the inner step on d(query loss at W(phi)) / d(phi)."""
    return query_meta_step(_task, loss, params, inner_state, episodes, cfg)
