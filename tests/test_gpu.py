"""CUDA checks (marker `gpu`, skipped by default): run with `python -m pytest -m gpu`."""

import json
import subprocess
import sys

import pytest
import torch

from algorithms import reptile
from bench.config import load_config
from bench.episodes import Episode
from bench.models import OmniglotCNN, task_loss
from conftest import BEFORE_NORM, BEFORE_NORM_STATE, REPO, InDefaultDtype, train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_reptile_on_cuda_matches_the_cpu_and_batched_matches_serial():
    # float64: CUDA convolutions in float32 may use TF32, whose rounding the inner steps amplify.
    torch.set_default_dtype(torch.float64)
    try:
        _compare_cpu_cuda()
    finally:
        torch.set_default_dtype(torch.float32)


def _compare_cpu_cuda():
    torch.manual_seed(0)
    cfg = load_config("omniglot-5w1s").replace(inner_state="reset", inner_optimizer="sgd", inner_lr=0.1)
    model = OmniglotCNN(5)
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs, ys = torch.rand(5, 50, 1, 28, 28), torch.randint(0, 5, (5, 50))
    plan = torch.stack([torch.randperm(50).view(5, 10) for _ in range(5)])
    ep = Episode(xs, ys, xs[:, :5], ys[:, :5], plan)
    cpu = reptile(task_loss(model, cfg), params, {}, ep, cfg.replace(batched=False))

    model.cuda()
    cuda_params = {k: v.cuda() for k, v in params.items()}
    cuda_ep = Episode(*(t.cuda() for t in ep._tensors()))
    for batched in (True, False):
        step = reptile(task_loss(model, cfg), cuda_params, {}, cuda_ep, cfg.replace(batched=batched))
        for k in params:
            torch.testing.assert_close(step.grad[k].cpu(), cpu.grad[k])


def test_cli_run_on_cuda(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--algo", "reptile", "--preset", "sine",
                          "--set", "meta_iters=50", "--set", "eval_tasks=50", "--device", "cuda",
                          "--results", str(tmp_path), "--no-progress"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    env = json.loads((tmp_path / "sine" / "reptile" / "seed0" / "env.json").read_text())
    assert env["device"].startswith("cuda")


def _train(algo: str, preset: str, iters: int, **changes):
    return train(algo, preset, iters, device="cuda", **changes)


# CUDA graphs (cuda_graph = true): the graphed meta-iteration against the plain one -------

@pytest.mark.parametrize("algo,preset,batched", [
    ("reptile", "omniglot-5w1s", False),   # the preset's serial path, Adam state chained
    ("reptile", "omniglot-5w1s", True),
    ("maml", "omniglot-5w1s-maml", True),  # second order
    ("fomaml", "omniglot-5w1s-maml", True),
    ("joint", "omniglot-5w1s", False),
    ("reptile", "sine", False),
])
def test_graphed_meta_iterations_match_plain(float64, algo, preset, batched):
    plain = _train(algo, preset, 6, batched=batched)
    graphed = _train(algo, preset, 6, batched=batched, cuda_graph=True)
    for a, b in zip(plain, graphed):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-7, atol=1e-9, msg=f"{algo} {preset}: {k}")
    assert plain[2]["loss"] != _train(algo, preset, 5, batched=batched)[2]["loss"]  # the steps did something


