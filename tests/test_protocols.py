"""Evaluation protocols and per-algorithm preset settings."""

import json

import numpy as np
import pytest
import torch

from bench.config import algo_settings, load_config
from bench.episodes import ClassSampler, SineSampler
from bench.errors import ConfigError
from bench.protocols import eval_config, own, protocols, shared


def test_maml_and_fomaml_own_protocol_is_the_maml_papers():
    cfg = load_config("omniglot-5w1s")
    for algo in ("maml", "fomaml"):
        p = own(algo, cfg)
        assert p.name == "maml-paper"
        e = eval_config(cfg, p)
        assert (e.inner_optimizer, e.inner_lr, e.eval_steps, e.eval_batch, e.transductive) == ("sgd", 0.4, 3, 5, True)
        assert e.inner_state == "reset"
    twenty = own("maml", load_config("omniglot-20w5s"))
    assert twenty.settings["inner_lr"] == 0.1 and twenty.settings["eval_batch"] == 100
    assert twenty.settings["eval_queries"] == 5  # K query examples per class


def test_own_protocols_on_miniimagenet():
    # MAML paper: alpha 0.01, 10 SGD steps at test on the whole support set, K queries per class
    for shots in (1, 5):
        e = eval_config(load_config(f"miniimagenet-5w{shots}s"), own("maml", load_config(f"miniimagenet-5w{shots}s")))
        assert (e.inner_optimizer, e.inner_lr, e.eval_steps, e.eval_batch, e.eval_queries, e.transductive) == (
            "sgd", 0.01, 10, 5 * shots, shots, True)
        assert e.inner_state == "reset"
    # Reptile on the MAML preset: the Reptile preset's evaluation (eval batch 15 for 5-shot)
    maml_preset = load_config("miniimagenet-5w5s-maml")
    e = eval_config(maml_preset, own("reptile", maml_preset))
    assert (e.inner_optimizer, e.inner_lr, e.eval_steps, e.eval_batch, e.transductive) == ("adam", 0.001, 50, 15, False)


def test_reptile_own_protocol_is_the_reptile_presets_evaluation():
    maml_preset = load_config("omniglot-5w1s-maml")  # SGD alpha 0.4, 3 test steps, transductive
    e = eval_config(maml_preset, own("reptile", maml_preset))
    ref = load_config("omniglot-5w1s")
    assert (e.inner_optimizer, e.inner_lr, e.eval_steps, e.eval_batch, e.transductive) == (
        ref.inner_optimizer, ref.inner_lr, ref.eval_steps, ref.eval_batch, ref.transductive)
    # trained with SGD: no Adam state to carry into evaluation
    assert e.inner_state == "reset"
    same = load_config("omniglot-5w1s")
    assert eval_config(same, own("joint", same)) == same


def test_shared_protocol_changes_nothing_and_bad_choices_are_refused():
    cfg = load_config("sine")
    assert eval_config(cfg, shared()) == cfg
    assert [p.name for p in protocols("both", "maml", cfg)] == ["shared", "maml-paper"]
    with pytest.raises(ConfigError, match="eval-protocol"):
        protocols("mine", "maml", cfg)
    with pytest.raises(ConfigError, match="no published"):
        own("maml", load_config("omniglot-5w1s").replace(ways=7))


@pytest.mark.parametrize("make", [
    lambda seed: ClassSampler(torch.arange(30 * 20 * 16).view(30, 20, 4, 4), 5, np.random.default_rng(seed)),
    lambda seed: SineSampler("cpu", np.random.default_rng(seed)),
])
def test_protocols_that_fine_tune_differently_score_the_same_tasks(make):
    # The minibatch plan has a generator of its own, so the tasks do not depend on it.
    a = make(0).sample(6, 1, 1, 3, 5)
    b = make(0).sample(6, 1, 1, 50, 2)
    for x, y in [(a.support_x, b.support_x), (a.query_x, b.query_x), (a.support_y, b.support_y)]:
        assert (x == y).all()
    assert a.inner_batches.shape != b.inner_batches.shape


def test_algorithm_tables_apply_only_to_their_algorithm(monkeypatch):
    import bench.config as config

    base = config.preset_values("sine")
    table = {**base, "algo": {"fomaml": {"meta_lr": 0.5}}}
    monkeypatch.setattr(config, "preset_values", lambda name: table)
    assert load_config("sine", algo="fomaml").meta_lr == 0.5
    assert load_config("sine", algo="reptile").meta_lr == base["meta_lr"]
    assert load_config("sine", {"meta_lr": "0.2"}, algo="fomaml").meta_lr == 0.2  # --set wins
    table["algo"]["fomaml"] = {"eval_steps": 3}
    with pytest.raises(ConfigError, match="only .* may differ per algorithm"):
        algo_settings("sine", "fomaml")


def test_run_with_both_protocols_records_them(tmp_path):
    from bench.runner import run

    cfg = load_config("sine").replace(meta_iters=5, eval_tasks=8, eval_every=0, log_every=5, inner_steps=2)
    final = run(cfg, algo="maml", preset="sine", results=tmp_path, device="cpu", progress=False,
                eval_protocol="both")
    assert final["eval_protocol"] == "shared"
    assert final["own_protocol"]["name"] == "maml-paper" and final["own_protocol"]["tasks"] == 8
    assert final["own_protocol"]["value"] != final["value"]  # 10 SGD steps at 0.01 versus 32 at 0.02
    config = json.loads((tmp_path / "sine" / "maml" / "seed0" / "config.json").read_text())
    assert config["eval_protocol"]["name"] == "shared"
    assert config["own_protocol"]["settings"]["eval_steps"] == 10
