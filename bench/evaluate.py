"""Evaluation: one protocol for every algorithm (PAPERS.md section 4).

For each test task, fine-tune a copy of the initialisation on the support set
(`eval_steps` steps of the inner optimizer on minibatches of `eval_batch`, drawn as
in meta-training), then score the queries. Every task starts from the same weights
and the same inner optimizer state: the carried state when `inner_state` is
"carry" (the reference restores its full state, Adam moments included, after each
test task), a fresh one otherwise. Tasks are adapted `eval_chunk` at a time in one
batched computation; the result does not depend on the chunk size. With `compile`,
the inner step that adapts a chunk and the scoring are compiled (`_adapted`, `_scores`),
and a last chunk smaller than the others is filled up with copies of its last task
(whose scores are dropped), so that one compilation serves every chunk; with
`eval_chunk = 0` every later evaluation of the run keeps the first one's chunk size
(`_compiled_size`), so that it serves them all. On the CPU with `channels_last`, the
compiled step is one task's, called for each task of the chunk in turn
(`_one_at_a_time`), where it runs faster than the chunk's under vmap. With
`eval_matmul`, the convolutions are matrix products over the image patches, batched over
the chunk's tasks (`bench.models.convs_as_matmul`), where the library's convolutions
would be grouped ones.

Classification: transductive scoring classifies all N queries in one batch (they
share batch-norm statistics); non-transductive scoring classifies each query in a
batch made of the support set plus that query. Accuracy is correct queries over
tasks x queries; its interval is a 95% Student-t interval over per-task accuracies
(tasks are the independent units; queries of one task are not). Sine: MSE over the
50 grid points, with the same interval over per-task MSE.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from scipy import stats
from torch import nn
from torch.func import vmap

from algorithms import adapt_tasks, inner_optimizer
from algorithms.inner import InnerOptimizer, Params, State, compile_fn, inner_step

from .config import Config
from .episodes import Episode
from .models import convs_as_matmul, eval_layout, forward, set_precision, task_loss


@dataclass(frozen=True)
class EvalResult:
    metric: str
    """"accuracy" (fraction of queries classified correctly) or "mse"."""
    value: float
    """Mean over tasks."""
    ci95: float | None
    """Half-width of the 95% Student-t interval over tasks (None for a single task)."""
    tasks: int
    per_task: np.ndarray

    def summary(self) -> dict:
        return {"metric": self.metric, "value": self.value, "ci95": self.ci95, "tasks": self.tasks,
                "interval": "95% Student-t interval over per-task means"}


def mean_ci95(values: np.ndarray) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% Student-t interval."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None
    sem = stats.sem(values)
    half = float(sem * stats.t.ppf(0.975, len(values) - 1)) if sem > 0 else 0.0
    return mean, half


def query_outputs(model: nn.Module, cfg: Config, params: Params, support_x, query_x) -> torch.Tensor:
    """The network's outputs for one adapted task's queries, as they are scored: the sine
    task's values and transductive logits from the queries in one batch; otherwise each
    query's logits from a batch of the support set and that query (batch norm then
    normalises with the support set's statistics)."""
    def f(x):
        return forward(model, params, x, cfg)
    if cfg.task == "sine" or cfg.transductive:
        return f(query_x)
    return vmap(lambda q: f(torch.cat([support_x, q[None]]))[-1])(query_x)


def _score(model: nn.Module, cfg: Config, params: Params, support_x, query_x, query_y):
    """Per-task score of one adapted task (vmapped over tasks by the caller)."""
    out = query_outputs(model, cfg, params, support_x, query_x)
    if cfg.task == "sine":
        return ((out - query_y) ** 2).mean()
    return (out.argmax(-1) == query_y).float().mean()


