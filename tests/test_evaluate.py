"""The evaluation protocol on a synthetic pool (no data needed)."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch.func import functional_call

from algorithms import adapt, inner_optimizer
from bench.config import load_config
from bench.episodes import ClassSampler
from bench.evaluate import evaluate, evaluate_splits, mean_ci95
from bench.models import OmniglotCNN, build_model, task_loss


@pytest.fixture
def setup():
    torch.manual_seed(0)
    cfg = load_config("omniglot-5w1s").replace(eval_steps=3, inner_state="reset")
    model = OmniglotCNN(5)
    params = {k: v.detach() for k, v in model.named_parameters()}
    images = (torch.rand(40, 20, 28, 28) > 0.5).to(torch.uint8)
    return cfg, model, params, images


def run_eval(setup, tasks=12, **changes):
    cfg, model, params, images = setup
    cfg = cfg.replace(**changes)
    sampler = ClassSampler(images, cfg.ways, np.random.default_rng(0))
    return evaluate(model, params, inner_optimizer(cfg).init(params), sampler, cfg, tasks)


def test_result_does_not_depend_on_the_chunk_size(setup):
    a = run_eval(setup, eval_chunk=12)
    b = run_eval(setup, eval_chunk=5)
    np.testing.assert_allclose(a.per_task, b.per_task)
    assert a.tasks == 12 and a.metric == "accuracy"


def test_splits_evaluated_together_equal_each_alone(setup):
    """A run's periodic evaluation adapts its splits' tasks in one sequence of chunks (here
    of 3: the second holds two tasks of one split and one of the other); each split's
    tasks and scores are those it has alone."""
    cfg, model, params, images = setup
    cfg = cfg.replace(eval_chunk=3)
    state = inner_optimizer(cfg).init(params)

    def samplers():
        return {split: ClassSampler(images[part], cfg.ways, np.random.default_rng(seed))
                for split, part, seed in (("train", slice(0, 30), 1), ("test", slice(30, 40), 2))}
    together = evaluate_splits(model, params, state, samplers(), cfg, 5)
    assert list(together) == ["train", "test"]
    for split, sampler in samplers().items():
        alone = evaluate(model, params, state, sampler, cfg, 5)
        np.testing.assert_allclose(together[split].per_task, alone.per_task)
        assert (together[split].value, together[split].ci95, together[split].tasks) == pytest.approx(
            (alone.value, alone.ci95, alone.tasks))
    assert not np.array_equal(together["train"].per_task, together["test"].per_task)


def test_non_transductive_classifies_each_query_with_the_support_set(setup):
    cfg, model, params, images = setup
    result = run_eval(setup, tasks=4, eval_chunk=4)
    sampler = ClassSampler(images, cfg.ways, np.random.default_rng(0))
    ep = sampler.sample(4, cfg.shots, cfg.eval_queries, cfg.eval_steps, cfg.eval_batch)
    opt = inner_optimizer(cfg)
    for t in range(4):
        task = ep.task(t)
        xs, ys = task.inner_data()
        w, _, _ = adapt(task_loss(model, cfg), opt, params, opt.init(params), xs, ys)
        correct = 0
        for q, y in zip(task.query_x, task.query_y):
            logits = functional_call(model, w, (torch.cat([task.support_x, q[None]]),))
            correct += int(logits[-1].argmax() == y)
        assert result.per_task[t] == pytest.approx(correct / len(task.query_y))


def test_transductive_scoring_differs(setup):
    a = run_eval(setup, tasks=40, transductive=True)
    b = run_eval(setup, tasks=40, transductive=False)
    assert not np.array_equal(a.per_task, b.per_task)


def test_interval_is_the_student_t_interval_over_tasks():
    values = np.array([0.2, 0.4, 0.4, 1.0, 0.8])
    mean, half = mean_ci95(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean())
    assert half == pytest.approx((hi - lo) / 2)
    assert mean_ci95(np.array([0.5]))[1] is None


@pytest.mark.parametrize("preset, changes", [
    ("sine", {"compile": True}),
    ("omniglot-5w1s", {"compile": True}),        # its step and scoring compiled (small convolutions as matmuls)
    ("omniglot-5w1s", {"compile": True, "channels_last": True}),  # the same, one task at a time
    ("omniglot-5w1s", {"conv_matmul": True}),    # every convolution a matrix product, batched over the tasks
    ("omniglot-5w1s", {"eval_matmul": True}),    # the same for evaluation alone
])
def test_fast_evaluations_equal_the_plain_one(float64, monkeypatch, preset, changes):
    """compile, conv_matmul and eval_matmul change how the tasks are adapted and scored, not the
    numbers (float64: rounding far below what could flip a prediction); the compiled
    functions are made at the first evaluation and reused by the next (a run's periodic
    evaluations compile once), and see one shape only: the last chunk (2 of the 5
    tasks) is filled up to the chunk's 3."""
    from torch.utils._pytree import tree_flatten

    from bench import evaluate as ev
    from bench.speed import _sampler
    from conftest import InDefaultDtype

    made, shapes, real = [], [], ev.compile_fn

    def recording(fn, **how):
        made.append(fn)
        seen, compiled = set(), real(fn, **how)
        shapes.append(seen)

        def call(*args):
            seen.add(tuple(tuple(t.shape) for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)))
            return compiled(*args)
        return call
    monkeypatch.setattr(ev, "compile_fn", recording)
    cfg = load_config(preset).replace(eval_steps=3, eval_chunk=3)
    fast_cfg = cfg.replace(**changes)
    torch.manual_seed(0)
    plain_model, fast_model = build_model(cfg), build_model(fast_cfg)
    fast_model.load_state_dict(plain_model.state_dict())
    params = {k: v.detach() for k, v in plain_model.named_parameters()}
    state = inner_optimizer(cfg).init(params)
    plain = evaluate(plain_model, params, state, InDefaultDtype(_sampler(cfg, "cpu")), cfg, 5)
    sampler = InDefaultDtype(_sampler(cfg, "cpu"))
    fast = evaluate(fast_model, params, state, sampler, fast_cfg, 5)
    if preset == "sine":
        np.testing.assert_allclose(fast.per_task, plain.per_task, rtol=1e-9)
    else:
        np.testing.assert_array_equal(fast.per_task, plain.per_task)
        assert 0 < plain.value < 1
    assert len(made) == (2 if fast_cfg.compile else 0)  # the step and the scoring
    again = evaluate(fast_model, params, state, sampler, fast_cfg, 5)  # the next tasks, the same functions
    assert len(made) == (2 if fast_cfg.compile else 0)
    assert not np.array_equal(again.per_task, fast.per_task)
    assert [len(seen) for seen in shapes] == [1] * len(made)
    if fast_cfg.compile and preset != "sine":  # the step's images: one task's (4-D), or the chunk's (5-D)
        images = [shape for seen in shapes for call in seen for shape in call if len(shape) >= 4 and shape[-1] == 28]
        assert {len(shape) for shape in images[:1]} == {4 if fast_cfg.channels_last else 5}


