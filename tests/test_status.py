"""`python -m bench status`: a real run seen running, then stopped by SIGKILL, then
finished by the command status prints; failed, unknown-host and incomplete runs; bad input."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from bench.cli import main
from bench.status import recent_ms_per_iter, resume_command

SINE = ["--preset", "sine", "--set", "meta_iters=2000", "--set", "eval_tasks=20", "--set", "eval_every=1000",
        "--set", "eval_every_tasks=5", "--set", "log_every=50"]


def status(capsys, folder, *flags):
    capsys.readouterr()
    code = main(["status", str(folder), *flags])
    return code, capsys.readouterr()


def statuses(capsys, folder):
    code, out = status(capsys, folder, "--json")
    assert code == 0, out.err
    return {s["path"]: s for s in map(json.loads, out.out.splitlines())}


def files(folder):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


def test_status_follows_a_run_running_then_stopped_then_finished_by_the_printed_command(tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench", "run", "--algo", "reptile", *SINE,
           "--results", str(tmp_path), "--device", "cpu", "--no-progress", "--checkpoint-every", "100"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = tmp_path / "sine" / "reptile" / "seed0"
    deadline = time.monotonic() + 120
    while True:  # until the run has logged a few rows past its first checkpoint
        state = json.loads((run / "state.json").read_text()) if (run / "state.json").is_file() else {}
        if state.get("step", 0) >= 200:
            break
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.02)
    try:
        seen = statuses(capsys, tmp_path)["sine/reptile/seed0"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert seen["state"] == "running" and seen["meta_iters"] == 2000 and 200 <= seen["step"] < 2000
    assert seen["ms_per_iter"] > 0 and seen["result"].startswith("train loss ")
    assert abs(seen["left_s"] - (2000 - seen["step"]) * seen["ms_per_iter"] / 1000) < 1e-6

    before = files(tmp_path)
    code, out = status(capsys, tmp_path)
    assert code == 0 and files(tmp_path) == before  # status writes nothing
    lines = out.out.splitlines()
    assert lines[0].split() == ["run", "state", "meta-iterations", "ms/iter", "training", "left", "result"]
    assert lines[1].split()[:2] == ["sine/reptile/seed0", "stopped"]
    assert lines[2] == "1 run(s): 1 stopped"
    checkpoint = json.loads((run / "state.json").read_text())["step"]
    assert lines[3].startswith(f"stopped: sine/reptile/seed0 continues from its checkpoint at meta-iteration "
                               f"{checkpoint:,} with `python -m bench run ")
    resume = shlex.split(re.search(r"`(.*)`", lines[3]).group(1))
    assert resume[-1] == "--resume" and resume[resume.index("--results") + 1] == str(tmp_path)
    done = subprocess.run([sys.executable, *resume[1:], "--no-progress"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "finished" and state["resumed_at"] == [checkpoint]

    final = json.loads((run / "final.json").read_text())
    seen = statuses(capsys, tmp_path)["sine/reptile/seed0"]
    assert seen["state"] == "finished" and seen["step"] == 2000 and seen["left_s"] is None
    assert seen["result"] == f"mse {final['value']:.4g} ± {final['ci95']:.4g} (20 tasks)"
    # The run folder itself, and a folder above it, work as well.
    assert statuses(capsys, run)["seed0"]["state"] == "finished"
    assert list(statuses(capsys, tmp_path / "sine")) == ["reptile/seed0"]


def test_failed_other_host_and_incomplete_runs(tmp_path, capsys):
    code = main(["run", "--algo", "reptile", *SINE, "--set", "meta_iters=60", "--set", "log_every=10",
                 "--set", "meta_lr=1e6", "--set", "meta_lr_final=1e6", "--results", str(tmp_path),
                 "--device", "cpu", "--no-progress", "--checkpoint-every", "1"])
    assert code == 3
    message = json.loads((tmp_path / "sine" / "reptile" / "seed0" / "state.json").read_text())["message"]
    elsewhere = tmp_path / "sine" / "joint" / "seed0"
    elsewhere.mkdir(parents=True)
    (elsewhere / "state.json").write_text(json.dumps({"state": "running", "step": 10, "host": "another-host"}))
    bare = tmp_path / "sine" / "maml" / "seed0"
    bare.mkdir(parents=True)
    (bare / "config.json").write_text(json.dumps({"meta_iters": 100}))

    seen = statuses(capsys, tmp_path)
    assert seen["sine/reptile/seed0"]["state"] == "failed" and message in seen["sine/reptile/seed0"]["detail"]
    assert "last good checkpoint: meta-iteration" in seen["sine/reptile/seed0"]["detail"]
    assert seen["sine/joint/seed0"]["state"] == "running?" and "another-host" in seen["sine/joint/seed0"]["detail"]
    assert seen["sine/maml/seed0"] | {"detail": ""} == {
        "path": "sine/maml/seed0", "state": "incomplete", "step": None, "meta_iters": 100, "ms_per_iter": None,
        "result": "", "detail": "", "left_s": None}
    code, out = status(capsys, tmp_path)
    assert code == 0 and "3 run(s): 1 running?, 1 incomplete, 1 failed" in out.out
    assert f"failed: sine/reptile/seed0: {message}" in out.out


def test_recent_cost_is_a_median_that_a_pause_does_not_move():
    clock = [(100 * i, 0.5 * i) for i in range(1, 30)]  # 5 ms per meta-iteration
    clock[20:] = [(step, seconds + 600.0) for step, seconds in clock[20:]]  # a 10-minute stop once
    assert recent_ms_per_iter(clock) == 5.0
    assert recent_ms_per_iter(clock[:1]) is None


def test_bad_or_empty_folder(tmp_path, capsys):
    code, out = status(capsys, tmp_path / "nowhere")
    assert code == 2 and out.err.startswith("error: results folder ") and out.err.count("\n") == 1
    code, out = status(capsys, tmp_path)
    assert code == 0 and out.out.startswith(f"no runs in {tmp_path}: start one with ")


def test_sweep_and_reproduce_status_list_every_planned_run_and_start_none(tmp_path, capsys):
    tiny = ["--set", "meta_iters=40", "--set", "eval_tasks=10", "--set", "eval_every=20", "--set", "log_every=10"]
    assert main(["run", "--algo", "reptile", "--preset", "sine", *tiny, "--results", str(tmp_path),
                 "--device", "cpu", "--no-progress"]) == 0
    before = files(tmp_path)
    capsys.readouterr()
    assert main(["sweep", "--preset", "sine", "--algos", "reptile,joint", "--seeds", "0,1", *tiny,
                 "--results", str(tmp_path), "--status", "--json"]) == 0
    seen = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(s["path"], s["state"], s["meta_iters"]) for s in seen] == [
        ("sine/reptile/seed0", "finished", 40), ("sine/reptile/seed1", "not started", 40),
        ("sine/joint/seed0", "not started", 40), ("sine/joint/seed1", "not started", 40)]
    assert files(tmp_path) == before  # nothing ran, no log was written

    from bench.reproduce import table_jobs

    assert main(["reproduce", "--table", "omniglot", "--seeds", "0-2", "--results", str(tmp_path / "none"),
                 "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    planned = len(table_jobs("omniglot", [0, 1, 2], {}))
    assert lines[-1] == f"{planned} run(s): {planned} not started" and len(lines) == planned + 2
    assert lines[1].split()[1:4] == ["not", "started", "0/60,000"]
    assert not (tmp_path / "none").exists()


def test_the_resume_command_keeps_the_evaluation_protocol(tmp_path):
    run = tmp_path / "results" / "omniglot-5w1s-maml" / "maml" / "seed3"
    config = {"algo": "maml", "preset": "omniglot-5w1s-maml", "seed": 3, "overrides": {"meta_iters": "100"},
              "device": "cuda", "eval_protocol": {"name": "shared"}, "own_protocol": {"name": "maml-paper"}}
    assert resume_command(run, config) == (
        "python -m bench run --algo maml --preset omniglot-5w1s-maml --seed 3 --set meta_iters=100 --device cuda "
        f"--eval-protocol both --results {tmp_path / 'results'} --resume")
    own = {**config, "eval_protocol": {"name": "maml-paper"}, "own_protocol": None}
    assert "--eval-protocol own --results" in resume_command(run, own)
    assert resume_command(run, {**config, "evaluated_from": {"run": "../../x"}}) is None
