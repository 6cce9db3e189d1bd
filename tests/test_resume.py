"""Checkpoint and resume: a run killed with SIGKILL at random moments and resumed each
time ends exactly like a run never killed; divergence stops a run and keeps its last
good checkpoint; the state marker says what happened."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

# Every kind of state a run carries: inner Adam moments carried from task to task, the
# outer Adam's moments, the sampler generators of training and periodic evaluation.
SINE = ["--preset", "sine", "--set", "meta_iters=600", "--set", "eval_tasks=50", "--set", "eval_every=50",
        "--set", "eval_every_tasks=5", "--set", "log_every=10", "--set", "snapshots=4",
        "--set", "inner_optimizer=adam", "--set", "inner_lr=0.01", "--set", "inner_state=carry",
        "--set", "meta_optimizer=adam", "--set", "meta_lr=0.003", "--set", "meta_batch=2"]
WALL_CLOCK = {"train_seconds", "eval_seconds", "periodic_eval_seconds", "periodic_eval_last_seconds", "ms_per_meta_iter"}


def command(algo, results, *extra):
    return [sys.executable, "-m", "bench", "run", "--algo", algo, *SINE, "--results", str(results),
            "--device", "cpu", "--no-progress", "--checkpoint-every", "20", *extra]


def outcome(run):
    with open(run / "metrics.csv") as f:
        metrics = [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]
    final = {k: v for k, v in json.loads((run / "final.json").read_text()).items() if k not in WALL_CLOCK}
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    snaps = {p.name: torch.load(p, weights_only=True)["params"] for p in sorted((run / "snapshots").iterdir())}
    return metrics, final, ckpt, snaps, (run / "sine_predictions.csv").read_text()


def checkpointed(run, pid):
    """Whether process `pid` has written a checkpoint of its own: the state marker is its
    and names a later step than the one it started at. (The marker left by the process
    before may name an earlier step than that process's last checkpoint, when it was killed
    between the two writes, so the step on disk alone does not tell.)"""
    try:
        state = json.loads((run / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("pid") == pid and state["step"] > (state["resumed_at"] or [0])[-1]


@pytest.mark.parametrize("algo", ["reptile", pytest.param("fomaml", marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, algo):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(algo, tmp_path / "whole"), check=True, capture_output=True, env=env, timeout=300)

    rng = random.Random(algo)
    resumed = tmp_path / "killed"
    run = resumed / "sine" / algo / "seed0"
    kills = 0
    while True:
        proc = subprocess.Popen(command(algo, resumed, "--resume"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 4:
            # Once this process has written a checkpoint of its own, kill it at a random
            # moment of what follows (a meta-iteration, a row, an evaluation, a checkpoint).
            deadline = time.monotonic() + 120
            while proc.poll() is None and not checkpointed(run, proc.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
        if kills < 4 and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
        break
    run = resumed / "sine" / algo / "seed0"
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "finished"
    # Killed mid-training, each time resumed from a later checkpoint.
    assert kills == 4 and len(state["resumed_at"]) == 4, (kills, state)
    assert state["resumed_at"] == sorted(set(state["resumed_at"])) and 0 < state["resumed_at"][0], state

    whole, again = outcome(tmp_path / "whole" / "sine" / algo / "seed0"), outcome(run)
    assert again[0] == whole[0]  # metrics.csv: no duplicated, missing or truncated rows
    assert again[1] == whole[1]  # final.json
    for key in ("params", "inner_state"):
        for name, value in whole[2][key].items():
            assert torch.equal(again[2][key][name], value), (key, name)
    assert again[3].keys() == whole[3].keys()
    for name, params in whole[3].items():
        assert all(torch.equal(again[3][name][k], v) for k, v in params.items()), name
    assert again[4] == whole[4]  # sine_predictions.csv
    assert not list(run.glob(".*.tmp"))


TINY = ["--preset", "sine", "--set", "meta_iters=60", "--set", "eval_tasks=10", "--set", "eval_every=20",
        "--set", "eval_every_tasks=5", "--set", "log_every=10"]


def bench_main(*args):
    from bench.cli import main

    return main(["run", "--algo", "reptile", *TINY, "--device", "cpu", "--no-progress", *args])


def test_divergence_stops_the_run_marks_it_failed_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # A meta step of 1e6 times the update: finite for the first meta-iterations, then the
    # weights blow up and the loss overflows.
    code = bench_main("--results", str(tmp_path), "--set", "meta_lr=1e6", "--set", "meta_lr_final=1e6",
                      "--checkpoint-every", "1")
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("error: training diverged:") and err.count("\n") == 1
    run = tmp_path / "sine" / "reptile" / "seed0"
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "failed" and state["message"] in err
    assert not (run / "final.json").exists()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == state["step"] and f"checkpoint (meta-iteration {ckpt['step']})" in err
    assert all(torch.isfinite(p).all() for p in ckpt["params"].values())
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["value"]) == float(r["value"]) for r in rows)  # no NaN row before the stop


def test_resume_of_a_finished_run_writes_nothing_and_returns_its_result(tmp_path, capsys):
    assert bench_main("--results", str(tmp_path)) == 0
    run = tmp_path / "sine" / "reptile" / "seed0"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert bench_main("--results", str(tmp_path), "--resume") == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == json.loads((run / "final.json").read_text())
    assert "already finished" in out.err
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()} == before


def test_resume_without_a_run_starts_one_and_the_marker_follows_the_run(tmp_path):
    assert bench_main("--results", str(tmp_path), "--resume") == 0
    state = json.loads((tmp_path / "sine" / "reptile" / "seed0" / "state.json").read_text())
    assert state["state"] == "finished" and state["step"] == 60 and state["resumed_at"] == []


def test_a_run_in_progress_is_not_touched_by_another_process(tmp_path, capsys):
    from bench.results import RunLock

    assert bench_main("--results", str(tmp_path)) == 0
    run = tmp_path / "sine" / "reptile" / "seed0"
    lock = RunLock(run).acquire()
    try:
        for flag in ("--resume", "--force"):
            assert bench_main("--results", str(tmp_path), flag) == 2
            assert "in progress in another process" in capsys.readouterr().err
    finally:
        lock.release()


def test_sigterm_marks_the_run_failed_and_it_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = command("reptile", tmp_path)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = tmp_path / "sine" / "reptile" / "seed0"
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():  # wait for training to be under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "failed" and "SIGTERM" in state["message"]
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "state.json").read_text())["state"] == "finished"
