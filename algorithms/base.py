"""What every algorithm receives and returns.

An algorithm is a pure function
    algo(loss, params, inner_state, episodes, cfg) -> MetaStep
of the task loss, the current initialisation, the carried inner optimizer state,
a meta-batch of episodes (tasks first) and the run's settings. It never touches
files, devices or logging.

Every meta-gradient is on the scale of an inner step, as Reptile's phi - W is
(Reptile: phi - W; FOMAML and MAML: the inner optimizer's step on their query
gradient; joint training and the gradient sums: inner_lr times the gradients), so that one
outer-optimizer setting (the Reptile paper's interpolation with step size 1, or
Adam, which ignores the scale) serves every algorithm in a comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import Tensor

from functools import partial

from .inner import InnerOptimizer, Params, State, TaskLoss, map_tasks

if TYPE_CHECKING:
    from bench.config import Config
    from bench.episodes import Episode


@dataclass
class MetaStep:
    """The result of one meta-iteration's computation, before the outer optimizer runs.

    `grad` is the meta-gradient: the outer optimizer moves the initialisation by
    phi <- phi - meta_lr * grad (SGD) or feeds it to Adam. `inner_state` is the
    inner optimizer state to carry to the next meta-iteration. `logs` holds scalars
    as tensors (converted to numbers only when logged, so no host sync per step).
    """

    grad: Params
    inner_state: State
    logs: dict[str, Tensor]


def loss_logs(losses: Tensor) -> dict[str, Tensor]:
    """The scalars every algorithm logs from its (tasks, steps) losses: the mean loss at
    the last step and at the first."""
    return {"loss": losses[:, -1].mean(), "first_loss": losses[:, 0].mean()}


Algorithm = Callable[[TaskLoss, Params, State, "Episode", "Config"], MetaStep]


def inner_optimizer(cfg: "Config") -> InnerOptimizer:
    """The inner optimizer that cfg's `inner_*` settings describe."""
    return InnerOptimizer(cfg.inner_optimizer, cfg.inner_lr, cfg.inner_beta1, cfg.inner_beta2, cfg.inner_eps)


def query_meta_step(task, loss: TaskLoss, params: Params, inner_state: State, episodes: "Episode",
                    cfg: "Config") -> MetaStep:
    """The meta-step of the algorithms whose meta-gradient comes from a query set (FOMAML,
    MAML): `task(loss, opt, params, state, xs, ys, query_x, query_y)` returns one task's
    gradient, final optimizer state and losses (inner steps, then the query loss); the
    meta-gradient is the mean over tasks."""
    xs, ys = episodes.inner_data()
    grads, carried, losses = map_tasks(
        partial(task, loss, inner_optimizer(cfg)), params, inner_state,
        (xs, ys, episodes.query_x, episodes.query_y),
        batched=cfg.batched, chain_state=cfg.inner_state == "carry")
    return MetaStep(grad={k: g.mean(0) for k, g in grads.items()}, inner_state=carried,
                    logs=loss_logs(losses))
