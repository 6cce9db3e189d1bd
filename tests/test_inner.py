"""The functional inner loop and Reptile's update, against hand computations."""

import pytest
import torch

from algorithms import InnerOptimizer, adapt, adapt_tasks, inner, reptile
from bench.config import load_config
from bench.episodes import Episode
from conftest import BEFORE_NORM, BEFORE_NORM_STATE

pytestmark = pytest.mark.usefixtures("float64")


def linear_loss(params, x, y):
    return ((x @ params["w"] + params["b"] - y) ** 2).mean()


def linear_grad(params, x, y):
    """The gradient of linear_loss, derived by hand: d/dw = 2/n X^T r, d/db = 2/n sum r."""
    r = x @ params["w"] + params["b"] - y
    return {"w": 2 * x.T @ r / len(y), "b": 2 * r.mean()}


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(3, generator=g), "b": torch.randn((), generator=g)}
    xs = torch.randn(4, 2, 5, 3, generator=g)  # tasks, steps, batch, features
    ys = torch.randn(4, 2, 5, generator=g)
    return params, xs, ys


def test_sgd_adaptation_matches_hand_unroll(problem):
    params, xs, ys = problem
    lr = 0.1
    w, _, losses = adapt(linear_loss, InnerOptimizer("sgd", lr), params, {}, xs[0], ys[0])
    expected = dict(params)
    for s in range(2):
        g = linear_grad(expected, xs[0, s], ys[0, s])
        expected = {k: expected[k] - lr * g[k] for k in expected}
    for k in params:
        torch.testing.assert_close(w[k], expected[k])
    torch.testing.assert_close(losses[0], linear_loss(params, xs[0, 0], ys[0, 0]))


def test_adam_matches_torch_optim(problem):
    params, xs, ys = problem
    opt = InnerOptimizer("adam", 0.01, beta1=0.0, beta2=0.999, eps=1e-8)
    steps_x = xs.reshape(-1, 5, 3)
    steps_y = ys.reshape(-1, 5)
    w, state, _ = adapt(linear_loss, opt, params, opt.init(params), steps_x, steps_y)

    ref = {k: v.clone().requires_grad_() for k, v in params.items()}
    torch_opt = torch.optim.Adam(ref.values(), lr=0.01, betas=(0.0, 0.999), eps=1e-8)
    for x, y in zip(steps_x, steps_y):
        torch_opt.zero_grad()
        linear_loss(ref, x, y).backward()
        torch_opt.step()
    for k in params:
        torch.testing.assert_close(w[k], ref[k].detach())
    assert float(state["t"]) == len(steps_x)


def episode_from(xs, ys):
    """An Episode whose inner plan walks the support set in order (tasks, steps, batch)."""
    t, s, b = ys.shape
    plan = torch.arange(s * b).view(1, s, b).expand(t, -1, -1)
    return Episode(xs.reshape(t, s * b, -1), ys.reshape(t, s * b), xs[:, 0], ys[:, 0], plan)


def test_reptile_sgd_update_is_lr_times_sum_of_inner_gradients(problem):
    params, xs, ys = problem
    cfg = load_config("sine").replace(inner_lr=0.1, inner_optimizer="sgd", batched=False)
    step = reptile(linear_loss, params, {}, episode_from(xs, ys), cfg)
    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    for t in range(4):
        w = dict(params)
        for s in range(2):
            g = linear_grad(w, xs[t, s], ys[t, s])
            for k in w:
                expected[k] += 0.1 * g[k] / 4  # mean over tasks of lr * (g_1 + g_2)
            w = {k: w[k] - 0.1 * g[k] for k in w}
    for k in params:
        torch.testing.assert_close(step.grad[k], expected[k])


def test_reptile_with_one_sgd_step_is_joint_training(problem):
    params, xs, ys = problem
    cfg = load_config("sine").replace(inner_lr=0.1, inner_optimizer="sgd")
    one = episode_from(xs[:, :1], ys[:, :1])
    step = reptile(linear_loss, params, {}, one, cfg)
    joint = torch.func.grad(lambda p: torch.stack(
        [linear_loss(p, xs[t, 0], ys[t, 0]) for t in range(4)]).mean())(params)
    for k in params:
        torch.testing.assert_close(step.grad[k], 0.1 * joint[k])


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_batched_equals_serial_without_chained_state(problem, kind):
    params, xs, ys = problem
    opt = InnerOptimizer(kind, 0.05)
    state = opt.init(params)
    a = adapt_tasks(linear_loss, opt, params, state, xs, ys, batched=True, chain_state=False)
    b = adapt_tasks(linear_loss, opt, params, state, xs, ys, batched=False, chain_state=False)
    for k in params:
        torch.testing.assert_close(a[0][k], b[0][k])
    torch.testing.assert_close(a[2], b[2])


