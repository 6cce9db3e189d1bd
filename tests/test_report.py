"""The report generator on a tiny synthetic results folder (no training, no torch in the code under test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import published
from bench.report import ReportError, TIMESTAMP_PREFIX, add_parser, build_report, main_report
from bench.report_stats import pairwise

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("## omniglot-5w1s", "## omniglot-gradsum", "## sine", "### Results", "### Significance",
            "## Paper tables", "## Gradient combinations", "## Meta-gradient variance", "## Sine-wave predictions",
            "## Cost per meta-iteration", "## Settings of each run", "## Environment", "## Skipped runs")


def write_run(results: Path, preset: str, algo: str, seed: int, *, level: float, meta_iters: int = 300,
              metric: str = "accuracy", extra_config: dict | None = None, extra_final: dict | None = None) -> Path:
    """One run folder as bench.runner writes it, with curves that rise towards `level`."""
    path = results / preset / algo / f"seed{seed}"
    path.mkdir(parents=True)
    config = {"preset": preset, "algo": algo, "seed": seed, "overrides": {"meta_iters": str(meta_iters)},
              "device": "cpu", "task": "sine" if metric == "mse" else "omniglot", "meta_iters": meta_iters,
              "meta_batch": 5, "inner_steps": 4, "inner_lr": 0.003, "eval_tasks": 50, "transductive": False,
              "eval_every": 100, "eval_every_tasks": 20, "meta_grads": "1+2+3+4", "meta_grads_mean": False,
              **(extra_config or {})}
    (path / "config.json").write_text(json.dumps(config))
    (path / "env.json").write_text(json.dumps({"python": "3.11.9", "platform": "Linux", "torch": "2.13.0",
                                               "numpy": "2.4.6", "bench": "0.1.0", "device": "cpu",
                                               "device_name": "x86_64", "cpu_threads": 2, "git_commit": "abc123"}))
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(100, meta_iters + 1, 100):
        wall = step * (0.01 + 0.001 * seed)
        rows.append((step, wall, "train", "loss", 1.0 / step))
        value = level * step / meta_iters + rng.normal(0, 0.01)
        rows.append((step, wall, "test", metric, value))
    pd.DataFrame(rows, columns=["step", "wall_s", "split", "metric", "value"]).to_csv(path / "metrics.csv", index=False)
    final = {"metric": metric, "value": rows[-1][-1], "ci95": 0.02, "tasks": 50, "split": "test",
             "interval": "95% Student-t interval over per-task means", "transductive": False, "algo": algo,
             "preset": preset, "seed": seed, "meta_iters": meta_iters, "train_seconds": 3.0,
             "eval_seconds": 1.0, "ms_per_meta_iter": 10.0, **(extra_final or {})}
    (path / "final.json").write_text(json.dumps(final))
    return path


def write_variance(path: Path, algo: str, seed: int) -> None:
    steps = np.arange(100, 301, 100)
    pd.DataFrame({"step": steps, "algo": algo, "mean_norm": 1.0 + 0.1 * seed + 0 * steps,
                  "variance": 0.5 / steps, "snr": steps / 100.0, "tasks": 8}).to_csv(path / "variance.csv", index=False)


def write_sine(path: Path, joint: bool) -> None:
    x = np.linspace(-5, 5, 50)
    rows = [("true", "", xi, np.sin(xi)) for xi in x] + [("support", "", xi, np.sin(xi)) for xi in x[::5]]
    for steps in (0, 8, 16, 24, 32):
        scale = 0.0 if joint else steps / 32
        rows += [("pred", steps, xi, scale * np.sin(xi)) for xi in x]
    pd.DataFrame(rows, columns=["kind", "steps", "x", "y"]).to_csv(path / "sine_predictions.csv", index=False)


def make_results(res: Path, *, full: bool = True) -> Path:
    """Two algorithms x 2 seeds on omniglot-5w1s; with `full`, also the gradsum family
    (two combinations and joint training) and the sine task, a variance.csv and predictions."""
    for seed in (0, 1):
        d = write_run(res, "omniglot-5w1s", "reptile", seed, level=0.7,
                      extra_final={"own_protocol": {"metric": "accuracy", "value": 0.71, "ci95": 0.03, "tasks": 50}})
        write_run(res, "omniglot-5w1s", "maml", seed, level=0.6)
        if not full:
            continue
        write_variance(d, "reptile", seed)
        for grads, mean in (("1+2", False), ("1+2", True)):
            write_run(res / f"{grads}-{mean}", "omniglot-gradsum", "gradsum", seed, level=0.5 + 0.1 * mean,
                      extra_config={"meta_grads": grads, "meta_grads_mean": mean})
        write_run(res, "omniglot-gradsum", "joint", seed, level=0.2)
        for algo in ("reptile", "joint"):
            d = write_run(res, "sine", algo, seed, level=0.1 if algo == "reptile" else 2.0, metric="mse")
            if seed == 0:
                write_sine(d, joint=algo == "joint")
    return res


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict:
    """One report from the full synthetic results, shared by the tests that only read it
    (a generation takes seconds: the suite must stay fast)."""
    root = tmp_path_factory.mktemp("report")
    results, out = make_results(root / "results"), root / "out"
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        report = build_report(results, out)
    return {"results": results, "out": out, "text": report.read_text(), "stdout": buf.getvalue(),
            "figures": {p.name: p.read_bytes() for p in sorted((out / "figures").iterdir())}}


def without_timestamp(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith(TIMESTAMP_PREFIX)]


def test_report_has_every_section_and_figure(generated: dict):
    text, out = generated["text"], generated["out"]
    for section in SECTIONS:
        assert section in text, section
    stems = ("omniglot-5w1s-curves", "omniglot-gradsum-curves", "sine-curves", "gradient-combinations",
             "omniglot-5w1s-variance", "sine-sine")
    for stem in stems:
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 0
        assert f"figures/{stem}.png" in text
    assert "g1+g2" in text and "mean(g1+g2)" in text and "g1 (joint)" in text
    assert "95.39 +- 0.09" in text           # Reptile row of Table 2 beside the reptile run
    assert "**reduced**" in text and "REDUCED" in text  # 300 of 100,000 meta-iterations
    assert "own protocol" in text
    assert "Welch" in text
    assert "no published table number" in text  # the sine task
    assert sum(line.startswith(TIMESTAMP_PREFIX) for line in text.splitlines()) == 1
    assert generated["stdout"].count("wrote figures/") == len(stems)


def test_missing_variance_and_predictions_say_how_to_produce_them(tmp_path: Path):
    text = build_report(make_results(tmp_path / "results", full=False), tmp_path / "out", progress=False).read_text()
    assert "python -m bench variance" in text
    assert "sine_predictions.csv" in text and "--preset sine" in text
    assert "No `omniglot-gradsum*` runs" in text


def test_broken_runs_are_skipped_with_the_reason(tmp_path: Path):
    results = make_results(tmp_path / "results", full=False)
    (results / "omniglot-5w1s" / "maml" / "seed1" / "final.json").unlink()
    (results / "omniglot-5w1s" / "reptile" / "seed1" / "metrics.csv").write_bytes(b"\x00\xff garbage\n1,2\n")
    # The state marker is read first: a failed or unfinished run is skipped, whatever files it has.
    for seed in (0, 1):
        write_run(results, "omniglot-5w1s", "fomaml", seed, level=0.6)
    (results / "omniglot-5w1s" / "fomaml" / "seed0" / "state.json").write_text(json.dumps(
        {"state": "failed", "step": 200, "message": "training diverged: the loss is nan"}))
    (results / "omniglot-5w1s" / "fomaml" / "seed1" / "state.json").write_text(json.dumps(
        {"state": "running", "step": 100}))
    (results / "omniglot-5w1s" / "reptile" / "seed0" / "state.json").write_text(json.dumps(
        {"state": "finished", "step": 300}))
    text = build_report(results, tmp_path / "out", progress=False).read_text()
    skipped = text.split("## Skipped runs")[1]
    assert "omniglot-5w1s/fomaml/seed0" in skipped and "failed (last checkpoint: meta-iteration 200)" in skipped
    assert "training diverged: the loss is nan" in skipped
    assert "omniglot-5w1s/fomaml/seed1" in skipped and "still running, or killed" in skipped
    assert "omniglot-5w1s/reptile/seed0" not in skipped
    assert "omniglot-5w1s/maml/seed1" in skipped and "missing final.json" in skipped
    assert "omniglot-5w1s/reptile/seed1" in skipped and "metrics.csv" in skipped
    assert (tmp_path / "out" / "figures" / "omniglot-5w1s-curves.png").exists()
    assert "not tested (needs ≥2 seeds each)" in text


def test_empty_folder_raises_a_clear_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"no runs in .*empty.*python -m bench run --algo reptile"):
        build_report(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ReportError, match="does not exist"):
        build_report(tmp_path / "missing", tmp_path / "out")


def test_cli_entry_returns_2_with_one_line(tmp_path: Path, capsys):
    import argparse
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert (args.results, args.out) == (str(tmp_path / "missing"), str(tmp_path / "out"))
    assert main_report(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert parser.parse_args(["report"]).results == "results" and parser.parse_args(["report"]).out == "reports"


def test_two_generations_are_identical_but_the_timestamp(generated: dict):
    out = generated["out"]
    second = build_report(generated["results"], out, progress=False).read_text()
    assert without_timestamp(second) == without_timestamp(generated["text"])
    assert {p.name: p.read_bytes() for p in sorted((out / "figures").iterdir())} == generated["figures"]


def test_published_lookup():
    assert published.lookup("omniglot-5w1s", "reptile", transductive=False).value == 95.39
    assert published.lookup("omniglot-5w1s", "reptile", transductive=True).value == 97.68
    assert published.lookup("omniglot-20w5s", "maml").method == "MAML + transduction"
    assert published.lookup("omniglot-5w1s-maml", "maml").source.startswith("MAML paper")
    fomaml = published.lookup("omniglot-5w1s-maml", "fomaml")  # the Reptile paper quotes it for Omniglot
    assert (fomaml.value, fomaml.method, fomaml.source) == (98.3, "FOMAML + transduction", published.REPTILE_T2)
    assert published.lookup("miniimagenet-5w1s-maml", "fomaml").source.startswith("MAML paper")
    assert published.lookup("miniimagenet-5w1s-maml", "fomaml").value == 48.07
    assert published.lookup("sine", "reptile") is None
    assert "not a paper table" in published.no_number_note("sine", "reptile")
    assert published.full_scale("omniglot-20w1s").meta_iters == 200_000
    assert published.full_scale("omniglot-gradsum-x").meta_iters == 40_000
    assert all(p.source for p in published.PUBLISHED)


def test_significance_flags_different_and_not_identical_pairs():
    fin = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"],
                        "value": [70.0, 71.0, 70.5, 90.0, 91.0, 90.5, 70.0, 71.0, 70.5, 50.0]})
    pairs = pairwise(fin, ["a", "b", "c", "d"]).set_index(["a", "b"])
    assert pairs.loc[("a", "b"), "significant"] and pairs.loc[("a", "b"), "p"] < 0.001
    assert not pairs.loc[("a", "c"), "significant"] and pairs.loc[("a", "c"), "p"] == pytest.approx(1.0)
    assert not pairs.loc[("a", "d"), "tested"]


def test_report_modules_do_not_import_torch():
    code = ("import sys, bench.report, bench.published; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_paper_tables_are_filled_from_the_runs_of_each_row(tmp_path: Path):
    """`bench reproduce`'s runs land in the right cells: the row by algorithm, preset
    family and transduction, the column by the preset's ways and shots."""
    res = tmp_path / "results"
    for seed in (0, 1):
        write_run(res, "omniglot-5w5s", "reptile", seed, level=0.9)
        write_run(res, "omniglot-5w5s", "reptile-transductive", seed, level=0.95,
                  extra_config={"algo": "reptile", "transductive": True}, extra_final={"transductive": True})
    write_run(res, "omniglot-20w1s-maml", "maml", 0, level=0.8,
              extra_config={"transductive": True}, extra_final={"transductive": True})
    text = build_report(res, tmp_path / "out", progress=False).read_text()
    table = text.split("## Paper tables")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table.splitlines()
            if line.startswith("| ") and "---" not in line}
    # columns: 5w1s, 5w5s, 20w1s, 20w5s
    assert rows["Reptile"][1].startswith("90.") and "(2 seeds, **reduced**) / 98.9 +- 0.1" in rows["Reptile"][1]
    assert rows["Reptile + transduction"][1].startswith("95.") and "99.48 +- 0.06" in rows["Reptile + transduction"][1]
    assert rows["MAML + transduction"][2].startswith("80.") and "(1 seed, **reduced**)" in rows["MAML + transduction"][2]
    assert rows["Reptile"][0].startswith("— / 95.39") and rows["FOMAML + transduction"][2].startswith("— / 89.4")
    assert "reptile + transduction" in text  # its own method in the preset's section
    assert "Table 1: no runs yet" in text


