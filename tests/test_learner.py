"""`bench.load_learner`: a finished run's initialisation, fine-tuned and scored one task at a
time, gives what the run's own final evaluation gave on the same test tasks (carried Adam
state and support-set batch norm; transductive SGD; sine regression); bad input."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import bench
from bench.config import load_config
from bench.errors import BenchError
from bench.runner import run
from bench.tasks import TaskData

TINY = dict(meta_iters=4, meta_batch=2, eval_tasks=8, eval_every=0, log_every=2, snapshots=0)
CASES = {
    "reptile-carried-adam": ("reptile", "omniglot-5w1s", dict(inner_steps=2, eval_steps=3)),
    "fomaml-transductive-sgd": ("fomaml", "omniglot-5w1s-maml", {}),
    "reptile-sine": ("reptile", "sine", dict(eval_steps=8)),
}


def tiny_run(tmp_path, data, algo, preset, settings):
    cfg = load_config(preset, algo=algo).replace(**{**TINY, **settings})
    run(cfg, algo=algo, preset=preset, results=tmp_path, data=data, device="cpu", progress=False)
    return tmp_path / preset / algo / "seed0"


@pytest.mark.parametrize("case", list(CASES))
def test_a_learner_scores_the_runs_test_tasks_as_its_final_evaluation(tmp_path, omniglot_root_or_none, case):
    algo, preset, settings = CASES[case]
    if preset != "sine" and omniglot_root_or_none is None:
        pytest.skip("Omniglot not found (set BENCH_DATA)")
    folder = tiny_run(tmp_path, omniglot_root_or_none, algo, preset, settings)
    learner = bench.load_learner(folder)
    cfg = learner.cfg
    assert learner.step == 4 and learner.run["algo"] == algo and learner.final["tasks"] == 8
    assert cfg.transductive == (case == "fomaml-transductive-sgd")
    assert (cfg.inner_state == "carry") == (case == "reptile-carried-adam")
    # The same test tasks the final evaluation drew (its sampler's stream and seed).
    sampler = TaskData(learner.train_cfg, torch.device("cpu"), omniglot_root_or_none).sampler("test", "final", 0)
    ep = sampler.sample(8, cfg.shots, cfg.eval_queries, cfg.eval_steps, cfg.eval_batch)
    scores = []
    for i in range(8):
        out = learner.predict(ep.support_x[i], ep.support_y[i], ep.query_x[i], plan=ep.inner_batches[i])
        if preset == "sine":
            scores.append(float(((out - ep.query_y[i]) ** 2).mean()))
        else:
            assert out.shape == (cfg.ways * cfg.eval_queries, cfg.ways)
            scores.append(float((out.argmax(-1) == ep.query_y[i]).float().mean()))
    assert np.mean(scores) == pytest.approx(learner.final["value"], rel=1e-5, abs=1e-7)
    # Without a plan: the evaluation's minibatches from a seeded generator, the same each time.
    a, losses = learner.adapt(ep.support_x[0], ep.support_y[0], seed=3)
    b, _ = learner.adapt(ep.support_x[0], ep.support_y[0], seed=3)
    assert losses.shape == (cfg.eval_steps,) and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], learner.params[k]) for k in a)  # it did fine-tune


@pytest.fixture
def omniglot_root_or_none():
    from conftest import omniglot_root

    root = omniglot_root()
    return root if any((root / "omniglot" / f).exists() for f in ("images_background.zip", "images_background")) \
        else None


def test_bad_input_is_named(tmp_path):
    folder = tiny_run(tmp_path, None, "reptile", "sine", dict(eval_steps=4, eval_tasks=4))
    learner = bench.load_learner(folder / "checkpoint.pt")
    x, y = torch.zeros(5, 1), torch.zeros(5, 1)
    assert learner.predict(x, y, torch.zeros(3, 1)).shape == (3, 1)
    with pytest.raises(ValueError, match=r"support_x must be \(examples, 1\) for this sine network, got shape"):
        learner.adapt(torch.zeros(5, 2), y)
    with pytest.raises(ValueError, match=r"plan must be \(4 steps, batch\) indices into the 5 support examples"):
        learner.adapt(x, y, plan=torch.full((4, 5), 7))
    with pytest.raises(BenchError, match="holds no checkpoint.pt"):
        bench.load_learner(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="is not a readable checkpoint"):
        bench.load_learner(tmp_path / "junk.pt")


def test_labels_are_checked_for_classification(tmp_path, omniglot_data):
    folder = tiny_run(tmp_path, omniglot_data, "reptile", "omniglot-5w1s", dict(inner_steps=2, eval_steps=3))
    learner = bench.load_learner(folder)
    x = torch.ones(5, 1, 28, 28)
    with pytest.raises(ValueError, match=r"support_y must be \(5,\) integer labels 0 to 4"):
        learner.adapt(x, torch.tensor([0, 1, 2, 3, 5]))
    with pytest.raises(ValueError, match=r"query_x must be \(examples, 1, 28, 28\)"):
        learner.predict(x, torch.arange(5), torch.ones(2, 28, 28))


def test_import_bench_does_not_load_torch():
    code = "import sys, bench; print('torch' in sys.modules, callable(bench.load_learner))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
