"""Mini-ImageNet as a task: the pools and samplers `TaskData` makes of it, the size checks
that refuse a bad command before any file is read, and real CLI runs of its presets.

There is no real Mini-ImageNet here: the module builds a tiny copy of the pickled layout
(the 64/16/20 classes of PER_CLASS random images each) and shrinks the loader's
IMAGES_PER_CLASS to match. The 84x84 CNN is slow on a CPU, so the runs are a few steps.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import tasks
from bench.cli import main
from bench.config import load_config
from bench.data import miniimagenet
from bench.episodes import ClassSampler
from bench.errors import ConfigError
from bench.models import MiniImageNetCNN, build_model
from bench.tasks import TaskData, check_sizes, pool_sizes

COUNTS = {"train": 64, "val": 16, "test": 20}
PER_CLASS = 16  # the presets' 15 train shots (Reptile) and 1 + 15 examples per class (MAML) fit


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict[bytes, tuple[str, str]]]:
    """A data root holding miniimagenet/mini-imagenet-cache-{train,val,test}.pkl, and every
    image as it reaches a model (channels first) -> (split, wnid), built from the pickles'
    channels-last rows."""
    root = tmp_path_factory.mktemp("data")
    (root / "miniimagenet").mkdir()
    rng = np.random.default_rng(0)
    lookup, first = {}, 0
    for split, n in COUNTS.items():
        images = rng.integers(0, 256, (n * PER_CLASS, 84, 84, 3), dtype=np.uint8)
        rows = rng.permutation(len(images))
        class_dict = {f"n{first + c:08d}": rows[c * PER_CLASS:(c + 1) * PER_CLASS].tolist() for c in range(n)}
        first += n
        for wnid, mine in class_dict.items():
            for r in mine:
                lookup[images[r].transpose(2, 0, 1).tobytes()] = (split, wnid)
        with open(root / "miniimagenet" / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f, protocol=4)
    return root, lookup


@pytest.fixture
def data(source, monkeypatch, tmp_path) -> Path:
    """The tiny data root, with IMAGES_PER_CLASS shrunk to match and the user cache in tmp_path."""
    monkeypatch.setattr(miniimagenet, "IMAGES_PER_CLASS", PER_CLASS)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    return source[0]


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under root, with a file's content hash and modification time."""
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else
            f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_mtime_ns}" for p in sorted(root.rglob("*"))}


def test_pools_stay_uint8_and_episodes_reach_the_model_as_unit_floats(data, source):
    cfg = load_config("miniimagenet-5w1s")
    task_data = TaskData(cfg, torch.device("cpu"), data)
    assert task_data.splits == ["train", "val", "test"]  # periodic evaluation scores all three
    for split, n in COUNTS.items():
        pool = task_data.pools[split]
        assert pool.dtype == torch.uint8 and pool.shape == (n, PER_CLASS, 3, 84, 84)  # no float copy, no rotations
    assert isinstance(build_model(cfg), MiniImageNetCNN)

    lookup = source[1]
    for split in COUNTS:
        ep = task_data.sampler(split, "final", 0).sample(4, 2, 3, 2, 5)
        assert ep.support_x.shape == (4, 10, 3, 84, 84) and ep.query_x.shape == (4, 15, 3, 84, 84)
        for t in range(4):
            x = torch.cat([ep.support_x[t], ep.query_x[t]])
            y = torch.cat([ep.support_y[t], ep.query_y[t]])
            assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
            raw = (x * 255).round().to(torch.uint8).numpy()
            found = [lookup[image.tobytes()] for image in raw]  # each example is an image of the file...
            assert {s for s, _ in found} == {split}  # ... of this split
            # exactly the reference's pixels: `astype('float32') / 0xff`
            assert torch.equal(x, torch.from_numpy(raw.astype(np.float32) / 0xFF))
            # without replacement: 5 distinct classes, one per label; no image twice in a task
            classes = {int(label): {w for (_, w), lab in zip(found, y) if lab == label} for label in y.unique()}
            assert all(len(c) == 1 for c in classes.values()) and len(set.union(*classes.values())) == 5
            assert len({image.tobytes() for image in raw}) == len(raw)
        model = build_model(cfg)
        assert model(ep.support_x[0]).shape == (10, 5)


