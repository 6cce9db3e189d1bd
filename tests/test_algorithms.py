"""FOMAML, MAML, joint training and the gradient-sum family against hand computations."""

from functools import partial

import pytest
import torch

from algorithms import ALGORITHMS, fomaml, gradsum, joint, maml, reptile
from bench.config import load_config
from bench.episodes import Episode


pytestmark = pytest.mark.usefixtures("float64")


def mlp_loss(params, x, y):
    """A tiny tanh network: nonlinear, so second-order terms are not zero."""
    h = torch.tanh(x @ params["w1"] + params["b1"])
    return ((h @ params["w2"] + params["b2"] - y) ** 2).mean()


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    params = {"w1": torch.randn(3, 4, generator=g), "b1": torch.randn(4, generator=g),
              "w2": torch.randn(4, generator=g), "b2": torch.randn((), generator=g)}
    tasks, steps, batch = 3, 3, 4
    support_x = torch.randn(tasks, steps * batch, 3, generator=g)
    support_y = torch.randn(tasks, steps * batch, generator=g)
    plan = torch.arange(steps * batch).view(1, steps, batch).expand(tasks, -1, -1)
    ep = Episode(support_x, support_y, torch.randn(tasks, 5, 3, generator=g),
                 torch.randn(tasks, 5, generator=g), plan)
    return params, ep


def settings(**changes):
    base = dict(inner_optimizer="sgd", inner_lr=0.1, inner_state="reset", batched=True,
                inner_steps=3, meta_grads="1+2+3", meta_grads_mean=False)
    base.update(changes)
    return load_config("sine").replace(**base)


def unrolled_meta_loss(params, ep, t, lr):
    """Hand-unrolled MAML meta-loss of task t with plain autograd (create_graph=True)."""
    w = dict(params)
    for s in range(ep.inner_batches.shape[1]):
        idx = ep.inner_batches[t, s]
        g = torch.autograd.grad(mlp_loss(w, ep.support_x[t, idx], ep.support_y[t, idx]), list(w.values()),
                                create_graph=True)
        w = {k: v - lr * gk for (k, v), gk in zip(w.items(), g)}
    return mlp_loss(w, ep.query_x[t], ep.query_y[t])


