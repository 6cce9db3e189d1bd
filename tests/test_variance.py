"""The update-variance measure (`python -m bench variance`) against hand computations."""

import csv

import numpy as np
import pytest
import torch

from algorithms import reptile
from bench.config import load_config
from bench.episodes import Episode
from bench.variance import measure_run, per_task_updates, update_stats


def test_update_stats_by_hand():
    u = {"a": torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]]), "b": torch.tensor([1.0, 1.0, 4.0])}
    rows = np.array([[1, 0, 1], [3, 2, 1], [2, 4, 4]], dtype=float)
    mean = rows.mean(0)  # (2, 2, 2)
    variance = ((rows - mean) ** 2).sum() / 2  # (1+1+0) + (4+0+4) + (1+1+4) = 16, / (n - 1)
    assert variance == 8.0
    signal = np.sqrt(mean @ mean - variance / 3)
    got = update_stats(u)
    assert got["mean_norm"] == pytest.approx(np.sqrt(12))
    assert got["variance"] == pytest.approx(8.0)
    assert got["snr"] == pytest.approx(signal / np.sqrt(8.0))
    with pytest.raises(ValueError):
        update_stats({"a": torch.ones(1, 3)})


def test_per_task_reptile_updates_match_a_hand_loop(float64):
    g = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(3, generator=g), "b": torch.randn((), generator=g)}

    def loss(p, x, y):
        return ((torch.tanh(x @ p["w"] + p["b"]) - y) ** 2).mean()

    tasks, steps, batch = 4, 2, 3
    ep = Episode(torch.randn(tasks, steps * batch, 3, generator=g), torch.randn(tasks, steps * batch, generator=g),
                 torch.zeros(tasks, 1, 3), torch.zeros(tasks, 1),
                 torch.arange(steps * batch).view(1, steps, batch).expand(tasks, -1, -1))
    cfg = load_config("sine").replace(inner_optimizer="sgd", inner_lr=0.1, inner_steps=steps, inner_batch=batch)
    updates = per_task_updates(reptile, loss, params, {}, ep, cfg)
    by_hand = []
    for t in range(tasks):
        w = dict(params)
        for s in range(steps):
            idx = ep.inner_batches[t, s]
            grads = torch.func.grad(loss)(w, ep.support_x[t, idx], ep.support_y[t, idx])
            w = {k: w[k] - 0.1 * grads[k] for k in w}
        by_hand.append(torch.cat([(params[k] - w[k]).reshape(-1) for k in ("w", "b")]))
    flat = torch.stack(by_hand).numpy()
    mean = flat.mean(0)
    variance = ((flat - mean) ** 2).sum() / (tasks - 1)
    got = update_stats(updates)
    assert got["variance"] == pytest.approx(variance, rel=1e-10)
    assert got["mean_norm"] == pytest.approx(np.linalg.norm(mean), rel=1e-10)


def test_variance_of_a_real_run_writes_every_snapshot_and_algorithm(tmp_path):
    from bench.runner import run

    cfg = load_config("sine").replace(meta_iters=6, eval_tasks=4, eval_every=0, log_every=3, snapshots=2,
                                      inner_steps=2)
    run(cfg, algo="reptile", preset="sine", results=tmp_path, device="cpu", progress=False)
    folder = tmp_path / "sine" / "reptile" / "seed0"
    assert sorted(p.name for p in (folder / "snapshots").iterdir()) == ["step0.pt", "step3.pt", "step6.pt"]
    out = measure_run(folder, ["reptile", "fomaml", "joint"], 5, device="cpu", progress=False)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["algo"]) for r in rows] == [
        (str(s), a) for s in (0, 3, 6) for a in ("reptile", "fomaml", "joint")]
    assert all(float(r["variance"]) > 0 and r["tasks"] == "5" for r in rows)
