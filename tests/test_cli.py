"""The command line end to end: real tiny runs, the files they write, determinism."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO

TINY_SINE = ["--preset", "sine", "--set", "meta_iters=30", "--set", "eval_tasks=20",
             "--set", "eval_every=10", "--set", "eval_every_tasks=5", "--set", "log_every=10"]
TINY_OMNIGLOT = ["--set", "meta_iters=4", "--set", "eval_tasks=6", "--set", "eval_steps=3",
                 "--set", "eval_every=2", "--set", "eval_every_tasks=2", "--set", "log_every=2"]


def bench(*args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=600)


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sine_run_writes_the_documented_files(tmp_path):
    out = bench("run", "--algo", "reptile", *TINY_SINE, "--results", str(tmp_path), "--device", "cpu",
                "--no-progress")
    assert out.returncode == 0, out.stderr
    run = tmp_path / "sine" / "reptile" / "seed0"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt", "config.json", "env.json", "final.json", "metrics.csv", "sine_predictions.csv",
        "snapshots", "state.json"]
    assert json.loads((run / "state.json").read_text())["state"] == "finished"
    predictions = rows(run / "sine_predictions.csv")
    assert {(r["kind"], r["steps"]) for r in predictions} == {
        ("true", ""), ("support", ""), *(("pred", str(s)) for s in (0, 8, 16, 24, 32))}
    assert sum(r["kind"] == "support" for r in predictions) == 10

    final = json.loads((run / "final.json").read_text())
    assert final["metric"] == "mse" and final["tasks"] == 20 and final["value"] > 0
    assert final["ci95"] > 0
    assert json.loads(out.stdout) == final
    assert 0 < final["periodic_eval_last_seconds"] < final["periodic_eval_seconds"]  # the second of two

    config = json.loads((run / "config.json").read_text())
    assert config["meta_iters"] == 30 and config["overrides"]["meta_iters"] == "30"
    assert config["algo"] == "reptile" and config["preset"] == "sine" and config["seed"] == 0
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"

    table = rows(run / "metrics.csv")
    assert list(table[0]) == ["step", "wall_s", "split", "metric", "value"]
    assert {(r["step"], r["split"], r["metric"]) for r in table} >= {
        ("10", "train", "loss"), ("10", "test", "mse"), ("30", "train", "loss"), ("30", "test", "mse")}
    assert float(table[-1]["value"]) == final["value"]

    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert set(ckpt["params"]) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    assert ckpt["config"]["meta_iters"] == 30


def test_same_seed_gives_identical_metrics_apart_from_wall_clock(tmp_path):
    def run(folder):
        out = bench("run", "--algo", "reptile", *TINY_SINE, "--results", str(tmp_path / folder),
                    "--device", "cpu", "--no-progress")
        assert out.returncode == 0, out.stderr
        table = rows(tmp_path / folder / "sine" / "reptile" / "seed0" / "metrics.csv")
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in table]

    assert run("a") == run("b")
    other = bench("run", "--algo", "reptile", *TINY_SINE, "--seed", "1", "--results", str(tmp_path / "a"),
                  "--device", "cpu", "--no-progress")
    assert other.returncode == 0
    assert rows(tmp_path / "a" / "sine" / "reptile" / "seed1" / "metrics.csv")[-1]["value"] != run("c")[-1]["value"]


def test_existing_run_is_not_overwritten_without_force(tmp_path):
    args = ["run", "--algo", "reptile", *TINY_SINE, "--results", str(tmp_path), "--no-progress"]
    assert bench(*args).returncode == 0
    final = tmp_path / "sine" / "reptile" / "seed0" / "final.json"
    before = final.read_text()
    again = bench(*args)
    assert again.returncode == 2
    assert "--force" in again.stderr and again.stderr.count("\n") == 1
    assert final.read_text() == before
    assert bench(*args, "--force").returncode == 0


def test_presets_lists_every_preset():
    out = bench("presets")
    assert out.returncode == 0
    for name in ("sine", "omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s"):
        assert name in out.stdout


def test_the_command_line_starts_without_the_plotting_libraries():
    # every command imports every subcommand's module for its parser; the report's figures
    # (matplotlib, seaborn) are imported when one is drawn
    code = "import sys, bench.cli; print(sorted(m for m in ('matplotlib', 'seaborn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_omniglot_smoke_run(tmp_path, omniglot_data):
    out = bench("run", "--algo", "reptile", *TINY_OMNIGLOT, "--results", str(tmp_path), "--data",
                str(omniglot_data), "--device", "cpu", "--no-progress")
    assert out.returncode == 0, out.stderr
    run = tmp_path / "omniglot-5w1s" / "reptile" / "seed0"
    final = json.loads((run / "final.json").read_text())
    assert final["metric"] == "accuracy" and final["tasks"] == 6 and 0 <= final["value"] <= 1
    splits = {(r["split"], r["metric"]) for r in rows(run / "metrics.csv")}
    assert {("train", "accuracy"), ("test", "accuracy"), ("train", "loss")} <= splits


def test_outer_adam_and_reset_state_run(tmp_path):
    from bench.config import load_config
    from bench.runner import run

    cfg = load_config("sine").replace(meta_iters=20, eval_tasks=10, eval_every=0, log_every=10,
                                      meta_optimizer="adam", meta_lr=0.001, meta_lr_final=0.001)
    final = run(cfg, algo="reptile", preset="sine", results=tmp_path, device="cpu", progress=False)
    assert final["metric"] == "mse" and final["tasks"] == 10
    ckpt = torch.load(tmp_path / "sine" / "reptile" / "seed0" / "checkpoint.pt", weights_only=True)
    assert ckpt["meta_optimizer"]["state"][0]["step"] == 20  # Adam's own step count


@pytest.mark.parametrize("algo,tail", [("fomaml", "shared"), ("fomaml", "separate"), ("maml", "shared"),
                                       ("joint", "shared"), ("gradsum", "shared")])
def test_every_algorithm_runs_end_to_end(tmp_path, omniglot_data, algo, tail):
    from bench.config import load_config
    from bench.runner import run

    cfg = load_config("omniglot-5w1s").replace(
        meta_iters=2, eval_tasks=4, eval_steps=2, eval_every=0, log_every=1, tail=tail,
        query_shots=1 if tail == "separate" else 0, inner_steps=2, meta_grads="2",
        inner_optimizer="sgd", inner_lr=0.1)
    final = run(cfg, algo=algo, preset="omniglot-5w1s", results=tmp_path, data=omniglot_data,
                device="cpu", progress=False)
    assert final["algo"] == algo and final["tasks"] == 4


def test_separate_tail_without_query_shots_is_refused(tmp_path):
    out = bench("run", "--algo", "fomaml", *TINY_SINE, "--set", "tail=separate", "--results", str(tmp_path))
    assert out.returncode == 2 and "query_shots" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_fomaml_and_maml_count_the_query_minibatch_in_inner_steps():
    import numpy as np

    from bench.config import load_config
    from bench.episodes import ClassSampler
    from bench.runner import train_episodes

    pool = torch.rand(30, 20, 4, 4)
    cfg = load_config("omniglot-5w1s").replace(inner_steps=5, inner_batch=10, train_shots=10, meta_batch=3)
    shared = train_episodes(ClassSampler(pool, 5, np.random.default_rng(0)), cfg, "fomaml")
    assert shared.inner_batches.shape == (3, 4, 10) and shared.query_x.shape[:2] == (3, 10)
    # 5 minibatches of 10 over 50 examples: the tail is disjoint from the 4 inner ones
    for t in range(3):
        ids = {float(v) for v in shared.query_x[t, :, 0, 0, 0]}
        inner = {float(v) for v in shared.support_x[t, shared.inner_batches[t].flatten(), 0, 0, 0]}
        assert not ids & inner
    separate = train_episodes(ClassSampler(pool, 5, np.random.default_rng(0)),
                              cfg.replace(tail="separate", query_shots=2), "maml")
    assert separate.inner_batches.shape == (3, 4, 10) and separate.query_x.shape[:2] == (3, 10)
    reptile = train_episodes(ClassSampler(pool, 5, np.random.default_rng(0)), cfg, "reptile")
    assert reptile.inner_batches.shape == (3, 5, 10) and reptile.query_x.shape[1] == 0


@pytest.mark.parametrize("algo,settings,message", [
    ("fomaml", ["inner_steps=1"], "inner_steps >= 2"),
    ("gradsum", ["inner_steps=3", "meta_grads=1+4"], "beyond inner_steps=3"),
])
def test_settings_an_algorithm_cannot_use_are_refused(tmp_path, algo, settings, message):
    sets = [arg for s in settings for arg in ("--set", s)]
    out = bench("run", "--algo", algo, *TINY_SINE, *sets, "--results", str(tmp_path))
    assert out.returncode == 2 and message in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_memory_compares_both_maml_backwards():
    out = bench("memory", "--preset", "sine", "--steps", "1,3", "--repeats", "1", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| 1 ") or
            line.startswith("| 3 ")]
    assert [r[0].strip() for r in rows] == ["1", "3"]
    assert all(float(c) >= 0 for r in rows for c in r[1:])
    bad = bench("memory", "--steps", "0")
    assert bad.returncode == 2 and "--steps" in bad.stderr


def test_version(capsys):
    import bench
    from bench.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"bench {bench.__version__}\n"