def test_serial_path_chains_adam_state_from_task_to_task(problem):
    params, xs, ys = problem
    opt = InnerOptimizer("adam", 0.05)
    adapted, carried, _ = adapt_tasks(linear_loss, opt, params, opt.init(params), xs, ys,
                                      batched=False, chain_state=True)
    state = opt.init(params)
    for t in range(4):
        w, state, _ = adapt(linear_loss, opt, params, state, xs[t], ys[t])
        for k in params:
            torch.testing.assert_close(adapted[k][t], w[k])
    assert float(carried["t"]) == 8
    torch.testing.assert_close(carried["v.w"], state["v.w"])


def test_batched_path_carries_the_mean_state(problem):
    params, xs, ys = problem
    opt = InnerOptimizer("adam", 0.05)
    _, carried, _ = adapt_tasks(linear_loss, opt, params, opt.init(params), xs, ys,
                                batched=True, chain_state=True)
    finals = [adapt(linear_loss, opt, params, opt.init(params), xs[t], ys[t])[1] for t in range(4)]
    torch.testing.assert_close(carried["v.w"], torch.stack([f["v.w"] for f in finals]).mean(0))
    assert float(carried["t"]) == 2


def test_reptile_batched_equals_serial_on_the_omniglot_cnn():
    from bench.models import OmniglotCNN, task_loss

    torch.manual_seed(0)
    cfg = load_config("omniglot-5w1s").replace(inner_state="reset")
    model = OmniglotCNN(5)
    params = {k: v.detach() for k, v in model.named_parameters()}
    loss = task_loss(model, cfg)
    xs, ys = torch.rand(3, 50, 1, 28, 28), torch.randint(0, 5, (3, 50))
    plan = torch.stack([torch.randperm(50).view(5, 10) for _ in range(3)])
    ep = Episode(xs, ys, xs[:, :5], ys[:, :5], plan)
    state = InnerOptimizer("adam", cfg.inner_lr).init(params)
    batched = reptile(loss, params, state, ep, cfg.replace(batched=True))
    serial = reptile(loss, params, state, ep, cfg.replace(batched=False))
    for k in params:
        torch.testing.assert_close(batched.grad[k], serial.grad[k])