def _adapted(model: nn.Module, cfg: Config, loss, opt: InnerOptimizer, params: Params, state: State,
             xs: torch.Tensor, ys: torch.Tensor, tasks: int) -> Params:
    """The chunk's tasks adapted from `params` and `state`: xs, ys are (tasks, steps,
    batch, ...), of which the first `tasks` are real ones and the rest copies filling up
    the chunk. With cfg.compile, one inner step is compiled once and called for each of
    the eval_steps minibatches: over all the chunk's tasks (vmapped), the weights and the
    optimizer state starting as copies per task, so that every call sees the same shapes;
    or, where `_one_at_a_time`, for one task at a time (the copies taking the last real
    task's weights)."""
    if not cfg.compile:
        return adapt_tasks(loss, opt, params, state, xs, ys, batched=True, chain_state=False)[0]
    if _one_at_a_time(cfg, xs.device):
        step = _compiled(model, ("task step", opt, *_forward_settings(cfg)), lambda: partial(inner_step, loss, opt),
                         one_task=True)
        adapted = []
        for t in range(tasks):
            p, s = params, state
            for k in range(xs.shape[1]):
                p, s = step(p, s, xs[t, k], ys[t, k])
            adapted.append(p)
        adapted += adapted[-1:] * (xs.shape[0] - tasks)
        return {k: torch.stack([p[k] for p in adapted]) for k in params}
    step = _compiled(model, ("step", opt, *_forward_settings(cfg)), lambda: vmap(partial(inner_step, loss, opt)))
    n = xs.shape[0]
    params = {k: v.expand(n, *v.shape).contiguous() for k, v in params.items()}
    state = {k: v.expand(n, *v.shape).contiguous() for k, v in state.items()}
    for s in range(xs.shape[1]):
        params, state = step(params, state, xs[:, s], ys[:, s])
    return params


def _one_at_a_time(cfg: Config, device: torch.device) -> bool:
    """Whether compiled evaluation adapts its tasks one at a time rather than a chunk
    under vmap: on the CPU with channels_last (and not eval_matmul), where it keeps the
    convolutions in channels-last order (under vmap, with weights that differ per task,
    they are grouped convolutions in the default order). On a 2-core CPU, medians of
    interleaved rounds of `bench.speed.build_evaluation`'s compiled-cl evaluation of 100
    tasks, one process: omniglot-5w1s (50 Adam steps) 40.2 against 47.5 ms per task,
    omniglot-5w1s-maml (3 SGD steps) 2.6 against 3.5; while other jobs loaded the CPU,
    no gain (59.6 against 59.9 on omniglot-5w1s). Without channels_last it gained
    nothing (49.0 against 47.2). Its step computes one task, so its convolutions' products
    run on oneDNN (`algorithms.onednn`): 1.13x faster on omniglot-5w1s and 1.08x on
    omniglot-5w1s-maml than before, in one process while other jobs loaded the CPU."""
    return device.type == "cpu" and cfg.channels_last and not cfg.eval_matmul


def _scores(model: nn.Module, cfg: Config, adapted: Params, ep) -> torch.Tensor:
    """Each task's score (`_score`, vmapped over the chunk's tasks); compiled with cfg.compile."""
    def scores():
        return vmap(lambda p, sx, qx, qy: _score(model, cfg, p, sx, qx, qy))
    if cfg.compile:
        scores = _compiled(model, ("score", cfg.transductive, *_forward_settings(cfg)), scores)
    else:
        scores = scores()
    return scores(adapted, ep.support_x, ep.query_x, ep.query_y)


def _forward_settings(cfg: Config) -> tuple:
    """What `bench.models.forward` and `task_loss` read of cfg, and whether evaluation's
    convolutions are matrix products."""
    return cfg.task, cfg.autocast, cfg.channels_last, cfg.eval_matmul


def _compiled(model: nn.Module, key: tuple, make, one_task: bool = False):
    """compile_fn(make(), one_task=one_task), made at the first evaluation and kept on the
    network under `key` (what the function depends on beyond the network) for the later
    ones: the periodic evaluations of a run compile once."""
    fns = vars(model).setdefault("_compiled_evaluation", {})
    if key not in fns:
        fns[key] = compile_fn(make(), one_task=one_task)
    return fns[key]


def _compiled_size(model: nn.Module, size: int) -> int:
    """The chunk size of the network's first compiled evaluation, `size` at that first
    one: with eval_chunk = 0 (by device), every later compiled evaluation of the run
    adapts its tasks in chunks of that size, whose code is compiled already. A run's
    final evaluation (10,000 tasks) would otherwise be a second shape to compile after
    its periodic ones (200 tasks, 100 per split, adapted at once): about 30 s on a GPU,
    where chunks of 1,000 are the default, for an evaluation that takes seconds."""
    return vars(model).setdefault("_compiled_evaluation", {}).setdefault("chunk size", size)


def eval_chunk(cfg: Config, device: torch.device) -> int:
    """Tasks adapted at once: cfg.eval_chunk, or by device when 0 (25 on the CPU, 1000 on a GPU)."""
    return cfg.eval_chunk or (25 if device.type == "cpu" else 1000)


