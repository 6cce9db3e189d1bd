"""The networks of PAPERS.md section 4."""

import pytest
import torch

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