@pytest.mark.parametrize("batched", [False, True])
def test_reptile_in_channels_last_order_equals_the_default_order(batched):
    from bench.models import build_model, task_loss

    cfg = load_config("omniglot-5w1s").replace(batched=batched)
    nhwc = cfg.replace(channels_last=True)
    torch.manual_seed(0)
    model = build_model(nhwc)
    params = {k: v.detach() for k, v in model.named_parameters()}
    assert params["3.weight"].is_contiguous(memory_format=torch.channels_last) and not params["3.weight"].is_contiguous()
    plain_params = {k: v.contiguous() for k, v in params.items()}
    xs, ys = torch.rand(3, 50, 1, 28, 28), torch.randint(0, 5, (3, 50))
    plan = torch.stack([torch.randperm(50).view(5, 10) for _ in range(3)])
    ep = Episode(xs, ys, xs[:, :5], ys[:, :5], plan)
    opt = InnerOptimizer("adam", cfg.inner_lr)
    a = reptile(task_loss(model, nhwc), params, opt.init(params), ep, nhwc)
    b = reptile(task_loss(model, cfg), plain_params, opt.init(plain_params), ep, cfg)
    # the conv biases before batch norm aside (conftest.BEFORE_NORM)
    for k in params.keys() - BEFORE_NORM:
        torch.testing.assert_close(a.grad[k], b.grad[k], rtol=1e-9, atol=1e-12, msg=k)
    for k in a.inner_state.keys() - BEFORE_NORM_STATE:
        torch.testing.assert_close(a.inner_state[k], b.inner_state[k], rtol=1e-9, atol=1e-12, msg=k)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_plain_inner_loop_equals_the_transformed_one_and_keeps_layouts(kind, channels_last):
    """Outside every transform the inner loop runs on plain autograd with multi-tensor
    updates; under a transform, on torch.func. Same numbers, same layouts (channels-last
    weights come back channels-last), state keys in `step`'s order."""
    from algorithms.inner import adapt_with_grads
    from bench.models import OmniglotCNN, task_loss

    torch.manual_seed(0)
    cfg = load_config("omniglot-5w1s").replace(channels_last=channels_last)
    model = OmniglotCNN(5).to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = task_loss(model, cfg)
    opt = InnerOptimizer(kind, 0.01 if kind == "adam" else 0.1)
    state = opt.init(params)
    if state:  # a carried state, not zeros
        state = {k: v + 0.01 * torch.rand_like(v) for k, v in state.items()}
    xs, ys = torch.rand(3, 10, 1, 28, 28), torch.randint(0, 5, (3, 10))
    plain = adapt_with_grads(loss, opt, params, state, xs, ys)
    one = lambda p, s, x, y: adapt_with_grads(loss, opt, p, s, x, y)  # noqa: E731
    transformed = torch.func.vmap(one, in_dims=(None, None, 0, 0))(params, state, xs[None], ys[None])
    transformed = [{k: v[0] for k, v in out.items()} if isinstance(out, dict) else out[0] for out in transformed]
    for got, want in zip(plain, transformed):
        if isinstance(got, dict):
            assert list(got) == list(want)
            for k in got:
                torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12, msg=k)
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    adapted, final = plain[0], plain[1]
    assert list(final) == list(opt.init(params))
    layout = lambda t: [s for s, n in zip(t.stride(), t.shape) if n > 1]  # noqa: E731 (size-1 dims: any stride)
    for k, p in params.items():
        assert layout(adapted[k]) == layout(p), k
        if kind == "adam":
            assert layout(final[f"m.{k}"]) == layout(p) and layout(final[f"v.{k}"]) == layout(p), k
    for k, v in state.items():  # the inputs are left as they were
        assert v.data_ptr() != final[k].data_ptr()


@pytest.mark.parametrize("way", ["precompiled", "isolated", "shared"])
def test_each_compiled_function_keeps_its_own_compiled_code(monkeypatch, way):
    """Two networks with the same parameters that differ only in a module (tanh against
    ReLU), run through one function body: each compiled call must compute its own
    network, although the compiled code is not guarded on the modules (or, with a torch
    that cannot keep compiled code apart, is); and a call with other shapes must still
    compile anew. Compiled ahead of the calls (`Precompiled`), by Dynamo with each
    function's code apart, or (an older torch) with one cache for all."""
    from algorithms.inner import compile_fn
    from bench.models import SineMLP

    monkeypatch.setattr(inner, "_PRECOMPILES", way == "precompiled" and inner._PRECOMPILES)
    monkeypatch.setattr(inner, "_ISOLATES", way != "shared" and inner._ISOLATES)

    torch.manual_seed(0)
    nets = [SineMLP("tanh"), SineMLP("relu")]
    nets[1].load_state_dict(nets[0].state_dict())
    params = {k: v.detach() for k, v in nets[0].named_parameters()}
    x = torch.linspace(-2, 2, 7).unsqueeze(1)

    def outputs(net):
        def out(params, x):
            return torch.func.functional_call(net, params, (x,))
        return compile_fn(out)
    compiled = [outputs(net) for net in nets]
    results = [f(params, x) for f in compiled]
    assert not torch.allclose(results[0], results[1])
    for net, result in zip(nets, results):
        torch.testing.assert_close(result, net(x), rtol=1e-6, atol=1e-6)
    longer = torch.linspace(-2, 2, 9).unsqueeze(1)  # the guards on the arguments' shapes stay
    torch.testing.assert_close(compiled[1](params, longer), nets[1](longer), rtol=1e-6, atol=1e-6)


def _precompiled(compiled):
    """What a `compile_fn` function calls once called (a `Precompiled` on the CPU)."""
    from algorithms.inner import Precompiled

    return next(c.cell_contents for c in compiled.__closure__ if isinstance(c.cell_contents, Precompiled))


def _versions(compiled) -> list:
    return _precompiled(compiled).versions


