"""The networks of PAPERS.md section 4."""

import pytest
import torch

from algorithms import onednn
from bench.models import MiniImageNetCNN, OmniglotCNN, SineMLP


@pytest.mark.parametrize("model,x,out", [
    (OmniglotCNN(5), torch.rand(7, 1, 28, 28), (7, 5)),
    (OmniglotCNN(20), torch.rand(3, 1, 28, 28), (3, 20)),
    (MiniImageNetCNN(5), torch.rand(4, 3, 84, 84), (4, 5)),
    (SineMLP("tanh"), torch.rand(10, 1), (10, 1)),
    (SineMLP("relu"), torch.rand(10, 1), (10, 1)),
])
def test_output_shapes(model, x, out):
    assert model(x).shape == out


def test_omniglot_cnn_is_the_papers_network():
    m = OmniglotCNN(5)
    convs = [l for l in m if isinstance(l, torch.nn.Conv2d)]
    assert [(c.out_channels, c.stride) for c in convs] == [(64, (2, 2))] * 4
    assert m[-1].in_features == 256  # 64 x 2 x 2 after four stride-2 convs on 28x28
    assert MiniImageNetCNN(5)[-1].in_features == 32 * 6 * 6


def test_batch_norm_always_uses_the_batch_statistics():
    torch.manual_seed(0)
    m = OmniglotCNN(5)
    assert not any(b.track_running_stats for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))
    x = torch.rand(6, 1, 28, 28)
    m.eval()  # even in eval mode: no running statistics exist
    alone = m(x[:3])
    together = m(x)[:3]
    assert not torch.allclose(alone, together)  # the other examples of the batch matter
    assert list(m.buffers()) == []


def test_cnn_init_is_glorot_uniform_with_zero_bias():
    m = OmniglotCNN(5)
    conv = m[0]
    bound = (6 / (1 * 9 + 64 * 9)) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize("default_order", [False, True])
@pytest.mark.parametrize("hw,stride,padding,channels_last,bias", [
    (7, 2, 1, True, True),    # the Omniglot CNN's third convolution
    (4, 2, 1, False, True),   # its fourth
    (5, 1, 1, True, False),
    (6, 2, 0, False, True),
])
def test_convolution_as_a_matrix_product_equals_conv2d(hw, stride, padding, channels_last, bias, default_order):
    from bench.models import conv_as_matmul

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 4, hw, hw, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    b = torch.randn(6, dtype=torch.float64).requires_grad_() if bias else None
    leaves = [x, w] + ([b] if bias else [])
    ours = conv_as_matmul(x, w, b, (stride, stride), (padding, padding), default_order)
    theirs = torch.nn.functional.conv2d(x, w, b, stride, padding)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    # the form CUDA takes gives the default order (batch norm under vmap there needs it)
    assert ours.is_contiguous() == default_order
    g = torch.randn_like(theirs)
    for a, e in zip(torch.autograd.grad(ours, leaves, g), torch.autograd.grad(theirs, leaves, g)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.fixture
def matmul_calls(monkeypatch) -> list:
    """The input sizes (H, W) of every conv_as_matmul call, in order."""
    from bench import models

    calls, real = [], models.conv_as_matmul

    def counted(x, *args):
        calls.append(tuple(x.shape[2:]))
        return real(x, *args)
    monkeypatch.setattr(models, "conv_as_matmul", counted)
    return calls


def test_small_convolutions_run_as_matrix_products_only_when_compiled_for_the_cpu(matmul_calls):
    calls = matmul_calls
    torch.manual_seed(0)
    model = OmniglotCNN(5).double()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    eager = model(x)
    assert calls == []
    compiled = torch.compile(model, backend="eager", dynamic=False)(x)  # only the tracing decides
    assert calls == [(7, 7), (4, 4)]  # the inputs of the two convolutions with at most 16 output positions
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not onednn.AVAILABLE, reason="this torch has no oneDNN")
def test_every_omniglot_convolution_runs_as_a_matrix_product_in_one_task_s_float32_code(matmul_calls):
    calls = matmul_calls
    torch.manual_seed(0)
    model = OmniglotCNN(5)
    x = torch.rand(4, 1, 28, 28)
    torch.compile(model, backend="eager", dynamic=False)(x)
    assert calls == [(7, 7), (4, 4)]  # not marked as one task's: as in float64
    calls.clear()
    torch._dynamo.reset()
    onednn.one_task(torch.compile(model, backend="eager", dynamic=False))(x)
    assert calls == [(28, 28), (14, 14), (7, 7), (4, 4)]  # at most 196 outputs: all four
    calls.clear()
    torch._dynamo.reset()
    onednn.one_task(torch.compile(MiniImageNetCNN(5), backend="eager", dynamic=False))(torch.rand(2, 3, 84, 84))
    assert calls == []  # stride 1 (the fourth has 10 x 10 outputs): the library's convolutions


def test_conv_matmul_computes_every_convolution_as_a_matrix_product(matmul_calls):
    """conv_matmul = true: every convolution through conv_as_matmul, eager too, with the
    same outputs and, under vmap over per-task weights (evaluation's case), the same
    gradients as the library's (grouped) convolutions."""
    from torch.func import grad, vmap

    from bench import models
    from bench.config import load_config

    calls = matmul_calls
    for preset, image in (("omniglot-5w1s", (1, 28, 28)), ("miniimagenet-5w1s", (3, 84, 84))):
        cfg = load_config(preset).replace(conv_matmul=True)
        torch.manual_seed(0)
        plain = models.build_model(cfg.replace(conv_matmul=False)).double()
        torch.manual_seed(0)
        fast = models.build_model(cfg).double()
        calls.clear()
        x = torch.rand(4, *image, dtype=torch.float64)
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-12, atol=1e-12)
        assert len(calls) == 4 and calls[0] == image[1:]
        params = {k: v.detach().expand(3, *v.shape) + 0.01 * torch.randn(3, *v.shape, dtype=torch.float64)
                  for k, v in plain.named_parameters()}
        xs, ys = torch.rand(3, 5, *image, dtype=torch.float64), torch.randint(0, 5, (3, 5))
        grads = [vmap(grad(models.task_loss(m, c)))(params, xs, ys)
                 for m, c in ((plain, cfg.replace(conv_matmul=False)), (fast, cfg))]
        for k in grads[0]:
            torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-9, atol=1e-12)