def test_scaling_keeps_the_draws_and_omniglot_unscaled():
    pool = torch.randint(0, 256, (20, 8, 3, 84, 84), dtype=torch.uint8)
    plain = ClassSampler(pool, 5, np.random.default_rng(3)).sample(3, 2, 1, 2, 4)
    scaled = ClassSampler(pool, 5, np.random.default_rng(3), scale=miniimagenet.SCALE).sample(3, 2, 1, 2, 4)
    assert torch.equal(scaled.support_x, plain.support_x / 255) and torch.equal(scaled.query_x, plain.query_x / 255)
    assert torch.equal(scaled.support_y, plain.support_y) and torch.equal(scaled.inner_batches, plain.inner_batches)
    # scale=None is the Omniglot path: the pool's values, as floats
    binary = torch.randint(0, 2, (20, 8, 28, 28), dtype=torch.uint8)
    a = ClassSampler(binary, 5, np.random.default_rng(0)).sample(2, 1, 1, 1, 5)
    b = ClassSampler(binary, 5, np.random.default_rng(0), scale=None).sample(2, 1, 1, 1, 5)
    assert torch.equal(a.support_x, b.support_x) and set(a.support_x.unique().tolist()) <= {0.0, 1.0}


def test_sizes_are_known_without_loading(monkeypatch):
    cfg = load_config("miniimagenet-5w1s-maml")
    assert pool_sizes(cfg) == {"train": (64, 600), "val": (16, 600), "test": (20, 600)}
    monkeypatch.setattr(miniimagenet, "IMAGES_PER_CLASS", 10)  # read when called, not at import
    assert pool_sizes(cfg)["val"] == (16, 10)
    with pytest.raises(ConfigError, match=r"train_shots=1 plus query_shots=15 exceed the 10 examples per class"):
        check_sizes(cfg)


@pytest.mark.parametrize("ways", [17, 21])
def test_more_ways_than_classes_is_refused_before_any_file_is_read(data, tmp_path, monkeypatch, capsys, ways):
    def refuse(*args, **kwargs):
        raise AssertionError("the data was read")

    monkeypatch.setattr(tasks, "load_miniimagenet", refuse)
    results, before = tmp_path / "results", tree(data)
    code = main(["run", "--algo", "reptile", "--preset", "miniimagenet-5w1s", "--data", str(data), "--results",
                 str(results), "--device", "cpu", "--no-progress", "--set", f"ways={ways}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert f"ways={ways}" in err and "the val split has only 16 classes" in err and "lower --set ways" in err
    assert not results.exists() and not (tmp_path / "cache").exists() and tree(data) == before


def test_val_chars_is_omniglot_only():
    with pytest.raises(ConfigError, match=r"'val_chars' is 5.*--set val_chars=0"):
        load_config("miniimagenet-5w1s", {"val_chars": "5"})


TINY = ["--set", "meta_iters=2", "--set", "eval_tasks=2", "--set", "eval_steps=2", "--set", "log_every=1",
        "--set", "snapshots=0", "--set", "meta_batch=1", "--set", "inner_steps=2"]


def _run(data: Path, results: Path, algo: str, preset: str, *extra: str) -> tuple[dict, str]:
    assert main(["run", "--algo", algo, "--preset", preset, "--data", str(data), "--results", str(results),
                 "--device", "cpu", "--no-progress", *TINY, *extra]) == 0
    [run] = (results / preset).glob(f"{algo}*/seed0")  # the folder may name a variant, e.g. -transductive
    final = json.loads((run / "final.json").read_text())
    assert json.loads((run / "config.json").read_text())["task"] == "miniimagenet"
    assert final["metric"] == "accuracy" and 0 <= final["value"] <= 1 and final["tasks"] == 2
    return final, (run / "metrics.csv").read_text()


def test_reptile_preset_runs_end_to_end(data, tmp_path):
    # one periodic evaluation (after meta-iteration 1) of one task per split; transductive
    # scoring, the "+ transduction" row's, as it is the cheaper one on a CPU
    final, metrics = _run(data, tmp_path, "reptile", "miniimagenet-5w1s", "--set", "eval_every=1",
                          "--set", "eval_every_tasks=1", "--set", "transductive=true")
    assert final["transductive"] is True
    periodic = {line.split(",")[2] for line in metrics.splitlines()[1:] if line.split(",")[3] == "accuracy"}
    assert periodic == {"train", "val", "test"}


def test_maml_preset_runs_end_to_end(data, tmp_path):
    _run(data, tmp_path, "maml", "miniimagenet-5w1s-maml", "--set", "eval_every=0", "--set", "query_shots=2")
