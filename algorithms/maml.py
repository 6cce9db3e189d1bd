"""Second-order MAML (Finn et al. 2017, Algorithm 2).

The meta-loss of a task is the query loss at the adapted weights W(phi), where W is
reached by the inner optimizer (SGD or Adam) on the task's inner minibatches; the
meta-gradient differentiates through every inner step, batched over tasks with vmap
like the others.

Memory stays bounded as the inner steps grow: instead of keeping the autograd graph
of the whole unrolled loop (which grows with every step: each step's activations and
its gradient's graph), `meta_gradient` runs the inner loop forward keeping only the
weights and optimizer state each step started from, then walks back one step at a
time, recomputing that step and pulling the cotangent through it with `torch.func.vjp`
(reverse-mode accumulation with recomputation). Peak memory is one step's
second-order graph plus one weight/state copy per step, for about one more inner
step's compute per step (the last step's graph is kept from the forward sweep, so
with one inner step nothing is recomputed). `meta_gradient_unrolled` differentiates the whole unrolled
loop instead: faster at a few steps, with memory that grows with every step. Both
give the same meta-gradient; the run's `maml_memory` setting chooses, and `python -m
bench memory` measures both side by side.

Like FOMAML's, the meta-gradient is returned as the inner optimizer's step on it,
taken from the state the inner steps reached (inner_lr times the gradient for SGD,
Adam's normalised step for Adam), on the scale of one inner step like the other
algorithms' meta-gradients (see `base`); so MAML and FOMAML differ exactly by the
second-order terms. With the MAML paper's SGD inner loop and Adam outer optimizer
that scale makes no difference.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from torch.func import grad_and_value, vjp

from .base import MetaStep, query_meta_step
from .inner import InnerOptimizer, Params, State, TaskLoss, adapt

if TYPE_CHECKING:
    from bench.config import Config
    from bench.episodes import Episode


def _inner_step(loss: TaskLoss, opt: InnerOptimizer, params: Params, state: State, x, y):
    """One inner step as a function of (params, state), for vjp: returns the new
    (params, state) and, as auxiliary output, the minibatch loss."""
    grads, value = grad_and_value(loss)(params, x, y)
    return opt.step(params, grads, state), value


def meta_gradient(loss: TaskLoss, opt: InnerOptimizer, params: Params, state: State,
                  xs, ys, qx, qy) -> tuple[Params, State, torch.Tensor]:
    """d(query loss at W(phi)) / d(phi) for one task, by recomputation (see the module
    docstring); also the optimizer state the inner steps reached and the losses
    (inner steps, then the query).

    Runs under torch.no_grad: the torch.func transforms inside differentiate all the
    same, and nothing outside needs a graph. (Under vmap with grad mode on, torch 2.14's
    batch-norm double backward inside `vjp` fails with "accessing `data` under vmap".)
    """
    with torch.no_grad():
        return _recompute(loss, opt, params, state, xs, ys, qx, qy)


def _recompute(loss, opt, params, state, xs, ys, qx, qy):
    starts, losses = [], []
    p, s = params, state
    last = xs.shape[0] - 1
    for i in range(last):
        starts.append((p, s))
        (p, s), value = _inner_step(loss, opt, p, s, xs[i], ys[i])
        losses.append(value)
    # The last step keeps its graph from the forward sweep: recomputing it would repeat the
    # same operations on the same inputs (the same numbers), for nothing.
    (p, s), pull, value = vjp(_step_fn(loss, opt, xs[last], ys[last]), p, s, has_aux=True)
    losses.append(value)
    reached = s
    cot_p, query_loss = grad_and_value(loss)(p, qx, qy)
    cot_s = {k: torch.zeros_like(v) for k, v in s.items()}  # the query loss ignores the final state
    cot_p, cot_s = pull((cot_p, cot_s))
    for i in reversed(range(last)):
        _, pull, _ = vjp(_step_fn(loss, opt, xs[i], ys[i]), *starts[i], has_aux=True)
        cot_p, cot_s = pull((cot_p, cot_s))
    return cot_p, reached, torch.stack([*losses, query_loss])


def _step_fn(loss: TaskLoss, opt: InnerOptimizer, x, y):
    """The inner step on minibatch (x, y) as a function of (params, state) alone."""
    return lambda p, s: _inner_step(loss, opt, p, s, x, y)


def meta_gradient_unrolled(loss: TaskLoss, opt: InnerOptimizer, params: Params, state: State,
                           xs, ys, qx, qy) -> tuple[Params, State, torch.Tensor]:
    """The same meta-gradient by differentiating the whole unrolled inner loop at once:
    simpler, and its memory grows with the number of inner steps."""
    def meta_loss(p):
        w, final, losses = adapt(loss, opt, p, state, xs, ys)
        query_loss = loss(w, qx, qy)
        return query_loss, (final, torch.cat([losses, query_loss[None]]))

    grads, (_, (reached, losses)) = grad_and_value(meta_loss, has_aux=True)(params)
    return grads, reached, losses


def _task(gradient, loss, opt, params, state, xs, ys, qx, qy):
    grads, reached, losses = gradient(loss, opt, params, state, xs, ys, qx, qy)
    stepped, final = opt.step(params, grads, reached)
    return {k: params[k] - stepped[k] for k in params}, final, losses


def maml(loss: TaskLoss, params: Params, inner_state: State, episodes: "Episode",
         cfg: "Config") -> MetaStep:
    """One MAML meta-step: the mean over tasks of the inner step on d(query loss at W(phi)) / d(phi)
    (computed as cfg.maml_memory says)."""
    gradient = meta_gradient if cfg.maml_memory == "recompute" else meta_gradient_unrolled
    return query_meta_step(partial(_task, gradient), loss, params, inner_state, episodes, cfg)