def test_maml_equals_hand_unrolled_second_order_gradient(problem):
    params, ep = problem
    step = maml(mlp_loss, params, {}, ep, settings())
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    total = sum(unrolled_meta_loss(leaves, ep, t, 0.1) for t in range(3)) / 3
    expected = dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()))))
    for k in params:  # on the scale of an inner step: inner_lr times the gradient
        torch.testing.assert_close(step.grad[k], 0.1 * expected[k])


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_maml_gradient_matches_finite_differences(problem, inner):
    from algorithms import InnerOptimizer, adapt
    from algorithms.maml import meta_gradient

    params, ep = problem
    opt = InnerOptimizer(inner, 0.05 if inner == "adam" else 0.1)
    xs, ys = ep.task(0).inner_data()
    qx, qy = ep.query_x[0], ep.query_y[0]
    grads, _, _ = meta_gradient(mlp_loss, opt, params, opt.init(params), xs, ys, qx, qy)

    def meta_loss(p):
        w, _, _ = adapt(mlp_loss, opt, p, opt.init(p), xs, ys)
        return mlp_loss(w, qx, qy)

    eps = 1e-6
    for k in params:
        flat = params[k].reshape(-1)
        for i in range(flat.numel()):
            bump = torch.zeros_like(flat)
            bump[i] = eps
            plus = {**params, k: (flat + bump).view_as(params[k])}
            minus = {**params, k: (flat - bump).view_as(params[k])}
            fd = (meta_loss(plus) - meta_loss(minus)) / (2 * eps)
            assert float(grads[k].reshape(-1)[i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_maml_recomputation_equals_differentiating_the_unrolled_loop(problem, inner):
    # The bounded-memory backward (one step recomputed at a time) is the same maths as
    # differentiating the whole unrolled loop, also under vmap over tasks.
    from algorithms import InnerOptimizer
    from algorithms.maml import meta_gradient, meta_gradient_unrolled

    params, ep = problem
    opt = InnerOptimizer(inner, 0.05 if inner == "adam" else 0.1)
    xs, ys = ep.inner_data()
    state = opt.init(params)
    if inner == "adam":  # a carried, non-trivial state
        state = {k: v + 0.01 if k != "t" else v + 3 for k, v in state.items()}
    args = (mlp_loss, opt, params, state)
    one_task = (xs[1], ys[1], ep.query_x[1], ep.query_y[1])
    fast, reached_fast, losses_fast = meta_gradient(*args, *one_task)
    slow, reached_slow, losses_slow = meta_gradient_unrolled(*args, *one_task)
    for k in params:
        torch.testing.assert_close(fast[k], slow[k])
    for k in reached_slow:
        torch.testing.assert_close(reached_fast[k], reached_slow[k])
    torch.testing.assert_close(losses_fast, losses_slow)
    cfg = settings(inner_optimizer=inner, inner_lr=opt.lr)
    via_unroll = maml(mlp_loss, params, state, ep, cfg.replace(maml_memory="unrolled"))
    via_recompute = maml(mlp_loss, params, state, ep, cfg.replace(maml_memory="recompute"))
    for k in params:
        torch.testing.assert_close(via_unroll.grad[k], via_recompute.grad[k])
    batched = torch.func.vmap(lambda *t: meta_gradient(*args, *t)[0])(xs, ys, ep.query_x, ep.query_y)
    for t in range(3):
        one, _, _ = meta_gradient_unrolled(*args, xs[t], ys[t], ep.query_x[t], ep.query_y[t])
        for k in params:
            torch.testing.assert_close(batched[k][t], one[k])


def _adam_state(params):
    from algorithms import InnerOptimizer
    return InnerOptimizer("adam", 0.05).init(params)


def test_fomaml_is_the_query_gradient_at_the_adapted_weights_and_differs_from_maml(problem):
    # With SGD, the inner step on the query gradient g at W is inner_lr * g.
    params, ep = problem
    cfg = settings()
    step = fomaml(mlp_loss, params, {}, ep, cfg)
    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    for t in range(3):
        w = dict(params)
        for s in range(3):
            idx = ep.inner_batches[t, s]
            g = torch.func.grad(mlp_loss)(w, ep.support_x[t, idx], ep.support_y[t, idx])
            w = {k: w[k] - 0.1 * g[k] for k in w}
        q = torch.func.grad(mlp_loss)(w, ep.query_x[t], ep.query_y[t])
        for k in params:
            expected[k] += 0.1 * q[k] / 3
    for k in params:
        torch.testing.assert_close(step.grad[k], expected[k])
    second = maml(mlp_loss, params, {}, ep, cfg)
    assert max(float((second.grad[k] - step.grad[k]).abs().max()) for k in params) > 1e-4


def test_fomaml_with_adam_applies_the_adam_step_of_the_query_gradient(problem):
    from algorithms import InnerOptimizer, adapt

    params, ep = problem
    cfg = settings(inner_optimizer="adam", inner_lr=0.05, inner_state="carry", batched=False)
    opt = InnerOptimizer("adam", 0.05)
    step = fomaml(mlp_loss, params, opt.init(params), ep, cfg)
    state, expected = opt.init(params), {k: torch.zeros_like(v) for k, v in params.items()}
    for t in range(3):  # the reference: the Adam state flows through the tasks, tail step included
        xs, ys = ep.task(t).inner_data()
        w, state, _ = adapt(mlp_loss, opt, params, state, xs, ys)
        g = torch.func.grad(mlp_loss)(w, ep.query_x[t], ep.query_y[t])
        stepped, state = opt.step(w, g, state)
        for k in params:
            expected[k] += (w[k] - stepped[k]) / 3
    for k in params:
        torch.testing.assert_close(step.grad[k], expected[k])
    assert float(step.inner_state["t"]) == 3 * 4


def test_full_gradient_sum_equals_reptile_and_g1_is_joint_training(problem):
    params, ep = problem
    cfg = settings()
    full = gradsum(mlp_loss, params, {}, ep, cfg)
    rep = reptile(mlp_loss, params, {}, ep, cfg)
    for k in params:
        torch.testing.assert_close(full.grad[k], rep.grad[k])

    first = joint(mlp_loss, params, {}, ep, cfg)
    g1 = gradsum(mlp_loss, params, {}, ep, cfg.replace(meta_grads="1"))
    at_phi = {k: torch.zeros_like(v) for k, v in params.items()}
    for t in range(3):
        idx = ep.inner_batches[t, 0]
        g = torch.func.grad(mlp_loss)(params, ep.support_x[t, idx], ep.support_y[t, idx])
        for k in params:
            at_phi[k] += 0.1 * g[k] / 3
    for k in params:
        torch.testing.assert_close(first.grad[k], at_phi[k])
        torch.testing.assert_close(g1.grad[k], at_phi[k])


def test_g2_alone_is_first_order_maml_with_one_step_and_a_shared_tail(problem):
    params, ep = problem
    cfg = settings()
    g2 = gradsum(mlp_loss, params, {}, ep, cfg.replace(meta_grads="2"))
    two_steps = Episode(ep.support_x, ep.support_y, ep.query_x, ep.query_y, ep.inner_batches[:, :2])
    fo = fomaml(mlp_loss, params, {}, two_steps.shared_tail(), cfg)
    half = gradsum(mlp_loss, params, {}, ep, cfg.replace(meta_grads="1+2", meta_grads_mean=True))
    g1 = joint(mlp_loss, params, {}, ep, cfg)
    for k in params:
        torch.testing.assert_close(g2.grad[k], fo.grad[k])
        torch.testing.assert_close(half.grad[k], (g1.grad[k] + g2.grad[k]) / 2)


def test_maml_with_adam_applies_the_adam_step_of_its_gradient(problem):
    from algorithms import InnerOptimizer, adapt

    params, ep = problem
    opt = InnerOptimizer("adam", 0.05)
    cfg = settings(inner_optimizer="adam", inner_lr=0.05, inner_state="carry", batched=False)
    step = maml(mlp_loss, params, opt.init(params), ep, cfg)
    state, expected = opt.init(params), {k: torch.zeros_like(v) for k, v in params.items()}
    for t in range(3):
        xs, ys = ep.task(t).inner_data()

        def meta_loss(p, state=state):
            w, _, _ = adapt(mlp_loss, opt, p, state, xs, ys)
            return mlp_loss(w, ep.query_x[t], ep.query_y[t])

        g = torch.func.grad(meta_loss)(params)
        _, state, _ = adapt(mlp_loss, opt, params, state, xs, ys)
        stepped, state = opt.step(params, g, state)
        for k in params:
            expected[k] += (params[k] - stepped[k]) / 3
    for k in params:
        torch.testing.assert_close(step.grad[k], expected[k])


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_batched_equals_serial_for_every_algorithm(problem, name, inner):
    params, ep = problem
    cfg = settings(inner_optimizer=inner, inner_lr=0.05)
    state = {} if inner == "sgd" else _adam_state(params)
    algo = partial(ALGORITHMS[name], mlp_loss, params, state, ep)
    a, b = algo(cfg.replace(batched=True)), algo(cfg.replace(batched=False))
    for k in params:
        torch.testing.assert_close(a.grad[k], b.grad[k])


def test_shared_tail_takes_the_last_planned_minibatch(problem):
    _, ep = problem
    tailed = ep.shared_tail()
    assert tailed.inner_batches.shape == (3, 2, 4)
    for t in range(3):
        idx = ep.inner_batches[t, -1]
        assert torch.equal(tailed.query_x[t], ep.support_x[t, idx])
        assert torch.equal(tailed.query_y[t], ep.support_y[t, idx])
    one = ep.task(1).shared_tail()
    assert torch.equal(one.query_x, tailed.query_x[1])


def test_maml_through_adam_stays_finite_where_a_gradient_is_exactly_zero(problem):
    from algorithms import InnerOptimizer

    def relu_loss(params, x, y):
        h = torch.relu(x @ params["w1"] + params["b1"])
        return ((h @ params["w2"] + params["b2"] - y) ** 2).mean()

    params, ep = problem
    params = {**params, "b1": params["b1"].clone()}
    params["b1"][0] = -100.0  # a dead unit: its weights' gradients are exactly 0, so Adam's v is 0
    cfg = settings(inner_optimizer="adam", inner_lr=0.05)
    step = maml(relu_loss, params, InnerOptimizer("adam", 0.05).init(params), ep, cfg)
    assert all(torch.isfinite(g).all() for g in step.grad.values())
    assert step.grad["w1"][:, 0].abs().max() == 0
