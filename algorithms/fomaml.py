"""First-order MAML (Finn et al. 2017, section 5.2; Reptile paper section 2).

Adapt phi on the task's inner minibatches, reaching W; the meta-gradient is the
gradient g of the loss on the final ("tail" / query) minibatch at W, treating W as a
constant in phi, expressed as the inner optimizer's step on it: W - step(W, g), that
is inner_lr * g for SGD, and Adam's normalised step (with the carried moments) for
Adam, exactly the update the reference code's FOMAML applies (it takes the last
inner step's weight change). Where the tail comes from (shared with the inner
minibatches or held out) is the run's `tail` setting, applied by the harness when it
draws the episodes (Reptile paper section 6.3).
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
    w, state, losses = adapt(loss, opt, params, state, xs, ys)
    grads, query_loss = grad_and_value(loss)(w, qx, qy)
    stepped, final = opt.step(w, grads, state)
    return {k: w[k] - stepped[k] for k in w}, final, torch.cat([losses, query_loss[None]])


def fomaml(loss: TaskLoss, params: Params, inner_state: State, episodes: "Episode",
           cfg: "Config") -> MetaStep:
    """One FOMAML meta-step: the mean over tasks of the inner step on the query gradient at W."""
    return query_meta_step(_task, loss, params, inner_state, episodes, cfg)
