"""Compiled CPU code's matrix products by oneDNN (`algorithms.onednn`), against the plain step."""

from functools import partial

import pytest
import torch

from algorithms import InnerOptimizer, inner, onednn
from bench.config import load_config
from bench.models import build_model, task_loss
from conftest import BEFORE_NORM

pytestmark = pytest.mark.skipif(not onednn.AVAILABLE, reason="this torch has no oneDNN")


def onednn_calls(fn, *args):
    """fn(*args) and how many oneDNN inner products it called."""
    with torch.profiler.profile() as prof:
        out = fn(*args)
    return out, sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")


@pytest.fixture(scope="module")
def cnn_step():
    """The Omniglot CNN's inner SGD step (loss, optimizer), its parameters and a minibatch,
    in channels-last order, float32."""
    cfg = load_config("omniglot-5w1s").replace(channels_last=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = torch.rand(10, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    return partial(inner._step, task_loss(model, cfg), InnerOptimizer("sgd", 0.1)), params, x, torch.arange(10) % 5


def plain_and_compiled(step, params, x, y, one_task: bool):
    """The plain step's output, the compiled step's (second call) and its oneDNN calls."""
    plain = step(params, {}, x, y)
    compiled = inner.compile_fn(step, one_task=one_task)
    compiled(params, {}, x, y)
    return plain, *onednn_calls(compiled, params, {}, x, y)


@pytest.mark.parametrize("one_task, calls", [
    (True, 4 + 4 + 3),   # every convolution: forward, weight gradient, input gradient (not the image's)
    (False, 2 + 2 + 2),  # the last two (at most 16 outputs), whose products are large enough
])
def test_compiled_float32_steps_give_their_convolutions_products_to_onednn(cnn_step, one_task, calls):
    plain, fast, seen = plain_and_compiled(*cnn_step, one_task=one_task)
    assert seen == calls
    assert fast[2] == pytest.approx(plain[2].item(), rel=1e-6)  # the loss
    for k in plain[0].keys() - BEFORE_NORM:  # the stepped parameters, within float32 rounding
        torch.testing.assert_close(fast[0][k], plain[0][k], rtol=1e-5, atol=1e-6, msg=k)


def test_float64_products_stay_with_torch(cnn_step):
    step, params, x, y = cnn_step
    wide = {k: v.double() for k, v in params.items()}
    plain, fast, seen = plain_and_compiled(step, wide, x.double(), y, one_task=True)
    assert seen == 0  # oneDNN has no float64 product
    for k in plain[0].keys() - BEFORE_NORM:
        torch.testing.assert_close(fast[0][k], plain[0][k], rtol=1e-9, atol=1e-12, msg=k)


def test_onednn_products_are_outside_inductor_s_options_without_onednn(monkeypatch):
    assert "post_grad_custom_post_pass" in inner.cpu_options()
    monkeypatch.setattr(onednn, "AVAILABLE", False)
    assert inner.cpu_options() == {"cpp_wrapper": True}
    assert not onednn.one_task(onednn.unbatched)()