def test_later_compiled_evaluations_keep_the_first_ones_chunk_size(monkeypatch):
    """With eval_chunk = 0 (by device), a run's first compiled evaluation fixes the chunk
    size of its later ones: a final evaluation of many tasks after periodic ones of a few
    reuses their compiled code (one shape: 4 tasks, the last chunk filled up), with the
    plain evaluation's scores. The compiled functions here run uncompiled, recording the
    tasks each call adapts or scores at once."""
    from torch.utils._pytree import tree_flatten

    from bench import evaluate as ev
    from bench.speed import _sampler

    seen = set()

    def recording(fn, **how):
        def call(*args):
            seen.add(next(t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)).shape[0])
            return fn(*args)
        return call
    monkeypatch.setattr(ev, "compile_fn", recording)
    cfg = load_config("sine").replace(eval_steps=2, eval_chunk=0)
    model = build_model(cfg)
    params = {k: v.detach() for k, v in model.named_parameters()}
    state = inner_optimizer(cfg).init(params)
    plain_sampler, sampler = _sampler(cfg, "cpu"), _sampler(cfg, "cpu")
    for tasks in (4, 10):
        plain = evaluate(model, params, state, plain_sampler, cfg, tasks)
        compiled = evaluate(model, params, state, sampler, cfg.replace(compile=True), tasks)
        np.testing.assert_allclose(compiled.per_task, plain.per_task, rtol=1e-5)
        assert compiled.tasks == tasks
    assert seen == {4}
    fresh = build_model(cfg)  # another network (another run): its own first size, the device's 25 at most
    evaluate(fresh, params, state, _sampler(cfg, "cpu"), cfg.replace(compile=True), 30)
    assert seen == {4, 25}


def test_eval_matmul_makes_only_the_evaluations_convolutions_matrix_products(monkeypatch):
    """eval_matmul = true: the evaluation's convolutions run as matrix products, and the
    network's convolutions are the library's again after it (meta-training's), even when
    the evaluation fails."""
    from bench import models
    from bench.speed import _sampler

    calls, real = [], models.conv_as_matmul
    monkeypatch.setattr(models, "conv_as_matmul", lambda x, *rest: calls.append(x.shape) or real(x, *rest))
    cfg = load_config("omniglot-5w1s").replace(eval_steps=2, eval_chunk=3, eval_matmul=True)
    torch.manual_seed(0)
    model = models.build_model(cfg)
    params = {k: v.detach() for k, v in model.named_parameters()}
    state = inner_optimizer(cfg).init(params)
    result = evaluate(model, params, state, _sampler(cfg, "cpu"), cfg, 4)
    assert 0 <= result.value <= 1 and len(result.per_task) == 4
    assert len(calls) >= 2 * 4  # at least the four convolutions of each of the two adaptation steps
    calls.clear()
    model(torch.rand(2, 1, 28, 28))
    assert calls == []

    def broken(*args):
        raise RuntimeError("sampler failed")
    failing = _sampler(cfg, "cpu")
    monkeypatch.setattr(failing, "sample", broken)
    with pytest.raises(RuntimeError, match="sampler failed"):
        evaluate(model, params, state, failing, cfg, 4)
    model(torch.rand(2, 1, 28, 28))
    assert calls == []