def test_a_preset_run_at_two_scales_has_a_section_per_scale(tmp_path: Path):
    """Runs of one preset and method at different lengths are never averaged together: each
    scale has its own section (the longest first), and the paper table holds the longest runs."""
    res = tmp_path / "results"
    for seed in (0, 1):
        write_run(res / "short", "omniglot-5w1s", "reptile", seed, level=0.7)
    write_run(res / "long", "omniglot-5w1s", "reptile", 0, level=0.95, meta_iters=1000,
              extra_config={"eval_tasks": 10_000})
    text = build_report(res, tmp_path / "out", progress=False).read_text()
    long_title = "omniglot-5w1s at 1,000 meta-iterations, 10,000 test tasks"
    short_title = "omniglot-5w1s at 300 meta-iterations, 50 test tasks"
    assert text.index(f"## {long_title}") < text.index(f"## {short_title}")
    assert "(#omniglot-5w1s-at-1000-meta-iterations-10000-test-tasks)" in text
    long_part = text.split(f"## {long_title}")[1].split("\n## ")[0]
    short_part = text.split(f"## {short_title}")[1].split("\n## ")[0]
    def reptile_row(part: str) -> list[str]:
        return next(line for line in part.splitlines() if line.startswith("| reptile |")).split(" | ")
    assert reptile_row(long_part)[1] == "0" and 90 < float(reptile_row(long_part)[2]) < 100
    assert reptile_row(short_part)[1] == "0, 1" and 65 < float(reptile_row(short_part)[2]) < 75
    for key in ("omniglot-5w1s-1000-iters-10000-tasks", "omniglot-5w1s-300-iters-50-tasks"):
        assert (tmp_path / "out" / "figures" / f"{key}-curves.png").stat().st_size > 0
    table = text.split("## Paper tables")[1].split("\n## ")[0]
    reptile = next(line for line in table.splitlines() if line.startswith("| Reptile |"))
    assert 90 < float(reptile.split(" | ")[1].split()[0]) < 100 and "(1 seed, **reduced**) / 95.39" in reptile
    settings = text.split("## Settings of each run")[1].split("\n## ")[0]
    assert sum(line.startswith("| omniglot-5w1s | reptile |") for line in settings.splitlines()) == 2


