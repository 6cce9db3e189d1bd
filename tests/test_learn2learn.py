"""Second-order MAML against learn2learn's `algorithms.MAML` (the reference peer).

learn2learn is optional: install it with `scripts/install_learn2learn.sh`."""

import pytest
import torch
import torch.nn.functional as F

from algorithms import maml
from bench.config import load_config
from bench.episodes import Episode
from bench.models import OmniglotCNN, task_loss

l2l = pytest.importorskip("learn2learn", reason="learn2learn is not installed: run scripts/install_learn2learn.sh")


def gradients(steps, batched):
    """Our MAML meta-gradient and learn2learn's, on the Omniglot CNN, 4 random tasks."""
    torch.manual_seed(0)
    cfg = load_config("omniglot-5w1s-maml").replace(inner_steps=steps, batched=batched)
    model = OmniglotCNN(5)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    tasks = 4
    support_x, support_y = torch.rand(tasks, 5, 1, 28, 28), torch.arange(5).repeat(tasks, 1)
    query_x, query_y = torch.rand(tasks, 5, 1, 28, 28), torch.arange(5).repeat(tasks, 1)
    plan = torch.arange(5).view(1, 1, 5).expand(tasks, steps, 5)  # full-batch steps, as MAML
    ours = maml(task_loss(model, cfg), params, {}, Episode(support_x, support_y, query_x, query_y, plan), cfg)

    meta = l2l.algorithms.MAML(model, lr=cfg.inner_lr, first_order=False)
    total = 0.0
    for t in range(tasks):
        learner = meta.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(support_x[t]), support_y[t]))
        total = total + F.cross_entropy(learner(query_x[t]), query_y[t]) / tasks
    theirs = dict(zip(params, torch.autograd.grad(total, list(model.parameters()))))
    return {k: g / cfg.inner_lr for k, g in ours.grad.items()}, theirs  # ours is inner_lr x the gradient


@pytest.mark.parametrize("steps", [1, 3])
def test_serial_maml_equals_learn2learn_within_1e5(steps):
    ours, theirs = gradients(steps, batched=False)
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    assert worst <= 1e-5, f"max abs difference {worst:.3g}"


@pytest.mark.parametrize("steps", [1, 3])
def test_batched_maml_equals_learn2learn_up_to_float32_rounding(steps):
    # The batched path sums the tasks' convolutions in another order (grouped
    # convolutions under vmap), so its float32 rounding differs, by an amount that
    # scales with the largest terms (the conv biases before batch norm have an exact
    # gradient of zero and get only that rounding). In float64 it equals learn2learn
    # to 1e-12 (next test).
    ours, theirs = gradients(steps, batched=True)
    scale = max(1.0, max(float(g.abs().max()) for g in theirs.values()))
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    assert worst <= 1e-5 * scale, f"max abs difference {worst:.3g} at gradient scale {scale:.3g}"


def test_batched_maml_equals_learn2learn_exactly_in_float64():
    torch.set_default_dtype(torch.float64)
    try:
        ours, theirs = gradients(3, batched=True)
    finally:
        torch.set_default_dtype(torch.float32)
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) <= 1e-12
