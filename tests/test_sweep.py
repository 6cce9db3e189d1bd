"""Sweeps: the product of algorithms and seeds as separate runs, with local workers and
on a Ray cluster; rerunning skips finished runs and resumes unfinished ones; the paper
tables as sweeps."""

import json

import pytest

from bench.cli import main

TINY = ["--preset", "sine", "--set", "meta_iters=30", "--set", "eval_tasks=10", "--set", "eval_every=10",
        "--set", "eval_every_tasks=5", "--set", "log_every=10"]


def files(results):
    return {p.relative_to(results).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(results.rglob("*")) if p.is_file() and "logs" not in p.parts}


def state(run):
    return json.loads((run / "state.json").read_text())


def test_local_sweep_runs_every_job_then_skips_finished_and_resumes_unfinished(tmp_path, capsys):
    argv = ["sweep", "--algos", "reptile,joint", "--seeds", "0-1", *TINY, "--results", str(tmp_path),
            "--workers", "2", "--device", "cpu"]
    assert main(argv) == 0
    runs = [tmp_path / "sine" / a / f"seed{s}" for a in ("reptile", "joint") for s in (0, 1)]
    for run in runs:
        assert state(run)["state"] == "finished"
        config = json.loads((run / "config.json").read_text())
        assert config["meta_iters"] == 30 and config["overrides"]["eval_tasks"] == "10"
        log = tmp_path / "logs" / "sine" / run.parent.name / f"{run.name}.log"
        assert log.read_text().startswith("$ ") and "--resume" in log.read_text()
    assert "all 4 runs finished" in capsys.readouterr().out

    # Rerunning is safe: nothing finished is touched.
    before = files(tmp_path)
    assert main(argv) == 0
    assert files(tmp_path) == before
    assert capsys.readouterr().out.count("[skip]") == 4

    # A run killed after its last checkpoint (no final.json yet) is resumed, not redone.
    killed = runs[1]
    final = json.loads((killed / "final.json").read_text())
    (killed / "final.json").unlink()
    (killed / "state.json").write_text(json.dumps({**state(killed), "state": "running"}))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("[skip]") == 3 and "sine/reptile/seed1: finished" in out
    assert state(killed)["resumed_at"] == [30]
    again = json.loads((killed / "final.json").read_text())
    assert {k: v for k, v in again.items() if "seconds" not in k and k != "ms_per_meta_iter"} == \
        {k: v for k, v in final.items() if "seconds" not in k and k != "ms_per_meta_iter"}


def test_sweep_with_batch_seeds_runs_each_algorithm_s_seeds_as_one_job(tmp_path, capsys):
    argv = ["sweep", "--algos", "reptile,joint", "--seeds", "0-2", *TINY, "--results", str(tmp_path),
            "--device", "cpu", "--batch-seeds"]
    assert main(argv) == 0
    assert "all 6 runs finished" in capsys.readouterr().out
    for algo in ("reptile", "joint"):
        log = (tmp_path / "logs" / "sine" / algo / "seeds0,1,2.log").read_text()
        assert "--seeds 0,1,2 --batch-seeds" in log and "--resume" in log
        for seed in range(3):
            run = tmp_path / "sine" / algo / f"seed{seed}"
            assert state(run)["state"] == "finished"
            assert json.loads((run / "final.json").read_text())["seeds_together"] == 3
    # Rerunning skips them all; a run left unfinished is resumed alone.
    before = files(tmp_path)
    assert main(argv) == 0 and files(tmp_path) == before
    run = tmp_path / "sine" / "joint" / "seed2"
    (run / "final.json").unlink()
    (run / "state.json").write_text(json.dumps({**state(run), "state": "running"}))
    assert main(argv) == 0
    assert capsys.readouterr().out.count("[skip]") == 6 + 5
    assert state(run)["state"] == "finished" and state(run)["resumed_at"] == [30]


