"""Peer libraries `python -m bench speed` times beside the suite: learn2learn's MAML.

learn2learn (`l2l.algorithms.MAML`, first_order False or True) is optional: install it
with `scripts/install_learn2learn.sh`; without it its rows are left out. It has no
Reptile, so it times MAML and first-order MAML only. It is driven the way its
documentation and tests/test_learn2learn.py drive it: per task `clone()`, `adapt(loss)`
per inner minibatch, the query loss backpropagated (averaged over the meta-batch) into
the wrapped model's `.grad`, then the outer optimizer's step. That is the plain
meta-gradient, as in `bench.naive.maml` (the suite's is inner_lr times it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .naive import loss_fn

if TYPE_CHECKING:
    from .config import Config
    from .episodes import Episode

LEARN2LEARN_ALGOS = ("maml", "fomaml")
MISSING = "learn2learn not installed (scripts/install_learn2learn.sh)"


def learn2learn_version() -> str | None:
    """learn2learn's version when it imports, else None."""
    try:
        import learn2learn
    except Exception:  # not installed, or broken against this torch: no rows either way
        return None
    return getattr(learn2learn, "__version__", "unknown")


def learn2learn_maml(model: nn.Module, cfg: "Config", first_order: bool):
    """`model` wrapped in learn2learn's MAML with the preset's inner step size."""
    import learn2learn as l2l

    if cfg.inner_optimizer != "sgd":
        raise ValueError(f"learn2learn's MAML adapts with SGD, not {cfg.inner_optimizer}")
    return l2l.algorithms.MAML(model, lr=cfg.inner_lr, first_order=first_order)


def learn2learn_step(meta, meta_opt: torch.optim.Optimizer, episodes: "Episode", cfg: "Config") -> None:
    """One meta-iteration of learn2learn's MAML (`meta` from `learn2learn_maml`)."""
    criterion = loss_fn(cfg)
    xs, ys = episodes.inner_data()
    n = xs.shape[0]
    meta_opt.zero_grad()
    for t in range(n):
        learner = meta.clone()
        for s in range(xs.shape[1]):
            learner.adapt(criterion(learner(xs[t, s]), ys[t, s]))
        query_loss = criterion(learner(episodes.query_x[t]), episodes.query_y[t])
        (query_loss / n).backward()
    meta_opt.step()