def evaluate(model: nn.Module, params: Params, inner_state: State, sampler, cfg: Config,
             tasks: int) -> EvalResult:
    """Fine-tune on `tasks` fresh tasks from `sampler` and score their queries."""
    return evaluate_splits(model, params, inner_state, {"": sampler}, cfg, tasks)[""]


def evaluate_splits(model: nn.Module, params: Params, inner_state: State, samplers: dict, cfg: Config,
                    tasks: int) -> dict[str, EvalResult]:
    """`evaluate` on `tasks` tasks from each of `samplers` (by name), all adapted in one
    sequence of chunks: a chunk may hold tasks of two samplers, so the periodic
    evaluation of a run's splits fills the chunks a GPU adapts at once (100 tasks per
    split: one chunk of 200 rather than two of 100). Each sampler draws the same tasks as
    alone (drawn in pieces or at once, a sampler's tasks are the same), and every task is
    adapted and scored on its own."""
    set_precision(cfg.autocast, cfg.cudnn_benchmark)  # outside compiled code, which cannot read the flags
    run_cfg, (cfg, params) = cfg, eval_layout(cfg, params)
    loss = task_loss(model, cfg)
    opt = inner_optimizer(cfg)
    state = eval_layout(run_cfg, inner_state)[1] if cfg.inner_state == "carry" else opt.init(params)
    chunk = eval_chunk(cfg, next(iter(params.values())).device)
    total = tasks * len(samplers)
    size = min(chunk, total)  # compiled: every chunk this many tasks, one shape to compile for
    if cfg.compile and not cfg.eval_chunk:
        chunk = size = _compiled_size(model, size)
    queue = [[sampler, tasks] for sampler in samplers.values()]  # each sampler and its tasks still to draw
    scores = []
    with torch.no_grad(), convs_as_matmul(model, cfg.eval_matmul):
        for start in range(0, total, chunk):
            n = min(chunk, total - start)
            parts, drawn = [], 0
            while drawn < n:
                sampler, left = queue[0]
                k = min(left, n - drawn)
                parts.append(sampler.sample(k, cfg.shots, cfg.eval_queries, cfg.eval_steps, cfg.eval_batch))
                drawn += k
                queue[0][1] -= k
                if queue[0][1] == 0:
                    queue.pop(0)
            ep = parts[0] if len(parts) == 1 else Episode.concatenated(parts)
            if cfg.compile and n < size:
                ep = ep.padded(size)
            xs, ys = ep.inner_data()
            adapted = _adapted(model, cfg, loss, opt, params, state, xs, ys, n)
            scores.append(_scores(model, cfg, adapted, ep)[:n].cpu())
    per_task = torch.cat(scores).double().numpy()
    metric = "mse" if cfg.task == "sine" else "accuracy"
    results = {}
    for i, name in enumerate(samplers):
        own = per_task[i * tasks:(i + 1) * tasks]
        results[name] = EvalResult(metric, *mean_ci95(own), tasks, own)
    return results


def sine_predictions(model: nn.Module, params: Params, inner_state: State, sampler, cfg: Config,
                     marks: int = 4) -> list[dict]:
    """The Reptile example's figure as rows: one test task's true curve ("true"), its
    support points ("support") and the predictions on the grid ("pred") after 0,
    eval_steps / marks, ..., eval_steps inner steps of the evaluation protocol."""
    loss, opt = task_loss(model, cfg), inner_optimizer(cfg)
    state = inner_state if cfg.inner_state == "carry" else opt.init(params)
    ep = sampler.sample(1, cfg.shots, cfg.eval_queries, cfg.eval_steps, cfg.eval_batch).task(0)
    xs, ys = ep.inner_data()
    at = {round(i * cfg.eval_steps / marks) for i in range(marks + 1)}
    grid = ep.query_x
    rows = [{"kind": "true", "steps": "", "x": float(x), "y": float(y)} for x, y in zip(grid[:, 0], ep.query_y[:, 0])]
    rows += [{"kind": "support", "steps": "", "x": float(x), "y": float(y)}
             for x, y in zip(ep.support_x[:, 0], ep.support_y[:, 0])]
    p = dict(params)
    with torch.no_grad():
        for s in range(cfg.eval_steps + 1):
            if s in at:
                pred = forward(model, p, grid, cfg)[:, 0]
                rows += [{"kind": "pred", "steps": s, "x": float(x), "y": float(y)} for x, y in zip(grid[:, 0], pred)]
            if s < cfg.eval_steps:
                grads = torch.func.grad(loss)(p, xs[s], ys[s])
                p, state = opt.step(p, grads, state)
    return rows
