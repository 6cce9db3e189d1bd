import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BEFORE_NORM = {f"{i}.bias" for i in (0, 3, 6, 9)}
"""The Omniglot CNN's conv biases before batch norm: their gradient is exactly 0 in exact
arithmetic, and Adam turns its float rounding noise (different for any two
implementations) into steps of inner_lr; batch norm subtracts them again, so they never
change what the network computes."""
BEFORE_NORM_STATE = {f"{m}.{k}" for m in "mv" for k in BEFORE_NORM}
"""Their Adam moments, as keys of an inner optimizer state."""


def omniglot_root() -> Path:
    """The data root holding omniglot/: $BENCH_DATA, else the shared data beside the checkout."""
    return Path(os.environ.get("BENCH_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def omniglot_data() -> Path:
    root = omniglot_root()
    if not any((root / "omniglot" / f).exists() for f in ("images_background.zip", "images_background")):
        pytest.skip(f"Omniglot not found under {root}/omniglot (set BENCH_DATA to a folder holding omniglot/)")
    return root


@pytest.fixture
def float64():
    """float64 as the default dtype for one test: exact comparisons, and rounding noise far
    below Adam's epsilon (in float32 the analytically-zero gradient of a conv bias before
    batch norm is ~1e-9 noise, which Adam's normalisation turns into visible steps)."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="module")
def user_cache(tmp_path_factory):
    """BENCH_CACHE for one test module (the data loaders' caches stay out of the real one);
    a test may point it elsewhere with monkeypatch."""
    path = tmp_path_factory.mktemp("user_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_CACHE", str(path))
        yield path


class InDefaultDtype:
    """A sampler whose episodes are in the default dtype (float64 under the `float64` fixture)."""

    def __init__(self, sampler):
        self.sampler = sampler

    def sample(self, *args):
        from bench.episodes import Episode

        dtype = torch.get_default_dtype()
        return Episode(*(t.to(dtype) if t.is_floating_point() else t for t in self.sampler.sample(*args)._tensors()))


def train(algo: str, preset: str, iters: int, device: str = "cpu", **changes):
    """`iters` meta-iterations of the suite's path (`bench.runner.meta_iteration`) with the
    preset's settings and `changes`, on random data (bench.speed's sampler, seed 0), in
    the default dtype; returns the parameters, the carried inner state and the last logs."""
    from algorithms import ALGORITHMS, inner_optimizer
    from bench.models import build_model, task_loss
    from bench.runner import meta_iteration, meta_step_fn
    from bench.speed import _config, _outer_optimizer, _sampler

    cfg = _config(algo, preset).replace(**changes)
    dev = torch.device(device)
    sampler = InDefaultDtype(_sampler(cfg, dev))
    torch.manual_seed(0)
    model = build_model(cfg).to(dev)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    compute = meta_step_fn(ALGORITHMS[algo], task_loss(model, cfg), cfg)
    opt = _outer_optimizer(cfg, list(params.values()))
    state = inner_optimizer(cfg).init(params)
    for _ in range(iters):
        step = meta_iteration(compute, algo, params, state, sampler, opt, cfg)
        state = step.inner_state
    return params, {k: v.clone() for k, v in state.items()}, {k: v.clone() for k, v in step.logs.items()}