def test_graphed_seeds_together_match_plain(float64):
    from algorithms import ALGORITHMS, inner_optimizer
    from bench.models import build_model
    from bench.runner import stacked_step_fn, train_episodes
    from bench.speed import _config, _sampler

    def train_two(**changes):
        cfg = _config("reptile", "omniglot-5w1s").replace(**changes)
        dev = torch.device("cuda")
        samplers = [InDefaultDtype(_sampler(cfg, dev, seed)) for seed in (0, 1)]
        runs = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            params = {k: v.detach().clone() for k, v in build_model(cfg).to(dev).named_parameters()}
            runs.append((params, torch.optim.SGD(list(params.values()), lr=cfg.meta_lr),
                         [inner_optimizer(cfg).init(params)]))
        model = build_model(cfg).to(dev)
        compute = stacked_step_fn(ALGORITHMS["reptile"], task_loss(model, cfg), cfg)
        for _ in range(4):
            steps = compute([r[0] for r in runs], [r[2][0] for r in runs],
                            [train_episodes(s, cfg, "reptile") for s in samplers])
            for (params, opt, state), step in zip(runs, steps):
                for k, p in params.items():
                    p.grad = step.grad[k]
                opt.step()
                state[0] = step.inner_state
        return [(r[0], {k: v.clone() for k, v in r[2][0].items()}) for r in runs]

    plain, graphed = train_two(), train_two(cuda_graph=True)
    for (pa, sa), (pb, sb) in zip(plain, graphed):
        for k in pa:
            torch.testing.assert_close(pb[k], pa[k], rtol=1e-7, atol=1e-9)
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("algo,preset,batched", [
    ("reptile", "sine", False),           # the MLP: its whole meta-iteration compiled
    ("reptile", "omniglot-5w1s", False),  # the CNN: each inner step compiled (the preset's path)
    ("reptile", "sine", True),            # the tasks under vmap: the whole meta-iteration compiled
])
def test_compiled_and_graphed_meta_iterations_match_plain(float64, algo, preset, batched):
    # compile and cuda_graph together: the graph's warm-up calls compile, its recording
    # captures the compiled kernels
    plain = _train(algo, preset, 6, batched=batched)
    both = _train(algo, preset, 6, batched=batched, compile=True, cuda_graph=True)
    for a, b in zip(plain, both):
        assert a.keys() == b.keys()
        for k in a:
            if k not in BEFORE_NORM | BEFORE_NORM_STATE:
                torch.testing.assert_close(b[k], a[k], rtol=1e-7, atol=1e-9, msg=k)


def test_graphed_function_refuses_other_shapes():
    from bench.graphs import GraphedFunction

    f = GraphedFunction(lambda d: {"y": d["x"] * 2})
    x = torch.arange(4.0, device="cuda")
    assert torch.equal(f({"x": x})["y"], x * 2)
    assert torch.equal(f({"x": x + 1})["y"], (x + 1) * 2)  # replayed on the new input
    assert f.replays == 2
    with pytest.raises(ValueError, match="recorded"):
        f({"x": torch.arange(5.0, device="cuda")})
    with pytest.raises(ValueError, match="structure"):
        f({"z": x})