def test_cost_section_shows_each_device_s_speed_table(tmp_path: Path):
    res = make_results(tmp_path / "results", full=False)
    report = build_report(res, tmp_path / "out", progress=False).read_text()
    assert "No speed table in" in report and "python -m bench speed" in report

    (res / "speed").mkdir()
    pd.DataFrame([
        {"algo": "maml", "implementation": "batched", "device": "cpu", "preset": "omniglot-5w1s-maml",
         "threads": 2, "torch": "2.14.1", "ms_per_meta_iter": 241.2, "peak_mem_mb": 305.1, "gflop": 10.51,
         "gflop_per_s": 43.58, "matmul_gflop_per_s": 201.7, "matmul_form": "1x1 convolution",
         "speedup_vs_naive": 1.73, "speedup_vs_naive_ci95_low": 1.61, "speedup_vs_naive_ci95_high": 1.85,
         "speedup_vs_learn2learn": 1.86, "speedup_vs_learn2learn_ci95_low": 1.8,
         "speedup_vs_learn2learn_ci95_high": 1.93},
        {"algo": "maml", "implementation": "learn2learn", "device": "cpu", "preset": "omniglot-5w1s-maml",
         "threads": 2, "torch": "2.14.1", "ms_per_meta_iter": 448.0, "peak_mem_mb": 18.0,
         "speedup_vs_naive": 0.93, "speedup_vs_learn2learn": 1.0},
    ]).to_csv(res / "speed" / "cpu.csv", index=False)
    (res / "speed" / "cuda.csv").write_text("not,a\nspeed,table\n")
    report = build_report(res, tmp_path / "out", progress=False).read_text()
    section = report.split("## Cost per meta-iteration")[1].split("\n## ")[0]
    assert "### cpu" in section and "torch 2.14.1, 2 thread(s); matrix product as 1x1 convolution." in section
    assert ("| maml | omniglot-5w1s-maml | batched | 241.2 | 305.1 | 43.6 (21.6%) | 1.73 [1.61, 1.85] | "
            "1.86 [1.80, 1.93] |") in section
    # a row without intervals or arithmetic (the naive row's own intervals, or a table from before either was written)
    assert "| maml | omniglot-5w1s-maml | learn2learn | 448.0 | 18.0 | - | 0.93 | 1.00 |" in section
    assert "cuda.csv` is not a speed table (missing algo" in section
    assert "### evaluation" not in section

    (res / "speed" / "evaluation").mkdir()
    pd.DataFrame([{"preset": "omniglot-5w1s", "implementation": "compiled", "device": "cpu", "tasks": 100,
                   "threads": 2, "torch": "2.13.0", "ms_per_task": 81.5, "first_call_s": 40.2,
                   "speedup_vs_plain": 1.52}]).to_csv(res / "speed" / "evaluation" / "cpu.csv", index=False)
    report = build_report(res, tmp_path / "out", progress=False).read_text()
    section = report.split("## Cost per meta-iteration")[1].split("\n## ")[0]
    assert "### evaluation, cpu" in section and "torch 2.13.0, 2 thread(s)" in section
    assert "| omniglot-5w1s | compiled | 100 | 81.5 | 40.2 | 1.52 |" in section  # no interval columns


def test_an_accuracy_axis_ends_at_100_where_a_two_seed_band_passes_it(tmp_path: Path, monkeypatch):
    from bench import report_figures
    drawn = []
    monkeypatch.setattr(report_figures, "save", lambda fig, stem: drawn.append(fig) or [])
    df = pd.DataFrame({"method": "reptile", "step": [1000, 1000, 2000, 2000], "seed": [0, 1, 0, 1],
                       "value": [90.0, 99.0, 93.0, 99.5], "wall_s_mean": [40.0, 40.0, 80.0, 80.0]})
    for top in (None, 100.0):
        report_figures.learning_curves(df, ["reptile"], "test accuracy (%)", "t", tmp_path / "c", top)
    free, capped = ([ax.get_ylim()[1] for ax in fig.axes] for fig in drawn)
    assert all(t > 101 for t in free)  # the t-interval over two seeds reaches far past 100
    assert capped == [100.5, 100.5]
