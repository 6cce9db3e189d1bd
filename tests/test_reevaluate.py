"""`python -m bench evaluate`: a finished run scored again, as the run with those settings would score."""

import json
import re

import pandas as pd
import pytest

from bench.cli import main
from bench.config import load_config
from bench.errors import BenchError, ConfigError
from bench.reevaluate import reevaluate
from bench.report import build_report
from bench.report_data import discover

TINY = dict(meta_iters=4, meta_batch=2, inner_steps=2, eval_steps=3, eval_tasks=6, eval_every=2, eval_every_tasks=2,
            log_every=2, snapshots=0)


def _train(results, data, **settings):
    from bench.runner import run

    cfg = load_config("omniglot-5w1s").replace(**{**TINY, **settings})
    return run(cfg, algo="reptile", preset="omniglot-5w1s", results=results, data=data, device="cpu",
               progress=False)


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_run_scored_transductively_equals_the_run_trained_with_transduction(tmp_path, omniglot_data):
    # Meta-training never reads `transductive`: the run trained with it scores what the
    # re-evaluation of the run trained without it scores, on the same test tasks.
    _train(tmp_path / "a", omniglot_data)
    trained = _train(tmp_path / "b", omniglot_data, transductive=True)
    source = tmp_path / "a" / "omniglot-5w1s" / "reptile" / "seed0"
    before = _files(source)

    path = reevaluate(source, {"transductive": "true"}, data=omniglot_data, device="cpu", progress=False)
    assert path == (tmp_path / "a" / "omniglot-5w1s" / "reptile-transductive" / "seed0").resolve()
    assert _files(source) == before  # the source is only read
    final = json.loads((path / "final.json").read_text())
    plain = json.loads((source / "final.json").read_text())
    assert final["transductive"] and not plain["transductive"]
    assert final["value"] == pytest.approx(trained["value"], abs=1e-6)
    assert final["ci95"] == pytest.approx(trained["ci95"], abs=1e-6)
    assert final["value"] != plain["value"]  # one batch of queries scores differently from one at a time
    assert final["train_seconds"] == plain["train_seconds"] and final["evaluated_from"] == "../../reptile/seed0"

    config = json.loads((path / "config.json").read_text())
    assert config["transductive"] is True and config["evaluated_from"]["settings"] == {"transductive": True}
    assert config["overrides"] == {"transductive": "true"}
    # The meta-training rows are the source's, the periodic evaluations (scored one query
    # at a time) are left out, and the final row is the new evaluation.
    metrics = pd.read_csv(path / "metrics.csv")
    src = pd.read_csv(source / "metrics.csv")
    train = metrics[metrics["split"] == "train"].reset_index(drop=True)
    pd.testing.assert_frame_equal(train, src[src["split"] == "train"].reset_index(drop=True))
    assert metrics[metrics["split"] != "train"][["step", "split"]].values.tolist() == [[4, "test"]]
    assert metrics["value"].iloc[-1] == pytest.approx(final["value"])

    # The report reads it as the "+ transduction" method beside the source.
    runs, skipped = discover(tmp_path / "a")
    assert not skipped and sorted(r.method for r in runs) == ["reptile", "reptile + transduction"]
    report = build_report(tmp_path / "a", tmp_path / "report", progress=False).read_text()
    assert "reptile + transduction: other runs' final initialisations scored again" in report

    # A second time: refused (the folder holds a run) unless --force; then replaced.
    with pytest.raises(BenchError, match="a run already exists .* --force"):
        reevaluate(source, {"transductive": "true"}, data=omniglot_data, device="cpu", progress=False)
    again = reevaluate(source, {"transductive": "true"}, data=omniglot_data, device="cpu", progress=False,
                       force=True)
    assert json.loads((again / "final.json").read_text())["value"] == final["value"]


def test_refusals_write_nothing(tmp_path, omniglot_data, capsys):
    _train(tmp_path, omniglot_data)
    source = tmp_path / "omniglot-5w1s" / "reptile" / "seed0"
    before = _files(tmp_path)

    def refused(args, match):
        assert main(["evaluate", *map(str, args), "--data", str(omniglot_data), "--device", "cpu",
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
        assert re.search(match, err), err
        assert _files(tmp_path) == before

    refused([source, "--set", "meta_lr=0.5"], "--set meta_lr changes meta-training")
    refused([source, "--set", "eval_steps=0"], "eval_steps.* greater than 0")
    refused([source], "keep the run's own folder name .* --out DIR")
    refused([source, "--set", "eval_tasks=8", "--out", source], "keep the run's own folder name")
    refused([tmp_path / "nowhere"], "no readable config.json")
    (source / "state.json").write_text(json.dumps({"state": "running", "step": 2}))
    before = _files(tmp_path)
    refused([source, "--set", "transductive=true"], "has not finished .* --resume")


def test_more_tasks_under_the_own_protocol_into_a_named_folder(tmp_path, omniglot_data):
    _train(tmp_path, omniglot_data)
    source = tmp_path / "omniglot-5w1s" / "reptile" / "seed0"
    out = tmp_path / "elsewhere"
    path = reevaluate(source, {"eval_tasks": "8"}, eval_protocol="both", out=out, data=omniglot_data,
                      device="cpu", progress=False)
    assert path == out
    final = json.loads((out / "final.json").read_text())
    assert final["tasks"] == 8 and final["own_protocol"]["name"] == "reptile-paper"
    config = json.loads((out / "config.json").read_text())
    assert config["eval_tasks"] == 8 and config["own_protocol"]["name"] == "reptile-paper"
    with pytest.raises(ConfigError, match="changes meta-training"):
        reevaluate(source, {"inner_lr": "0.1"}, out=tmp_path / "x", data=omniglot_data, device="cpu")
