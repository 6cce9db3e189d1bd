"""Reptile (Nichol, Achiam & Schulman 2018, Algorithm 2, the batched version).

For each task i of the meta-batch, train from phi with k steps of the inner
optimizer, reaching W_i; the meta-gradient is phi - mean_i(W_i). With an SGD outer
optimizer of step size epsilon this is the paper's interpolation
phi <- phi + epsilon * (mean_i W_i - phi).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import MetaStep, inner_optimizer, loss_logs
from .inner import Params, State, TaskLoss, adapt_tasks

if TYPE_CHECKING:
    from bench.config import Config
    from bench.episodes import Episode


def reptile(loss: TaskLoss, params: Params, inner_state: State, episodes: "Episode",
            cfg: "Config") -> MetaStep:
    """One Reptile meta-step on the inner minibatches of `episodes` (its support sets
    hold train_shots examples per class; the queries are not used)."""
    xs, ys = episodes.inner_data()
    adapted, carried, losses = adapt_tasks(
        loss, inner_optimizer(cfg), params, inner_state, xs, ys,
        batched=cfg.batched, chain_state=cfg.inner_state == "carry")
    grad = {k: p - adapted[k].mean(0) for k, p in params.items()}
    return MetaStep(grad=grad, inner_state=carried,
                    logs=loss_logs(losses))
