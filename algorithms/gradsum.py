"""Joint training (k = 1) and the gradient-combination family (Reptile paper section 6.2).

With g_1..g_k the gradients of the k inner steps (each at the weights reached by the
steps before it), the meta-gradient is inner_lr times a chosen sum of them, or of
their mean. With an SGD inner loop, Reptile's phi - W is exactly inner_lr times
g_1 + ... + g_k, so the family shares Reptile's scale and outer step sizes.
Joint training is g_1 alone: one gradient per task at phi, averaged over tasks; it
cannot improve when zero-shot performance is impossible (labels permuted per task).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch

from .base import MetaStep, inner_optimizer, loss_logs
from .inner import Params, State, TaskLoss, adapt_with_grads, map_tasks

if TYPE_CHECKING:
    from bench.config import Config
    from bench.episodes import Episode


def parse_terms(spec: str) -> list[int]:
    """"1+2+4" -> [1, 2, 4] (1-based inner steps)."""
    return [int(t) for t in spec.split("+")]


def _task(loss, opt, steps, params, state, xs, ys):
    _, final, losses, grads = adapt_with_grads(loss, opt, params, state, xs[:steps], ys[:steps])
    return grads, final, losses


def combine(loss: TaskLoss, params: Params, inner_state: State, episodes: "Episode", cfg: "Config",
            terms: list[int], mean: bool) -> MetaStep:
    """inner_lr * (sum over `terms` of g_i), divided by len(terms) when `mean`, averaged over tasks."""
    opt = inner_optimizer(cfg)
    xs, ys = episodes.inner_data()
    grads, carried, losses = map_tasks(
        partial(_task, loss, opt, max(terms)), params, inner_state, (xs, ys),
        batched=cfg.batched, chain_state=cfg.inner_state == "carry")
    scale = opt.lr / (len(terms) if mean else 1)
    # g: (tasks, steps, ...); the steps picked by views, not an index list (which would be
    # a host-to-device copy, refused inside a CUDA graph's recording)
    meta = {k: scale * torch.stack([g[:, i - 1] for i in terms], 1).sum(1).mean(0) for k, g in grads.items()}
    return MetaStep(grad=meta, inner_state=carried,
                    logs=loss_logs(losses))


def gradsum(loss: TaskLoss, params: Params, inner_state: State, episodes: "Episode",
            cfg: "Config") -> MetaStep:
    """The combination named by `meta_grads` (e.g. "1+2+3") and `meta_grads_mean`."""
    return combine(loss, params, inner_state, episodes, cfg, parse_terms(cfg.meta_grads),
                   cfg.meta_grads_mean)


def joint(loss: TaskLoss, params: Params, inner_state: State, episodes: "Episode",
          cfg: "Config") -> MetaStep:
    """Joint training: inner_lr times the mean over tasks of g_1, the loss gradient at phi."""
    return combine(loss, params, inner_state, episodes, cfg, [1], False)