@pytest.mark.skipif(not inner._PRECOMPILES, reason="this torch cannot compile ahead of the calls")
def test_precompiled_code_serves_only_the_calls_it_was_compiled_for():
    """A call like the first one reuses its compiled version; one whose tensors differ in
    shape, strides, dtype or requires_grad, whose dict has other keys, that passes one
    tensor twice, or made in another grad mode compiles a new one; every result equals the uncompiled function's. A call
    past the limit of versions or under vmap goes to Dynamo, and so does a function with a
    graph break."""
    from algorithms.inner import compile_fn

    def fn(params, x):
        return (torch.tanh(x @ params["w"]) * params["b"]).sum(-1, keepdim=True), x.mean()

    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}
    x = torch.randn(5, 4, generator=g)
    compiled = compile_fn(fn)

    def check(params, x, versions):
        for got, want in zip(compiled(params, x), fn(params, x)):
            tight = {"rtol": 1e-12, "atol": 1e-12} if got.dtype == torch.float64 else {}  # float32: its rounding
            torch.testing.assert_close(got, want, **tight)
        assert len(_versions(compiled)) == versions

    check(params, x, 1)
    check(params, torch.randn(5, 4, generator=g), 1)  # other values, the same kind of call
    check(params, torch.randn(7, 4, generator=g), 2)  # a shape
    check(params, torch.randn(4, 5, generator=g).t(), 3)  # strides
    check({k: v.float() for k, v in params.items()}, x.float(), 4)  # a dtype
    check({**params, "w": params["w"].clone().requires_grad_()}, x, 5)  # requires_grad
    check({"b": params["b"], "w": params["w"]}, x, 6)  # the keys' order
    with torch.no_grad():
        check(params, x, 7)  # grad mode
    check(params, x, 7)
    assert all(isinstance(v[-1], torch._dynamo.aot_compile.AOTCompiledFunction) for v in _versions(compiled))

    def twice(a, b):
        return a * 2 + b
    made = compile_fn(twice)
    u, v = torch.randn(3, generator=g), torch.randn(3, generator=g)
    for args, versions in [((u, u), 1), ((u, v), 2), ((v, u), 2), ((v, v), 3)]:  # TensorGuards refuse repeats
        torch.testing.assert_close(made(*args), twice(*args), rtol=1e-12, atol=1e-12)
        assert len(_versions(made)) == versions

    out = torch.func.vmap(lambda xi: compiled(params, xi)[0])(x[:, None])  # inside a transform: Dynamo's way
    torch.testing.assert_close(out, fn(params, x)[0][:, None], rtol=1e-12, atol=1e-12)
    assert len(_versions(compiled)) == 7 and _precompiled(compiled)._fallback is not None

    _precompiled(compiled)._fallback = None
    _precompiled(compiled).LIMIT = 7  # past the limit of versions: Dynamo's way
    check(params, torch.randn(9, 4, generator=g), 7)
    assert _precompiled(compiled)._fallback is not None

    def breaks(params, x):
        y = x @ params["w"]
        print(end="")  # a graph break
        return y.exp()
    made = compile_fn(breaks)
    torch.testing.assert_close(made(params, x), breaks(params, x), rtol=1e-12, atol=1e-12)
    pre = _precompiled(made)
    assert not pre.whole and pre.versions == [] and pre._fallback is not None


@pytest.mark.skipif(not inner._PRECOMPILES, reason="this torch cannot compile ahead of the calls")
def test_precompiled_code_comes_from_torch_s_compile_caches():
    """The second compilation of a function (another run's, in this process or a later
    one) reads the code the first one left in torch's compile caches, as Dynamo's does,
    and computes the same."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import fresh_cache

    from algorithms.inner import compile_fn

    def fn(params, x):
        return torch.relu(x @ params["w"] + params["b"]).square().mean()

    g = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(6, 2, generator=g), "b": torch.randn(2, generator=g)}
    x = torch.randn(3, 6, generator=g)
    with fresh_cache():  # an empty cache of this test's own
        counters.clear()
        first = compile_fn(fn)(params, x)
        assert counters["aot_autograd"]["autograd_cache_miss"] == 1
        assert counters["aot_autograd"]["autograd_cache_hit"] == 0
        torch._dynamo.reset()  # nothing of the first compilation left in memory but the caches
        second = compile_fn(fn)(params, x)
        assert counters["aot_autograd"]["autograd_cache_hit"] == 1
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    torch.testing.assert_close(first, fn(params, x))