def test_cli_run_with_cuda_graph_matches_plain(tmp_path, omniglot_data):
    # Ten meta-iterations, a periodic evaluation and snapshots in between, in float32:
    # the first meta-iteration's losses are equal within rounding; after it, the graph's
    # convolutions may round otherwise than the plain ones, and the inner Adam (beta1 =
    # 0) turns such differences in near-zero gradient entries into steps of inner_lr,
    # so the runs only train alike (an H200 saw 3e-3 apart at meta-iteration 2, 3% at
    # 10). The per-iteration equality over all algorithms is the float64 test above.
    def run(name, *extra):
        out = subprocess.run([sys.executable, "-m", "bench", "run", "--algo", "reptile", "--data", str(omniglot_data),
                              "--set", "meta_iters=10", "--set", "eval_tasks=50", "--set", "eval_every=5",
                              "--set", "eval_every_tasks=10", "--set", "log_every=1", "--set", "snapshots=5",
                              "--device", "cuda", "--results", str(tmp_path / name), "--no-progress", *extra],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return tmp_path / name / "omniglot-5w1s" / "reptile"

    plain = run("plain")
    graphed = run("graphed", "--set", "cuda_graph=true")
    together = run("together", "--set", "cuda_graph=true", "--seeds", "0,1", "--batch-seeds")
    # cuDNN's timed algorithms (a process of its own: its plans are chosen once per process)
    tuned = run("tuned", "--set", "cuda_graph=true", "--set", "cudnn_benchmark=true")
    import pandas as pd

    a = pd.read_csv(plain / "seed0" / "metrics.csv")
    for other in (graphed / "seed0", together / "seed0", tuned / "seed0"):
        b = pd.read_csv(other / "metrics.csv")
        losses = lambda m: m[m.metric.isin(["loss", "first_loss"])]  # noqa: E731
        train_a, train_b = losses(a), losses(b)
        assert list(train_a.step) == list(train_b.step) and len(train_a) == 20
        first_a, first_b = train_a[train_a.step == 1].value.values, train_b[train_b.step == 1].value.values
        assert abs(first_a - first_b).max() <= 1e-5 * (1 + abs(first_a).max())
        assert (abs(train_a.value.values - train_b.value.values) <= 0.1 * abs(train_a.value.values)).all()
    assert (together / "seed1" / "final.json").is_file()
    assert json.loads((graphed / "seed0" / "config.json").read_text())["cuda_graph"] is True


@pytest.mark.parametrize("changes", [{}, {"conv_matmul": True}, {"compile": True},
                                     {"eval_matmul": True, "channels_last": True}])
def test_evaluation_on_cuda_matches_the_cpu(float64, changes):
    # the plain evaluation (grouped convolutions under vmap), with matrix-product convolutions
    # (for a run that trains in channels-last order too), and compiled, each on CUDA against
    # the plain one on the CPU
    import numpy as np

    from algorithms import inner_optimizer
    from bench.evaluate import evaluate
    from bench.models import build_model
    from bench.speed import _sampler

    cfg = load_config("omniglot-5w1s").replace(eval_steps=3, eval_chunk=4)
    results = []
    for device, c in (("cpu", cfg), ("cuda", cfg.replace(**changes))):
        torch.manual_seed(0)
        model = build_model(c).to(device)
        params = {k: v.detach() for k, v in model.named_parameters()}
        state = inner_optimizer(c).init(params)
        results.append(evaluate(model, params, state, InDefaultDtype(_sampler(c, device)), c, 6).per_task)
    np.testing.assert_array_equal(results[1], results[0])


def test_channels_last_serial_path_on_cuda_matches_the_default_order(float64):
    # channels_last on CUDA: the serial path in NHWC (compiled too), evaluation in the default order
    import numpy as np

    from algorithms import inner_optimizer
    from bench.evaluate import evaluate
    from bench.models import build_model
    from bench.speed import _sampler

    changes = {"inner_steps": 3, "meta_batch": 2}
    plain = _train("reptile", "omniglot-5w1s", 2, **changes)
    for extra in ({}, {"compile": True}):
        nhwc = _train("reptile", "omniglot-5w1s", 2, channels_last=True, **extra, **changes)
        assert nhwc[0]["3.weight"].is_contiguous(memory_format=torch.channels_last)
        for a, b in zip(plain, nhwc):
            for k in a.keys() - BEFORE_NORM - BEFORE_NORM_STATE:
                torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-12, msg=k)
    cfg = load_config("omniglot-5w1s").replace(eval_steps=3, eval_chunk=4)
    scores = []
    for c in (cfg, cfg.replace(channels_last=True)):
        torch.manual_seed(0)
        model = build_model(c).cuda()
        params = {k: v.detach() for k, v in model.named_parameters()}
        state = inner_optimizer(c).init(params)
        scores.append(evaluate(model, params, state, InDefaultDtype(_sampler(c, "cuda")), c, 6).per_task)
    np.testing.assert_array_equal(scores[1], scores[0])


def test_learner_on_cuda_matches_the_cpu():
    # bench.load_learner(device="cuda"): the shipped Omniglot model fine-tuned on the same
    # support set (50 Adam steps, carried state) gives the CPU's losses and predictions
    import bench
    from bench.demo import shipped_model

    gen = torch.Generator().manual_seed(0)
    support = (torch.rand(5, 1, 28, 28, generator=gen) > 0.2).float()
    query = (torch.rand(7, 1, 28, 28, generator=gen) > 0.2).float()
    out = {}
    for device in ("cpu", "cuda"):
        learner = bench.load_learner(shipped_model(), device=device)
        adapted, losses = learner.adapt(support, torch.arange(5), seed=1)
        out[device] = losses.cpu(), learner.outputs(adapted, support, query).cpu()
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out["cuda"][1], out["cpu"][1], rtol=1e-3, atol=1e-3)
