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
from conftest import REPO

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
