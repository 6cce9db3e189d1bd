"""Algorithms from other packages (entry-point group `bench.algorithms`): found by the
command line, run by the same harness (a query when they ask for one), never replacing a
built-in; a plugin that cannot load is a one-line error."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

TINY = ["--preset", "sine", "--set", "meta_iters=30", "--set", "eval_tasks=20", "--set", "eval_every=10",
        "--set", "eval_every_tasks=5", "--set", "log_every=10", "--device", "cpu", "--no-progress"]
PLUGIN = '''
from algorithms import MetaStep, fomaml, reptile


def half_reptile(loss, params, inner_state, episodes, cfg):
    """Reptile's meta-gradient halved: with an SGD outer loop, Reptile at half the step size."""
    step = reptile(loss, params, inner_state, episodes, cfg)
    return MetaStep({k: g / 2 for k, g in step.grad.items()}, step.inner_state, step.logs)


def query_fomaml(loss, params, inner_state, episodes, cfg):
    return fomaml(loss, params, inner_state, episodes, cfg)


query_fomaml.uses_query = True


def not_reptile(*args):
    raise AssertionError("a plugin never replaces a built-in algorithm")
'''


def install(tmp_path, entry_points):
    """A package on PYTHONPATH that declares `entry_points` in group bench.algorithms."""
    (tmp_path / "toyplug.py").write_text(PLUGIN)
    info = tmp_path / "toyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bench.algorithms]\n" + textwrap.dedent(entry_points))
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}


def bench(env, *args):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def final(results, method):
    return json.loads((results / "sine" / method / "seed0" / "final.json").read_text())


def test_a_plugin_runs_through_the_harness(tmp_path):
    env = install(tmp_path, """\
        half-reptile = toyplug:half_reptile
        query-fomaml = toyplug:query_fomaml
        reptile = toyplug:not_reptile
        """)
    out = tmp_path / "results"
    for algo, extra in (("half-reptile", []), ("reptile", ["--set", "meta_lr=0.05"]),
                        ("query-fomaml", []), ("fomaml", [])):
        done = bench(env, "run", "--algo", algo, *TINY, *extra, "--results", str(out))
        assert done.returncode == 0, done.stderr
    # Half Reptile's meta-gradient under the sine preset's SGD outer loop (step 0.1 annealed to 0)
    # is Reptile at half the step: the same run, to float rounding.
    assert final(out, "half-reptile")["value"] == pytest.approx(final(out, "reptile")["value"], rel=1e-6)
    assert json.loads((out / "sine" / "half-reptile" / "seed0" / "config.json").read_text())["algo"] == "half-reptile"
    # uses_query: the plugin gets FOMAML's episodes, query minibatch included, so it is FOMAML.
    assert final(out, "query-fomaml")["value"] == final(out, "fomaml")["value"]


def test_a_plugin_that_cannot_load_is_one_line(tmp_path):
    env = install(tmp_path, "broken = toyplug_missing:fn\n")
    done = bench(env, "run", "--algo", "reptile", *TINY, "--results", str(tmp_path / "r"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: cannot load algorithm 'broken' (toyplug_missing:fn, entry point group "
                                  "bench.algorithms): ModuleNotFoundError")
    assert not (tmp_path / "r").exists()
