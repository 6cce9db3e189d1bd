"""`--fast`: the measured-fastest execution settings by device and path, under `--set`;
recorded like any override; passed on by sweeps, whose checks see what the runs will use."""

import json

import pytest
import torch

from bench.cli import main
from bench.config import load_config
from bench.fast import fast_settings, with_fast

SERIAL_CPU = {"compile": "true", "channels_last": "true"}
SERIAL_CUDA = {"cuda_graph": "true", "compile": "true", "channels_last": "true", "eval_matmul": "true"}


@pytest.mark.parametrize("algo,preset,device,batch_seeds,expected", [
    ("reptile", "omniglot-5w1s", "cpu", False, SERIAL_CPU),
    ("joint", "omniglot-20w1s", "cpu", False, SERIAL_CPU),
    ("maml", "omniglot-5w1s-maml", "cpu", False, {"batched": "false", **SERIAL_CPU}),  # SGD: the same maths
    ("gradsum", "omniglot-gradsum", "cpu", False, {"batched": "false", **SERIAL_CPU}),
    ("reptile", "sine", "cpu", False, {"compile": "true"}),
    ("reptile", "omniglot-5w1s", "cpu", True, {}),
    ("reptile", "miniimagenet-5w1s", "cpu", False, {}),
    ("reptile", "omniglot-5w1s", "cuda", False, SERIAL_CUDA),
    ("maml", "omniglot-5w1s-maml", "cuda", False, {"cuda_graph": "true"}),
    ("maml", "omniglot-5w1s", "cuda", False, {"cuda_graph": "true"}),  # its serial path: the graph alone
    ("reptile", "omniglot-5w1s", "cuda", True, {"cuda_graph": "true"}),
    ("reptile", "sine", "cuda", False, {"cuda_graph": "true", "compile": "true"}),
    ("reptile", "miniimagenet-5w5s", "cuda", False, {}),
])
def test_the_settings_follow_device_and_path(algo, preset, device, batch_seeds, expected):
    settings, why = fast_settings(load_config(preset, algo=algo), algo, device, batch_seeds)
    assert settings == expected and why


def test_a_carried_state_on_the_batched_path_is_left_alone():
    cfg = load_config("omniglot-5w1s").replace(batched=True)  # Adam state carried: not the serial path's maths
    assert fast_settings(cfg, "reptile", "cpu")[0] == {}


def test_set_wins_and_the_line_says_what_was_added():
    cfg = load_config("omniglot-5w1s-maml", algo="maml")
    overrides, line = with_fast({"compile": "false"}, cfg, "maml", "cpu")
    assert overrides == {"batched": "false", "channels_last": "true", "compile": "false"}
    assert line.startswith("--fast: batched=false channels_last=true (CPU, serial path")
    assert with_fast({}, load_config("miniimagenet-5w1s"), "reptile", "cpu")[1] == \
        "--fast: nothing added (no fast settings were measured for the miniimagenet network)"


def test_run_with_fast_passes_the_settings_on_as_overrides(monkeypatch, capsys):
    # What `run --fast` hands the harness (which records overrides in config.json); that
    # each setting leaves results unchanged is tests/test_fast_paths.py's and test_gpu.py's.
    import bench.runner

    seen = {}

    def run_seeds(cfg, **kwargs):
        seen.update(cfg=cfg, overrides=kwargs["overrides"])
        return [{}]
    monkeypatch.setattr(bench.runner, "run_seeds", run_seeds)
    args = ["run", "--algo", "fomaml", "--preset", "omniglot-5w1s-maml", "--device", "cpu", "--fast"]
    assert main([*args, "--set", "meta_iters=10"]) == 0
    assert "--fast: batched=false compile=true channels_last=true (CPU, serial path" in capsys.readouterr().err
    assert seen["overrides"] == {"batched": "false", "compile": "true", "channels_last": "true", "meta_iters": "10"}
    assert not seen["cfg"].batched and seen["cfg"].compile and seen["cfg"].channels_last
    assert main([*args, "--set", "channels_last=false"]) == 0  # --set wins
    assert seen["overrides"]["channels_last"] == "false" and not seen["cfg"].channels_last


def test_sweeps_pass_fast_on_and_check_runs_with_the_settings_it_adds(tmp_path, capsys):
    from bench.runner import preflight, run_identity
    from bench.sweep import Job, Options, check_jobs

    assert main(["reproduce", "--table", "omniglot", "--algos", "maml", "--fast", "--dry-run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 4 and all(" --fast --resume " in c for c in commands)

    # A run made with --fast (the MAML preset on the serial path): the check of the same
    # sweep with --fast accepts it; without --fast it is a run made with other settings.
    job = Job("omniglot-5w1s-maml", "maml", 0)
    cfg = load_config(job.preset, algo="maml")
    cfg = load_config(job.preset, with_fast({}, cfg, "maml", "cpu")[0], algo="maml")
    folder = job.folder(tmp_path)
    folder.mkdir(parents=True)
    identity = run_identity(cfg, algo="maml", preset=job.preset, seed=0, device=torch.device("cpu"),
                            evals=preflight(cfg, "maml", "shared"))
    (folder / "config.json").write_text(json.dumps(identity))
    check_jobs([job], Options(tmp_path, device="cpu", fast=True))
    with pytest.raises(Exception, match="made with other settings .*batched"):
        check_jobs([job], Options(tmp_path, device="cpu"))
