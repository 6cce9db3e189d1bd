"""The naive implementations `python -m bench speed` times beside the suite's own.

Written the way public meta-learning code usually is, one task at a time with plain
autograd: a `copy.deepcopy` of the model (or of its `state_dict`) per task, a fresh
optimizer per task, `loss.backward()` or `torch.autograd.grad`, a Python loop over
the meta-batch. Each computes the same maths as the suite's algorithm on the same
episode tensors (tests/test_speed.py checks the updates against `algorithms/`), so
the speed table compares implementations, not algorithms. Two documented
differences, neither of which changes the work done:

- Reptile's per-task optimizer starts fresh for every task, where the suite's
  Omniglot preset carries the inner Adam moments from task to task
  (`inner_state = "carry"`, the reference code's behaviour): the same operations on
  other numbers, so the time is the same; the equality test uses `inner_state="reset"`.
- MAML and FOMAML return the plain meta-gradient (the tutorial's `backward()` into
  `.grad`); the suite's is the inner step on it, `inner_lr` times it for SGD
  (`algorithms/base.py`). The outer Adam of the MAML paper's settings ignores the scale.

`SineExample` is the public Reptile sine example (reptile-sinewaves-demo, PyTorch;
PAPERS.md section 6) as it is written there, task sampling with NumPy included; only
the plotting is left out and the module-level globals are held by an object.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import autograd as ag
from torch import nn
from torch.func import functional_call

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config
    from .episodes import Episode


def loss_fn(cfg: "Config"):
    """The task's loss on the module's output: MSE for sine, cross-entropy otherwise
    (what `bench.models.task_loss` computes through functional_call)."""
    return F.mse_loss if cfg.task == "sine" else F.cross_entropy


def inner_optimizer(params, cfg: "Config") -> torch.optim.Optimizer:
    """A fresh torch optimizer for one task, with the preset's inner settings."""
    if cfg.inner_optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.inner_lr)
    return torch.optim.Adam(params, lr=cfg.inner_lr, betas=(cfg.inner_beta1, cfg.inner_beta2), eps=cfg.inner_eps)


def reptile(model: nn.Module, episodes: "Episode", cfg: "Config", meta_lr: float) -> None:
    """One Reptile meta-iteration in place (Reptile paper, Algorithm 2): per task a deepcopy
    of the model trained by its own optimizer on the task's inner minibatches, then
    phi <- phi + meta_lr * (mean_i W_i - phi)."""
    criterion = loss_fn(cfg)
    xs, ys = episodes.inner_data()
    weights_before = copy.deepcopy(model.state_dict())
    weights_after = []
    for t in range(xs.shape[0]):
        task_model = copy.deepcopy(model)
        opt = inner_optimizer(task_model.parameters(), cfg)
        for s in range(xs.shape[1]):
            opt.zero_grad()
            loss = criterion(task_model(xs[t, s]), ys[t, s])
            loss.backward()
            opt.step()
        weights_after.append(task_model.state_dict())
    model.load_state_dict({
        name: weights_before[name]
        + (sum(w[name] for w in weights_after) / len(weights_after) - weights_before[name]) * meta_lr
        for name in weights_before})


def joint(model: nn.Module, episodes: "Episode", cfg: "Config", meta_lr: float) -> None:
    """One joint-training meta-iteration in place: the loss gradient at phi on each task's
    first inner minibatch, averaged over tasks, times inner_lr (the suite's scale),
    applied with step size meta_lr."""
    criterion = loss_fn(cfg)
    xs, ys = episodes.inner_data()
    model.zero_grad()
    for t in range(xs.shape[0]):
        loss = criterion(model(xs[t, 0]), ys[t, 0]) / xs.shape[0]
        loss.backward()
    for param in model.parameters():
        param.data -= meta_lr * cfg.inner_lr * param.grad.data


