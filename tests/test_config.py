"""Presets, overrides and the annealed outer step size."""

import pytest

from bench.config import Config, available_presets, load_config, parse_overrides
from bench.errors import ConfigError
from bench.runner import meta_lr_at


def test_every_preset_pins_every_setting_and_validates():
    assert set(available_presets()) >= {"sine", "omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s",
                                        "omniglot-20w5s"}
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
