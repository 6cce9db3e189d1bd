"""`python -m bench check`: the committed reference, a passing check, a crippled setting
caught, bad input refused in one line. Driven through the module's own subcommand
parser, as bench/cli.py drives it."""

import argparse
import json

import pytest
import torch

from bench import check
from bench.errors import BenchError
from conftest import REPO


def run_check(*argv, capsys):
    """(exit code, stdout, stderr) of `python -m bench check ARGV`, as the CLI reports them."""
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    check.add_parser(sub)
    args = p.parse_args(["check", *argv])
    try:
        code = check.main_check(args)
    except BenchError as e:
        print(f"error: {e}")
        code = e.exit_code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_reference_is_well_formed_and_covers_every_check_run():
    path = REPO / "results" / "reference" / "check.json"
    assert check.REFERENCE == path
    text = path.read_text()
    ref = json.loads(text)
    assert text == json.dumps(ref, indent=2, sort_keys=True) + "\n"  # as --regenerate writes it
    assert ref["k"] == check.K and ref["floor"] == check.FLOOR and ref["check_seed"] == check.CHECK_SEED
    assert ref["command"].startswith("python -m bench check --regenerate") and ref["torch"]
    assert set(ref["runs"]) == {r.name for r in check.RUNS}
    for r in check.RUNS:
        entry = ref["runs"][r.name]
        assert (entry["preset"], entry["algo"], entry["overrides"]) == (r.preset, r.algo, r.overrides)
        values = list(entry["seeds"].values())
        assert len(values) >= 3 and str(check.CHECK_SEED) in entry["seeds"]
        assert entry == {**entry, **check.band(values)}
        low, high = entry["band"]
        assert low <= entry["mean"] <= high and all(low <= v <= high for v in values)
    check.read_reference(path, list(check.RUNS))  # what the check itself accepts


def test_learning_is_visible_in_the_reference():
    runs = json.loads(check.REFERENCE.read_text())["runs"]
    mean = {name: e["mean"] for name, e in runs.items()}
    assert mean["sine-reptile"] < mean["sine-joint"] / 2
    for algo in ("reptile", "fomaml", "maml"):
        assert runs[f"omniglot-5w1s-{algo}"]["band"][0] > runs["omniglot-5w1s-joint"]["band"][1]
    assert runs["omniglot-5w1s-joint"]["mean"] > 0.2  # above chance (5 ways)


def test_band():
    assert check.band([1.0, 1.0, 1.0]) == {"mean": 1.0, "std": 0.0, "band": [0.98, 1.02]}  # the floor
    b = check.band([0.4, 0.5, 0.6], k=4)
    assert b["mean"] == pytest.approx(0.5) and b["std"] == pytest.approx(0.1)
    assert b["band"] == pytest.approx([0.1, 0.9])
    assert check.band([0.0, 0.0, 3.0], k=0.1)["band"][1] == 3.0  # widened to hold every seed


def test_seeds():
    assert check.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert check.parse_seeds("2,0,1,1") == [0, 1, 2]
    for bad in ("1-5", "0,1", "zero"):
        with pytest.raises(BenchError, match="--seeds"):
            check.parse_seeds(bad)


def test_the_sine_reptile_check_passes(tmp_path, capsys):
    code, out, err = run_check("--runs", "sine-reptile", "--keep", str(tmp_path), capsys=capsys)
    assert code == 0, out + err
    row = next(line for line in out.splitlines() if line.startswith("sine-reptile"))
    assert row.split()[1:2] == ["mse"] and " ok " in row
    final = json.loads((tmp_path / "sine-reptile" / "sine" / "reptile" / "seed0" / "final.json").read_text())
    ref = json.loads(check.REFERENCE.read_text())["runs"]["sine-reptile"]
    if json.loads(check.REFERENCE.read_text())["torch"] == torch.__version__:
        # The CPU reproduces the reference (exactly at its thread count; another count
        # sums in another order, a relative drift of about 1e-4 here).
        assert final["value"] == pytest.approx(ref["seeds"]["0"], rel=1e-2)


def test_a_crippled_inner_lr_moves_sine_reptile(capsys):
    code, out, err = run_check("--runs", "sine-reptile", "--set", "inner_lr=1e-6", capsys=capsys)
    assert code == 1
    assert "MOVED" in out
    message = out.splitlines()[-1]
    assert message.startswith("error: sine-reptile moved: mse ") and "outside its reference band" in message
    assert "--regenerate" in message and "results/reference/check.json" in message


def test_bad_input_is_one_line(tmp_path, capsys):
    code, out, _ = run_check("--runs", "sine-reptil", capsys=capsys)
    assert code == 2 and out == "error: unknown check run 'sine-reptil': did you mean 'sine-reptile'?\n"

    missing = tmp_path / "none.json"
    code, out, _ = run_check("--runs", "sine-reptile", "--reference", str(missing), capsys=capsys)
    assert code == 2 and out.count("\n") == 1
    assert out.startswith(f"error: reference file {missing} not found") and "--regenerate" in out

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"runs": {"sine-reptile": ')
    code, out, _ = run_check("--runs", "sine-reptile", "--reference", str(corrupt), capsys=capsys)
    assert code == 2 and out.count("\n") == 1 and "is unreadable" in out

    corrupt.write_text('{"runs": {}}')
    code, out, _ = run_check("--runs", "sine-joint", "--reference", str(corrupt), capsys=capsys)
    assert code == 2 and out == (f"error: reference file {corrupt} has no entry for sine-joint: regenerate it "
                                 f"with `{check.REGENERATE} --reference {corrupt}`\n")

    stale = json.loads(check.REFERENCE.read_text())
    stale["runs"]["sine-reptile"]["overrides"]["meta_iters"] = "1"
    corrupt.write_text(json.dumps(stale))
    code, out, _ = run_check("--runs", "sine-reptile", "--reference", str(corrupt), capsys=capsys)
    assert code == 2 and out.count("\n") == 1 and "was made with other settings" in out

    code, out, _ = run_check("--runs", "sine-reptile", "--set", "inner_lr=fast", capsys=capsys)
    assert code == 2 and out.startswith("error: setting 'inner_lr' must be a number")

    (tmp_path / "sine-reptile").mkdir()
    code, out, _ = run_check("--runs", "sine-reptile", "--keep", str(tmp_path), capsys=capsys)
    assert code == 2 and out.count("\n") == 1 and "already exists" in out

    code, out, _ = run_check("--regenerate", "--seeds", "1-3", "--reference", str(missing), capsys=capsys)
    assert code == 2 and "including 0" in out and not missing.exists()


@pytest.mark.slow
def test_the_full_check_passes(omniglot_data, capsys):
    code, out, err = run_check("--data", str(omniglot_data), capsys=capsys)
    assert code == 0, out + err
    assert out.count(" ok ") == len(check.RUNS)
