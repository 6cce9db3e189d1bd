"""The samplers: ways and shots respected, disjoint support and query, labels, seeds."""

import numpy as np
import pytest
import torch

from bench.episodes import ClassSampler, Episode, SineSampler, minibatch_plan
from bench.errors import ConfigError

CLASSES, DRAWINGS = 30, 20


def pool():
    # Every image is filled with its own id (class * DRAWINGS + drawing), so the ids of
    # the sampled examples can be read back from the data.
    ids = torch.arange(CLASSES * DRAWINGS, dtype=torch.float32).view(CLASSES, DRAWINGS, 1, 1)
    return ids.expand(-1, -1, 4, 4).contiguous()


def ids(x):
    return x[..., 0, 0, 0].long()


@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 1), (5, 5, 1), (20, 1, 3), (3, 10, 5)])
def test_ways_shots_labels_and_disjoint_sets(ways, shots, queries):
    ep = ClassSampler(pool(), ways, np.random.default_rng(0)).sample(7, shots, queries, 4, 3)
    assert ep.support_x.shape == (7, ways * shots, 1, 4, 4)
    assert ep.query_x.shape == (7, ways * queries, 1, 4, 4)
    assert ep.inner_batches.shape == (7, 4, 3)
    for t in range(7):
        s_ids, q_ids = ids(ep.support_x[t]), ids(ep.query_x[t])
        assert not set(s_ids.tolist()) & set(q_ids.tolist())
        assert len(set(s_ids.tolist())) == ways * shots  # drawings without replacement
        # Labels 0..N-1, each `shots` times; one class per label, shared by support and query.
        assert sorted(ep.support_y[t].tolist()) == sorted(list(range(ways)) * shots)
        assert sorted(ep.query_y[t].tolist()) == sorted(list(range(ways)) * queries)
        label_class = {}
        for i, y in zip((s_ids // DRAWINGS).tolist() + (q_ids // DRAWINGS).tolist(),
                        ep.support_y[t].tolist() + ep.query_y[t].tolist()):
            assert label_class.setdefault(y, i) == i
        assert len(set(label_class.values())) == ways  # classes without replacement


def test_labels_are_assigned_at_random():
    ep = ClassSampler(pool(), 5, np.random.default_rng(0)).sample(200, 1, 0, 1, 1)
    cls = ids(ep.support_x) // DRAWINGS  # (tasks, 5): class of label 0..4
    assert not torch.all(cls[:, :-1] < cls[:, 1:])  # not sorted by class id
    assert len(set(cls[:, 0].tolist())) > 20  # label 0 is many classes


def test_drawing_in_chunks_gives_the_same_tasks():
    a = ClassSampler(pool(), 5, np.random.default_rng(1)).sample(5, 2, 1, 4, 5)
    s = ClassSampler(pool(), 5, np.random.default_rng(1))
    b, c = s.sample(3, 2, 1, 4, 5), s.sample(2, 2, 1, 4, 5)
    for x, y, z in zip(a._tensors(), b._tensors(), c._tensors()):
        assert torch.equal(x, torch.cat([y, z]))
    assert all(torch.equal(x, y) for x, y in zip(a._tensors(), Episode.concatenated([b, c])._tensors()))


def test_same_seed_same_episodes_other_seed_other_episodes():
    a = ClassSampler(pool(), 5, np.random.default_rng(1)).sample(3, 2, 1, 4, 5)
    b = ClassSampler(pool(), 5, np.random.default_rng(1)).sample(3, 2, 1, 4, 5)
    c = ClassSampler(pool(), 5, np.random.default_rng(2)).sample(3, 2, 1, 4, 5)
    for x, y in zip(a._tensors(), b._tensors()):
        assert torch.equal(x, y)
    assert not torch.equal(a.support_x, c.support_x)


def test_minibatch_plan_is_without_replacement_within_each_pass():
    plan = minibatch_plan(np.random.default_rng(0), 10, 7, 5)  # 35 draws over 10 examples
    assert plan.shape == (7, 5)
    flat = plan.reshape(-1)
    for start in (0, 10, 20):
        assert sorted(flat[start:start + 10]) == list(range(10))
    assert len(set(flat[30:35])) == 5


def test_inner_data_gathers_the_planned_minibatches():
    ep = ClassSampler(pool(), 5, np.random.default_rng(0)).sample(2, 10, 0, 5, 10)
    xs, ys = ep.inner_data()
    assert xs.shape == (2, 5, 10, 1, 4, 4)
    for t in range(2):
        assert torch.equal(xs[t, 3], ep.support_x[t, ep.inner_batches[t, 3]])
        assert torch.equal(ys[t, 3], ep.support_y[t, ep.inner_batches[t, 3]])
        # 5 batches of 10 over 50 examples: one full pass
        assert sorted(ep.inner_batches[t].flatten().tolist()) == list(range(50))
    one = ep.task(1)
    assert torch.equal(one.inner_data()[0], xs[1])


def test_padded_repeats_the_last_task():
    ep = ClassSampler(pool(), 5, np.random.default_rng(0)).sample(2, 1, 1, 3, 5)
    full = ep.padded(5)
    assert full.num_tasks == 5
    for x, y in zip(full._tensors(), ep._tensors()):
        assert torch.equal(x[:2], y)
        assert all(torch.equal(x[i], y[1]) for i in range(2, 5))


def test_too_many_ways_or_shots_is_a_clear_error():
    with pytest.raises(ConfigError, match="ways=31"):
        ClassSampler(pool(), 31, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="shots=20"):
        ClassSampler(pool(), 5, np.random.default_rng(0)).sample(1, 20, 1, 1, 1)


def test_sine_tasks():
    ep = SineSampler("cpu", np.random.default_rng(0)).sample(100, 10, 50, 32, 10)
    assert ep.support_x.shape == (100, 10, 1) and ep.query_x.shape == (100, 50, 1)
    grid = torch.linspace(-5, 5, 50)
    assert torch.allclose(ep.query_x[0, :, 0], grid)
    amplitude = ep.query_y.abs().amax(1)
    assert amplitude.max() <= 5 and amplitude.min() >= 0.05
    for t in range(3):  # support points are distinct grid points of the same curve
        xs = ep.support_x[t, :, 0]
        assert len(set(xs.tolist())) == 10
        idx = [int(torch.argmin((grid - x).abs())) for x in xs]
        assert torch.allclose(ep.support_y[t, :, 0], ep.query_y[t, idx, 0])