def test_ray_sweep_runs_the_same_jobs_as_ray_tasks(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same threads per run both ways
    argv = ["sweep", "--algos", "reptile,joint", "--seeds", "0", *TINY, "--results", str(tmp_path),
            "--device", "cpu", "--ray"]
    assert main(argv) == 0, capsys.readouterr().err
    for algo in ("reptile", "joint"):
        assert state(tmp_path / "sine" / algo / "seed0")["state"] == "finished"
    # The same runs as local workers make (with the same threads per run): identical
    # metrics apart from wall-clock.
    assert main(["sweep", "--algos", "reptile", "--seeds", "0", *TINY, "--results", str(tmp_path / "local"),
                 "--device", "cpu"]) == 0

    def rows(results):
        lines = (results / "sine" / "reptile" / "seed0" / "metrics.csv").read_text().splitlines()
        return [line.split(",")[:1] + line.split(",")[2:] for line in lines]
    assert rows(tmp_path) == rows(tmp_path / "local")


def test_a_run_with_other_settings_stops_the_sweep_before_anything_runs(tmp_path, capsys):
    assert main(["run", "--algo", "reptile", *TINY, "--results", str(tmp_path), "--device", "cpu",
                 "--no-progress"]) == 0
    run = tmp_path / "sine" / "reptile" / "seed0"
    before = files(tmp_path)
    capsys.readouterr()
    code = main(["sweep", "--algos", "reptile,joint", "--seeds", "0", *TINY, "--set", "inner_lr=0.05",
                 "--results", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{run} holds a run made with other settings (inner_lr=0.02 (now 0.05))" in err
    assert files(tmp_path) == before and not (tmp_path / "sine" / "joint").exists()


@pytest.mark.parametrize("argv,message", [
    (["--algos", "reptil"], "unknown algorithm 'reptil'"),
    (["--algos", "reptile", "--seeds", "two"], "--seeds 'two' is not a list of seeds"),
    (["--algos", "fomaml", "--set", "inner_steps=1"], "sine fomaml seed 0: fomaml needs inner_steps >= 2"),
    (["--algos", "reptile", "--workers", "0"], "--workers 0"),
])
def test_bad_sweeps_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    code = main(["sweep", "--preset", "sine", *argv, "--results", str(tmp_path / "r"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("table,runs", [("omniglot", 16), ("miniimagenet", 8)])
def test_reproduce_queues_every_row_of_a_paper_table(table, runs, capsys):
    assert main(["reproduce", "--table", table, "--seeds", "0-2", "--set", "meta_iters=1000", "--dry-run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 3 * runs
    settings = ("5w1s", "5w5s", "20w1s", "20w5s") if table == "omniglot" else ("5w1s", "5w5s")
    for s in settings:
        for algo, preset, transductive in (("maml", f"{table}-{s}-maml", "true"),
                                           ("fomaml", f"{table}-{s}-maml", "true"),
                                           ("reptile", f"{table}-{s}", "false")):
            expected = (f"python -m bench run --algo {algo} --preset {preset} --seed 2 "
                        f"--set transductive={transductive} --set meta_iters=1000 ")
            assert any(c.startswith(expected) and c.endswith("--resume --no-progress") for c in commands), expected
        # "Reptile + transduction": the Reptile run scored again, right after its training.
        trained = commands.index(f"python -m bench run --algo reptile --preset {table}-{s} --seed 2 "
                                 "--set transductive=false --set meta_iters=1000 --results results --eval-protocol "
                                 "shared --checkpoint-every 60s --resume --no-progress")
        assert commands[trained + 1] == (
            f"python -m bench evaluate results/{table}-{s}/reptile/seed2 --set transductive=true --out "
            f"results/{table}-{s}/reptile-transductive/seed2 --eval-protocol shared --no-progress")
    assert sum(" evaluate " in c for c in commands) == 3 * len(settings)


def test_reproduce_with_batch_seeds_queues_one_command_per_row(capsys):
    assert main(["reproduce", "--table", "omniglot", "--seeds", "0-4", "--batch-seeds", "--dry-run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    trained = [c for c in commands if " evaluate " not in c]
    assert len(trained) == 12 and all(" --seeds 0,1,2,3,4 --batch-seeds " in c for c in trained)
    assert len(set(trained)) == 12
    assert len(commands) == 12 + 4 * 5  # each seed of each column's Reptile run scored again, transductively


def test_transductive_variant_gets_its_own_run_folder(tmp_path):
    for extra in ([], ["--set", "transductive=true"]):
        assert main(["run", "--algo", "reptile", *TINY, *extra, "--results", str(tmp_path), "--device", "cpu",
                     "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "sine").iterdir()) == ["reptile", "reptile-transductive"]


def test_a_run_differing_only_in_evaluation_is_scored_from_its_source_not_trained_again(tmp_path, capsys):
    from bench.sweep import Job, Options, run_sweep

    items = (("meta_iters", "30"), ("eval_tasks", "10"), ("eval_every", "10"), ("eval_every_tasks", "5"),
             ("log_every", "10"))
    source = Job("sine", "reptile", 0, (("transductive", "false"), *items))
    rescored = Job("sine", "reptile", 0, (("transductive", "true"), *items), source=source)
    options = Options(tmp_path, device="cpu")
    summaries = run_sweep([source, rescored], options, echo=lambda line: None)
    assert [s["state"] for s in summaries] == ["finished", "finished"]
    trained, scored = tmp_path / "sine" / "reptile" / "seed0", tmp_path / "sine" / "reptile-transductive" / "seed0"
    config = json.loads((scored / "config.json").read_text())
    assert config["transductive"] is True and config["evaluated_from"]["run"] == "../../reptile/seed0"
    assert config["evaluated_from"]["settings"] == {"transductive": True}
    assert not (scored / "checkpoint.pt").exists()  # nothing was meta-trained for it
    log = (tmp_path / "logs" / "sine" / "reptile" / "seed0.log").read_text()
    assert [line.split()[4] for line in log.splitlines() if line.startswith("$ ")] == ["run", "evaluate"]

    # Its source finished, the scored run missing: only the scoring runs again.
    before = files(trained)
    for f in scored.iterdir():
        f.unlink()
    assert [s["run"] for s in run_sweep([source, rescored], options, echo=lambda line: None)] == \
        ["sine/reptile-transductive/seed0"]
    assert files(trained) == before and state(scored)["state"] == "finished"
    assert run_sweep([source, rescored], options, echo=lambda line: None) == []  # all finished: nothing to do

    # A run already in its folder, even unfinished, is resumed as a run, never replaced.
    (scored / "final.json").unlink()
    assert not rescored.rescores(tmp_path) and Job("sine", "joint", 0, items, source=source).rescores(tmp_path)


def test_reproduce_one_column(capsys):
    assert main(["reproduce", "--table", "omniglot", "--columns", "5w5s", "--seeds", "0", "--dry-run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert [c.split()[3:8:2] for c in commands[:3]] == [
        ["run", "maml", "omniglot-5w5s-maml"], ["run", "fomaml", "omniglot-5w5s-maml"],
        ["run", "reptile", "omniglot-5w5s"]]
    assert len(commands) == 4 and commands[3].startswith(
        "python -m bench evaluate results/omniglot-5w5s/reptile/seed0 --set transductive=true ")
    assert main(["reproduce", "--table", "miniimagenet", "--columns", "20w1s", "--dry-run"]) == 2
    assert "unknown column '20w1s'" in capsys.readouterr().err