def maml(model: nn.Module, meta_opt: torch.optim.Optimizer, episodes: "Episode", cfg: "Config",
         first_order: bool = False) -> None:
    """One MAML meta-iteration (Finn et al. 2017, Algorithm 2) the tutorial way: per task,
    SGD steps on fast weights through a functional forward, `torch.autograd.grad` with
    `create_graph=True` (second order) or without it (first order: the inner gradients
    are constants, so the query loss's gradient is the one at the adapted weights), the
    query loss backpropagated into `.grad`, averaged over tasks; then the outer step."""
    if cfg.inner_optimizer != "sgd":
        raise ConfigError(f"the naive MAML is written for an SGD inner loop, not {cfg.inner_optimizer}")
    criterion = loss_fn(cfg)
    xs, ys = episodes.inner_data()
    n = xs.shape[0]
    meta_opt.zero_grad()
    for t in range(n):
        fast = dict(model.named_parameters())
        for s in range(xs.shape[1]):
            loss = criterion(functional_call(model, fast, (xs[t, s],)), ys[t, s])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: w - cfg.inner_lr * g for (name, w), g in zip(fast.items(), grads)}
        query_loss = criterion(functional_call(model, fast, (episodes.query_x[t],)), episodes.query_y[t])
        (query_loss / n).backward()
    meta_opt.step()


def fomaml(model: nn.Module, meta_opt: torch.optim.Optimizer, episodes: "Episode", cfg: "Config") -> None:
    """`maml` without create_graph: first-order MAML."""
    maml(model, meta_opt, episodes, cfg, first_order=True)


class SineExample:
    """The public Reptile sine example (reptile-sinewaves-demo, PAPERS.md section 6), its
    training loop as written there: a NumPy-drawn sine task per iteration, the 1-64-64-1
    tanh MLP, one inner epoch of plain SGD on `param.data` over minibatches of 10, and the
    interpolation from a deepcopy of the state_dict with the linearly annealed outer step.

    `iteration(i)` runs the loop's body once. `y_all` and `inds` may be passed to replace
    the task and the minibatch order the example draws (the tests use that to feed it the
    suite's episode)."""

    def __init__(self, seed: int = 0, innerstepsize: float = 0.02, innerepochs: int = 1,
                 outerstepsize0: float = 0.1, niterations: int = 30000, device: str | torch.device = "cpu"):
        self.innerstepsize, self.innerepochs = innerstepsize, innerepochs
        self.outerstepsize0, self.niterations = outerstepsize0, niterations
        self.device = torch.device(device)
        self.rng = np.random.RandomState(seed)
        torch.manual_seed(seed)
        self.x_all = np.linspace(-5, 5, 50)[:, None]  # All of the x points
        self.ntrain = 10  # Size of training minibatches
        self.model = nn.Sequential(
            nn.Linear(1, 64),
            nn.Tanh(),
            nn.Linear(64, 64),
            nn.Tanh(),
            nn.Linear(64, 1),
        ).to(self.device)

    def gen_task(self):
        "Generate classification problem"
        phase = self.rng.uniform(low=0, high=2 * np.pi)
        ampl = self.rng.uniform(0.1, 5)
        f_randomsine = lambda x: np.sin(x + phase) * ampl  # noqa: E731 (as the example)
        return f_randomsine

    def totorch(self, x):
        return ag.Variable(torch.Tensor(x).to(self.device))

    def train_on_batch(self, x, y):
        x = self.totorch(x)
        y = self.totorch(y)
        self.model.zero_grad()
        ypred = self.model(x)
        loss = (ypred - y).pow(2).mean()
        loss.backward()
        for param in self.model.parameters():
            param.data -= self.innerstepsize * param.grad.data

    def iteration(self, iteration: int, y_all: np.ndarray | None = None, inds: np.ndarray | None = None) -> None:
        model, x_all, ntrain = self.model, self.x_all, self.ntrain
        weights_before = copy.deepcopy(model.state_dict())
        # Generate task
        if y_all is None:
            f = self.gen_task()
            y_all = f(x_all)
        # Do SGD on this task
        if inds is None:
            inds = self.rng.permutation(len(x_all))
        for _ in range(self.innerepochs):
            for start in range(0, len(x_all), ntrain):
                mbinds = inds[start:start + ntrain]
                self.train_on_batch(x_all[mbinds], y_all[mbinds])
        # Interpolate between current weights and trained weights from this task
        # I.e. (weights_before - weights_after) is the meta-gradient
        weights_after = model.state_dict()
        outerstepsize = self.outerstepsize0 * (1 - iteration / self.niterations)  # linear schedule
        model.load_state_dict({name: weights_before[name] + (weights_after[name] - weights_before[name]) * outerstepsize
                               for name in weights_before})
