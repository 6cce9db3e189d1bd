"""Presets, overrides and the annealed outer step size."""

import pytest

from bench.config import Config, available_presets, load_config, parse_overrides
from bench.errors import ConfigError
from bench.runner import meta_lr_at


def test_every_preset_pins_every_setting_and_validates():
    assert set(available_presets()) >= {"sine", "omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s",
                                        "omniglot-20w5s", "miniimagenet-5w1s", "miniimagenet-5w5s",
                                        "miniimagenet-5w1s-maml", "miniimagenet-5w5s-maml"}
    for name in available_presets():
        cfg = load_config(name)
        assert isinstance(cfg, Config)


def test_paper_settings_of_omniglot_5w1s():
    cfg = load_config("omniglot-5w1s")
    assert (cfg.ways, cfg.shots, cfg.train_shots, cfg.inner_batch, cfg.inner_steps) == (5, 1, 10, 10, 5)
    assert (cfg.inner_optimizer, cfg.inner_lr, cfg.inner_beta1) == ("adam", 0.001, 0.0)
    assert (cfg.meta_lr, cfg.meta_lr_final, cfg.meta_batch, cfg.meta_iters) == (1.0, 0.0, 5, 100000)
    assert (cfg.eval_steps, cfg.eval_batch, cfg.eval_tasks) == (50, 5, 10000)
    assert cfg.inner_state == "carry" and not cfg.transductive


def test_paper_settings_of_miniimagenet():
    # Reptile paper appendix and the reference's m15/m55 commands (PAPERS.md section 3)
    for name, eval_batch in (("miniimagenet-5w1s", 5), ("miniimagenet-5w5s", 15)):
        cfg = load_config(name)
        assert (cfg.task, cfg.ways, cfg.train_shots, cfg.inner_batch, cfg.inner_steps) == ("miniimagenet", 5, 15, 10, 8)
        assert (cfg.inner_optimizer, cfg.inner_lr, cfg.inner_beta1, cfg.inner_state) == ("adam", 0.001, 0.0, "carry")
        assert (cfg.meta_lr, cfg.meta_lr_final, cfg.meta_batch, cfg.meta_iters) == (1.0, 0.0, 5, 100000)
        assert (cfg.eval_steps, cfg.eval_batch, cfg.eval_tasks, cfg.transductive) == (50, eval_batch, 10000, False)
    assert load_config("miniimagenet-5w1s").shots == 1 and load_config("miniimagenet-5w5s").shots == 5
    # MAML paper (PAPERS.md section 3): 5 SGD steps at 0.01 plus the query minibatch, 15 queries per class
    for name, shots, meta_batch in (("miniimagenet-5w1s-maml", 1, 4), ("miniimagenet-5w5s-maml", 5, 2)):
        cfg = load_config(name)
        assert (cfg.inner_optimizer, cfg.inner_lr, cfg.inner_steps, cfg.inner_batch) == ("sgd", 0.01, 6, 5 * shots)
        assert (cfg.train_shots, cfg.tail, cfg.query_shots) == (shots, "separate", 15)
        assert (cfg.meta_optimizer, cfg.meta_lr, cfg.meta_lr_final, cfg.meta_batch, cfg.meta_iters) == (
            "adam", 0.001, 0.001, meta_batch, 60000)
        assert (cfg.eval_steps, cfg.eval_batch, cfg.eval_queries, cfg.transductive) == (10, 5 * shots, shots, True)


def test_val_chars_is_refused_for_miniimagenet():
    with pytest.raises(ConfigError, match="'val_chars'.*Omniglot.*--set val_chars=0"):
        load_config("miniimagenet-5w5s", parse_overrides(["val_chars=100"]))


def test_overrides_are_typed():
    cfg = load_config("omniglot-5w1s", parse_overrides(["meta_iters=1_000", "transductive=true",
                                                        "inner_lr=3e-4", "inner_state=reset"]))
    assert cfg.meta_iters == 1000 and cfg.transductive is True
    assert cfg.inner_lr == 3e-4 and cfg.inner_state == "reset"


@pytest.mark.parametrize("item,message", [
    ("meta_iters", "--set expects key=value"),
    ("ways=2.5", "must be an integer"),
    ("transductive=maybe", "must be true or false"),
    ("eval_tasks=-1", "greater than 0"),
    ("inner_beta1=1", "must be in [0, 1)"),
    ("metaiters=5", "did you mean 'meta_iters'"),
    ("meta_grads=1+1", "distinct inner steps"),
    ("meta_grads=0+2", "distinct inner steps"),
])
def test_bad_overrides(item, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config("omniglot-5w1s", parse_overrides([item]))


def test_meta_step_is_annealed_linearly_like_the_reference():
    cfg = load_config("omniglot-5w1s").replace(meta_iters=4)
    assert [meta_lr_at(cfg, i) for i in range(4)] == [1.0, 0.75, 0.5, 0.25]
